"""Logs for a person's terminal: text on a TTY, JSON otherwise, no faust start-up chatter."""

import io
import logging

import orjson
import pytest

from tally import logs
from tally.config import Settings


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_on_a_terminal_and_json_elsewhere():
    assert logs.choose_format("auto", _Tty()) == "text"
    assert logs.choose_format("auto", io.StringIO()) == "json"
    closed = io.StringIO()
    closed.close()  # isatty() raises
    assert logs.choose_format("auto", closed) == "json"
    # TALLY_LOG_FORMAT says which, whatever the stream
    assert logs.choose_format("json", _Tty()) == "json"
    assert logs.choose_format("text", io.StringIO()) == "text"


def test_the_default_is_auto_and_the_environment_overrides_it(monkeypatch):
    monkeypatch.delenv("TALLY_LOG_FORMAT", raising=False)
    assert Settings().log_format == "auto"
    monkeypatch.setenv("TALLY_LOG_FORMAT", "json")
    assert Settings().log_format == "json"


@pytest.fixture
def captured():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    saved_levels = {n: logging.getLogger(n).level for n in (*logs.CHATTER, *logs.QUIET)}

    def setup(level: str) -> io.StringIO:
        stream = io.StringIO()
        logs.setup(level, "json")
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        return stream

    yield setup
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


def _said(stream: io.StringIO) -> list[str]:
    return [orjson.loads(line)["msg"] for line in stream.getvalue().splitlines()]


def test_faust_and_mode_start_up_lines_are_left_out_unless_debug(captured):
    stream = captured("INFO")
    logging.getLogger("streams.app").info("[^_App]: Starting...")  # a faust App's own module
    logging.getLogger("faust.sensors.monitor").info("[^-Monitor]: Starting...")
    logging.getLogger("mode.services").info("started")
    logging.getLogger("faust.transport").warning("[^-Producer]: cannot reach the broker")
    logging.getLogger("tally.worker").info("partition 0 acquired")
    assert _said(stream) == ["[^-Producer]: cannot reach the broker", "partition 0 acquired"]

    stream = captured("DEBUG")
    logging.getLogger("streams.app").info("[^_App]: Starting...")
    logging.getLogger("faust.sensors.monitor").info("[^-Monitor]: Starting...")
    assert _said(stream) == ["[^_App]: Starting...", "[^-Monitor]: Starting..."]


def test_tally_up_says_first_where_everything_is_and_the_admin_key(capsys):
    from commands.cli import _banner

    settings = Settings(api_host="0.0.0.0", api_port=8080, log_format="text")
    _banner(settings, "made-key")
    lines = capsys.readouterr().err.splitlines()
    assert lines[1].split() == ["API", "http://localhost:8080"]
    assert lines[2].split() == ["dashboard", "http://localhost:8080/dashboard"]
    assert lines[3].split() == ["API", "docs", "http://localhost:8080/docs"]
    assert lines[4].split()[:3] == ["admin", "key", "made-key"]
    _banner(settings.model_copy(update={"api_host": "127.0.0.1"}), None)
    assert "admin key  the one in TALLY_ADMIN_KEY" in capsys.readouterr().err

"""Logging set-up: plain text for people on a terminal, one JSON object per line otherwise.

`TALLY_LOG_FORMAT` is `auto` (the default: text when stderr, where the logs go, is a
terminal; JSON when it is a file or a pipe), `json` or `text`. faust's and mode's start-up
and shutdown lines (`[^_App]: Starting...`) are left out below WARNING, unless
`TALLY_LOG_LEVEL=DEBUG`.

Context travels as `extra`: `log.info("partition acquired", extra={"partition": 3,
"offset": 120})` gives `{"ts": ..., "level": "INFO", "logger": "tally.worker", "msg":
"partition acquired", "partition": 3, "offset": 120}`. Any `extra` key is kept; `org`,
`partition` and `offset` are the ones the worker and the operations commands use.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

# Attributes every LogRecord has: anything else on a record came in through `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
QUIET = ("aiokafka", "kafka", "urllib3", "httpx", "httpcore")
# faust's and mode's own loggers: their services' start-up and shutdown at INFO.
CHATTER = ("faust", "mode")


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", **extra}` on one line; `exc` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic line, with the `extra` context appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STANDARD and not k.startswith("_")
        ]
        return f"{line} [{' '.join(extra)}]" if extra else line


def choose_format(fmt: str, stream: TextIO | None = None) -> str:
    """`json` or `text`: as given, or for `auto` text when `stream` (stderr) is a terminal."""
    if fmt != "auto":
        return fmt
    try:
        return "text" if (stream or sys.stderr).isatty() else "json"
    except (AttributeError, ValueError):  # no stream, or a closed one
        return "json"


class ServiceChatter(logging.Filter):
    """Drops mode's service-tree lines below WARNING (`[^_App]: Starting...`, `[^-Monitor]:
    Stopping...`): whichever module's logger a faust or mode service logs them with."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        return record.levelno >= logging.WARNING or not (isinstance(msg, str) and msg[:2] == "[^")


def setup(level: str = "INFO", fmt: str = "auto") -> None:
    """Route every logger through one stderr handler in the chosen format."""
    handler = logging.StreamHandler()
    text = choose_format(fmt, handler.stream) == "text"
    handler.setFormatter(TextFormatter() if text else JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    debug = root.level <= logging.DEBUG
    for name in CHATTER:
        logging.getLogger(name).setLevel(
            logging.NOTSET if debug else max(logging.WARNING, root.level)
        )
    if not debug:
        handler.addFilter(ServiceChatter())

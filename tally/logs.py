"""Logging set-up: one JSON object per line (the default) or plain text for people.

Context travels as `extra`: `log.info("partition acquired", extra={"partition": 3,
"offset": 120})` gives `{"ts": ..., "level": "INFO", "logger": "tally.worker", "msg":
"partition acquired", "partition": 3, "offset": 120}`. Any `extra` key is kept; `org`,
`partition` and `offset` are the ones the worker and the operations commands use.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

# Attributes every LogRecord has: anything else on a record came in through `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
QUIET = ("aiokafka", "kafka", "urllib3", "httpx", "httpcore")


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


def setup(level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger through one stderr handler in the chosen format."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))

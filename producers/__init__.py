"""The emitter SDK that agent runtimes import (docs/events.md, "The emitter SDK")."""

from producers.emitter import Emitter, EmitterStats
from producers.spool import SpoolError, SpoolFull, SpoolLocked
from producers.sync import SyncEmitter
from schemas.events import InvalidEvent

__all__ = [
    "Emitter",
    "EmitterStats",
    "InvalidEvent",
    "SpoolError",
    "SpoolFull",
    "SpoolLocked",
    "SyncEmitter",
]

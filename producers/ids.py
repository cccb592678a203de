"""Time-ordered event ids: UUIDv7 (RFC 9562), monotonic within a process.

Layout: 48 bits of Unix milliseconds, version 7, 12 bits of a per-millisecond counter
(RFC 9562 method 1, so ids made in the same millisecond still sort in creation order),
variant 0b10, then 62 random bits. The random source is seeded from the OS and reseeded in
a forked child, so two processes never share a sequence. Ids need to be unique, not secret.
"""

from __future__ import annotations

import os
import random
import threading
import time

_rng = random.Random(os.urandom(16))
_lock = threading.Lock()
_last_ms = 0
_counter = 0


def _reseed() -> None:
    global _rng, _last_ms, _counter
    _rng = random.Random(os.urandom(16))
    _last_ms, _counter = 0, 0


os.register_at_fork(after_in_child=_reseed)


def uuid7_int(now_ns: int | None = None) -> int:
    """The next UUIDv7 as a 128-bit integer."""
    global _last_ms, _counter
    ms = (now_ns if now_ns is not None else time.time_ns()) // 1_000_000
    with _lock:
        if ms > _last_ms:
            _last_ms, _counter = ms, _rng.getrandbits(10)  # leave room to count up
        else:
            _counter += 1
            if _counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                _last_ms, _counter = _last_ms + 1, 0
            ms = _last_ms
        counter = _counter
        rand = _rng.getrandbits(62)
    return (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand


def uuid7(now_ns: int | None = None) -> str:
    """The next UUIDv7 in its canonical 36-character form."""
    h = f"{uuid7_int(now_ns):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7_time_ms(value: str) -> int:
    """The Unix milliseconds a UUIDv7 string was made at."""
    return int(value.replace("-", "")[:12], 16)

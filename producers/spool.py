"""The disk spool: where an emitter keeps the events it could not deliver yet.

A spool is a directory of append-only segment files read from the head and appended at the
tail, plus a `cursor` file naming the first undelivered record. Each record is framed as

    length (u32, big-endian) | crc32 of the payload (u32) | payload
    payload = key length (u16) | key | value

Appends are plain `write(2)` calls, so a record survives the emitting process dying at once;
`sync()` fsyncs them in batches (the emitter calls it every few milliseconds and on flush),
which is what makes them survive the machine dying too. On open, a torn record at the tail
(a crash in the middle of a write) is cut off; everything before it is kept.

The cursor only moves forward once the records before it are delivered (`commit()`); the
emitter commits only once Tally has *stored* them (end-to-end acknowledgement), reading
ahead meanwhile (`read(start=...)`). A crash re-delivers what was not committed at worst:
Tally drops the copies by event_id.

`prepend()` puts records in front of everything else: the emitter uses it for events that
were in memory (older than anything spooled) when the broker became unreachable, so the
spool stays in emission order.

One process at a time may use a spool directory (an exclusive `flock` on `.lock`). Not
thread-safe: the emitter serialises calls under its own lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

Record = tuple[bytes, bytes]  # (key, value)

_HEAD = struct.Struct(">II")
_KEY = struct.Struct(">H")
_FIRST_SEQ = 10**12  # room below for prepended segments
_SUFFIX = ".spool"


class SpoolError(RuntimeError):
    """The spool cannot be used; the message says why and what to do."""


class SpoolFull(SpoolError):
    """The spool holds `max_bytes` of undelivered events already."""


class SpoolLocked(SpoolError):
    """Another process (or another emitter) uses this spool directory."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a `read()` stopped: pass it to `commit()` once those records are delivered."""

    segment: int
    offset: int


def encode(key: bytes, value: bytes) -> bytes:
    """One framed record."""
    payload = _KEY.pack(len(key)) + key + value
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def decode_frames(data: bytes) -> tuple[list[Record], int]:
    """The whole records at the start of `data` and the number of bytes they take."""
    records: list[Record] = []
    pos, end = 0, len(data)
    while pos + _HEAD.size <= end:
        length, crc = _HEAD.unpack_from(data, pos)
        start, stop = pos + _HEAD.size, pos + _HEAD.size + length
        if stop > end or length < _KEY.size:
            break
        payload = data[start:stop]
        if zlib.crc32(payload) != crc:
            break
        (klen,) = _KEY.unpack_from(payload)
        records.append((payload[2 : 2 + klen], payload[2 + klen :]))
        pos = stop
    return records, pos


class Spool:
    """An append-only, crash-safe FIFO of `(key, value)` records in a directory."""

    def __init__(
        self, directory: str | Path, max_bytes: int = 1 << 30, segment_bytes: int = 16 << 20
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock_fd: int | None = None
        self._segments: list[int] = []  # sequence numbers, ascending
        self._sizes: dict[int, int] = {}
        self._cursor = Position(_FIRST_SEQ, 0)
        self._tail_fd: int | None = None
        self._dirty = False

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> Spool:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked(
                f"spool {self.directory} is in use by another emitter; give each emitter "
                "(each process) its own spool directory"
            ) from None
        self._lock_fd = fd
        self._load()
        return self

    def close(self) -> None:
        if self._tail_fd is not None:
            self.sync()
            os.close(self._tail_fd)
            self._tail_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Spool:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load(self) -> None:
        self._cursor = self._read_cursor()
        seqs = sorted(
            int(p.name[: -len(_SUFFIX)])
            for p in self.directory.glob(f"*{_SUFFIX}")
            if p.name[: -len(_SUFFIX)].isdigit()
        )
        for seq in seqs:
            if seq < self._cursor.segment:  # delivered, but not deleted before a crash
                self._path(seq).unlink(missing_ok=True)
        self._segments = [s for s in seqs if s >= self._cursor.segment]
        self._sizes = {s: self._path(s).stat().st_size for s in self._segments}
        if self._segments:
            self._repair_tail(self._segments[-1])
            if self._cursor.segment not in self._sizes:
                self._cursor = Position(self._segments[0], 0)
            self._reopen_tail()
        else:
            self._cursor = Position(self._cursor.segment, 0)

    def _repair_tail(self, seq: int) -> None:
        """Cut a torn record off the end of the last segment (a crash during a write)."""
        path = self._path(seq)
        data = path.read_bytes()
        _, good = decode_frames(data)
        if good < len(data):
            with open(path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
            self._sizes[seq] = good

    # -- state -----------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes of records not delivered yet (framing included)."""
        total = sum(self._sizes.values())
        if self._segments and self._cursor.segment == self._segments[0]:
            total -= self._cursor.offset
        return total

    @property
    def empty(self) -> bool:
        return self.pending_bytes == 0

    def unread_bytes(self, after: Position | None) -> int:
        """Bytes of records after `after` (a position a read returned; None: the cursor)."""
        if after is None or after < self._cursor:
            return self.pending_bytes
        return sum(
            size - (after.offset if seq == after.segment else 0)
            for seq, size in self._sizes.items()
            if seq >= after.segment
        )

    # -- writing ---------------------------------------------------------------------------

    def append(self, key: bytes, value: bytes) -> None:
        """Append one record at the tail (written at once, fsynced by the next `sync()`)."""
        self.append_frames(encode(key, value))

    def append_many(self, records: Iterable[Record]) -> None:
        self.append_frames(b"".join(encode(k, v) for k, v in records))

    def append_frames(self, frames: bytes) -> None:
        if not frames:
            return
        self._check_room(len(frames))
        if not self._segments or self._sizes[self._segments[-1]] >= self.segment_bytes:
            self._new_tail()
        assert self._tail_fd is not None
        tail = self._segments[-1]
        written = os.write(self._tail_fd, frames)
        while written < len(frames):  # short writes are rare but legal
            written += os.write(self._tail_fd, frames[written:])
        self._sizes[tail] += len(frames)
        self._dirty = True

    def prepend(self, records: Sequence[Record], force: bool = False) -> None:
        """Put records in front of everything spooled (they are older): durable on return.
        With `force`, even beyond `max_bytes` (an emitter closing keeps what it accepted)."""
        if not records:
            return
        frames = b"".join(encode(k, v) for k, v in records)
        if not force:
            self._check_room(len(frames))
        head = self._segments[0] if self._segments else self._cursor.segment
        rest = b""
        if self._segments and self._cursor.offset:
            # Never happens in the emitter (it prepends only before reading), but keep the
            # undelivered rest of a half-read head segment in order if it ever does.
            with open(self._path(head), "rb") as f:
                f.seek(self._cursor.offset)
                rest = f.read()
        seq = head - 1
        self._write_durably(self._path(seq), frames + rest)
        old_head = head if rest else None
        self._segments.insert(0, seq)
        self._sizes[seq] = len(frames) + len(rest)
        self._write_cursor(Position(seq, 0))
        if old_head is not None:
            self._drop(old_head)
        if not self._tail_fd_valid():
            self._reopen_tail()

    def sync(self) -> None:
        """fsync what was appended since the last sync."""
        if self._dirty and self._tail_fd is not None:
            os.fsync(self._tail_fd)
            self._dirty = False

    def sync_handle(self) -> int | None:
        """A duplicate descriptor of the tail to fsync outside the caller's lock (then close)."""
        if not self._dirty or self._tail_fd is None:
            return None
        self._dirty = False
        return os.dup(self._tail_fd)

    def _check_room(self, size: int) -> None:
        if self.pending_bytes + size > self.max_bytes:
            raise SpoolFull(
                f"spool {self.directory} is full ({self.pending_bytes} of {self.max_bytes} "
                "bytes of undelivered events): the broker has been unreachable for too long; "
                "restore the broker or give the emitter a larger spool_max_bytes"
            )

    def _new_tail(self) -> None:
        if self._tail_fd is not None:
            os.fsync(self._tail_fd)
            os.close(self._tail_fd)
            self._dirty = False
        seq = self._segments[-1] + 1 if self._segments else self._cursor.segment
        self._tail_fd = os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._fsync_dir()
        self._segments.append(seq)
        self._sizes[seq] = 0
        if len(self._segments) == 1:
            self._cursor = Position(seq, 0)

    def _tail_fd_valid(self) -> bool:
        return self._tail_fd is not None or not self._segments

    def _reopen_tail(self) -> None:
        if self._tail_fd is not None:
            os.close(self._tail_fd)
        self._tail_fd = os.open(self._path(self._segments[-1]), os.O_WRONLY | os.O_APPEND)

    # -- reading ---------------------------------------------------------------------------

    def read(
        self, max_records: int, max_bytes: int = 4 << 20, after: Position | None = None
    ) -> tuple[list[Record], Position]:
        """Up to `max_records` records from the head (or from `after`, a position an earlier
        read returned and not yet committed past), and the position after them."""
        records: list[Record] = []
        pos = self._cursor if after is None or after < self._cursor else after
        for seq in self._segments:
            if seq < pos.segment:
                continue
            start = pos.offset if seq == pos.segment else 0
            size = self._sizes[seq]
            if start >= size:
                pos = Position(seq, size)
                continue
            with open(self._path(seq), "rb") as f:
                f.seek(start)
                data = f.read(min(size - start, max_bytes))
            got, used = decode_frames(data)
            room = max_records - len(records)
            if len(got) > room:
                got = got[:room]
                used = sum(_HEAD.size + _KEY.size + len(k) + len(v) for k, v in got)
            records.extend(got)
            pos = Position(seq, start + used)
            if len(records) >= max_records or start + used < size:
                break
        return records, pos

    def commit(self, position: Position) -> None:
        """The records before `position` are delivered: move the cursor, drop read segments."""
        while self._segments and self._segments[0] < position.segment:
            self._drop(self._segments[0])
        if self._segments and position.offset >= self._sizes[self._segments[0]]:
            if len(self._segments) == 1:
                # Everything is delivered: start over in a fresh segment.
                self._close_tail()
                self._drop(self._segments[0])
                self._write_cursor(Position(position.segment + 1, 0))
                return
            self._drop(self._segments[0])
            position = Position(self._segments[0], 0)
        self._write_cursor(position)

    def _close_tail(self) -> None:
        if self._tail_fd is not None:
            os.close(self._tail_fd)
            self._tail_fd = None
            self._dirty = False

    def _drop(self, seq: int) -> None:
        if seq == self._segments[-1]:
            self._close_tail()
        self._path(seq).unlink(missing_ok=True)
        self._segments.remove(seq)
        self._sizes.pop(seq, None)

    # -- files -----------------------------------------------------------------------------

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:020d}{_SUFFIX}"

    def _read_cursor(self) -> Position:
        try:
            seg, off = (self.directory / "cursor").read_text().split()
            return Position(int(seg), int(off))
        except (FileNotFoundError, ValueError):
            return Position(_FIRST_SEQ, 0)

    def _write_cursor(self, position: Position) -> None:
        self._write_durably(self.directory / "cursor", f"{position.segment} {position.offset}\n")
        self._cursor = position

    def _write_durably(self, path: Path, data: bytes | str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        raw = data.encode() if isinstance(data, str) else data
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError):
                os.fsync(fd)
        finally:
            os.close(fd)

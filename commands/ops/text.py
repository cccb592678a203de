"""Plain-text output for the operations commands: aligned tables and a progress line."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [
        all(isinstance(r[i], int | float) or r[i] is None for r in rows) and bool(rows)
        for i in range(len(headers))
    ]
    lines = []
    for r in cells:
        parts = [
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


class Progress:
    """`done/total (pct) rate` on stderr: redrawn in place on a terminal, else one line per
    tenth of the work (and at the end), so that logs of a long run show it moving."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = max(total, 0)
        self.label = label
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.monotonic()
        self._tty = self.stream.isatty()
        self._next_line = 0
        self._printed = -1
        self._last_draw = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        if self._tty:
            if time.monotonic() - self._last_draw >= 0.1:
                self.stream.write("\r" + self._line())
                self.stream.flush()
                self._last_draw = time.monotonic()
        elif self.done >= self._next_line:
            self._write_line()
            step = max(self.total // 10, 1)
            self._next_line = (self.done // step + 1) * step

    def finish(self) -> None:
        if self._tty:
            self.stream.write("\r" + self._line() + "\n")
            self.stream.flush()
        elif self._printed != self.done:
            self._write_line()

    def _write_line(self) -> None:
        self.stream.write(self._line() + "\n")
        self.stream.flush()
        self._printed = self.done

    def _line(self) -> str:
        pct = 100 * self.done / self.total if self.total else 100.0
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        width = 30
        filled = int(width * pct / 100)
        bar = "#" * filled + "-" * (width - filled)
        return f"{self.label}: [{bar}] {self.done:,}/{self.total:,} ({pct:.0f}%) {rate:,.0f}/s"

"""A dependency-free progress bar with bytes, rate and ETA (to stderr)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """Redraws one line on a terminal; on a pipe prints a line every 10% so logs stay short."""

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None, enabled: bool = True):
        self.total = max(1, total)
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.t0 = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self._tty:
            if now - self._last_draw >= 0.1 or self.done >= self.total:
                self._last_draw = now
                self.stream.write("\r" + self.line(now) + "\x1b[K")
                self.stream.flush()
        else:
            decile = int(10 * self.done / self.total)
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(self.line(now) + "\n")
                self.stream.flush()

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        el = max(1e-9, now - self.t0)
        frac = min(1.0, self.done / self.total)
        rate = self.done / el
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        return (
            f"{self.label} [{bar}] {100 * frac:5.1f}%  {_fmt_bytes(self.done)}/{_fmt_bytes(self.total)}"
            f"  {_fmt_bytes(rate)}/s  ETA {_fmt_time(eta)}"
        )

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()

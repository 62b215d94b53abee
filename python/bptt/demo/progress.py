"""A one-line progress bar for the demo's long runs."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


class Progress:
    """A one-line progress bar on a stream (stderr by default), weighted by work units.

    On a terminal it redraws in place; elsewhere it prints a line every 10%. ``quiet``
    turns it off."""

    def __init__(self, total: float, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.total = max(float(total), 1e-9)
        self.done = 0.0
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.label = ""
        self._last_draw = 0.0
        self._last_decile = -1

    def advance(self, units: float, label: str | None = None) -> None:
        """Adds ``units`` of finished work (and sets the label shown)."""
        self.done = min(self.total, self.done + units)
        if label is not None:
            self.label = label
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if self.quiet:
            return
        frac = self.done / self.total
        now = time.perf_counter()
        elapsed = now - self.t0
        eta = elapsed * (1 - frac) / frac if frac > 0.01 else float("nan")
        eta_s = "?" if math.isnan(eta) else f"{eta:4.0f}s"
        if self.tty:
            if not force and now - self._last_draw < 0.1 and frac < 1:
                return
            self._last_draw = now
            width = 28
            fill = round(width * frac)
            bar = "#" * fill + "-" * (width - fill)
            self.stream.write(f"\r[{bar}] {100 * frac:5.1f}%  {elapsed:5.0f}s elapsed, "
                              f"eta {eta_s}  {self.label[:40]:<40}")
            self.stream.flush()
        else:
            decile = int(frac * 10)
            if decile != self._last_decile or force:
                self._last_decile = decile
                self.stream.write(f"[{100 * frac:5.1f}%] {elapsed:5.0f}s  {self.label}\n")
                self.stream.flush()

    def close(self) -> None:
        """Finishes the bar (newline on a terminal)."""
        if self.quiet:
            return
        self.done = self.total
        self._draw(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

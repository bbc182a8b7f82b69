"""A small progress bar on stderr for long work; off with progress=False (or when not a terminal)."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """Counts steps of one piece of work and redraws one line at most ten times a second."""

    def __init__(self, total: int, desc: str, enabled: Optional[bool] = None, stream: Optional[TextIO] = None) -> None:
        self.total, self.desc, self.done = max(int(total), 0), desc, 0
        self.stream = stream or sys.stderr
        if enabled is None:  # auto: only where someone watches a terminal
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled and self.total > 0
        self._start = self._last = time.monotonic()
        self._draw()

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if self.done >= self.total or now - self._last >= 0.1:
            self._last = now
            self._draw(note)

    def _draw(self, note: str = "") -> None:
        if not self.enabled:
            return
        frac = min(1.0, self.done / self.total)
        bar = "#" * int(frac * 24)
        elapsed = time.monotonic() - self._start
        line = f"\r{self.desc:<28} [{bar:<24}] {self.done}/{self.total} {elapsed:5.1f}s {note[:40]:<40}"
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
            self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

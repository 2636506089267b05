"""Progress lines for logs: ``tail -f`` on a rule's log tells how far it is and how long is left."""

from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Counts work done and prints ``label: done/total (pct), rate, elapsed, ETA`` at most every
    ``every`` seconds (and always at the end)."""

    def __init__(self, total: int, label: str, unit: str = "items", log=None, every: float = 5.0):
        self.total = max(int(total), 0)
        self.label = label
        self.unit = unit
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.every = every
        self.done = 0
        self.start = time.perf_counter()
        self._last = self.start  # the first line comes after `every` seconds, with a real rate

    def update(self, count: int = 1) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self._last >= self.every or self.done >= self.total:
            self._last = now
            self.log(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        return (
            f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
            f"{rate:.1f} {self.unit}/s, elapsed {format_duration(elapsed)}, ETA {format_duration(left)}"
        )


def start_log(path):
    """Send this process's stdout and stderr to ``path`` (line-buffered, so ``tail -f`` follows it)
    and return a ``log(line)`` function that stamps each line with the time."""
    handle = open(path, "a", buffering=1)  # stays open for the process lifetime
    sys.stdout = sys.stderr = handle

    def log(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", file=handle, flush=True)

    return log

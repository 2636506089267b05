"""The one progress reporter: ``tail -f`` on a rule's log tells how far it is and how long is left.

Every long loop (scanning files, decoding the cache, training epochs, factor batches, score
sub-tiles) reports through :class:`Progress`, with one duration format (:func:`format_duration`),
and every line of a rule's log carries a timestamp (:func:`start_log`).
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable

from tracinflow._util.errors import InputError

Log = Callable[[str], None]


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Progress:
    """Counts work done and logs how far it is, at most every ``every`` seconds and always at the end.

    Without a message a line reads ``label: done/total unit (pct), rate unit/s, elapsed, ETA``;
    :meth:`update` with a message (training's per-epoch summary) logs ``message | elapsed, ETA``.
    ``start`` counts work done before this process (a resumed run), so the rate and the ETA come
    from this process's work alone. ``final=False``: no line at the end (a caller that logs its own
    summary there, like a training epoch). ``bounded``: the total is an upper bound (early stopping may end
    sooner), and the ETA says so.
    """

    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "items",
        log: Log | None = None,
        every: float = 5.0,
        start: int = 0,
        bounded: bool = False,
        final: bool = True,
    ):
        self.total = max(int(total), 0)
        self.label, self.unit = label, unit
        self.log = log or stderr_log
        self.every = every
        self.start_count = self.done = int(start)
        self.bounded = bounded
        self.final = final
        self.start = time.perf_counter()
        self._last = self.start  # the first line comes after `every` seconds, with a real rate

    def update(self, count: int = 1, message: str | None = None) -> None:
        self.done += count
        now = time.perf_counter()
        finished = self.final and self.done >= self.total
        if (now - self._last >= self.every and self.done < self.total) or finished:
            self._last = now
            self.log(self.line(message, now))

    def timing(self, now: float | None = None) -> str:
        """``elapsed 1m05s, ETA 30s`` at the rate of this process's work so far."""
        elapsed = (now or time.perf_counter()) - self.start
        rate = (self.done - self.start_count) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        bound = "at most " if self.bounded and self.done < self.total else ""
        return f"elapsed {format_duration(elapsed)}, ETA {bound}{format_duration(left)}"

    def line(self, message: str | None = None, now: float | None = None) -> str:
        now = now or time.perf_counter()
        if message is not None:
            return f"{message} | {self.timing(now)}"
        elapsed = now - self.start
        rate = (self.done - self.start_count) / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%), "
            f"{rate:,.1f} {self.unit}/s, {self.timing(now)}"
        )


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class _StampedStream(io.TextIOBase):
    """A text stream that starts every line with the time: the rule's own lines, and also whatever
    a library prints or warns, and a traceback, so the whole log reads on one clock."""

    def __init__(self, handle):
        self.handle = handle
        self.line_start = True

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self.line_start:
                self.handle.write(f"{_stamp()} ")
            self.handle.write(piece)
            self.line_start = piece.endswith("\n")
        self.handle.flush()
        return len(text)

    def flush(self) -> None:
        self.handle.flush()


def _report_input_errors(console, stream) -> None:
    """An uncaught :class:`InputError` ends the process (exit status 1) with its message alone,
    in the log and on ``console`` (where snakemake shows a failed job), not a traceback: the
    message names the file or key and the fix, and the stack is the program's, not the user's."""
    default = sys.excepthook

    def hook(kind, error, trace):
        if not isinstance(error, InputError):
            default(kind, error, trace)
            return
        message = f"error: {error}"
        print(message, file=stream, flush=True)
        if console is not None:
            print(f"tracinflow {message}", file=console, flush=True)

    sys.excepthook = hook


def start_log(path) -> Log:
    """Send this process's stdout and stderr to ``path`` (appended, flushed per line, so ``tail -f``
    follows it) with a timestamp on every line; return a ``log(line)`` function writing there.
    An uncaught :class:`~tracinflow._util.errors.InputError` is logged as its message alone and
    also printed to the console (the original stderr)."""
    handle = open(path, "a", buffering=1)  # stays open for the process lifetime
    stream = _StampedStream(handle)
    console = sys.__stderr__
    sys.stdout = sys.stderr = stream
    _report_input_errors(console, stream)

    def log(line: str) -> None:
        print(line, file=stream, flush=True)

    return log

"""Terminal adapter of the job mechanism: a progress bar on stderr and Ctrl-C as a stop request."""
from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import contextmanager

from ..engine.jobs import Job, ProgressEvent


class TerminalProgress:
    """A one-line progress bar; ``quiet`` prints nothing."""

    def __init__(self, label: str = "", stream=None, quiet: bool = False, width: int = 30):
        self.label, self.stream, self.quiet, self.width = label, stream or sys.stderr, quiet, width
        self.open_line = False  # a bar is drawn and its line not ended yet
        self._last = 0.0
        self._t0 = time.monotonic()

    def __call__(self, ev: ProgressEvent) -> None:
        now = time.monotonic()
        done = ev.total and ev.step >= ev.total
        if self.quiet or (now - self._last < 0.2 and not done):
            return
        self._last = now
        filled = int(self.width * ev.fraction)
        metrics = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.metrics.items())
        line = (f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {ev.step}/{ev.total} "
                f"{now - self._t0:5.0f}s {ev.message} {metrics}")
        self.stream.write(line[:150].ljust(80))
        self.open_line = not done
        if done:
            self.stream.write("\n")
        self.stream.flush()

    def end(self, failed: bool) -> None:
        """End the bar's line; after a failure erase it, so the error is the one line left."""
        if self.open_line:
            self.stream.write("\r" + " " * 150 + "\r" if failed else "\n")
            self.stream.flush()
            self.open_line = False


@contextmanager
def terminal_job(label: str = "", quiet: bool = False):
    """A :class:`Job` that draws a bar; the first Ctrl-C asks the task to stop, the second aborts."""
    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nStopping after the current step (Ctrl-C again to abort)...", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    bar = TerminalProgress(label, quiet=quiet)
    failed = True
    try:
        yield Job(bar, stop)
        failed = False
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        bar.end(failed)

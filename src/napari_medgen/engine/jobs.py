"""The one way long work runs: progress events out, a stop request in.

A task is a plain function that accepts ``progress=`` and ``stop=`` keyword
arguments and turns them into a :class:`Job` with :meth:`Job.of`.  It calls
:meth:`Job.report` between steps and :meth:`Job.should_stop` (or
:meth:`Job.check`) to honour a stop request.  The API passes callbacks
directly, the CLI adapter (:mod:`napari_medgen.cli`) draws a terminal bar and
the napari adapter (:mod:`napari_medgen._widgets._runner`) runs the same
function in a thread worker.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union


class Cancelled(Exception):
    """Raised by a task that was asked to stop before it had a usable result."""


@dataclass
class ProgressEvent:
    """One progress report of a running task."""

    step: int
    total: int
    message: str = ""
    metrics: dict = field(default_factory=dict)
    preview: Any = None  # optional payload for live views (e.g. sample images)

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0


ProgressCallback = Callable[[ProgressEvent], None]
StopRequest = Union[threading.Event, Callable[[], bool], None]


class Job:
    """Progress reporting and stop checking for one run of a task."""

    def __init__(self, progress: Optional[ProgressCallback] = None, stop: StopRequest = None):
        self._progress = progress
        if isinstance(stop, threading.Event):
            self._stop = stop.is_set
        elif stop is None:
            self._stop = lambda: False
        else:
            self._stop = stop

    @classmethod
    def of(cls, progress: Any = None, stop: StopRequest = None) -> "Job":
        """Accept a Job, or build one from a callback and a stop request."""
        if isinstance(progress, Job):
            return progress
        return cls(progress, stop)

    def report(self, step: int, total: int, message: str = "", preview: Any = None, **metrics) -> None:
        """Send a progress event to whoever listens."""
        if self._progress is not None:
            self._progress(ProgressEvent(step, total, message, metrics, preview))

    def should_stop(self) -> bool:
        """True once a stop was requested."""
        return bool(self._stop())

    def check(self) -> None:
        """Raise :class:`Cancelled` when a stop was requested."""
        if self.should_stop():
            raise Cancelled("Cancelled by the user.")

    def sub(self, start: int, span: int, total: int) -> "Job":
        """A job whose steps map into ``[start, start+span)`` of this job's ``total``."""
        parent = self

        def forward(ev: ProgressEvent) -> None:
            frac = ev.fraction
            parent.report(start + int(round(frac * span)), total, ev.message, ev.preview, **ev.metrics)

        return Job(forward, self._stop)

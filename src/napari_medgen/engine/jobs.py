"""The one way long work runs: progress events out, two kinds of stop in.

A task is a plain function that accepts ``progress=``, ``stop=`` and ``cancel=``
keyword arguments and turns them into a :class:`Job` with :meth:`Job.of`.  It
calls :meth:`Job.report` between steps; :meth:`Job.should_stop` means "finish
early and keep the best result so far" and :meth:`Job.check` raises
:class:`Cancelled` when the run must be discarded.  Inference has no "best so
far", so a stop request cancels it.

:class:`JobState` is the Qt-free, evented state of one run (idle, running,
stopping, done, failed, cancelled; progress; last metrics) that widgets bind to
and tests observe; ``state.job()`` gives the :class:`Job` a task reports into.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Optional, Union

from psygnal import Signal


class Cancelled(Exception):
    """Raised by a task that was cancelled: it returns nothing and has changed nothing."""


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

    @property
    def train_step(self) -> int:
        """The training step reported (``step`` is a percentage when a trainer has only a time budget)."""
        return int(self.metrics.get("steps", self.step))


ProgressCallback = Callable[[ProgressEvent], None]
StopRequest = Union[threading.Event, Callable[[], bool], None]


def _flag(request: StopRequest) -> Callable[[], bool]:
    if isinstance(request, threading.Event):
        return request.is_set
    if request is None:
        return lambda: False
    return request


class Job:
    """Progress reporting and the two stop checks for one run of a task.

    ``stop`` asks to finish early and keep the best so far; ``cancel`` asks to
    discard the run.  Tasks without a "best so far" (inference) treat both as cancel.
    """

    def __init__(self, progress: Optional[ProgressCallback] = None, stop: StopRequest = None,
                 cancel: StopRequest = None):
        self._progress = progress
        self._stop = _flag(stop)
        self._cancel = _flag(cancel)

    @classmethod
    def of(cls, progress: Any = None, stop: StopRequest = None, cancel: StopRequest = None) -> "Job":
        """Accept a Job (or a JobState), or build one from a callback and stop/cancel requests."""
        if isinstance(progress, Job):
            return progress
        if isinstance(progress, JobState):
            return progress.job()
        return cls(progress, stop, cancel)

    def report(self, step: int, total: int, message: str = "", preview: Any = None, **metrics) -> None:
        """Send a progress event to whoever listens."""
        if self._progress is not None:
            self._progress(ProgressEvent(step, total, message, metrics, preview))

    def cancelled(self) -> bool:
        """True once the run must be discarded."""
        return bool(self._cancel())

    def should_stop(self) -> bool:
        """True once a stop (keep the best so far) or a cancel was requested."""
        return bool(self._stop()) or self.cancelled()

    def check(self, stop_cancels: bool = True) -> None:
        """Raise :class:`Cancelled` on cancel (and, by default, on a stop request)."""
        if self.cancelled() or (stop_cancels and self._stop()):
            raise Cancelled("Cancelled by the user; nothing was changed.")

    def sub(self, start: int, span: int, total: int) -> "Job":
        """A job whose steps map into ``[start, start+span)`` of this job's ``total``."""
        parent = self

        def forward(ev: ProgressEvent) -> None:
            parent.report(start + int(round(ev.fraction * span)), total, ev.message, ev.preview, **ev.metrics)

        return Job(forward, self._stop, self._cancel)


class Status(str, Enum):
    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobState:
    """Evented state of one run at a time, without Qt.

    ``changed`` fires with the state itself after every transition or progress event.
    """

    changed = Signal(object)

    def __init__(self, label: str = "job"):
        self.label = label
        self.status = Status.IDLE
        self.step, self.total, self.message = 0, 0, ""
        self.metrics: dict = {}
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._cancel = threading.Event()

    @property
    def active(self) -> bool:
        return self.status in (Status.RUNNING, Status.STOPPING, Status.CANCELLING)

    def begin(self) -> "Job":
        """Start a run (refused while one is active); returns the Job the task reports into."""
        if self.active:
            raise RuntimeError(f"{self.label} is already running.")
        self._stop, self._cancel = threading.Event(), threading.Event()
        self.step, self.total, self.message, self.metrics, self.error = 0, 0, "starting", {}, None
        self._set(Status.RUNNING)
        return self.job()

    def job(self) -> "Job":
        return Job(self.update, self._stop, self._cancel)

    def update(self, ev: ProgressEvent) -> None:
        """Record a progress event (any thread)."""
        if not self.active:
            return
        self.step, self.total, self.message = ev.step, ev.total, ev.message
        self.metrics = {**self.metrics, **ev.metrics}
        self.changed.emit(self)

    def request_stop(self) -> None:
        """Finish early and keep the best result so far."""
        if self.status == Status.RUNNING:
            self._stop.set()
            self._set(Status.STOPPING)

    def cancel(self) -> None:
        """Discard the run; inputs stay as they were."""
        if self.active:
            self._cancel.set()
            self._set(Status.CANCELLING)

    def finish(self, error: Optional[BaseException] = None) -> None:
        """End the run: done, cancelled (on :class:`Cancelled`) or failed."""
        self.error = None if isinstance(error, Cancelled) else error
        self._set(Status.DONE if error is None else Status.CANCELLED if isinstance(error, Cancelled)
                  else Status.FAILED)

    def _set(self, status: Status) -> None:
        self.status = status
        self.changed.emit(self)

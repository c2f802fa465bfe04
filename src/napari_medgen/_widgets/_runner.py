"""napari adapter of the job mechanism: a task in a thread worker, bound to a Qt-free :class:`JobState`.

A dock widget needs only::

    self.runner = JobRunner("Segment")                      # or JobRunner("VAE", trains=True)
    self.runner.start(segment, image, model, on_result=self._show)
    self.runner.start(train, data, stoppable=True, on_result=..., on_progress=self._plot)

The task gets ``progress=`` (a :class:`Job` carrying both stop requests) and runs in a
worker thread.  The worker never touches Qt: it records events in ``runner.state`` and a
queue that the GUI thread drains at most ten times a second, so a chatty task cannot
flood the event loop.  ``on_progress`` still sees every event, in order; only the newest
preview of a batch is delivered (on the event that carried it), and no more often than :class:`PaintBudget` allows
(heavy live views update at <= 10 Hz on a GPU, about once a second on software OpenGL).
"Stop" (training jobs) keeps the best so far, "Cancel" discards the run, and so does closing the panel.  A
live view that fails logs its traceback and stops updating; the run goes on.  User errors
(:class:`UserError`, a file missing, existing or not writable there, out of memory) become one sentence (naming
the user's path, not a temporary file); anything else is a bug: its traceback goes to the log and the notification
says so.  Closing the viewer (or quitting) cancels a running job and waits for its worker, so nothing runs on
while Qt and Python tear down.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from dataclasses import replace
from functools import partial
from typing import Callable, Optional

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QObject, QThreadPool, QTimer, Signal
from qtpy.QtWidgets import (QApplication, QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout,
                            QWidget)
from superqt.utils import create_worker

from ..atomic import final_path
from ..engine.device import available_devices, describe_device
from ..engine.jobs import Cancelled, Job, JobState, ProgressEvent, Status
from ..errors import UserError
from ._panel import Note

log = logging.getLogger(__name__)

USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
               MemoryError)  # the file errors name a path the user chose: theirs to fix, not a bug
RELAY_MS = 100  # progress reaches the GUI at most this often
CLOSE_WAIT_S = 10.0  # how long closing the viewer waits for a cancelled job to return
_LIVE: "weakref.WeakSet[JobRunner]" = weakref.WeakSet()  # runners with a job in flight


class PaintBudget:
    """How often live views may repaint so that painting takes at most ``share`` of the GUI thread's time.

    A repaint of any widget re-composes the whole viewer window with its OpenGL canvas: ~1 ms on
    a GPU, 40-50 ms on Mesa's software llvmpipe (Xvfb, VMs).  Live views (progress line, plots)
    record what their paints cost and wait ``cost / share`` before the next one.
    """

    def __init__(self, share: float = 0.04):
        self.share, self.cost = share, 0.0

    def record(self, seconds: float) -> None:
        self.cost = seconds if not self.cost else 0.7 * self.cost + 0.3 * seconds

    def interval(self, floor: float) -> float:
        """Seconds to wait before the next paint (at least ``floor``)."""
        return max(floor, self.cost / self.share)


PAINT = PaintBudget()


def user_message(err: BaseException) -> str:
    """The one sentence shown for an expected error."""
    if isinstance(err, MemoryError):
        return "Out of memory: try a smaller image, fewer steps or another device."
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{final_path(str(err.filename))}: {err.strerror}."  # the user's path, not the temporary file
    return str(err) or type(err).__name__


class JobRunner(QWidget):
    """Progress bar, status line, Stop and Cancel for one task at a time."""

    started = Signal()
    done = Signal(str)  # "finished" (also after Stop: the best so far is kept), "cancelled" or "failed"

    def __init__(self, label: str = "job", parent: Optional[QWidget] = None, trains: bool = False):
        super().__init__(parent)
        self.state = JobState(label)
        self._label = label
        self.worker = None
        self.last_error: Optional[BaseException] = None
        self._events: deque = deque()
        self._finished = threading.Event()
        self._on_result = self._on_progress = None
        self._next_paint = self._next_preview = 0.0
        self._pending: Optional[ProgressEvent] = None  # the newest progress not shown yet (repaints are rationed)
        self._window = None
        self._relay = QTimer(self)
        self._relay.setInterval(RELAY_MS)
        self._relay.timeout.connect(self._drain)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Finish early and keep the best result so far.")
        self.stop_button.clicked.connect(self.request_stop)
        self.stop_button.setVisible(trains)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Abandon the run; nothing is changed.")
        self.cancel_button.clicked.connect(self.cancel)
        for b in (self.stop_button, self.cancel_button):
            b.setEnabled(False)
        self.status = Note("idle", max_lines=3)
        row = QHBoxLayout()
        row.addWidget(self.bar, 1)
        row.addWidget(self.stop_button)
        row.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.status)

    @property
    def label(self) -> str:
        return self.state.label

    @property
    def running(self) -> bool:
        return self.worker is not None

    # --- starting and stopping -------------------------------------------------------------
    def start(self, fn: Callable, *args, on_result: Optional[Callable] = None,
              on_progress: Optional[Callable[[ProgressEvent], None]] = None, stoppable: bool = False,
              what: Optional[str] = None, **kwargs):
        """Run ``fn(*args, progress=<Job>, **kwargs)`` in a worker thread; returns the worker (None if busy).

        ``stoppable`` shows Stop (finish early, keep the best so far) next to Cancel: for training.
        ``on_result`` gets the return value in the GUI thread, ``on_progress`` each progress event.
        ``what`` names this run in the status line (default: the runner's label).
        """
        if self.running:
            show_info(f"{self.label} is already running; cancel it first.")
            return None
        self.state.label = what or self._label
        self.state.begin()
        _leave_a_core_for_the_gui()
        state = self.state
        job = Job(self._post, stop=lambda: state.status is Status.STOPPING,
                  cancel=lambda: state.status is Status.CANCELLING)
        self.last_error, self._on_result, self._on_progress = None, on_result, on_progress
        self._events.clear()
        finished = self._finished = threading.Event()

        def call():  # worker thread
            try:
                return fn(*args, progress=job, **kwargs)
            finally:
                finished.set()

        self.worker = worker = create_worker(call, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(partial(self._returned, worker))
        worker.errored.connect(partial(self._errored, worker))
        self._next_paint = self._next_preview = 0.0
        self.bar.setRange(0, 0)
        self.stop_button.setVisible(stoppable)
        self.stop_button.setEnabled(stoppable)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"{self.label}: starting...")
        self.status.setToolTip("")
        self._t0 = time.monotonic()
        self._watch_window()
        _LIVE.add(self)
        _hook_quit()
        self._relay.start()
        self.started.emit()
        worker.start()
        return worker

    def request_stop(self) -> None:
        """Finish early and keep the best result so far (training); inference treats it as Cancel."""
        if self.state.status is Status.RUNNING:
            self.state.request_stop()
            self.stop_button.setEnabled(False)
            self.status.setText(f"{self.label}: stopping, keeping the best so far...")

    def cancel(self) -> None:
        """Abandon the run after its current step; nothing is changed."""
        if self.state.active and self.state.status is not Status.CANCELLING:
            self.state.cancel()
            self.stop_button.setEnabled(False)
            self.cancel_button.setEnabled(False)
            self.status.setText(f"{self.label}: cancelling...")

    def shutdown(self, timeout: float = CLOSE_WAIT_S) -> bool:
        """Cancel the running job and wait (at most ``timeout`` s) until its worker has returned."""
        if self.worker is None:
            return True
        self.state.cancel()
        ok = self._finished.wait(timeout)
        if not ok:
            log.warning("%s did not return within %.0f s of being cancelled", self.label, timeout)
        pool, t_end = QThreadPool.globalInstance(), time.monotonic() + 2.0
        while ok and pool.activeThreadCount() and time.monotonic() < t_end:  # superqt's last emits
            time.sleep(0.01)
        self._close("cancelled", error=Cancelled())
        return ok

    # --- worker -> GUI ----------------------------------------------------------------------
    def _post(self, ev: ProgressEvent) -> None:  # worker thread: no Qt here
        self.state.update(ev)
        self._events.append(ev)

    def _drain(self) -> None:
        if self._window is not None and not self._inside(self._window) and self.state.status is not \
                Status.CANCELLING:  # the panel left the viewer (its dock was closed)
            self.cancel()
            show_info(f"{self.label}: its panel was closed, so the run was cancelled.")
        events = []
        while self._events:
            events.append(self._events.popleft())
        if not events:
            if self._pending is not None:  # the last words of a phase that sends no more (completing the labels)
                self._show_progress(self._pending)
            return
        now = time.monotonic()
        # the batch's newest preview (a later event may carry none); previews (layer updates) follow PAINT too
        keep = next((ev for ev in reversed(events) if ev.preview is not None), None) \
            if now >= self._next_preview else None
        if keep is not None:
            self._next_preview = now + PAINT.interval(RELAY_MS / 1000)
        if self._on_progress is not None:
            try:
                for ev in events:
                    self._on_progress(ev if ev is keep or ev.preview is None else replace(ev, preview=None))
            except Exception:  # noqa: BLE001 - a live view's bug must not stop the run or reach Qt
                log.exception("%s: showing progress failed (a bug); live updates stop for this run", self.label)
                self._on_progress = None
        last = events[-1]
        self._show_progress(last)

    def _inside(self, window: QWidget) -> bool:
        """Whether ``window`` is still an ancestor (a floated dock keeps its main window as parent)."""
        w = self.parentWidget()
        while w is not None and w is not window:
            w = w.parentWidget()
        return w is window

    def _show_progress(self, ev: ProgressEvent) -> None:
        """Bar and status line, repainted at most as often as :data:`PAINT` allows (one paint for both)."""
        now = time.monotonic()
        if now < self._next_paint:
            self._pending = ev  # shown by a later drain, even when no further event comes
            return
        self._pending = None
        total = max(int(ev.total), 1)
        metrics = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in self.state.metrics.items())
        self.setUpdatesEnabled(False)  # QProgressBar.setValue would repaint at once, then the label again
        self.bar.setRange(0, total)
        self.bar.setValue(min(int(ev.step), total))
        if self.state.status is Status.RUNNING:
            self.status.setText(f"{self.label}: {ev.message} {metrics}".strip())
        self.setUpdatesEnabled(True)
        t0 = time.perf_counter()
        self.repaint()
        PAINT.record(time.perf_counter() - t0)
        self._next_paint = time.monotonic() + PAINT.interval(RELAY_MS / 1000)

    def _returned(self, worker, result) -> None:
        if worker is not self.worker:
            return
        self._drain()
        if self.state.status is Status.CANCELLING:  # cancelled after its last check: discard
            self._errored(worker, Cancelled())
            return
        stopped = self.state.status is Status.STOPPING
        try:
            if self._on_result is not None:
                self._on_result(result)
        except Exception as err:  # noqa: BLE001 - a bug in showing the result is reported like any other
            self._errored(worker, err)
            return
        self._close("finished", note=", stopped early (kept the best so far)" if stopped else "")

    def _errored(self, worker, err: BaseException) -> None:
        if worker is not self.worker:
            return
        self._drain()
        if isinstance(err, Cancelled):
            show_info(f"{self.label} cancelled; nothing was changed.")
            self._close("cancelled", error=err)
            return
        self.last_error = err
        if isinstance(err, USER_ERRORS):
            show_error(f"{self.label} failed: {user_message(err)}")
        else:
            tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            log.error("%s failed with an unexpected error (a bug):\n%s", self.label, tb)
            self.status.setToolTip(tb)
            show_error(f"{self.label} failed with an unexpected error ({type(err).__name__}); see the log.")
        self._close("failed", error=err)

    def _close(self, outcome: str, error: Optional[BaseException] = None, note: str = "") -> None:
        self._relay.stop()
        self._pending = None
        self._events.clear()
        _LIVE.discard(self)
        self._watch_window(False)
        if self.state.active:
            self.state.finish(error)
        self.worker = self._on_result = self._on_progress = None
        elapsed = time.monotonic() - self._t0
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if outcome == "finished" else 0)
        self.stop_button.setEnabled(False)
        self.cancel_button.setEnabled(False)
        self.status.setText(f"{self.label}: {outcome}{note} in {elapsed:.1f} s")
        self.done.emit(outcome)

    # --- closing the viewer mid-job ----------------------------------------------------------
    def _watch_window(self, watch: bool = True) -> None:
        """Watch the top-level window while a job runs (and only then: no reference to it outlives the job)."""
        if self._window is not None:
            self._window.removeEventFilter(self)
            self._window = None
        window = self.window()
        if watch and window is not self:
            window.installEventFilter(self)
            self._window = window

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        kind = event.type()
        closing = ((kind == QEvent.Type.Hide and not event.spontaneous())
                   or (kind == QEvent.Type.Close and not obj.isVisible()))
        if closing and obj is self._window and self.running:
            self.shutdown()
        return False


def _leave_a_core_for_the_gui() -> None:
    """torch's CPU thread pool takes every core; one fewer keeps the viewer's event loop fed."""
    torch = sys.modules.get("torch")
    cores = os.cpu_count() or 1
    if torch is not None and cores > 1 and torch.get_num_threads() >= cores:
        torch.set_num_threads(cores - 1)


def _shutdown_all() -> None:
    for runner in list(_LIVE):
        try:
            runner.shutdown()
        except RuntimeError:  # its Qt side is already gone; the state's cancel still reached the worker
            pass


atexit.register(_shutdown_all)


def _hook_quit() -> None:
    app = QApplication.instance()
    if app is not None and not getattr(app, "_medgen_hooked", False):
        app.aboutToQuit.connect(_shutdown_all)
        app._medgen_hooked = True


def device_label(device: str = "auto") -> str:
    """Text for the device line shown in every widget."""
    return f"Device: {describe_device(device)}"


def device_chooser() -> tuple[QComboBox, QLabel]:
    """The device drop-down and the line that names the device it resolves to."""
    combo = QComboBox()
    combo.addItems(available_devices())
    line = QLabel(device_label("auto"))
    combo.currentTextChanged.connect(lambda d: line.setText(device_label(d)))
    return combo, line

"""napari adapter of the job mechanism: run a task in a thread worker with progress and Cancel.

A dock widget needs only::

    self.runner = JobRunner("Segment")
    self.runner.start(napari_medgen.segment, image, model, on_result=self._show)

The task gets ``progress=`` and ``stop=``; its events drive an inline progress
bar and a napari progress bar (activity dock), Cancel sets the stop request,
and errors become one-line napari notifications.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget
from superqt.utils import create_worker

from ..engine.device import available_devices, describe_device
from ..engine.jobs import Cancelled, ProgressEvent

log = logging.getLogger(__name__)


class _Relay(QObject):
    """Carries progress events from the worker thread to the GUI thread (queued signal)."""

    event = Signal(object)


class JobRunner(QWidget):
    """Progress bar, status line and Cancel button for one task at a time."""

    started = Signal()
    done = Signal(str)  # "finished", "cancelled" or "failed"

    def __init__(self, label: str = "job", parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.label = label
        self.worker = None
        self.last_error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._pbar = None
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.bar)
        row.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.status)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, fn: Callable, *args, on_result: Optional[Callable] = None,
              on_progress: Optional[Callable[[ProgressEvent], None]] = None, **kwargs):
        """Run ``fn(*args, progress=..., stop=..., **kwargs)`` in a thread; returns the worker."""
        if self.running:
            show_info(f"{self.label} is already running; cancel it first.")
            return None
        self._stop = threading.Event()
        self.last_error = None
        self._relay = _Relay()
        self._relay.event.connect(self._on_event)
        if on_progress is not None:
            self._relay.event.connect(on_progress)
        self._pbar = napari_progress(total=0, desc=self.label)
        self.worker = create_worker(fn, *args, progress=self._relay.event.emit, stop=self._stop,
                                    _start_thread=False, _ignore_errors=True, **kwargs)
        if on_result is not None:
            self.worker.returned.connect(on_result)
        self.worker.returned.connect(lambda _r: self._finish("finished"))
        self.worker.errored.connect(self._on_error)
        self.bar.setRange(0, 0)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"{self.label}: starting...")
        self._t0 = time.monotonic()
        self.started.emit()
        self.worker.start()
        return self.worker

    def cancel(self) -> None:
        """Ask the running task to stop after its current step."""
        if self.running:
            self._stop.set()
            self.status.setText(f"{self.label}: stopping...")
            self.cancel_button.setEnabled(False)

    def _on_event(self, ev: ProgressEvent) -> None:
        pbar = self._pbar
        if pbar is None:
            return
        total = max(int(ev.total), 1)
        self.bar.setRange(0, total)
        self.bar.setValue(min(int(ev.step), total))
        metrics = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in ev.metrics.items())
        self.status.setText(f"{self.label}: {ev.message} {metrics}".strip())
        # napari's progress bar may process pending events (even our own _finish): touch it last
        if pbar.total != total:
            pbar.total = total
        pbar.n = min(int(ev.step), total)
        desc = f"{self.label}: {ev.message}" if ev.message else self.label
        if pbar.desc != desc:
            pbar.set_description(desc)

    def _on_error(self, err: BaseException) -> None:
        if isinstance(err, Cancelled):
            show_info(f"{self.label} cancelled; nothing was changed.")
            self._finish("cancelled")
            return
        self.last_error = err
        if not isinstance(err, (ValueError, FileNotFoundError, FileExistsError, MemoryError)):
            log.error("%s failed", self.label, exc_info=err)
        show_error(f"{self.label} failed: {err}")
        self._finish("failed")

    def _finish(self, state: str) -> None:
        self._relay.event.disconnect()  # late progress events must not overwrite the final state
        pbar, self._pbar, self.worker = self._pbar, None, None
        if pbar is not None:
            pbar.close()
        elapsed = time.monotonic() - self._t0
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if state == "finished" else 0)
        self.cancel_button.setEnabled(False)
        self.status.setText(f"{self.label}: {state} in {elapsed:.1f} s")
        self.done.emit(state)


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

"""The job mechanism headless and on the terminal: progress events, stop requests, sub-ranges."""
from __future__ import annotations

import io
import threading

import pytest
import torch

from napari_medgen.cli.progress import TerminalProgress
from napari_medgen.engine.device import describe_device, select_device
from napari_medgen.engine.jobs import Cancelled, Job, ProgressEvent


def counting_task(n, progress=None, stop=None):
    """A stand-in long task: n steps, raises Cancelled when stopped, returns n otherwise."""
    job = Job.of(progress, stop)
    for i in range(n):
        job.check()
        job.report(i + 1, n, "counting", loss=1.0 / (i + 1))
    return n


def test_events_carry_step_total_and_metrics():
    events = []
    assert counting_task(5, progress=events.append) == 5
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    assert events[-1].fraction == 1.0 and events[-1].metrics["loss"] == pytest.approx(0.2)


def test_stop_event_and_callable_both_stop():
    ev = threading.Event()
    calls = []

    def progress(e):
        calls.append(e.step)
        if e.step == 3:
            ev.set()

    with pytest.raises(Cancelled):
        counting_task(10, progress=progress, stop=ev)
    assert calls == [1, 2, 3]
    with pytest.raises(Cancelled):
        counting_task(10, stop=lambda: True)


def test_sub_job_maps_progress_into_parent_range():
    events = []
    parent = Job(events.append)
    counting_task(4, progress=parent.sub(10, 20, 40))
    assert [e.step for e in events] == [15, 20, 25, 30] and all(e.total == 40 for e in events)


def test_terminal_progress_draws_a_bar():
    out = io.StringIO()
    bar = TerminalProgress("demo", stream=out)
    bar(ProgressEvent(2, 4, "half", {"loss": 0.5}))
    bar(ProgressEvent(4, 4, "done"))
    text = out.getvalue()
    assert "4/4" in text and "demo" in text and text.endswith("\n")


def test_device_auto_is_cpu_without_gpu_and_explicit_cuda_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert select_device("auto").type in ("cpu", "mps")
    assert describe_device("cpu").startswith("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        select_device("cuda")

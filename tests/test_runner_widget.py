"""The napari adapter: a job runs in a thread, progress reaches the GUI throttled, Stop keeps, Cancel discards,
errors are one sentence (user) or a logged bug, and closing waits for the worker."""
from __future__ import annotations

import logging
import threading
import time

import numpy as np
from qtpy.QtCore import QTimer

from napari_medgen._widgets._runner import JobRunner
from napari_medgen.engine.jobs import Job, Status
from napari_medgen.errors import UserError


def chatty_job(n, out, progress=None, stop=None):
    """n steps of numpy work, each reported with a preview; writes ``out`` only when complete."""
    job = Job.of(progress, stop)
    acc = np.zeros((128, 128))
    for i in range(n):
        job.check()
        acc += np.random.rand(128, 128) @ np.random.rand(128, 128) / 128
        job.report(i + 1, n, f"step {i + 1}", preview=i, mean=float(acc.mean()))
    out["result"] = acc  # committed only at the end: a cancelled run leaves nothing behind
    return acc


def training_job(progress=None, stop=None):
    """Improves until asked to stop, then returns the best so far (like fit())."""
    job = Job.of(progress, stop)
    step = 0
    while not job.should_stop():
        job.check(stop_cancels=False)
        step += 1
        time.sleep(0.005)
        job.report(step, 10_000, "training", loss=1.0 / step)
    job.check(stop_cancels=False)
    return {"best_step": step}


def test_long_job_keeps_viewer_responsive_throttles_and_cancels(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    runner = JobRunner("test job")
    viewer.window.add_dock_widget(runner, name="test job")
    ticks, seen = [], []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(10)
    out: dict = {}
    runner.start(chatty_job, 100_000, out, on_progress=seen.append)
    assert runner.running and runner.cancel_button.isEnabled() and not runner.stop_button.isVisible()
    qtbot.waitUntil(lambda: runner.bar.value() >= 300, timeout=30_000)
    with qtbot.waitSignal(runner.done, timeout=10_000) as sig:
        runner.cancel_button.click()
    timer.stop()
    worst = float(np.diff(ticks).max())
    print(f"\nworst event-loop gap during job: {worst * 1000:.1f} ms over {len(ticks)} ticks")
    assert sig.args == ["cancelled"] and runner.state.status is Status.CANCELLED
    assert worst < 0.25, f"event loop blocked for {worst:.3f} s"
    assert out == {} and "cancelled" in runner.status.text()
    assert runner.bar.maximum() == 1 and runner.bar.value() == 0
    # every event arrives, in order; previews (live layer updates) at most ~10 times a second
    steps = [ev.step for ev in seen]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 300
    previews = sum(ev.preview is not None for ev in seen)
    assert 0 < previews < len(steps) / 2
    assert previews <= 1 + 12 * (ticks[-1] - ticks[0])  # at most ~10 per second of the job (batches may come at once)


def test_stop_keeps_the_best_so_far(make_napari_viewer, qtbot):
    make_napari_viewer()
    runner = JobRunner("train", trains=True)
    results = []
    runner.start(training_job, stoppable=True, on_result=results.append)
    assert runner.stop_button.isEnabled() and not runner.stop_button.isHidden()
    qtbot.waitUntil(lambda: runner.state.step >= 20, timeout=10_000)
    with qtbot.waitSignal(runner.done, timeout=10_000) as sig:
        runner.stop_button.click()
    assert sig.args == ["finished"] and results[0]["best_step"] >= 20
    assert "stopped early" in runner.status.text() and runner.state.status is Status.DONE
    assert runner.state.metrics["loss"] < 0.05  # the last metrics stay readable


def test_cancel_discards_even_a_result_returned_after_it(make_napari_viewer, qtbot):
    make_napari_viewer()
    runner = JobRunner("late")
    results = []

    def ignores_cancel(progress=None, stop=None):
        time.sleep(0.3)
        return "late result"

    runner.start(ignores_cancel, on_result=results.append)
    with qtbot.waitSignal(runner.done, timeout=5000) as sig:
        runner.cancel()
    assert sig.args == ["cancelled"] and results == []


def test_user_errors_are_one_sentence_and_bugs_are_logged(make_napari_viewer, qtbot, caplog):
    make_napari_viewer()
    runner = JobRunner("bad job")

    def user_error(progress=None, stop=None):
        raise UserError("The image must be 3D.")

    def bug(progress=None, stop=None):
        return {}["missing"]

    with qtbot.waitSignal(runner.done, timeout=5000) as sig:
        runner.start(user_error)
    assert sig.args == ["failed"] and str(runner.last_error) == "The image must be 3D."
    assert not caplog.records and runner.status.toolTip() == ""
    with caplog.at_level(logging.ERROR), qtbot.waitSignal(runner.done, timeout=5000) as sig:
        runner.start(bug)
    assert sig.args == ["failed"] and isinstance(runner.last_error, KeyError)
    assert "unexpected error" in caplog.text and "Traceback" in caplog.text
    assert "KeyError" in runner.status.toolTip()
    out: dict = {}  # the runner recovers
    with qtbot.waitSignal(runner.done, timeout=10_000) as sig:
        runner.start(chatty_job, 3, out, on_result=lambda r: out.setdefault("seen", True))
    assert sig.args == ["finished"] and out["seen"] and "result" in out


def test_shutdown_cancels_and_waits_for_the_worker(make_napari_viewer):
    make_napari_viewer()
    runner = JobRunner("closing")
    out: dict = {}
    runner.start(chatty_job, 100_000, out)
    time.sleep(0.2)
    t0 = time.monotonic()
    assert runner.shutdown(timeout=5.0)
    assert time.monotonic() - t0 < 2.0 and not runner.running and out == {}
    assert runner.state.status is Status.CANCELLED


def test_closing_the_panel_cancels_and_a_failing_live_view_does_not_stop_the_run(make_napari_viewer, qtbot,
                                                                                 caplog):
    """The dock's close button used to leave the job running unseen; its result then landed in the viewer."""
    viewer = make_napari_viewer()
    runner = JobRunner("test job")
    panel = viewer.window.add_dock_widget(runner, name="test job")
    out: dict = {}
    runner.start(chatty_job, 100_000, out, on_result=lambda r: out.setdefault("shown", r))
    qtbot.waitUntil(lambda: runner.bar.value() >= 20, timeout=30_000)
    panel.setFloating(True)  # a floated panel is still the viewer's: the run goes on
    qtbot.wait(300)
    assert runner.running
    with qtbot.waitSignal(runner.done, timeout=10_000) as sig:
        viewer.window.remove_dock_widget(panel)
    assert sig.args == ["cancelled"] and out == {}

    def broken_view(ev):
        raise ValueError("a live view's bug")
    other = JobRunner("second job")
    viewer.window.add_dock_widget(other, name="second job")
    with caplog.at_level(logging.ERROR), qtbot.waitSignal(other.done, timeout=30_000) as sig:
        other.start(chatty_job, 200, out, on_progress=broken_view)
    assert sig.args == ["finished"] and "result" in out
    assert "showing progress failed" in caplog.text


def test_the_last_phase_is_shown_even_when_it_reports_once(make_napari_viewer, qtbot):
    """The Fine-tune status froze on 'training steps ...' for the 16-32 s of completing the labels: the phase's only
    event came too soon after the last repaint and was dropped, and no later event brought it."""
    from napari_medgen.engine.jobs import ProgressEvent

    make_napari_viewer()
    runner = JobRunner("Fine-tune", trains=True)
    release = threading.Event()
    runner.start(lambda progress=None, stop=None: release.wait(10))
    try:
        runner._next_paint = time.monotonic() + 0.3  # a repaint just happened: the next one is rationed
        runner._show_progress(ProgressEvent(1, 1, "completing the painting"))
        assert "completing" not in runner.status.text()
        qtbot.waitUntil(lambda: "completing the painting" in runner.status.text(), timeout=2000)
    finally:
        release.set()
    qtbot.waitUntil(lambda: not runner.running, timeout=10_000)

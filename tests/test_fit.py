"""The one training loop: budget, best weights, both stops, non-finite losses, learned-nothing."""
from __future__ import annotations

import time

import pytest
import torch

from napari_medgen.engine.fit import HISTORY_KEYS, Budget, TrainTask, fit
from napari_medgen.engine.jobs import Cancelled, JobState, Status
from napari_medgen.errors import NothingLearnedError, UserError


class Line(TrainTask):
    """Fit y = 3x with one weight; validation metric = -|w - 3| (higher is better)."""

    def __init__(self, w0=0.0, lr=0.1, poison_at=(), score=None):
        self.net = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.net.weight.fill_(w0)
        self.networks = {"net": self.net}
        self.optimizers = [torch.optim.SGD(self.net.parameters(), lr=lr)]
        self.poison_at, self.score = set(poison_at), score
        self.x = torch.linspace(-1, 1, 16)[:, None]

    def train_step(self, step):
        loss = ((self.model()(self.x) - 3 * self.x) ** 2).mean()
        if step in self.poison_at:
            loss = loss * float("nan")
        self.optimizers[0].zero_grad()
        loss.backward()
        self.optimizers[0].step()
        return {"loss": loss}

    def validate(self):
        return self.score(self.w) if self.score else -abs(self.w - 3.0)

    @property
    def w(self):
        return float(self.net.weight.detach())


def test_steps_budget_best_weights_and_history_keys():
    task = Line()
    seen = []
    h = fit(task, Budget(steps=60), val_every=5, progress=seen.append, schedule=None)
    assert set(HISTORY_KEYS) <= set(h) and len(h["step"]) == 60 and h["stop_reason"] == "budget"
    assert h["best_metric"] == max(h["val_metric"]) and abs(task.w - 3) < 0.05
    assert "best by validation" in h["returned"] and h["device"] == "cpu" and h["world_size"] == 1
    assert seen[-1].message == "done" and any("loss" in e.metrics for e in seen)


def test_seconds_budget_is_respected():
    t0 = time.monotonic()
    h = fit(Line(lr=1e-4), Budget(seconds=0.5), val_seconds=0.1)
    assert 0.4 < time.monotonic() - t0 < 2.0 and len(h["step"]) > 10


def test_untrained_start_is_never_returned():
    # validation prefers the starting weight (0), but a fresh net's start is no candidate
    task = Line(score=lambda w: -abs(w))
    h = fit(task, Budget(steps=10), val_every=2)
    assert h["best_step"] > 0 and task.w != 0.0
    # continuing from a trained model keeps the start when nothing beats it
    task = Line(score=lambda w: -abs(w))
    h = fit(task, Budget(steps=10), val_every=2, keep_initial=True)
    assert h["best_step"] == 0 and task.w == 0.0 and "starting weights" in h["returned"]


def test_stop_keeps_best_and_cancel_restores_start():
    task, steps = Line(), []
    h = fit(task, Budget(steps=1000), val_every=1, stop=lambda: len(steps) >= 20,
            progress=lambda ev: steps.append(ev.step))
    assert h["stopped"] and h["stop_reason"] == "stopped by the user" and len(h["step"]) == 20
    task = Line()
    calls = []
    with pytest.raises(Cancelled):
        fit(task, Budget(steps=1000), progress=calls.append, cancel=lambda: len(calls) >= 5)
    assert task.w == 0.0  # back to the start
    with pytest.raises(Cancelled, match="nothing was trained"):
        fit(Line(), Budget(steps=10), stop=lambda: True)


def test_nonfinite_loss_restores_best_and_lowers_rate():
    task = Line(poison_at={15})
    h = fit(task, Budget(steps=40), val_every=5, schedule=None)
    assert any("non-finite" in e for e in h["events"]) and task.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01)
    assert all(v == v for v in h["loss"]) and 1.0 < task.w < 3.5  # kept learning after the restore
    task = Line(poison_at=set(range(5, 100)))
    h = fit(task, Budget(steps=100), val_every=2)
    assert h["stop_reason"] == "the loss kept becoming non-finite" and len(h["step"]) == 4


def test_patience_stops_early_and_nothing_learned_raises():
    h = fit(Line(score=lambda w: 0.0), Budget(steps=500), val_every=1, patience=3)
    assert "no improvement" in h["stop_reason"] and len(h["step"]) < 10

    class Lazy(Line):
        def nothing_learned(self, best):
            return "The model never predicted the painted structure; paint more or train longer."

    with pytest.raises(NothingLearnedError, match="never predicted"):
        fit(Lazy(), Budget(steps=5))


@pytest.mark.parametrize("bad", [dict(steps=0), dict(seconds=0), dict()])
def test_bad_budget_is_one_sentence(bad):
    with pytest.raises(UserError):
        Budget(**bad)


def test_job_state_tracks_a_run_without_qt():
    state = JobState("train")
    seen = []
    state.changed.connect(lambda s: seen.append(s.status))
    job = state.begin()
    with pytest.raises(RuntimeError):
        state.begin()
    state.changed.connect(lambda s: s.step >= 5 and s.request_stop())
    h = fit(Line(), Budget(steps=50), progress=job)
    assert state.status == Status.STOPPING and job.should_stop() and not job.cancelled() and h["stopped"]
    state.finish()
    assert state.status == Status.DONE and seen[0] == Status.RUNNING and len(h["step"]) == 5
    job = state.begin()
    state.cancel()
    with pytest.raises(Cancelled):
        fit(Line(), Budget(steps=50), progress=job)
    state.finish(Cancelled())
    assert state.status == Status.CANCELLED and state.error is None


def test_shrink_halves_the_batch_down_to_its_floor():
    task = Line()
    assert not task.shrink()  # no batch to shrink
    task.batch_size, task.min_batch = 8, 2
    assert task.shrink() and task.batch_size == 4 and task.shrink() and task.batch_size == 2
    assert not task.shrink() and task.batch_size == 2


def test_progress_names_the_training_step_under_a_time_budget():
    """With only seconds, the bar's step is a percentage; plots read the real training step."""
    seen = []
    fit(Line(), Budget(seconds=0.5), progress=seen.append)
    steps = [e.train_step for e in seen if "loss" in e.metrics]
    assert steps == sorted(steps) and steps[-1] > 100 >= max(e.step for e in seen)


class SlowLine(Line):
    def train_step(self, step):
        time.sleep(0.01)
        return super().train_step(step)


def test_a_steps_budget_validates_by_steps_unless_a_clock_is_asked_for():
    """Steps alone: validation at fixed steps (a seeded run repeats); a caller's val_seconds (the cohort trainer
    writes its checkpoints at validations, every --checkpoint-every seconds) is still honoured."""
    h = fit(SlowLine(), Budget(steps=60), val_every=20)
    assert h["val_step"] == [20, 40, 60]
    h = fit(SlowLine(), Budget(steps=60), val_every=20, val_seconds=0.05)
    assert len(h["val_step"]) > 6


def test_slow_live_previews_take_at_most_a_fifth_of_training():
    """Fine-tune previews of a whole 490x490x324 CT took 3-4 s every 5 s: 60 % of a round's training time."""
    from types import SimpleNamespace

    from napari_medgen.engine.seg_training import SegmentationTask

    sent = []
    task = SimpleNamespace(preview=(lambda net, dev: (sent.append(1), time.sleep(0.05)), 0.0), networks={"net": None},
                           device="cpu", _last_preview=None, _preview_wait=0.0)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        SegmentationTask._maybe_preview(task)
    assert 2 <= len(sent) <= 6  # about one 0.05 s preview per 0.25 s, not 20 back to back


class SlowValidation(Line):
    def validate(self):
        time.sleep(0.1)
        return super().validate()


def test_slow_validation_takes_at_most_a_fifth_of_a_seconds_budget():
    """gan-train --seconds 30 validated every 3 s at 5-8 s each: half the budget went to validation."""
    h = fit(SlowValidation(), Budget(seconds=2.0), val_seconds=0.01)
    assert 3 <= len(h["val_step"]) <= 6  # about one 0.1 s validation per 0.5 s, not one after every step


def test_cpu_out_of_memory_is_one_sentence_and_weights_unchanged():
    """The CPU allocator's failure is a plain RuntimeError (not torch.OutOfMemoryError): it showed as a traceback."""
    class Greedy(Line):
        def train_step(self, step):
            if step == 3:
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                                   "you tried to allocate 140737488355328 bytes.")
            return super().train_step(step)

    task = Greedy(w0=1.0)
    with pytest.raises(UserError, match="ran out of memory"):
        fit(task, Budget(steps=10), val_every=1)
    assert task.w == 1.0  # the starting weights are back
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not taken for memory
        class Broken(Line):
            def train_step(self, step):
                raise RuntimeError("shape mismatch")
        fit(Broken(), Budget(steps=3))

"""THE training loop: every trainer in napari-medgen is a :class:`TrainTask` run by :func:`fit`.

A task owns its networks, optimisers, data and loss: ``train_step()`` does one
forward/backward/optimiser step and returns its losses (``"loss"`` first);
``validate()`` returns one number (``metric_mode`` says whether higher is better).
The loop owns everything else, so every trainer behaves alike:

- budget in steps and/or seconds (a budget in seconds includes the final validation),
  learning-rate warm-up and cosine decay by the fraction of the budget used, validation
  cadence, early stopping (``patience``);
- the best weights by the validation metric; the untrained start is never a
  candidate unless ``keep_initial`` (continuing from a trained model);
- two kinds of stop: a stop request keeps the best weights (``stopped`` in the
  history), a cancel restores the starting weights and raises :class:`Cancelled`;
- device placement, bf16 autocast on CUDA, out-of-memory fallback (the task may
  shrink its batch, else the run moves to the CPU), a non-finite loss caught at
  once (best weights restored, learning rate lowered, and said in the history);
- DistributedDataParallel when launched by torchrun (gradients averaged, rank 0 reports);
- one history with named keys (:data:`HISTORY_KEYS`) and progress events whose
  metrics the widgets plot.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..errors import NothingLearnedError, UserError
from .device import is_out_of_memory, select_device
from .distributed import any_rank, is_main_process, max_over_ranks, world_size, wrap_ddp
from .jobs import Cancelled, Job

VAL_COST = 4.0  # validation by the clock waits at least this many times what the last one took
FIRST_VALIDATION = 0.25  # a budget in seconds validates by this fraction of it at the latest (to time validation)
FINISH_SLACK = 1.1  # a budget in seconds keeps this many times the longest validation for the final one
HISTORY_KEYS = ("step", "loss", "val_step", "val_metric", "best_step", "best_metric", "returned",
                "stopped", "stop_reason", "seconds", "world_size", "device", "events")


class TrainingMemoryError(UserError):
    """Training did not fit in memory, even after the fallbacks."""


@dataclass
class Budget:
    """How long to train: ``steps`` and/or ``seconds`` (whichever ends first)."""

    steps: Optional[int] = None
    seconds: Optional[float] = None

    def __post_init__(self):
        if self.steps is None and self.seconds is None:
            raise UserError("Give a training budget in steps or seconds.")
        if self.steps is not None and int(self.steps) < 1:
            raise UserError(f"The training budget must be at least one step (got {self.steps}).")
        if self.seconds is not None and not float(self.seconds) > 0:
            raise UserError(f"The training budget must be more than 0 seconds (got {self.seconds}).")

    def fraction(self, step: int, elapsed: float, reserve: float = 0.0) -> float:
        """How much of the budget is used; ``reserve`` seconds at the end are kept for finishing."""
        parts = []
        if self.steps:
            parts.append(step / self.steps)
        if self.seconds:
            left = self.seconds - reserve
            parts.append(elapsed / left if left > 0 else 1.0)
        return min(1.0, max(parts))

    def total_steps(self) -> int:
        """Steps to show in a progress bar (percent when only seconds are given)."""
        return int(self.steps) if self.steps else 100


class TrainTask:
    """What a trainer supplies to :func:`fit`; subclass and fill in."""

    networks: dict  # name -> nn.Module; all are moved, checkpointed and restored by the loop
    optimizers: list  # their learning rates follow the loop's schedule
    metric_mode: str = "max"  # "max": higher validation metric is better; "min": lower
    ddp_networks: tuple = ()  # names of networks to wrap in DistributedDataParallel under torchrun
    min_batch: int = 1  # the smallest batch shrink() halves down to

    def model(self, name: str = "net") -> torch.nn.Module:
        """The network to call in ``train_step`` (its DDP wrapper under torchrun)."""
        return getattr(self, "wrapped", {}).get(name) or self.networks[name]

    def to(self, device: torch.device) -> None:
        """Move data the task holds (e.g. validation tensors); networks are moved by the loop."""

    def train_step(self, step: int) -> dict:
        """One optimisation step; return floats or scalar tensors, ``"loss"`` included."""
        raise NotImplementedError

    def validate(self) -> Optional[float]:
        """The validation metric of the current weights (None: no validation, keep the last)."""
        return None

    def shrink(self) -> bool:
        """Use less memory after an out-of-memory error: halve ``batch_size`` (when the task has one)
        while it is above ``min_batch``; False if it cannot."""
        size = getattr(self, "batch_size", None)
        if size is None or size <= self.min_batch:
            return False
        self.batch_size = size // 2
        return True

    def nothing_learned(self, best_metric: Optional[float]) -> Optional[str]:
        """A sentence when the best weights learned nothing useful (the loop then raises); else None."""
        return None


def warmup_cosine(frac: float, warmup: float = 0.05, floor: float = 0.02) -> float:
    """Learning-rate factor at ``frac`` of the budget: linear warm-up, then cosine down to ``floor``."""
    if frac < warmup:
        return 0.1 + 0.9 * frac / warmup
    t = (frac - warmup) / max(1e-9, 1 - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _state(networks: dict) -> dict:
    return {k: {n: t.detach().to("cpu", copy=True) for n, t in net.state_dict().items()}
            for k, net in networks.items()}


def _load(networks: dict, state: dict) -> None:
    for k, net in networks.items():
        net.load_state_dict(state[k])


def _value(v) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def fit(task: TrainTask, budget: Budget, *, device="auto", val_every: Optional[int] = None,
        val_seconds: Optional[float] = None, patience: Optional[int] = None, min_delta: float = 0.0,
        keep_initial: bool = False, schedule: Optional[Callable[[float], float]] = warmup_cosine,
        max_nonfinite: int = 3, progress=None, stop=None, cancel=None, message: str = "training") -> dict:
    """Train ``task`` within ``budget``; the best weights end up in its networks, on the CPU.

    Validation runs every ``val_every`` steps or ``val_seconds`` seconds (default 15), whichever
    comes first, and once at the end.  A budget in steps alone validates by steps only (every
    ``val_every``, by default a tenth of the steps) unless ``val_seconds`` is given, so a seeded
    run gives the same weights again.  ``patience`` validations without an improvement of more
    than ``min_delta`` stop the run early.  Validation by the clock waits at least :data:`VAL_COST`
    times what the last one took, so it never takes more than a fifth of a budget in seconds.
    A budget in seconds covers the whole call: training ends early enough for one more step and the
    final validation (timed by the longest so far; the first comes by :data:`FIRST_VALIDATION` of it).
    Returns the history (keys :data:`HISTORY_KEYS`
    plus one list per loss the task returns and ``val_<name>``-free extras it adds).
    """
    t0 = time.monotonic()  # a budget in seconds counts from the call (choosing the device can take seconds)
    job = Job.of(progress, stop, cancel)
    dev = select_device(device)
    main = is_main_process()
    if val_seconds is None and budget.seconds is None and budget.steps:  # no clock decides anything
        val_every, val_seconds = val_every or max(1, budget.steps // 10), math.inf
    val_seconds = 15.0 if val_seconds is None else val_seconds
    history = {"step": [], "loss": [], "val_step": [], "val_metric": [], "best_step": None,
               "best_metric": None, "returned": "", "stopped": False, "stop_reason": "", "seconds": 0.0,
               "world_size": world_size(), "device": str(dev), "events": []}
    initial = _state(task.networks)
    better = (lambda a, b: a > b + min_delta) if task.metric_mode == "max" else (lambda a, b: a < b - min_delta)
    best_state = initial if keep_initial else None
    since_best = 0
    lr0 = [[g["lr"] for g in opt.param_groups] for opt in task.optimizers]
    lr_scale = 1.0
    nonfinite = 0
    val_cost, step_took = None, 0.0  # the longest validation and the last training step, in seconds

    def move(to: torch.device) -> None:
        for net in task.networks.values():
            net.to(to)
        for opt in task.optimizers:
            for st in opt.state.values():
                for k, v in st.items():
                    if isinstance(v, torch.Tensor):
                        st[k] = v.to(to)
        task.to(to)

    def reserve() -> float:
        """Seconds a budget in seconds keeps at its end: one more step and the final validation."""
        return FINISH_SLACK * (val_cost or 0.0) + step_took if budget.seconds else 0.0

    def evaluate(step: int) -> None:
        nonlocal best_state, since_best, val_cost
        start = time.monotonic()
        for net in task.networks.values():
            net.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            metric = task.validate()
        val_cost = max(val_cost or 0.0, time.monotonic() - start)
        if metric is None:
            return
        metric = float(metric)
        history["val_step"].append(step)
        history["val_metric"].append(metric)
        if math.isfinite(metric) and (history["best_metric"] is None or better(metric, history["best_metric"])):
            history["best_metric"], history["best_step"] = metric, step
            best_state, since_best = _state(task.networks), 0
        else:
            since_best += 1

    move(dev)
    restore_ddp = wrap_ddp(task, dev)
    last_val, val_took = time.monotonic(), 0.0
    total = budget.total_steps()
    step = 0
    try:
        if keep_initial:
            evaluate(0)
        while True:
            # under torchrun all ranks share rank-wise maxima: one schedule (a seconds budget reads
            # each rank's clock) and one decision to stop
            frac, cancelled, stopped = max_over_ranks(budget.fraction(step, time.monotonic() - t0, reserve()),
                                                      job.cancelled(), job.should_stop())
            done, cancelled, stopped = frac >= 1.0, cancelled > 0, stopped > 0
            if cancelled:
                raise Cancelled("Training cancelled; the model and your inputs are unchanged.")
            if done or stopped:
                history["stopped"] = stopped and not done
                history["stop_reason"] = "budget" if done else "stopped by the user"
                break
            factor = (schedule(frac) if schedule is not None else 1.0) * lr_scale
            for opt, lrs in zip(task.optimizers, lr0):
                for g, lr in zip(opt.param_groups, lrs):
                    g["lr"] = lr * factor
            for net in task.networks.values():
                net.train()
            started = time.monotonic()
            try:
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    losses = {k: _value(v) for k, v in task.train_step(step + 1).items()}
            except RuntimeError as err:  # torch.OutOfMemoryError is one
                if not is_out_of_memory(err):
                    raise
                if dev.type != "cuda" or world_size() > 1:  # DDP ranks cannot shrink or move alone
                    raise TrainingMemoryError("Training ran out of memory; use smaller images, batch or "
                                              "network. The model and your inputs are unchanged.") from None
                torch.cuda.empty_cache()
                shrunk = task.shrink()
                history["events"].append(f"step {step + 1}: out of GPU memory; "
                                         + ("batch reduced" if shrunk else "moved to the CPU"))
                if not shrunk:
                    restore_ddp()
                    dev = torch.device("cpu")
                    history["device"] = "cpu"
                    move(dev)
                    restore_ddp = wrap_ddp(task, dev)
                continue
            step += 1
            step_took = time.monotonic() - started
            loss = losses.get("loss", next(iter(losses.values()), float("nan")))
            (nonfinite_loss,) = any_rank(not math.isfinite(loss))
            if nonfinite_loss:
                nonfinite += 1
                _load(task.networks, best_state or initial)
                for opt in task.optimizers:
                    opt.state.clear()
                lr_scale *= 0.1
                history["events"].append(f"step {step}: the loss became non-finite; weights restored to the "
                                         "best so far and the learning rate lowered tenfold")
                if nonfinite >= max_nonfinite:
                    history["stop_reason"] = "the loss kept becoming non-finite"
                    break
                continue
            history["step"].append(step)
            for k, v in losses.items():
                history.setdefault(k, []).append(v)
            metrics = dict(losses)
            now = time.monotonic()
            (due,) = any_rank(bool(val_every and step % val_every == 0)
                              or now - last_val >= max(val_seconds, VAL_COST * val_took)
                              or bool(budget.seconds) and val_cost is None
                              and now - t0 >= FIRST_VALIDATION * budget.seconds)
            if due:
                evaluate(step)
                last_val = time.monotonic()
                val_took = last_val - now
                if history["val_step"] and history["val_step"][-1] == step:
                    metrics["val_metric"] = history["val_metric"][-1]
                (patience_out,) = any_rank(patience is not None and since_best >= patience)
                if patience_out:
                    history["stop_reason"] = f"no improvement in {patience} validations"
                    break
            if main:
                shown = step if budget.steps else int(100 * budget.fraction(step, now - t0, reserve()))
                job.report(shown, total, message, steps=step, **metrics)  # shown may be % of a time budget
        if step and (not history["val_step"] or history["val_step"][-1] != step):
            evaluate(step)
    except BaseException:  # cancel, error or interrupt: the task's networks go back to the start
        restore_ddp()
        _load(task.networks, initial)
        move(torch.device("cpu"))
        raise
    restore_ddp()
    if not step:
        _load(task.networks, initial)
        move(torch.device("cpu"))
        raise Cancelled("Stopped before the first training step; nothing was trained and the model is unchanged.")
    if best_state is not None:
        _load(task.networks, best_state)
        history["returned"] = ("the starting weights (no validation beat them)" if history["best_step"] in (0, None)
                               else f"the best by validation, step {history['best_step']}")
    else:
        history["returned"] = f"the last weights, step {step} (no validation metric)"
    move(torch.device("cpu"))
    history["seconds"] = time.monotonic() - t0
    reason = task.nothing_learned(history["best_metric"])
    if reason:
        raise NothingLearnedError(reason)
    if main:
        job.report(total, total, "done", **({"best_metric": history["best_metric"]}
                                            if history["best_metric"] is not None else {}))
    return history

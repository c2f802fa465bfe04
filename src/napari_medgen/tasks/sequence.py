"""Image time series: train a CNN + LSTM on sequences, predict a class or a value plus a per-frame curve.

``train_sequence_model(sequences, targets, task="classification" | "regression")``
returns ``(model, history)``; ``predict_sequence(model, sequence)`` returns a
:class:`SequenceResult`.  Training runs through :func:`~napari_medgen.engine.fit.fit`
(budget, stop keeps the best, cancel discards, progress events).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.device import select_device
from ..engine.fit import Budget, TrainTask, fit
from ..engine.jobs import Job
from ..models.checkpoint import Model, as_model
from ..models.config import ModelConfig, SequenceParams, Task
from .sequence_data import (SequenceInputError, check_sequence, default_size, encode_targets, pad_batch, prepare,
                            signal)
from .sequence_net import READOUTS, run_sequence, sequence_networks, transfer_encoder


@dataclass
class SequenceResult:
    """A prediction for one sequence: the answer, a per-frame curve and the region's signal."""

    label: Optional[str] = None
    probabilities: dict = field(default_factory=dict)
    value: Optional[float] = None
    curve: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the model's output at each frame
    curve_name: str = ""
    signal: np.ndarray = field(default_factory=lambda: np.zeros(0))  # mean intensity per frame (in the region)
    warnings: list = field(default_factory=list)  # why the answer may mean little (e.g. unlike the training series)


class SequenceTask(TrainTask):
    """Sequences in memory, random batches with intensity and flip augmentation, held-out validation."""

    ddp_networks = ("net", "rnn", "head")

    def __init__(self, networks: dict, frames: list, y: np.ndarray, kind: str, val: list, *, lr: float,
                 batch_size: int, augment: bool, seed: int, target_scale: Optional[list], readout: str = "final"):
        self.networks = networks
        self.readout = readout
        self.ddp_networks = tuple(k for k in self.ddp_networks if k in networks)
        params = [p for net in networks.values() for p in net.parameters()]
        self.optimizers = [torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)]
        self.frames, self.y, self.kind, self.val = frames, y, kind, val
        self.metric_mode = "max" if kind == "classification" else "min"
        self.batch_size, self.augment = min(batch_size, len(frames)), augment
        self.rng = np.random.default_rng(seed)
        self.scale = target_scale[1] if target_scale else 1.0
        self.device = torch.device("cpu")

    def to(self, device):
        self.device = device

    def _nets(self) -> dict:
        return {k: self.model(k) for k in self.networks}

    def train_step(self, step):
        idx = self.rng.choice(len(self.frames), self.batch_size, replace=False)
        seqs = [self._augment(self.frames[i]) for i in idx]
        x, lengths = pad_batch(seqs)
        out, _ = run_sequence(self._nets(), x.to(self.device), lengths, self.readout)
        y = torch.as_tensor(self.y[idx]).to(self.device)
        if self.kind == "classification":
            loss = F.cross_entropy(out, y)
        elif self.readout == "fraction":  # targets are fractions: a robust loss in their own units
            loss = F.smooth_l1_loss(out[:, 0], y, beta=0.02)
        else:
            loss = F.mse_loss(out[:, 0], y)
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)  # LSTM-safe steps
        opt.step()
        return {"loss": loss}

    def _augment(self, f: np.ndarray) -> np.ndarray:
        if not self.augment:
            return f
        f = f * self.rng.uniform(0.85, 1.15) + self.rng.uniform(-0.1, 0.1)
        for ax in range(1, f.ndim):
            if self.rng.random() < 0.5:
                f = np.flip(f, ax)
        return np.ascontiguousarray(f, np.float32)

    def validate(self):
        frames, y = self.val
        out = _outputs(self.networks, frames, self.device, self.readout)[0]
        if self.kind == "classification":
            return float((out.argmax(1).numpy() == y).mean())
        return float(np.abs(out[:, 0].numpy() - y).mean() * self.scale)  # MAE in target units

    def nothing_learned(self, best):
        frames, y = self.val
        if self.kind != "classification" or best is None or len(y) < 10:
            return None
        majority = np.bincount(y).max() / len(y)
        if best <= majority:
            return (f"The sequence model reached {best:.0%} validation accuracy, no better than always answering "
                    f"the most common class ({majority:.0%}); train longer or check the targets.")
        return None


def _outputs(networks: dict, frames: list, device, readout: str = "final",
             batch_size: int = 8) -> tuple[torch.Tensor, list]:
    """Sequence outputs (N, K) and per-frame outputs [(t_i, K)] on the CPU."""
    seq_out, frame_out = [], []
    for net in networks.values():
        net.eval()
    with torch.inference_mode():
        for i in range(0, len(frames), batch_size):
            x, lengths = pad_batch(frames[i:i + batch_size])
            out, per = run_sequence(networks, x.to(device), lengths, readout)
            seq_out.append(out.float().cpu())
            frame_out += [p[:n].float().cpu() for p, n in zip(per, lengths.tolist())]
    return torch.cat(seq_out), frame_out


def _split(n: int, y: np.ndarray, kind: str, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices, stratified by class; tiny sets, and sets whose every class occurs once
    (nothing to hold out), validate on the training set."""
    idx = np.arange(n)
    if n < 5 or fraction <= 0:
        return idx, idx
    rng = np.random.default_rng(seed)
    groups = [idx[y == c] for c in np.unique(y)] if kind == "classification" else [idx]
    val = []
    for g in groups:
        g = rng.permutation(g)
        val += list(g[:max(1, int(round(fraction * len(g))))] if len(g) > 1 else [])
    if not val:
        return idx, idx
    val = np.array(sorted(val), int)
    return np.setdiff1d(idx, val), val


def train_sequence_model(sequences: Sequence, targets: Sequence, task: str = "classification", *,
                         regions: Optional[Sequence] = None, names: Optional[Sequence[str]] = None,
                         size: Optional[list] = None,
                         bidirectional: bool = False, recurrent: bool = True, features: int = 64,
                         hidden: int = 64, channels: tuple = (16, 32, 64, 64), readout: str = "final",
                         pretrained=None,
                         steps: Optional[int] = 300, seconds: Optional[float] = None, lr: float = 3e-3,
                         batch_size: int = 8, val_fraction: float = 0.2, augment: bool = True,
                         patience: Optional[int] = None, name: str = "sequence", device="auto", seed: int = 0,
                         progress=None, stop=None, cancel=None) -> tuple[Model, dict]:
    """Train a per-frame CNN + LSTM on ``sequences`` ((t, y, x) or (t, z, y, x), lengths may differ).

    ``task`` is "classification" (targets are class names or numbers) or "regression" (numbers).
    ``regions`` (one mask or None per sequence) restrict each sequence to a region's bounding box.
    ``names`` (a layer or file name per sequence) name the sequence in messages ("sequence 2" without).
    ``pretrained`` (a Model or model file) seeds the frame encoder with every tensor that fits.
    ``recurrent=False`` averages the frame features instead (an order-blind baseline).
    ``readout="fraction"`` (regression, targets between 0 and 1) answers ``(max - min) / max`` of a
    learned positive per-frame value, as an ejection fraction is read from the largest and smallest volume.
    Returns ``(model, history)``; the validation metric is accuracy or the mean absolute error.
    """
    job = Job.of(progress, stop, cancel)
    sequences = list(sequences)
    if not sequences:
        raise SequenceInputError("No sequences to train on; give at least two.")
    names = [f"'{n}'" for n in names] if names is not None else [f"sequence {i + 1}" for i in range(len(sequences))]
    arrays = [check_sequence(s, n) for s, n in zip(sequences, names)]
    dims = {a.ndim - 1 for a in arrays}
    if len(dims) > 1:
        raise SequenceInputError("The sequences mix 2D and 3D frames; train on one kind at a time.")
    spatial = dims.pop()
    size = list(size or default_size(spatial))
    if len(size) != spatial:
        raise SequenceInputError(f"size {size} does not match {spatial}D frames.")
    regions = list(regions) if regions is not None else [None] * len(arrays)
    if len(regions) != len(arrays):
        raise SequenceInputError(f"Got {len(regions)} regions for {len(arrays)} sequences; give one (or None) each.")
    y, classes, target_scale = encode_targets(targets, task, len(arrays))
    if readout not in READOUTS:
        raise SequenceInputError(f"Unknown readout '{readout}'; use one of {', '.join(READOUTS)}.")
    if readout == "fraction":
        y, target_scale = _fraction_targets(y, task, target_scale)
    job.report(0, 1, "preparing frames")
    frames = [prepare(a, size, r, n) for a, r, n in zip(arrays, regions, names)]
    n_out = len(classes) if task == "classification" else 1
    specs = sequence_networks(size, n_out, features=features, hidden=hidden, channels=channels,
                              bidirectional=bidirectional, recurrent=recurrent)
    params = SequenceParams(kind=task, classes=classes, spatial_dims=spatial, size=size,
                            target_scale=target_scale, recurrent=recurrent, bidirectional=bidirectional,
                            readout=readout)
    config = ModelConfig(task=Task.SEQUENCE, name=name, networks=specs, params=params,
                         normalization={"kind": "sequence-window", "percentiles": [1.0, 99.5]},
                         description=_describe(task, classes, spatial, size, recurrent, bidirectional))
    torch.manual_seed(seed)
    model = Model(config)
    if pretrained is not None:
        source = pretrained if isinstance(pretrained, Model) else Model.load(pretrained)
        params.pretrained = f"{source.name}: {transfer_encoder(model.net, source)} tensors"
    tr, va = _split(len(frames), y, task, val_fraction, seed)
    train_task = SequenceTask(model.networks, [frames[i] for i in tr], y[tr], task,
                              [[frames[i] for i in va], y[va]], lr=lr, batch_size=batch_size,
                              augment=augment, seed=seed, target_scale=target_scale, readout=readout)
    history = fit(train_task, Budget(steps, seconds), device=device, patience=patience,
                  val_every=max(10, (steps or 300) // 15), progress=job, message="training sequence model")
    metric = "accuracy" if task == "classification" else "MAE"
    params.metrics = {f"validation {metric}": history["best_metric"], "n_train": int(len(tr)),
                      "n_validation": int(len(va)), "validation is training set": bool(len(va) == len(frames)
                                                                                         and len(tr) == len(va))}
    config.training = {"steps": history["step"][-1] if history["step"] else 0, "seconds": history["seconds"],
                       "returned": history["returned"], "stop_reason": history["stop_reason"],
                       "frames": [int(min(len(f) for f in frames)), int(max(len(f) for f in frames))]}
    return model, history


def _unlike_training(model: Model, n_frames: int) -> list[str]:
    """A warning when a series is far shorter or longer than every training series (models of older versions
    did not record their lengths)."""
    seen = (model.config.training or {}).get("frames")
    if not seen or seen[0] / 2 <= n_frames <= 2 * seen[1]:
        return []
    return [f"This series has {n_frames} frames; the model was trained on series of {seen[0]}-{seen[1]} frames, "
            "so its answer may mean little."]


def _fraction_targets(y: np.ndarray, task: str, scale: Optional[list]) -> tuple[np.ndarray, list]:
    """Regression targets back in their own units, checked to be fractions."""
    if task != "regression":
        raise SequenceInputError("The fraction readout is for regression targets (such as an ejection fraction).")
    raw = y * scale[1] + scale[0]
    if raw.min() < 0 or raw.max() > 1:
        raise SequenceInputError("The fraction readout needs targets between 0 and 1 (e.g. EF 0.55, not 55 %).")
    return raw.astype(np.float32), [0.0, 1.0]


def _describe(task: str, classes: list, spatial: int, size: list, recurrent: bool, bidirectional: bool) -> str:
    what = f"classes {', '.join(classes)}" if task == "classification" else "a value"
    rnn = ("bidirectional LSTM" if bidirectional else "LSTM") if recurrent else "averaged frame features"
    return f"Time series {task} ({what}); {spatial}D frames at {'x'.join(map(str, size))}, CNN + {rnn}."


def predict_sequence(model: Model, sequence, region=None, *, device="auto", progress=None,
                     stop=None) -> SequenceResult:
    """The model's answer for one sequence, its per-frame curve, and the (region's) mean signal per frame."""
    job = Job.of(progress, stop)
    model = as_model(model, Task.SEQUENCE)
    if model.task != Task.SEQUENCE:
        raise SequenceInputError(f"{model.name} is a {model.task} model, not a time series model.")
    p: SequenceParams = model.params
    arr = check_sequence(sequence, "the sequence", p.spatial_dims)
    job.check()
    frames = prepare(arr, p.size, region)
    dev = select_device(device)
    try:
        for net in model.networks.values():
            net.to(dev)
        out, per = _outputs(model.networks, [frames], dev, p.readout)
    finally:
        for net in model.networks.values():
            net.to("cpu")
    job.report(1, 1, "predicted")
    res = SequenceResult(signal=signal(arr, region), warnings=_unlike_training(model, len(arr)))
    if p.kind == "classification":
        prob = torch.softmax(out[0], 0).numpy()
        k = int(prob.argmax())
        res.label, res.probabilities = p.classes[k], dict(zip(p.classes, map(float, prob)))
        res.curve, res.curve_name = torch.softmax(per[0], 1)[:, k].numpy(), f"p({p.classes[k]}) so far"
    else:
        offset, scale = p.target_scale or (0.0, 1.0)
        res.value = float(out[0, 0]) * scale + offset
        res.curve, res.curve_name = per[0][:, 0].numpy() * scale + offset, "value per frame"
        if p.readout == "fraction":
            res.curve, res.curve_name = per[0][:, 0].numpy(), "relative volume per frame"
    return res


def load_sequence_model(path) -> Model:
    """A time series model from a ``.medgen.pt`` file."""
    return Model.load(path, expect=Task.SEQUENCE)

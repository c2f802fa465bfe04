"""Train a segmenter on a labelled cohort (Decathlon / nnU-Net layout), in one process or under torchrun.

``train_cohort(folder)`` finds the cases, splits off validation cases, takes the target
spacing and normalisation from the dataset (:mod:`napari_medgen.data.datasets`), samples
patches, and trains a 2D or 3D MONAI U-Net with :func:`~napari_medgen.engine.fit.fit`.
Under ``torchrun`` every rank reads only its share of the cases, DistributedDataParallel
averages the gradients, validation Dice is summed over the ranks' shares, and only rank 0
writes checkpoints.  The result is an ordinary segmentation model (Segment / Fine-tune widgets,
``napari-medgen segment``).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..data.augment import augment_batch
from ..data.cohort_checks import (binary_value, check_one_modality, dataset_normalization, foreground_sample,
                                  label_values, spacing_said_once, warn_unusual_labels)
from ..data.datasets import (CasePatchSampler, DatasetError, LabelWarning, check_dims, discover, fingerprint,
                             load_case, read_case, split)
from ..data.normalize import resolve
from ..data.sampling import patch_size_for
from ..data.slices import evenly_spread
from ..engine import distributed as dist
from ..engine.device import select_device
from ..engine.fit import Budget, TrainTask, fit
from ..engine.jobs import Job
from ..engine.seg_training import masked_dice, predict_logits, segmentation_loss
from ..models.checkpoint import SUFFIX, Model
from ..models.config import Task
from ..models.segmentation import default_classes, segmentation_config

VAL_SLICES = 16  # 2D validation: foreground slices per case


class CohortTask(TrainTask):
    """Patches from this rank's cases; validation Dice summed over all ranks' validation cases."""

    ddp_networks = ("net",)

    def __init__(self, net, sampler: CasePatchSampler, val: list, *, spatial_dims: int, patch_size, lr: float,
                 batch_size: int, augment: bool, seed: int, on_validate=None):
        self.networks = {"net": net}
        self.optimizers = [torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)]
        self.sampler, self.val, self.dims, self.patch = sampler, val, spatial_dims, tuple(patch_size)
        self.batch_size = batch_size
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.on_validate = on_validate
        self.device = torch.device("cpu")
        self.steps = 0

    def to(self, device):
        self.device = device

    def _augment(self, x, y):
        if not self.augment:
            return x, y
        if self.dims == 2:
            return augment_batch(x, y, self.rng)
        for b in range(len(x)):  # 3D: flips and an intensity jitter
            for ax in range(2, x.ndim):
                if self.rng.random() < 0.5:
                    x[b], y[b] = np.flip(x[b], ax - 1), np.flip(y[b], ax - 1)
            x[b] = x[b] * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-0.1, 0.1)
        return np.ascontiguousarray(x), np.ascontiguousarray(y)

    def train_step(self, step):
        x, y = self._augment(*self.sampler.sample(self.batch_size))
        x, y = torch.as_tensor(x).to(self.device), torch.as_tensor(y).to(self.device)
        loss = segmentation_loss(self.model()(x).float(), y)
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.steps = step
        return {"loss": loss}

    def _case_dice(self, image: np.ndarray, labels: np.ndarray) -> float:
        net = self.networks["net"]
        if self.dims == 2:
            return masked_dice(predict_logits(net, image, list(range(len(image))), self.device), labels)
        from monai.inferers import sliding_window_inference

        x = torch.as_tensor(np.asarray(image, np.float32))[None, None].to(self.device)
        logits = sliding_window_inference(x, self.patch, 2, net, overlap=0.25).float().cpu()
        return masked_dice(logits, labels[None])

    def validate(self):
        dices = [self._case_dice(img, lab) for img, lab in self.val]
        dices = [d for d in dices if np.isfinite(d)]
        total, count, anywhere = dist.sum_over_ranks(sum(dices), len(dices), len(self.val))
        if not anywhere:
            return None
        metric = total / count if count else 0.0
        if self.on_validate is not None:
            self.on_validate(self.steps, metric)
        return metric


def checkpoint_path(out: "str | Path") -> Path:
    """Where a run writing ``out`` keeps its resumable checkpoint (itself a model file)."""
    out = Path(out)
    stem = out.name[: -len(SUFFIX)] if out.name.endswith(SUFFIX) else out.name
    return out.with_name(f"{stem}.checkpoint{SUFFIX}")


def _validation_arrays(image: np.ndarray, labels: np.ndarray, dims: int) -> tuple:
    if dims == 3:
        return image, labels
    fg = np.flatnonzero(labels.reshape(len(labels), -1).any(1))
    pick = fg[evenly_spread(len(fg), VAL_SLICES)] if len(fg) else []
    return np.asarray(image[pick], np.float32), labels[pick].astype(np.int64)


def _load_shard(cases, spec_of, fp, dims, axis, modality, job, what, facts):
    """Read this rank's ``cases``; ``spec_of(samples)`` gives the normalisation (all ranks agree).
    ``facts`` gets ``(name, looks like CT, label values)`` of each case."""
    raw, samples, error = [], [], None
    try:
        for i, case in enumerate(cases):
            job.check()
            image, labels = read_case(case, fp["orientation"])
            ct = resolve({"kind": "auto"}, image.data, modality or image.metadata.get("modality", ""))["kind"] == "window"
            if ct:
                samples.append(foreground_sample(image.data, labels, case.name))
            facts.append((case.name, ct, label_values(labels)))
            raw.append((image, labels))
            if dist.is_main_process():
                job.report(i + 1, len(cases), f"reading {what} cases")
    except ValueError as err:  # DatasetError, ImageReadError: every user error of reading a case
        error = err
    dist.agree_on_error(error)
    spec = spec_of(samples)
    loaded = []
    while raw:  # the native-grid copies go as the resampled ones come
        img, lab = raw.pop(0)
        loaded.append(load_case(img, lab, spec, fp["spacing"], dims, axis, modality))
    return spec, loaded


def train_cohort(dataset, *, spatial_dims: int = 2, steps: int | None = None, seconds: float | None = None,
                 axis: int = 0, val_fraction: float = 0.2, patch_size=None, batch_size: int | None = None,
                 channels=(16, 32, 64, 128), lr: float = 3e-3, augment: bool = True, checkpoint=None,
                 resume: bool = False, checkpoint_seconds: float = 300.0, device="auto", seed: int = 0,
                 progress=None, stop=None, cancel=None) -> tuple[Model, dict]:
    """Train a fresh U-Net on the labelled cases of ``dataset`` (a Decathlon / nnU-Net folder).

    Budget: ``steps`` and/or ``seconds`` (1000 steps when neither).  Validation comes every tenth of
    ``steps`` and, with ``seconds``, at least every max(15 s, a tenth of ``seconds``), so a budget in
    steps alone is reproducible.  ``checkpoint`` (a path) is written by rank 0 at validations, at most
    every ``checkpoint_seconds``; ``resume=True`` continues from it, with the steps and seconds it
    already used taken off the budget.  Under torchrun the process group is joined here; each rank
    reads its share of the cases.  A folder of 2D images (grey PNG, 2D NIfTI, single DICOM files) trains in 2D
    on them as stored; binary masks saved as 0 and 255 train as classes 0 and 1, with a warning.
    Returns ``(model, history)`` on every rank; the model's ``config.training`` records the
    world size, the samples seen and the cases used.
    """
    job = Job.of(progress, stop, cancel)
    dev = dist.local_device(str(device))
    dist.init_from_env(select_device(dev))
    if spatial_dims not in (2, 3):
        raise DatasetError("spatial_dims must be 2 or 3.")
    if steps is None and seconds is None:
        steps = 1000
    ds = discover(dataset)
    check_dims(ds.cases, spatial_dims, axis)
    train, val = split(ds.cases, val_fraction, seed)
    fp = fingerprint(train, spatial_dims, axis)
    my_train, my_val = dist.shard(train), dist.shard(val)
    if not my_train:
        raise DatasetError(f"{len(train)} training cases cannot be shared by {dist.world_size()} processes; "
                           "use fewer processes.")

    def spec_of(samples):  # CT: one window from every rank's foreground samples
        if ds.modality != "CT" and not dist.any_rank(bool(samples))[0]:
            return dataset_normalization("", [])
        return dataset_normalization("CT", [s for part in dist.gather(samples) for s in part])

    facts = []
    with spacing_said_once(my_train + my_val, share=_to_rank0):
        spec, train_data = _load_shard(my_train, spec_of, fp, spatial_dims, axis, ds.modality, job, "training", facts)
        _, val_data = _load_shard(my_val, lambda _: spec, fp, spatial_dims, axis, ds.modality, job, "validation",
                                  facts)
    facts = [f for part in dist.gather(facts) for f in part]
    check_one_modality(facts)
    mask_value = binary_value(facts, ds.classes)
    if mask_value is not None:
        facts = _as_class_one(mask_value, facts, [y for _, y in train_data + val_data])
    top = max(max(values, default=0) for _, _, values in facts)
    if not ds.classes and dist.is_main_process():
        warn_unusual_labels(facts)
    classes = default_classes(ds.classes or (["background", "foreground"] if mask_value else int(top) + 1))
    if int(top) >= len(classes):
        raise DatasetError(f"The label files hold value {int(top)} but dataset.json names {len(classes)} classes.")
    if len(classes) < 2:
        raise DatasetError("The label files hold no foreground (every voxel is 0).")

    multiple = 2 ** (len(channels) - 1)
    step = max(16, multiple)
    patch = list(patch_size or patch_size_for(fp["shape"], 128 if spatial_dims == 2 else 96, step))
    if spatial_dims == 3 and not patch_size:  # 3D: never longer than the median case (rounded down), or every
        # training window of a thick-slice cohort is part padding and a longer scan's windows are new to the network
        patch = [min(p, max(step, s // step * step)) for p, s in zip(patch, fp["shape"])]
    if len(patch) != spatial_dims or any(p % multiple for p in patch):
        raise DatasetError(f"The patch size must have {spatial_dims} sizes, each a multiple of {multiple}.")
    batch_size = int(batch_size or (8 if spatial_dims == 2 else 2))
    config = segmentation_config(ds.name, classes, spatial_dims=spatial_dims, channels=tuple(channels),
                                 strides=(2,) * (len(channels) - 1), normalization=spec, spacing=fp["spacing"],
                                 axis=axis, patch_size=patch, orientation=fp["orientation"],
                                 description=f"U-Net trained on the {ds.name} cohort by napari-medgen train-cohort.")
    torch.manual_seed(seed)
    model = Model(config)
    done = _resume(model, checkpoint) if resume and checkpoint and Path(checkpoint).is_file() else {}
    left = (None if steps is None else int(steps) - done.get("steps", 0),
            None if seconds is None else float(seconds) - done.get("seconds", 0.0))
    if any(v is not None and v <= 0 for v in left):
        raise DatasetError(f"The checkpoint has already used the whole budget ({done['steps']} steps, "
                           f"{done['seconds']:.0f} s); give a larger --steps or --seconds to train on.")
    budget = Budget(*left)

    samplers = CasePatchSampler([x for x, _ in train_data], [y for _, y in train_data], patch,
                                spatial_dims=spatial_dims, seed=seed + 1000 * dist.rank())
    val_arrays = [_validation_arrays(x, y, spatial_dims) for x, y in val_data]
    del val_data
    t0 = time.monotonic()
    record = {"dataset": ds.name, "world_size": dist.world_size(), "batch_size_per_rank": batch_size,
              "patch_size": patch, "target_spacing": fp["spacing"],
              "cases": {"train": [c.name for c in train], "validation": [c.name for c in val]},
              "resumed_from_step": done.get("steps", 0)}
    if mask_value is not None:
        record["label_map"] = {str(mask_value): 1}

    last_write = {"t": t0}

    def write_checkpoint(step, metric):
        if not (checkpoint and dist.is_main_process() and time.monotonic() - last_write["t"] >= checkpoint_seconds):
            return
        last_write["t"] = time.monotonic()
        model.config.training = dict(record, steps=done.get("steps", 0) + step,
                                     seconds=done.get("seconds", 0.0) + time.monotonic() - t0,
                                     samples_seen=done.get("samples", 0) + step * batch_size * dist.world_size(),
                                     val_dice=metric, complete=False)
        model.save(checkpoint)

    task = CohortTask(model.net, samplers, val_arrays, spatial_dims=spatial_dims, patch_size=patch, lr=lr,
                      batch_size=batch_size, augment=augment, seed=seed + 1000 * dist.rank(),
                      on_validate=write_checkpoint)
    val_every = max(1, (steps or 0) // 10) if steps else None
    val_seconds = None if seconds is None else max(15.0, seconds / 10)  # None: in steps alone, by steps only
    history = fit(task, budget, device=dev, val_every=val_every, val_seconds=val_seconds,
                  keep_initial=bool(done), progress=job, stop=stop, cancel=cancel, message="training")
    trained = len(history["step"])
    model.config.training = dict(
        record, steps=done.get("steps", 0) + trained, seconds=done.get("seconds", 0.0) + history["seconds"],
        samples_seen=done.get("samples", 0) + trained * task.batch_size * dist.world_size(),
        val_dice=history["best_metric"], best_step=history["best_step"], stop_reason=history["stop_reason"],
        stopped=history["stopped"], device=history["device"], complete=True)
    history.update(dataset=ds.name, train_cases=record["cases"]["train"], val_cases=record["cases"]["validation"],
                   samples_seen=model.config.training["samples_seen"], spacing=fp["spacing"], patch_size=patch)
    return model, history


def _to_rank0(names: list) -> list:
    """Every rank's ``names`` on rank 0 (what it alone then says), none on the others."""
    every = [n for part in dist.gather(names) for n in part]
    return every if dist.is_main_process() else []


def _as_class_one(value: int, facts: list, labels: list) -> list:
    """Binary masks saved as 0 and ``value`` (255 in most PNG masks) trained as classes 0 and 1, with a warning:
    the network then has two classes, not ``value`` + 1 of which all but two never occur."""
    if dist.is_main_process():
        warnings.warn(LabelWarning(f"The label files hold 0 and {value} only: binary masks, so {value} is trained "
                                   "as class 1 (the model labels the foreground 1)."), stacklevel=3)
    for lab in labels:
        lab[lab == value] = 1
    return [(name, ct, {1 if v == value else v for v in values}) for name, ct, values in facts]


def _resume(model: Model, path) -> dict:
    """Load a checkpoint's weights into ``model`` (same network and classes); what it had done."""
    prev = Model.load(path, expect=Task.SEGMENTATION)
    same = (prev.config.networks["net"] == model.config.networks["net"]
            and len(prev.params.classes) == len(model.params.classes)
            and prev.config.normalization == model.config.normalization)
    if not same:
        raise DatasetError(f"{Path(path).name} was trained with another network, classes or normalisation; "
                           "delete it or train without resuming.")
    model.net.load_state_dict(prev.net.state_dict())
    rec = prev.config.training
    return {"steps": int(rec.get("steps", 0)), "seconds": float(rec.get("seconds", 0.0)),
            "samples": int(rec.get("samples_seen", 0))}

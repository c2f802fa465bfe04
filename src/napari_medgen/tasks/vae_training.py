"""Training a 2D VAE on normal scans with the one training loop (:func:`~napari_medgen.engine.fit.fit`).

Slices of one or more normal volumes (optionally restricted to a foreground mask),
MONAI augmentation, L1 reconstruction plus ``beta`` x KL with the log variance clamped,
validation on normal slices (by subject when several volumes are given), and the
anomaly thresholds calibrated on those validation slices afterwards.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from monai import transforms as mt

from ..data import datasets
from ..data.datasets import CHANNEL
from ..data.normalize import intensity_window, modality_of, resolve
from ..data.orientation import stored_alike, stored_direction, turn_each
from ..data.resample import inplane_spacing, resize, target_shape
from ..data.slices import evenly_spread, fit_to_size, informative_slices, mask_box, take_slices
from ..engine.fit import Budget, TrainTask, fit
from ..engine.jobs import Job
from ..errors import UserError
from ..io.read import opened, read_image
from ..models.checkpoint import Model
from ..models.config import ModelConfig, NetSpec, Task, VAEParams
from .anomaly import calibrate, calibration_seconds, tissue_model
from .vae import check_mask, guard_logvar, normalized, scan_spec
from .volume_input import as_volume, check_batch

MIN_SLICES = 8
MIN_TRAIN_SHARE = 0.5  # of a seconds budget: training keeps at least this, however long calibration will take
CALIBRATION_SHARE = 0.3  # of a seconds budget: calibration uses as many validation slices as fit in this ...
MIN_CALIBRATION_SLICES = 2  # ... but at least these (evenly spread), when there are as many
STEPS_CALIBRATION_SLICES = 32  # a budget in steps alone: at most these (about a minute on a laptop CPU)
FOV_ROOM = 1.2  # a masked model's field of view: this much wider than the largest training box
MAX_SIDE = 256  # working grid's longest in-plane side (px; brain MRI at 1 mm keeps its grid): the dense layer to the latent grows with a slice's area
# (a 2000-px X-ray: 1.4 GB, 1 step in 30 s); above Baur et al.'s 128 x 128 slices
MIN_STEPS = 50  # a budget that ends before this many training steps leaves a model that learned little: warned


class UndertrainedWarning(UserWarning):
    """The budget ended after so few training steps that the model's scores mean little."""


def augmentation(seed: int) -> mt.Compose:
    t = mt.Compose([
        mt.RandFlip(prob=0.5, spatial_axis=1),
        mt.RandAffine(prob=0.8, rotate_range=0.12, scale_range=0.08, translate_range=(4, 4), padding_mode="zeros"),
        mt.RandScaleIntensity(factors=0.08, prob=0.5),
        mt.RandAdjustContrast(gamma=(0.85, 1.15), prob=0.3),
    ])
    t.set_random_state(seed=seed)
    return t


def kl_per_pixel(mu: torch.Tensor, logvar: torch.Tensor, pixels: int) -> torch.Tensor:
    return -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)) / pixels


class VAETask(TrainTask):
    """Mean L1 per pixel plus ``beta`` x KL per pixel; validation: the same on normal slices (lower is better)."""

    metric_mode = "min"
    ddp_networks = ("net",)

    def __init__(self, net, train: np.ndarray, val: np.ndarray, *, lr: float, beta: float, batch_size: int,
                 augment: bool, seed: int):
        torch.manual_seed(seed)
        self.networks = {"net": guard_logvar(net)}
        self.optimizers = [torch.optim.Adam(net.parameters(), lr=lr)]
        self.train, self.val, self.beta, self.batch_size = train, val, beta, batch_size
        self.aug = augmentation(seed) if augment else None
        self.rng = np.random.default_rng(seed)
        self.device = torch.device("cpu")

    def to(self, device):
        self.device = device

    def train_step(self, step):
        batch = self.train[self.rng.integers(len(self.train), size=min(self.batch_size, len(self.train)))]
        if self.aug is not None:
            batch = np.stack([np.asarray(self.aug(b)) for b in batch]).astype(np.float32)
        x = torch.from_numpy(batch).to(self.device)
        recon, mu, logvar, _ = self.model()(x)
        rec = torch.mean(torch.abs(recon.float() - x))
        kl = kl_per_pixel(mu.float(), logvar.float(), x[0].numel())
        loss = rec + self.beta * kl
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.networks["net"].parameters(), 5.0)
        opt.step()
        return {"loss": loss, "reconstruction": rec, "kl": kl}

    def validate(self):
        net, total = self.networks["net"], 0.0
        for i in range(0, len(self.val), 32):
            x = torch.from_numpy(self.val[i:i + 32]).to(self.device)
            mu, logvar = net.encode_forward(x)
            rec = torch.abs(net.decode_forward(mu, net.use_sigmoid).float() - x).mean()
            total += float(rec + self.beta * kl_per_pixel(mu.float(), logvar.float(), x[0].numel())) * len(x)
        return total / len(self.val)


def checked_volumes(images, masks, what: str):
    """(images, their voxel arrays, their boolean masks or Nones), each checked; images read here from files
    of one name in different folders (two subjects' t1.nii.gz) are named by their paths, as subjects apart."""
    given = images if isinstance(images, (list, tuple)) else [images]
    items = [opened(x) for x in given]
    read = [k for k, x in enumerate(given) if isinstance(x, (str, os.PathLike))]
    for k in read:
        if sum(items[j].name == items[k].name for j in read) > 1:
            items[k].name = str(given[k])
    if not items:
        raise UserError(f"Give at least one {what} image.")
    vols = [as_volume(im, f"{what} image", "the VAE") for im in items]
    many = isinstance(masks, (list, tuple))
    mask_list = [opened(m) for m in masks] if many else [opened(masks)] * len(vols)
    if len(mask_list) != len(vols):
        raise UserError(f"Got {len(mask_list)} masks for {len(vols)} images; give one mask per image or none.")
    return items, vols, [check_mask(m, v.shape, getattr(it, "geometry", None))  # a mask with a geometry: its grid
                         for m, v, it in zip(mask_list, vols, items)]


def slice_stacks(vols, masks, spec, size, axis, shapes, clip: bool = True) -> list[np.ndarray]:
    """One (n, 1, H, W) stack of informative slices per volume, each normalised by ``spec`` on its own
    intensities (CT: the fixed window; MRI: its own percentiles; unclipped with ``clip=False``), cut to its
    mask's in-plane bounding box (the foreground centred, whatever the field of view) and resampled in-plane
    to ``shapes``."""
    stacks = []
    for v, m, shape in zip(vols, masks, shapes):
        a = axis if v.ndim == 3 else 0
        keep = informative_slices(v, axis, mask=m) if v.ndim == 3 else np.array([0])
        box = mask_box(m, a) if m is not None else ...
        slices = take_slices(normalized(v, m, spec, clip)[box], a)[keep]
        if tuple(slices.shape[1:]) != tuple(shape):
            slices = resize(np.ascontiguousarray(slices), shape)
        stacks.append(fit_to_size(slices, size)[:, None].astype(np.float32))
    return stacks


def _spacing(items, vols, axis) -> list | None:
    """The in-plane pixel spacing training resamples every volume to (the median of theirs), None if unknown."""
    geos = [getattr(i, "geometry", None) for i in items]
    if any(g is None for g in geos):
        return None
    sp = np.array([inplane_spacing(g.spacing, axis) if v.ndim == 3 else g.spacing for g, v in zip(geos, vols)], float)
    return [round(float(s), 6) for s in np.median(sp, axis=0)]


def plane_shapes(items, vols, masks, axis, spacing, pixels: bool = False) -> list[tuple]:
    """Each volume's slice shape (cut to its mask's bounding box) at the training ``spacing``; with ``pixels``
    every image is taken at one unit per pixel (a working grid of images without a geometry)."""
    shapes = []
    for it, v, m in zip(items, vols, masks):
        a = axis if v.ndim == 3 else 0
        plane = take_slices(v[mask_box(m, a)] if m is not None else v, a).shape[1:]
        geo = getattr(it, "geometry", None)
        if spacing is not None and (pixels or geo is not None):
            g = (1.0, 1.0) if pixels else geo.spacing
            plane = target_shape(plane, inplane_spacing(g, a) if v.ndim == 3 and not pixels else g, spacing)
        shapes.append(tuple(int(n) for n in plane))
    return shapes


def working_grid(items, vols, masks, axis, room: float = 1.0):
    """(spacing, shapes, pixels): the in-plane spacing training resamples to and each volume's slice shape at it.
    The median spacing, coarsened where a slice (times ``room``) would be longer than :data:`MAX_SIDE` pixels
    (the images are scored back on their own grids); images without a geometry, so coarsened, are taken at one
    unit per pixel (``pixels``)."""
    spacing = _spacing(items, vols, axis)
    shapes = plane_shapes(items, vols, masks, axis, spacing)
    factor = max(max(s) for s in shapes) * room / MAX_SIDE
    if factor <= 1:
        return spacing, shapes, False
    pixels = spacing is None
    spacing = [round(float(s) * factor, 6) for s in (spacing or (1.0, 1.0))]
    return spacing, plane_shapes(items, vols, masks, axis, spacing, pixels), pixels


def _common_spec(normalization, items, vols) -> dict:
    """The modality-aware spec, resolved per volume: one model learns one modality."""
    specs = [resolve(normalization, v, modality_of(it)) for it, v in zip(items, vols)]
    if any(s != specs[0] for s in specs):
        raise UserError("The training images mix CT (Hounsfield units) with other modalities; train one model "
                        "per modality.")
    return specs[0]


def tissue_window(vols, masks, widen: float = 0.5, min_width: float = 100.0) -> dict:
    """A fixed CT window spanning the masked voxels of every training volume (percentiles 1-99, widened by
    ``widen`` of that range on each side, at least ``min_width`` HU): a brain lesion 30 HU brighter than grey
    matter is a few hundredths of -1000..1000 HU, a large share of this window."""
    values = np.concatenate([np.asarray(v)[m][::max(1, int(m.sum()) // 200_000)] for v, m in zip(vols, masks)
                             if m is not None and m.any()])
    lo, hi = (float(x) for x in np.percentile(values, [1, 99]))
    pad = max(widen * (hi - lo), (min_width - (hi - lo)) / 2)
    return {"kind": "window", "low": lo - pad, "high": hi + pad}


def subject_ids(items) -> list[str]:
    """Who each volume comes from: an ImageData's name (pieces of one scan share it; files of one name in
    different folders are named apart when read, see :func:`checked_volumes`), else its position."""
    return [str(getattr(it, "name", "") or f"image {k + 1}") for k, it in enumerate(items)]


def held_out_subjects(ids, val_fraction: float, seed: int = 0) -> list[str]:
    """Subjects kept for validation: about ``val_fraction`` of them, at least one, never all (none of one)."""
    subjects = sorted(set(ids))
    if len(subjects) < 2:
        return []
    n_val = min(len(subjects) - 1, max(1, int(round(val_fraction * len(subjects)))))
    order = np.random.default_rng(seed).permutation(len(subjects))
    return sorted(subjects[i] for i in order[:n_val])


def split_rows(per_volume: list[np.ndarray], ids, val_fraction: float, seed: int = 0):
    """(training rows, validation rows, split, held-out subjects) of the slices of ``per_volume`` (one stack
    per volume of subject ``ids``) concatenated: whole subjects held out when there are several, else a
    random ``val_fraction`` of the slices (at least two)."""
    held = held_out_subjects(ids, val_fraction, seed)
    if held:
        is_val = np.repeat([i in held for i in ids], [len(s) for s in per_volume])
        return np.flatnonzero(~is_val), np.flatnonzero(is_val), "subject", held
    n = sum(len(s) for s in per_volume)
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(2, int(round(val_fraction * n)))
    return order[n_val:], order[:n_val], "slices", []


def _intensity_stats(vols, masks, spec) -> dict | None:
    """The raw intensity range new images are checked against, for a fixed window (CT in HU) only: images scaled
    per scan (MRI percentiles) have no common units, and any scanner's range is as good as another's."""
    if spec["kind"] != "window":
        return None
    vals = np.concatenate([np.asarray(v if m is None else v[m], np.float32).ravel()[::7] for v, m in zip(vols, masks)])
    lo, hi = np.percentile(vals, [0.5, 99.5])
    return {"low": float(lo), "high": float(hi)}


def train_vae(images, masks=None, *, latent_size: int = 64, channels=(16, 32, 64, 128),
              steps: int | None = None, seconds: float | None = 120.0, batch_size: int = 16, lr: float = 2e-3,
              beta: float = 0.05, axis: int = 0, normalization: dict | None = None, augment: bool = True,
              val_images=None, val_masks=None, val_fraction: float = 0.15, val_every: int | None = None,
              seed: int = 0, device: str = "auto", name: str = "vae", progress=None, stop=None, cancel=None):
    """Train a VAE on the slices of normal ``images`` (arrays or ImageData); return ``(model, history)``.

    The budget is ``steps`` and/or ``seconds`` (whichever ends first; two minutes by default, enough
    for a first model on a laptop CPU).  ``seconds`` is the whole call: preparing the slices and
    calibrating the thresholds (timed on one slice beforehand; on as many evenly spread validation
    slices as fit in 30 % of it, at least 2) come out of it, training keeps at least half of it.
    ``masks`` (one per image, or None) restrict training to the foreground.  Each volume is
    normalised on its own intensities by the modality's spec (CT: a fixed Hounsfield window, with masks
    the window of the masked tissue of all training volumes; MRI: its own percentiles) and resampled
    in-plane to the median pixel spacing.
    Validation slices are ``val_images`` if given, else those of whole held-out subjects when there
    are several (about ``val_fraction`` of them, at least one; a subject is an ImageData's name, so
    pieces of one scan stay together: give different subjects different names; files of one name
    in different folders are told apart by their paths), else a random ``val_fraction`` of the
    slices; they keep the
    best weights and calibrate the anomaly thresholds.  ``history["val_subjects"]`` and the model's
    ``config.training`` name the held-out subjects.  A stop request keeps the best weights
    (``history["stopped"]``) and still calibrates; a cancel (also during calibration) raises
    :class:`~napari_medgen.engine.jobs.Cancelled` and returns nothing.
    """
    started = time.monotonic()
    job = Job.of(progress, stop, cancel)
    check_batch(batch_size)
    Budget(steps, seconds)  # a bad budget is refused before any work, in the user's own numbers
    items, vols, mask_list = checked_volumes(images, masks, "training")
    orientation = stored_direction(items[0])  # the others are stored as the first is: slices cut alike
    items, hows = stored_alike(items, orientation)
    vols, mask_list = turn_each(vols, hows), turn_each(mask_list, hows)
    spec = _common_spec(normalization, items, vols)
    if (spec["kind"] == "window" and any(m is not None and m.any() for m in mask_list)
            and (normalization or {}).get("kind", "auto") == "auto"):
        spec = tissue_window(vols, mask_list)  # CT inside a mask: the tissue's own window, not -1000..1000 HU
    room = FOV_ROOM if mask_list[0] is not None else 1.0  # other subjects' brains and slices may be larger
    spacing, shapes, pixels = working_grid(items, vols, mask_list, axis, room)
    slice_shape = tuple(int(max(s[i] for s in shapes)) for i in range(2))
    size = tuple(int(math.ceil(s * room / 2 ** len(channels)) * 2 ** len(channels)) for s in slice_shape)
    stacks = slice_stacks(vols, mask_list, spec, size, axis, shapes)
    raws = slice_stacks(vols, mask_list, spec, size, axis, shapes, clip=False)  # the same slices, for calibration
    n_slices = sum(len(s) for s in stacks)
    if n_slices < MIN_SLICES:
        raise UserError(f"Training needs at least {MIN_SLICES} slices with foreground; these images give {n_slices}.")
    ids = subject_ids(items)
    if val_images is not None:
        v_items, vv, vm = checked_volumes(val_images, val_masks, "validation")
        v_items, hows = stored_alike(v_items, orientation)
        vv, vm = turn_each(vv, hows), turn_each(vm, hows)
        _common_spec(normalization, [*items, *v_items], [*vols, *vv])  # one modality for both
        v_shapes = plane_shapes(v_items, vv, vm, axis, spacing, pixels)
        val = np.concatenate(slice_stacks(vv, vm, spec, size, axis, v_shapes))
        val_raw = np.concatenate(slice_stacks(vv, vm, spec, size, axis, v_shapes, clip=False))
        train, split, held = np.concatenate(stacks), "given", []
    else:
        rows, val_rows, split, held = split_rows(stacks, ids, val_fraction, seed)
        data = np.concatenate(stacks)
        train, val, val_raw = data[rows], data[val_rows], np.concatenate(raws)[val_rows]
    if len(val) == 0:
        raise UserError("The validation images give no slices with foreground.")
    lows, highs = zip(*(intensity_window(v, scan_spec(v, m, spec)) for v, m in zip(vols, mask_list)))
    params = VAEParams(axis=axis, size=list(size), slice_shape=list(slice_shape), masked=mask_list[0] is not None,
                       beta=beta, training_stats=_intensity_stats(vols, mask_list, spec),
                       spacing=spacing, intensity=[float(np.mean(lows)), float(np.mean(highs))],
                       orientation=None if orientation is None else np.asarray(orientation).tolist())
    net_args = {"spatial_dims": 2, "in_shape": [1, *size], "out_channels": 1, "latent_size": int(latent_size),
                "channels": list(channels), "strides": [2] * len(channels), "num_res_units": 1}
    torch.manual_seed(seed)  # the starting weights too: the same seed gives the same model
    model = Model(ModelConfig(task=Task.VAE, name=name, networks={"net": NetSpec("VarAutoEncoder", net_args)},
                              params=params, normalization=spec, description="VAE trained on normal scans"))
    task = VAETask(model.net, train, val, lr=lr, beta=beta, batch_size=batch_size, augment=augment, seed=seed)
    model.params.tissue = tissue_model(val[:, 0])
    cal = evenly_spread(len(val), STEPS_CALIBRATION_SLICES)  # the validation slices the thresholds are calibrated on
    if seconds:
        job.report(0, 1, "timing the calibration")
        per_slice = calibration_seconds(model, val[:1, 0], val_raw[:1, 0], device, Job(None, None, job.cancelled),
                                        enough=0.05 * seconds)  # a cold run that long: no warm one (it errs long)
        fits = int(CALIBRATION_SHARE * seconds / max(per_slice, 1e-6))
        cal = evenly_spread(len(val), max(MIN_CALIBRATION_SLICES, fits))
        seconds = max(seconds - (time.monotonic() - started) - per_slice * len(cal), MIN_TRAIN_SHARE * seconds)
    history = fit(task, Budget(steps, seconds), device=device, val_every=val_every, progress=job,
                  val_seconds=float("inf") if val_every else None, message="training")
    model.config.training = {k: history[k] for k in ("best_step", "best_metric", "returned", "stopped",
                                                     "stop_reason", "seconds", "device", "events")}
    model.config.training.update(n_train=int(len(train)), n_val=int(len(val)), n_calibration=int(len(cal)),
                                 split=split, subjects=sorted(set(ids)), val_subjects=held, pixel_grid=pixels,
                                 modality=modality_of(items[0]), ndim=int(vols[0].ndim))
    history.update(split=split, val_subjects=held, warnings=undertrained(history, steps))
    # calibration continues after a stop request (the model is wanted) but honours a cancel
    calib = Job(lambda ev: job.report(ev.step, ev.total, "calibrating thresholds"), None, job.cancelled)
    calibrate(model, val[cal, 0], device=device, job=calib, unclipped=val_raw[cal, 0])
    return model, history


def undertrained(history: dict, steps: int | None) -> list[str]:
    """A sentence (also an :class:`UndertrainedWarning`) when the budget ended after fewer than
    :data:`MIN_STEPS` training steps the user did not ask for."""
    done = int(history["step"][-1]) if history["step"] else 0
    if done >= MIN_STEPS or (steps is not None and done >= steps):
        return []
    msg = (f"The VAE was trained for only {done} steps (a first model needs at least {MIN_STEPS}); its "
           "reconstructions and anomaly scores mean little: give it a longer budget.")
    warnings.warn(msg, UndertrainedWarning, stacklevel=3)
    return [msg]


def _files(folder: Path) -> list[Path]:
    return datasets.image_files(folder) if folder.is_dir() else []


def _case(path: Path) -> str:
    return CHANNEL.sub("", datasets.case_stem(path))  # nnU-Net: case_0000 is channel 0 of "case"


def normal_cohort(dataset_dir) -> tuple[list, list | None]:
    """The normal scans of a dataset folder (``imagesTr/``, nnU-Net/Decathlon layout) as ImageData named
    by case, and their foreground masks (``labelsTr/``, > 0 is foreground, each to lie on its scan's grid)
    when that folder exists, else None."""
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"{root} is not a folder.")
    files = _files(root / "imagesTr")
    if not files:
        raise UserError(f"{root} holds no normal scans: put them in {root / 'imagesTr'} (NIfTI, NRRD or MHA files).")
    names = [_case(p) for p in files]
    if len(set(names)) < len(names):
        raise UserError("A case in imagesTr has several channel files; the VAE trains on one-channel scans.")
    modality = _modality(root)
    images = []
    for name, path in zip(names, files):
        img = read_image(path)
        img.name = name
        if modality:
            img.metadata = {**img.metadata, "modality": modality}
        images.append(img)
    if not (root / "labelsTr").is_dir():
        return images, None
    labels = {datasets.case_stem(p): p for p in _files(root / "labelsTr")}
    missing = [n for n in names if n not in labels]
    if missing:
        raise UserError(f"{len(missing)} scans in imagesTr have no mask of the same name in labelsTr "
                        f"(first: {missing[0]}); add them or remove labelsTr to train unmasked.")
    return images, [read_image(labels[n]) for n in names]


def _modality(root: Path) -> str:
    """"CT" when the folder's dataset.json says so (one channel), else ""."""
    try:
        meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return datasets.dataset_modality(meta) if isinstance(meta, dict) else ""


def train_vae_cohort(dataset_dir, **kwargs):
    """:func:`train_vae` on a dataset folder of normal scans (see :func:`normal_cohort`), split by subject."""
    images, masks = normal_cohort(dataset_dir)
    return train_vae(images, masks, **kwargs)

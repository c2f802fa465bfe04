"""Unconditional 2D GAN: train on the slices of volumes, synthesize new slices reproducibly from seeds.

The data side (informative slices scaled to [0, 1] on one in-plane grid, shared with the
mask-to-image GAN), :func:`train_gan` (the recipe of :mod:`~napari_medgen.tasks.gan_training` run
by the one training loop) and sampling: :func:`synthesize` and :func:`interpolate_seeds`, in the
training data's intensity scale and pixel spacing.  The default architecture is the two-scale cascade
of :mod:`~napari_medgen.tasks.cascade_gan`; ``"single-scale"`` trains one GAN at full resolution.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.normalize import intensity_window, normalize, resolve
from ..data.orientation import stored_alike, stored_direction, turned
from ..data.resample import inplane_spacing
from ..data.slices import evenly_spread, fit_to_size, informative_slices, take_slices
from ..engine.device import select_device
from ..engine.fit import Budget, fit
from ..engine.jobs import Job
from ..errors import UserError
from ..io.geometry import Geometry
from ..io.read import ImageData, opened
from ..models.checkpoint import Model, as_model, build_network
from ..models.config import GANParams, ModelConfig, NetSpec, Task
from .cascade_gan import (FACTOR, CascadeTask, RefineTask, cascade_generate, refiner_config, stage_schedule,
                          zero_output)
from .gan_training import GANTask, generate, latents, patch_layers, spectral_discriminator
from .volume_input import as_volume, check_batch, check_count, stack_geometry

MIN_SLICES = 8


class TooFewImagesError(UserError):
    """Not enough training slices."""


# --- data ------------------------------------------------------------------------------------------
def as_image(item, what: str = "image") -> ImageData:
    """An :class:`ImageData` (finite, 2D or 3D) from an ImageData, its file or a plain array (unit spacing)."""
    item = opened(item)
    arr = as_volume(item, what, "the GAN")
    if isinstance(item, ImageData):
        return item if arr is item.data else ImageData(arr, item.geometry, item.name, item.kind, item.metadata)
    return ImageData(arr, Geometry.identity(arr.ndim))


def _as_list(images, what: str) -> list[ImageData]:
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise UserError(f"Give at least one {what}.")
    return [as_image(i, what) for i in items]


def _placed(item: ImageData) -> bool:
    """Whether ``item``'s geometry places it in space (not the unit grid of a bare array)."""
    return not item.geometry.same_grid(Geometry.identity(item.geometry.ndim))


def _plane_spacing(item: ImageData, axis: int) -> tuple:
    sp = item.geometry.spacing
    return tuple(sp[-2:]) if item.data.ndim == 2 else inplane_spacing(sp, axis)


def training_slices(images, axis: int = 0, labels=None, downsample: int = 1, size=None,
                    min_slices: int = MIN_SLICES, multiple: int = 8) -> dict:
    """Informative slices of ``images`` scaled to [0, 1], all on one in-plane grid (by default the
    slices' own shape padded to a ``multiple`` of pixels).

    Returns ``{"images": (n, H, W) float32, "labels": (n, H, W) int or None, "spacing",
    "native_shape", "size", "intensity": [low, high], "normalization"}``. Slices of mixed
    shapes are centre-padded/cropped to a common size; mixed pixel spacings are refused.
    """
    items = _as_list(images, "training image")
    labs = None if labels is None else _as_list(labels, "label map")
    if labs is not None and [l.data.shape for l in labs] != [i.data.shape for i in items]:
        raise UserError("Each label map must have the same shape as its image.")
    if labs is not None and any(_placed(l) and _placed(i) and not l.geometry.same_grid(i.geometry)
                                for l, i in zip(labs, items)):
        raise UserError("A label map is not on its image's voxel grid (its origin, spacing or direction differ); "
                        "resample it onto the image first.")
    items, hows = stored_alike(items, stored_direction(items[0]))  # every volume stored as the first is
    if labs is not None:
        labs = [lab if h is None else turned(lab, h) for lab, h in zip(labs, hows)]
    spacings = {tuple(round(float(s), 3) for s in _plane_spacing(i, axis)) for i in items}
    if len(spacings) > 1:
        raise UserError(f"The training images have different pixel spacings {sorted(spacings)}; "
                        "resample them to one spacing first.")
    if int(downsample) < 1:
        raise UserError("downsample must be 1 (full resolution) or more.")
    stacks, lab_stacks, lows, highs, specs = [], [], [], [], []
    for k, item in enumerate(items):
        vol = np.asarray(item.data, dtype=np.float32)
        spec = resolve(None, vol, item.metadata.get("modality", ""))  # CT: HU window; else percentiles
        specs.append(spec)
        lo, hi = intensity_window(vol, spec)
        lows.append(lo), highs.append(hi)
        norm = normalize(vol, {"kind": "window", "low": lo, "high": hi})
        mask = None if labs is None else labs[k].data > 0
        idx = informative_slices(vol, axis, mask=mask) if vol.ndim == 3 else np.array([0])
        stacks.append(_pool(take_slices(norm, axis, idx), downsample))
        if labs is not None:
            lab_stacks.append(take_slices(np.asarray(labs[k].data), axis, idx)[:, ::downsample, ::downsample])
    shapes = [s.shape[-2:] for s in stacks]
    native = tuple(int(max(s[d] for s in shapes)) for d in (0, 1))
    size = tuple(int(s) for s in size) if size else tuple(-(-n // multiple) * multiple for n in native)
    imgs = np.concatenate([fit_to_size(s, size) for s in stacks])
    if len(imgs) < min_slices:
        dims = ", ".join(f"{i.data.shape}" for i in items)
        found = f"{len(imgs)} informative slice" + ("" if len(imgs) == 1 else "s")
        raise TooFewImagesError(f"Only {found} found along axis {axis} of images of shape "
                                f"{dims}; a GAN needs at least {min_slices}: give a 3D volume or more images.")
    out_labels = None
    if labs is not None:
        out_labels = np.concatenate([fit_to_size(lab, size) for lab in lab_stacks]).astype(np.int64)
    sp = next(iter(spacings))
    return {"images": imgs.astype(np.float32), "labels": out_labels, "size": list(size),
            "spacing": [sp[0] * downsample, sp[1] * downsample], "native_shape": list(native),
            "intensity": [float(np.mean(lows)), float(np.mean(highs))], "normalization": specs[0]}


def _pool(stack: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return stack
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    return F.avg_pool2d(t, factor, ceil_mode=True)[:, 0].numpy()


def real_slices(images, params) -> np.ndarray:
    """Informative real slices of ``images`` on a trained model's grid, in its intensity units:
    the reference for :func:`~napari_medgen.tasks.synthesis_report.synthesis_report`."""
    data = training_slices(images, params.axis, downsample=params.downsample, size=params.size, min_slices=2)
    return _to_intensity(data["images"], params)


# --- unconditional GAN -----------------------------------------------------------------------------
def gan_config(size, latent_size: int = 64, width: int = 16) -> NetSpec:
    """The MONAI Generator producing ``size`` (multiples of 8) images."""
    h, w = (int(s) for s in size)
    if h % 8 or w % 8:
        raise UserError("The GAN image size must be a multiple of 8 in both axes.")
    return NetSpec("Generator", {"latent_shape": [latent_size], "start_shape": [8 * width, h // 8, w // 8],
                                 "channels": [4 * width, 2 * width, width, 1], "strides": [2, 2, 2, 1],
                                 "num_res_units": 0, "norm": "BATCH"})


def holdout(n: int) -> np.ndarray:
    """Indices of the held-out validation slices: every tenth, evenly spread, at least two."""
    return evenly_spread(n, max(2, n // 10))


def budget_kwargs(steps, seconds) -> dict:
    """Validation (and preview) about ten times per budget: by step count alone when the budget is steps
    alone (reproducible runs), else also by the clock (a time limit may end the run long before the steps)."""
    every = max(1, steps // 10) if steps else None
    return {"val_every": every, "val_seconds": float("inf") if not seconds else max(2.0, seconds / 10)}


ARCHITECTURES = ("cascade", "single-scale")


def train_gan(images, axis: int = 0, steps: int | None = None, seconds: float | None = 600.0, batch_size: int = 16,
              latent_size: int = 64, width: int = 16, downsample: int = 1, architecture: str = "cascade",
              lr: float = 5e-4, ema_decay: float = 0.99, seed: int = 0, device="auto", progress=None, stop=None,
              cancel=None):
    """Train a GAN on the informative slices of ``images`` (ImageData/arrays, one or several volumes).

    ``architecture``: ``"cascade"`` (default: a GAN at quarter resolution, then a refiner adding the
    full-resolution detail, see :mod:`~napari_medgen.tasks.cascade_gan`) or ``"single-scale"`` (one
    GAN at full resolution).  The budget is ``steps`` and/or ``seconds`` (ten minutes by default).
    The EMA generator whose samples have the lowest patch distance (at every pyramid level) to the
    slices is kept: to all of them for the cascade, to a held-out tenth for single-scale.  Progress
    carries ``d_loss``/``g_loss`` and, at each validation, a preview of the EMA generator on fixed
    seeds (``(8, H, W)`` in training intensity units).  Returns ``(model, history)``; a stop request
    keeps the best weights so far (``history["stopped"]``), a cancel raises ``Cancelled``.
    """
    job = Job.of(progress, stop, cancel)
    check_batch(batch_size)
    if architecture not in ARCHITECTURES:
        raise UserError(f"Unknown GAN architecture '{architecture}'; choose one of {', '.join(ARCHITECTURES)}.")
    cascade = architecture == "cascade"
    data = training_slices(images, axis, downsample=downsample, multiple=8 * FACTOR if cascade else 8)
    params = GANParams(axis=int(axis), size=data["size"], latent_size=int(latent_size), spacing=data["spacing"],
                       native_shape=data["native_shape"], intensity=data["intensity"], downsample=int(downsample),
                       n_train=int(len(data["images"])), architecture=architecture)
    size = [s // FACTOR for s in data["size"]] if cascade else data["size"]
    specs = {"net": gan_config(size, latent_size, width), **({"refine": refiner_config(width)} if cascade else {})}
    config = ModelConfig(task=Task.GAN, name="gan", networks=specs, params=params,
                         normalization=data["normalization"], description=f"unconditional 2D GAN ({architecture})")
    torch.manual_seed(seed)
    gen_net = build_network(specs["net"])
    # the cascade is validated by the distance between its samples and all the slices (a distribution
    # distance needs many slices: a tenth of a few dozen is a handful); single-scale holds out a tenth
    val = np.array([], int) if cascade else holdout(len(data["images"]))
    train = np.delete(data["images"], val, axis=0)
    held = train if cascade else data["images"][val]
    to_intensity = lambda u: _to_intensity(u, params)  # noqa: E731
    kw = dict(lr=lr, ema_decay=ema_decay, batch_size=batch_size, seed=seed)
    if cascade:
        low = _pool(train, FACTOR)
        coarse = GANTask(gen_net, spectral_discriminator(1, 2 * width, patch_layers(size)), low, low,
                         latent_size=latent_size, to_intensity=None, **kw)
        refine = RefineTask(zero_output(build_network(specs["refine"])),
                            spectral_discriminator(2, 2 * width, patch_layers(data["size"])), train, l1_weight=10.0,
                            **kw)
        task = CascadeTask(coarse, refine, held, to_intensity=to_intensity)
        history = run_adversarial(task, job, steps, seconds, device, schedule=stage_schedule(task))
        nets = {"net": task.networks["coarse.ema"].module.eval(), "refine": task.networks["refine.ema"].module.eval()}
    else:
        task = GANTask(gen_net, spectral_discriminator(1, 2 * width, patch_layers(size)), train, held,
                       latent_size=latent_size, to_intensity=to_intensity, **kw)
        history = run_adversarial(task, job, steps, seconds, device)
        nets = {"net": task.networks["ema"].module.eval()}
    model = Model(config, nets)
    model.config.training = summary(history, n_train=len(train), n_val=len(val))
    return model, history


def run_adversarial(task, job: Job, steps, seconds, device, **fit_kw) -> dict:
    """:func:`fit` with the task's latest preview attached to the progress events."""
    relay = Job(lambda ev: job.report(ev.step, ev.total, ev.message, preview=task.take_preview(), **ev.metrics),
                job.should_stop, job.cancelled)
    return fit(task, Budget(steps, seconds), device=device, progress=relay, message="training",
               **budget_kwargs(steps, seconds), **fit_kw)


def summary(history: dict, **extra) -> dict:
    """The training record stored in a model's config."""
    keys = ("best_step", "best_metric", "returned", "stopped", "stop_reason", "seconds", "device", "events")
    return {**{k: history[k] for k in keys}, **{k: int(v) for k, v in extra.items()}}


def _to_intensity(unit: np.ndarray, params) -> np.ndarray:
    """Back from [0, 1] to the training data's intensity units, cropped to the native slice shape."""
    lo, hi = params.intensity
    return fit_to_size(unit * (hi - lo) + lo, tuple(params.native_shape)).astype(np.float32)


def _check_gan(model) -> Model:
    model = as_model(model, Task.GAN)
    if model.task != Task.GAN:
        raise UserError(f"This is a {model.task or 'unknown'} model, not an (unconditional) GAN.")
    return model


def _decode(model: Model, z: torch.Tensor, device) -> np.ndarray:
    """Images in [0, 1] from latents, by the model's architecture."""
    dev = select_device(device)
    if model.params.architecture == "cascade":
        return cascade_generate(model.net.to(dev), model.networks["refine"].to(dev), z, model.params.size)
    return generate(model.net.to(dev), z)


def synthesize(model: Model, n: int = 16, seed: int = 0, device="auto", progress=None, stop=None) -> ImageData:
    """``n`` new slices from ``seed`` (sample i depends only on seed and i) as an (n, H, W) stack
    in the training intensity scale and pixel spacing."""
    n = check_count(n)
    model = _check_gan(model)
    job = Job.of(progress, stop)
    z = latents(n, seed, model.params.latent_size)
    out = []
    for i in range(0, n, 32):
        job.check()
        out.append(_decode(model, z[i:i + 32], device))
        job.report(min(i + 32, n), n, "synthesizing")
    data = _to_intensity(np.concatenate(out), model.params)
    return ImageData(data, stack_geometry(model.params.spacing), name=f"GAN samples seed {seed}",
                     metadata={"seed": int(seed), "model": model.name})


def interpolate_seeds(model: Model, seed_a: int, seed_b: int, steps: int = 8, device="auto",
                      progress=None, stop=None) -> ImageData:
    """A stack walking the latent space from the first sample of ``seed_a`` to that of ``seed_b`` (slerp)."""
    steps = check_count(steps, "interpolation steps")
    model = _check_gan(model)
    Job.of(progress, stop).check()
    dim = model.params.latent_size
    a, b = latents(1, seed_a, dim)[0], latents(1, seed_b, dim)[0]
    omega = torch.arccos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1, 1))
    t = torch.linspace(0, 1, steps)[:, None]
    so = torch.sin(omega)
    z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / so if so > 1e-6 else (1 - t) * a + t * b
    data = _to_intensity(_decode(model, z, device), model.params)
    return ImageData(data, stack_geometry(model.params.spacing), name=f"GAN interpolation {seed_a}-{seed_b}",
                     metadata={"seeds": [int(seed_a), int(seed_b)]})

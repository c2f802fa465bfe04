"""A 2D variational autoencoder (MONAI ``VarAutoEncoder``) on slices of normal scans: using a trained one.

Slices in and out of the network (:func:`prepare`), the posterior mean decoded
(:func:`decode_mean`), :func:`reconstruct`, :func:`synthesize_vae` (new slices from the
prior) and :func:`interpolate_slices` (a walk between two slices).  Training is in
:mod:`napari_medgen.tasks.vae_training`, anomaly scoring and its calibration in
:mod:`napari_medgen.tasks.anomaly`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..data.normalize import intensity_window, looks_like_hounsfield, normalize
from ..data.orientation import as_stored_like, turn, turn_back, turned
from ..data.resample import inplane_spacing, resize, target_shape
from ..data.slices import fit_to_size, mask_box, put_slices, take_slices
from ..engine.device import select_device
from ..engine.jobs import Job
from ..errors import UserError
from ..io.read import ImageData
from ..models.checkpoint import Model, as_model
from ..models.config import Task
from ..io.read import opened
from .volume_input import as_volume, check_count, stack_geometry

LOGVAR_LIMIT = 8.0  # |log variance| beyond this overflows exp() in half precision and on large slices


class OutOfDistributionWarning(UserWarning):
    """The image differs strongly from what the model was trained on."""


class NoModelError(UserError):
    """Scoring or sampling was asked for without a trained VAE."""


def guard_logvar(net: torch.nn.Module) -> torch.nn.Module:
    """Clamp the encoder's log variance (a forward hook), so exp() can never overflow into NaN."""
    if not getattr(net, "_logvar_guarded", False):
        net.logvar.register_forward_hook(lambda _m, _i, out: out.clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT))
        net._logvar_guarded = True
    return net


def check_mask(mask, shape, geometry=None) -> np.ndarray | None:
    """``mask`` (array or ImageData) as a boolean array of ``shape``; a mask with a geometry must lie on
    the image's grid (``geometry``), as a mask of the same shape from another scan or origin would score the
    wrong voxels."""
    if mask is None:
        return None
    m = np.asarray(getattr(mask, "data", mask)) > 0
    if m.shape != tuple(shape):
        raise UserError(f"The mask shape {m.shape} differs from the image shape {tuple(shape)}.")
    grid = getattr(mask, "geometry", None)
    if geometry is not None and grid is not None and not grid.same_grid(geometry):
        raise UserError("The mask is not on the image's voxel grid (its origin, spacing or direction differ); "
                        "resample it onto the image first.")
    return m


def scan_spec(volume: np.ndarray, mask: np.ndarray | None, spec: dict) -> dict:
    """The spec that scales this scan: with a mask, MRI percentiles become the window of its foreground's
    percentiles, so the amount of background around the foreground changes nothing."""
    if mask is not None and spec["kind"] == "percentile" and mask.any():
        lo, hi = intensity_window(np.asarray(volume)[mask], spec)
        return {"kind": "window", "low": lo, "high": hi}
    return spec


def normalized(volume: np.ndarray, mask: np.ndarray | None, spec: dict, clip: bool = True) -> np.ndarray:
    """``volume`` in the model's units (scaled by :func:`scan_spec`), zero outside ``mask``; ``clip=False``
    keeps what lies beyond the intensity window (bright lesions keep their order) instead of flattening it at
    0 and 1."""
    img = normalize(volume, scan_spec(volume, mask, spec), clip=clip)
    return img * mask if mask is not None else img


def _to_input_units(raw: np.ndarray, normed: np.ndarray):
    """The linear map from normalised units back to the image's own units (fit on unclipped voxels)."""
    r, n = np.asarray(raw, np.float64).ravel(), np.asarray(normed, np.float64).ravel()
    ok = (n > 1e-3) & (n < 1 - 1e-3)
    if ok.sum() < 2 or np.ptp(n[ok]) == 0:
        return 1.0, 0.0
    step = max(1, ok.sum() // 100_000)
    scale, offset = np.polyfit(n[ok][::step], r[ok][::step], 1)
    return float(scale), float(offset)


def require_vae(model) -> Model:
    """The model, checked to be a trained VAE."""
    if model is None:
        raise NoModelError("No VAE model yet: train one on normal scans or load a .medgen.pt VAE file first.")
    model = as_model(model, Task.VAE)
    if getattr(model, "task", None) != Task.VAE:
        raise NoModelError(f"This is a {getattr(model, 'task', 'unknown')} model, not a VAE.")
    return model


def check_distribution(model: Model, image, mask=None) -> list[str]:
    """Out-of-distribution messages (also emitted as :class:`OutOfDistributionWarning`)."""
    arr = as_volume(image, model="the VAE")
    m = check_mask(mask, arr.shape, getattr(image, "geometry", None))  # a wrong mask is refused before any doubt
    msgs = []
    stats = model.params.training_stats
    per_scan = (model.config.normalization or {}).get("kind") != "window"
    if per_scan and looks_like_hounsfield(arr):
        msgs.append("This image looks like a CT in Hounsfield units, but the VAE was trained on scans scaled one by one "
                    "(MRI); scores may be meaningless.")
    elif stats and not per_scan:
        vals = np.asarray(arr[m] if m is not None else arr, np.float32).ravel()[::7]
        lo, hi = np.percentile(vals, [0.5, 99.5])
        span, tspan = hi - lo, stats["high"] - stats["low"]
        off = abs((lo + hi) / 2 - (stats["low"] + stats["high"]) / 2) / max(tspan, 1e-6)
        ratio = span / max(tspan, 1e-6)
        if ratio > 3 or ratio < 1 / 3 or off > 1.5:
            msgs.append(f"Out of distribution: this image's intensities ({lo:.4g}..{hi:.4g}) differ strongly from "
                        f"the training data ({stats['low']:.4g}..{stats['high']:.4g}); scores may be meaningless.")
    if model.params.masked and mask is None:
        msgs.append("The model was trained on masked images; pass a foreground mask for meaningful scores.")
    for msg in msgs:
        warnings.warn(msg, OutOfDistributionWarning, stacklevel=3)
    return msgs


# --- inference -----------------------------------------------------------------------------------
@dataclass
class Prepared:
    """An image ready for the network, and the way back to its own grid."""

    volume: np.ndarray  # the image as given (finite)
    mask: np.ndarray | None
    normed: np.ndarray  # normalised, on the image's grid
    unclipped: np.ndarray  # the same without clipping at the intensity window (scored by "combined")
    stack: np.ndarray  # (n, 1, H, W) at the network's size and the training pixel spacing
    to_volume: Callable[[np.ndarray], np.ndarray]  # (n, 1, H, W) network output -> the image's grid


def prepare(model: Model, image, mask=None) -> Prepared:
    """Normalise, cut to the mask's in-plane bounding box (as training did), resample in-plane to the training
    pixel spacing (when both are known; one unit per pixel for a model trained on images without one) and fit
    to the network's size; slices larger than the network's field of view are refused with one sentence."""
    p = model.params
    vol = as_volume(image, model="the VAE")
    m = check_mask(mask, vol.shape, getattr(image, "geometry", None))
    normed = normalized(vol, m, model.config.normalization)
    axis = p.axis if vol.ndim == 3 else 0
    box = mask_box(m, axis) if m is not None else ...
    slices = take_slices(normed[box], axis)
    plane = slices.shape[1:]
    grid = plane
    geometry = getattr(image, "geometry", None)
    pixels = bool((model.config.training or {}).get("pixel_grid"))  # trained on images without a geometry
    if p.spacing and (pixels or (geometry is not None and vol.ndim == geometry.ndim)):
        have = (1.0, 1.0) if pixels else inplane_spacing(geometry.spacing, axis) if vol.ndim == 3 else tuple(
            geometry.spacing)
        if not np.allclose(have, p.spacing, rtol=0.02):
            grid = target_shape(plane, have, p.spacing)
            slices = resize(np.ascontiguousarray(slices), grid)
    size = tuple(p.size)
    if grid[0] > size[0] or grid[1] > size[1]:
        fix = ("give the foreground mask the VAE was trained with (only its bounding box is scored)"
               if p.masked and m is None else "crop the image to the region of interest or train the VAE on images "
               "of this size")
        raise UserError(f"The slices of this image ({grid[0]} x {grid[1]} pixels at the training spacing) are larger "
                        f"than the VAE's field of view ({size[0]} x {size[1]}); {fix}.")
    stack = fit_to_size(slices, size)[:, None].astype(np.float32)

    def to_volume(out: np.ndarray) -> np.ndarray:
        back = fit_to_size(out[:, 0], grid)
        if grid != plane:
            back = resize(np.ascontiguousarray(back), plane)
        full = np.zeros(vol.shape, np.float32)
        full[box] = put_slices(back, axis, ndim=vol.ndim)
        return full

    return Prepared(vol, m, normed, normalized(vol, m, model.config.normalization, clip=False), stack, to_volume)


def decode_mean(model: Model, stack: np.ndarray, samples: int = 0, batch: int = 32, device: str = "auto",
                job: Job | None = None, seed: int = 0) -> np.ndarray:
    """Reconstructions of a (n, 1, H, W) stack: decoded posterior mean, or mean of ``samples`` draws."""
    dev = select_device(device)
    net = guard_logvar(model.net).to(dev).eval()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = np.empty_like(stack)
    try:
        with torch.no_grad():
            for i in range(0, len(stack), batch):
                if job is not None:
                    job.check()
                x = torch.from_numpy(stack[i:i + batch]).to(dev)
                mu, logvar = net.encode_forward(x)
                if samples:
                    eps = torch.randn((samples, *mu.shape), generator=gen).to(dev)
                    z = mu[None] + eps * torch.exp(0.5 * logvar)[None]
                    rec = torch.stack([net.decode_forward(zi, net.use_sigmoid) for zi in z]).mean(0)
                else:
                    rec = net.decode_forward(mu, net.use_sigmoid)
                out[i:i + batch] = rec.float().cpu().numpy()
    finally:
        net.cpu()
    return out


def reconstruct(model: Model, image, mask=None, *, device: str = "auto", progress=None, stop=None) -> np.ndarray:
    """The VAE's reconstruction of ``image`` (same shape, in the image's own intensity units; a volume stored in
    another orientation than the training scans is reconstructed as they were stored and turned back)."""
    job = Job.of(progress, stop)
    model, image, mask = require_vae(model), opened(image), opened(mask)  # files read once
    how = as_stored_like(image, model.params.orientation)
    if how is not None:
        mask = check_mask(mask, np.shape(image.data), image.geometry)
        return turn_back(reconstruct(model, turned(image, how), None if mask is None else turn(mask, how),
                                     device=device, progress=job), how)
    check_distribution(model, image, mask)
    prep = prepare(model, image, mask)
    rec = prep.to_volume(decode_mean(model, prep.stack, device=device, job=job))
    if prep.mask is not None:
        rec = rec * prep.mask
    scale, offset = _to_input_units(prep.volume, prep.normed)
    job.report(1, 1, "reconstructed")
    return (rec * scale + offset).astype(np.float32)


def _decode(model: Model, z: torch.Tensor, scale: float, offset: float, device: str = "auto") -> np.ndarray:
    dev = select_device(device)
    net = model.net.to(dev).eval()
    try:
        with torch.no_grad():
            out = net.decode_forward(z.to(dev), net.use_sigmoid).float().cpu().numpy()
    finally:
        net.cpu()
    return (fit_to_size(out[:, 0], tuple(model.params.slice_shape)) * scale + offset).astype(np.float32)


def synthesize_vae(model: Model, n: int = 8, *, seed: int = 0, temperature: float = 1.0, device: str = "auto",
                   progress=None, stop=None) -> ImageData:
    """``n`` slices drawn from the prior (sample i depends only on seed and i) as an (n, H, W) stack in
    the training intensity scale and pixel spacing."""
    n = check_count(n)
    job = Job.of(progress, stop)
    model = require_vae(model)
    latent = int(model.config.networks["net"].args["latent_size"])
    z = torch.randn((n, latent), generator=torch.Generator().manual_seed(int(seed))) * float(temperature)
    job.check()
    lo, hi = model.params.intensity or (0.0, 1.0)
    out = _decode(model, z, hi - lo, lo, device)
    job.report(1, 1, "sampled")
    return ImageData(out, stack_geometry(model.params.spacing), name=f"VAE samples seed {seed}",
                     metadata={"seed": int(seed), "model": model.name})


def interpolate_slices(model: Model, image, index_a: int, index_b: int, steps: int = 8, mask=None, *,
                       device: str = "auto", progress=None, stop=None) -> np.ndarray:
    """Decode ``steps`` points on the line between the encodings of two slices (the first is slice
    ``index_a``'s): (steps, H, W) at the training pixel spacing (:func:`stack_geometry` of
    ``model.params.spacing``), in the image's intensity units.  A volume stored in another orientation than
    the training scans is turned to theirs first, as :func:`reconstruct` does: the slices are those the model
    cuts, numbered along the image's own array axis that runs across them."""
    steps = check_count(steps, "interpolation steps")
    job = Job.of(progress, stop)
    model, image, mask = require_vae(model), opened(image), opened(mask)
    shape = as_volume(image, model="the VAE").shape  # a 1D or 4D array is refused before its slices are counted
    how = as_stored_like(image, model.params.orientation)
    axis = (model.params.axis if len(shape) == 3 else 0) if how is None else how[0][model.params.axis]
    n = shape[axis] if len(shape) == 3 else 1
    for idx in (index_a, index_b):
        if not 0 <= idx < n:
            raise UserError(f"Slice {idx} is outside the image (0..{n - 1} along its axis {axis}).")
    if how is not None:
        mask = check_mask(mask, shape, image.geometry)
        image, mask = turned(image, how), None if mask is None else turn(mask, how)
        if how[1][model.params.axis]:
            index_a, index_b = n - 1 - index_a, n - 1 - index_b
    prep = prepare(model, image, mask)
    job.check()
    dev = select_device(device)
    net = model.net.to(dev).eval()
    try:
        with torch.no_grad():
            mu, _ = net.encode_forward(torch.from_numpy(prep.stack[[index_a, index_b]]).to(dev))
    finally:
        net.cpu()
    t = torch.linspace(0, 1, steps)[:, None]
    z = mu[0][None].cpu() * (1 - t) + mu[1][None].cpu() * t
    scale, offset = _to_input_units(prep.volume, prep.normed)
    out = _decode(model, z, scale, offset, device)
    job.report(1, 1, "interpolated")
    return out

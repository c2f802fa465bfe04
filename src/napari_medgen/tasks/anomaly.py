"""Anomaly heatmaps from a VAE trained on normal scans, with the post-processing of Baur et al.

Score per voxel = the part of the image the VAE cannot explain: ``x - x_normal``, where
``x_normal`` is

- ``"residual"``: the decoded posterior mean (the plain reconstruction residual);
- ``"samples"``: the mean of several decoded posterior samples;
- ``"restoration"``: a MAP restoration (after You et al., MIDL 2019): ``x`` is moved by
  gradient descent towards an image the VAE finds likely (low negative ELBO) while staying
  close to ``x`` in L1, so normal anatomy is kept sharp and only what looks abnormal changes.

Post-processing (Baur et al., MedIA 2021): keep the sign that matters (``"positive"`` for
bright lesions, ``"negative"`` for dark, ``"both"``), restrict to the foreground mask,
median filter in-plane, and drop connected components smaller than ``min_size`` voxels
from the thresholded mask. The threshold is a high percentile of the scores of normal
validation slices, stored in the model at training time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from ..engine.device import select_device
from ..engine.jobs import Job
from ..models.checkpoint import Model
from .vae import PERCENTILES, check_distribution, decode_mean, from_slices, prepare, require_vae, to_slices
from ..errors import UserError

METHODS = ("restoration", "samples", "residual")
SIGNS = ("both", "positive", "negative")
DEFAULTS = {"method": "restoration", "sign": "both", "percentile": 99.0, "median": 5, "min_size": 10,
            "samples": 8, "restore_steps": 30, "restore_weight": 0.05, "restore_lr": 0.1}


@dataclass
class AnomalyResult:
    """Heatmap, thresholded mask and per-slice scores of one image."""

    score: np.ndarray  # float32, same shape as the image, >= 0
    threshold: float
    mask: np.ndarray  # bool, same shape
    slice_scores: np.ndarray  # anomalous voxels per slice along ``axis``
    axis: int = 0
    reconstruction: np.ndarray | None = None  # the "normal" image, normalised units
    warnings: list = field(default_factory=list)
    method: str = "residual"
    sign: str = "both"
    min_size: int = 10

    def rethreshold(self, threshold: float) -> None:
        """New threshold: recompute the mask and slice scores (no model run)."""
        self.threshold = float(threshold)
        self.mask = anomaly_mask(self.score, self.threshold, self.min_size)
        self.slice_scores = slice_scores(self.mask, self.axis)


def restore(model: Model, stack: np.ndarray, mask: np.ndarray | None = None, *, steps: int = 30,
            weight: float = 0.05, lr: float = 0.1, batch: int = 32, device: str = "auto",
            job: Job | None = None) -> np.ndarray:
    """MAP restoration of a (n, 1, H, W) stack by gradient descent on ``y`` from ``x``:
    minimise ``|D(E(y)) - y|^2 + beta KL(y) + weight |y - x|_1`` (per pixel), so a pixel moves
    only where the VAE pulls harder than ``weight``: small normal residuals stay, lesions go."""
    dev = select_device(device)
    net = model.net.to(dev).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    beta = float(model.config.get("beta", 0.05))
    out = np.empty_like(stack)
    try:
        for i in range(0, len(stack), batch):
            x0 = torch.from_numpy(stack[i:i + batch]).to(dev)
            keep = torch.from_numpy(mask[i:i + batch]).to(dev).float() if mask is not None else torch.ones_like(x0)
            y = x0.clone().requires_grad_(True)
            for _ in range(steps):
                if job is not None:
                    job.check()
                mu, logvar = net.encode_forward(y)
                rec = net.decode_forward(mu, net.use_sigmoid)
                kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
                loss = torch.sum((rec - y) ** 2) + beta * kl.sum() + weight * torch.sum(torch.abs(y - x0))
                (grad,) = torch.autograd.grad(loss, y)
                with torch.no_grad():
                    y -= lr * grad * keep
            out[i:i + batch] = y.detach().cpu().numpy()
    finally:
        for p in net.parameters():
            p.requires_grad_(True)
        net.cpu()
    return out


def normal_estimate(model: Model, stack: np.ndarray, mask: np.ndarray | None, method: str, *,
                    samples: int = 8, device: str = "auto", job: Job | None = None, **restore_kw) -> np.ndarray:
    """The VAE's estimate of the normal image for each slice of a (n, 1, H, W) stack."""
    if method == "residual":
        return decode_mean(model, stack, device=device, job=job)
    if method == "samples":
        return decode_mean(model, stack, samples=samples, device=device, job=job)
    if method == "restoration":
        return restore(model, stack, mask, device=device, job=job, **restore_kw)
    raise UserError(f"Unknown anomaly method '{method}'; use one of {', '.join(METHODS)}.")


def postprocess(residual: np.ndarray, sign: str = "both", mask: np.ndarray | None = None,
                median: int = 5, axis: int = 0) -> np.ndarray:
    """Signed residual -> non-negative score: sign selection, mask restriction, in-plane median filter."""
    if sign == "both":
        score = np.abs(residual)
    elif sign == "positive":
        score = np.clip(residual, 0, None)
    elif sign == "negative":
        score = np.clip(-residual, 0, None)
    else:
        raise UserError(f"Unknown sign '{sign}'; use one of {', '.join(SIGNS)}.")
    if mask is not None:
        score = score * mask
    if median and median > 1:
        size = [median] * score.ndim
        if score.ndim == 3:
            size[axis] = 1
        score = ndimage.median_filter(score, size=size)
    if mask is not None:
        score = score * mask
    return score.astype(np.float32)


def anomaly_mask(score: np.ndarray, threshold: float, min_size: int = 10) -> np.ndarray:
    """Voxels above ``threshold``, without connected components smaller than ``min_size`` voxels."""
    binary = score > threshold
    if min_size and min_size > 1 and binary.any():
        lab, n = ndimage.label(binary)
        sizes = np.bincount(lab.ravel())
        small = sizes < min_size
        small[0] = True
        binary = ~small[lab]
    return binary


def slice_scores(mask: np.ndarray, axis: int = 0) -> np.ndarray:
    """Anomalous voxels in each slice along ``axis`` (the order in which to look at slices)."""
    m = np.asarray(mask, bool)
    if m.ndim == 2:
        return np.array([m.sum()])
    return np.moveaxis(m, axis, 0).reshape(m.shape[axis], -1).sum(axis=1)


def calibrate(model: Model, val_slices: np.ndarray, device: str = "auto") -> None:
    """Store percentiles of the scores of normal validation slices (n, H, W) for every method and sign."""
    stack = val_slices[:, None].astype(np.float32)
    fg = stack > 0 if model.config.get("masked") else None
    table = {}
    for method in METHODS:
        normal = normal_estimate(model, stack, fg, method, samples=DEFAULTS["samples"], device=device,
                                 **_restore_kw(DEFAULTS) if method == "restoration" else {})
        for sign in SIGNS:
            score = postprocess((stack - normal)[:, 0], sign, None if fg is None else fg[:, 0], DEFAULTS["median"])
            vals = score[fg[:, 0]] if fg is not None else score.ravel()
            table[f"{method}/{sign}"] = [float(v) for v in np.percentile(vals, PERCENTILES)]
    model.config["thresholds"] = {"percentiles": PERCENTILES, "values": table}


def normal_threshold(model: Model, method: str, sign: str, percentile: float) -> float:
    """The score at ``percentile`` of normal validation voxels, from the model's calibration."""
    cal = model.config.get("thresholds", {})
    vals = cal.get("values", {}).get(f"{method}/{sign}")
    if vals is None:
        raise UserError(f"This model has no calibrated threshold for {method}/{sign}; give a threshold.")
    return float(np.interp(percentile, cal["percentiles"], vals))


def _restore_kw(opts: dict) -> dict:
    return {"steps": opts["restore_steps"], "weight": opts["restore_weight"], "lr": opts["restore_lr"]}


def anomaly_map(model: Model, image, mask=None, *, method: str | None = None, sign: str | None = None,
                percentile: float | None = None, threshold: float | None = None, median: int | None = None,
                min_size: int | None = None, samples: int | None = None, device: str = "auto",
                progress=None, stop=None) -> AnomalyResult:
    """Score every voxel of ``image`` (same shape) for how far it departs from normal anatomy.

    Defaults come from the model's ``config["scoring"]`` and then :data:`DEFAULTS`. The mask's
    threshold is ``threshold`` if given, else the ``percentile`` of normal validation scores.
    Raises :class:`~napari_medgen.engine.jobs.Cancelled` on stop (no partial output).
    """
    job = Job.of(progress, stop)
    require_vae(model)
    opts = {**DEFAULTS, **model.config.get("scoring", {})}
    given = {"method": method, "sign": sign, "percentile": percentile, "median": median,
             "min_size": min_size, "samples": samples}
    opts.update({k: v for k, v in given.items() if v is not None})
    if opts["method"] not in METHODS:
        raise UserError(f"Unknown anomaly method '{opts['method']}'; use one of {', '.join(METHODS)}.")
    msgs = check_distribution(model, image, mask)
    axis = model.config.get("axis", 0)
    vol, m, normed, stack = prepare(model, image, mask)
    job.report(0, 2, "scoring")
    fg_stack = None if m is None else to_slices(m.astype(np.float32), model.config["size"], axis) > 0.5
    busy = fg_stack.reshape(len(stack), -1).any(1) if fg_stack is not None else stack.reshape(len(stack), -1).any(1)
    normal = stack.copy()  # slices without foreground score zero
    if busy.any():
        normal[busy] = normal_estimate(model, stack[busy], None if fg_stack is None else fg_stack[busy],
                                       opts["method"], samples=opts["samples"], device=device, job=job,
                                       **_restore_kw(opts))
    normal_vol = from_slices(normal, vol.shape, axis)
    score = postprocess(normed - normal_vol, opts["sign"], m, opts["median"], axis)
    thr = float(threshold) if threshold is not None else normal_threshold(
        model, opts["method"], opts["sign"], opts["percentile"])
    binary = anomaly_mask(score, thr, opts["min_size"])
    job.report(2, 2, "scored")
    return AnomalyResult(score, thr, binary, slice_scores(binary, axis), axis, normal_vol.astype(np.float32), msgs,
                         opts["method"], opts["sign"], int(opts["min_size"]))


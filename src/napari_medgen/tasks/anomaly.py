"""Anomaly heatmaps from a VAE trained on normal scans, with the post-processing of Baur et al.

Score per voxel = the part of the image the model of normal anatomy cannot explain: ``x - x_normal``,
where ``x_normal`` is

- ``"residual"``: the decoded posterior mean (the plain reconstruction residual);
- ``"samples"``: the mean of several decoded posterior samples;
- ``"restoration"``: a MAP restoration (after You et al., MIDL 2019): ``x`` is moved by
  gradient descent towards an image the VAE finds likely while staying close to ``x`` in L1;
- ``"diffusion"``: a diffusion model's restoration from partial noise (AnoDDPM; the model's network
  ``"diffusion"``, added by :func:`~napari_medgen.tasks.diffusion_training.add_diffusion`);
- ``"intensity"``: no network: the distance (in standard deviations) to the nearest normal
  tissue intensity, a per-tissue intensity model fitted on the normal validation slices;
- ``"combined"``: what the threshold knows and what the model knows.  Its parts are the plain
  intensity (distance from the scan's foreground median in units of its interquartile range: the
  threshold itself, standardised per scan) and the restoration residual, centred per tissue on the
  scan itself (:func:`tissue_centred`) and rescaled so that its 2% tail matches that of normal
  validation slices (a new subject, scanner or resolution changes the residual's spread); each is
  turned into a tail probability ``p`` against the same part's scores on normal validation slices
  (``-log10 p``, so both share one calibrated scale).  Brighter than normal: the plain intensity
  alone (the restoration does not remove bright lesions reliably enough to add to it); darker than
  normal: the restoration residual (normal CSF is as dark as a dark lesion; only the model's
  anatomy tells them apart), plus, when only dark lesions are asked for, plain darkness up to its
  1% normal tail.  So bright lesions keep the threshold's order and dark ones get the model's.

Post-processing (Baur et al., MedIA 2021): keep the sign that matters (``"positive"`` for
bright lesions, ``"negative"`` for dark, ``"both"``), restrict to the foreground mask,
median filter in-plane, and drop connected components smaller than ``min_size`` voxels
from the thresholded mask.  The threshold is a high percentile of the scores of normal
validation slices, calibrated here (:func:`calibrate`) when the VAE is trained.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import ndimage

from ..data.orientation import as_stored_like, turn, turn_back, turned
from ..engine.device import select_device
from ..engine.jobs import Job
from ..errors import UserError
from ..models.checkpoint import Model
from ..io.read import opened
from .diffusion_restore import diffusion_restore, has_diffusion, require_diffusion
from .anomaly_scores import (PART_NAMES, PARTS, SIGNS, TAILS, combine, combined_parts, postprocess,
                             signed_part)
from .vae import check_distribution, check_mask, decode_mean, guard_logvar, prepare, require_vae

METHODS = ("combined", "restoration", "samples", "residual", "intensity", "diffusion")  # diffusion: if the model has it
PERCENTILES = [50.0, 90.0, 95.0, 98.0, 99.0, 99.5, 99.9]
DEFAULTS = {"method": "combined", "sign": "both", "percentile": 99.0, "median": 5, "min_size": 10,
            "samples": 8, "restore_steps": 30, "restore_weight": 0.05, "restore_lr": 0.1}
EXPLAIN = {
    "combined": "combined: brighter than normal from plain intensity (what a threshold sees), darker than normal "
                "from the VAE restoration residual, centred per tissue and calibrated on normal scans",
    "restoration": "VAE restoration residual: what the VAE removes when asked for the nearest normal image",
    "samples": "mean of VAE posterior samples: reconstruction residual averaged over samples",
    "residual": "plain VAE reconstruction residual (fast, blurrier)",
    "intensity": "intensity outlier: distance to the nearest normal tissue intensity, in standard deviations",
    "diffusion": "diffusion restoration residual: what a diffusion model of normal slices does not put back when "
                 "the slice is partly noised and denoised (AnoDDPM, Gaussian noise)",
}


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
    explanation: str = ""  # which method, and for "combined" which part flagged the voxels

    def turned_back(self, how) -> "AnomalyResult":
        """This result of a reoriented image (:mod:`napari_medgen.data.orientation`) on the image as stored."""
        back = {k: None if getattr(self, k) is None else turn_back(getattr(self, k), how)
                for k in ("score", "mask", "reconstruction")}
        axis = int(how[0][self.axis])
        return replace(self, **back, axis=axis, slice_scores=slice_scores(back["mask"], axis))

    def rethreshold(self, threshold: float) -> None:
        """New threshold: recompute the mask and slice scores (no model run)."""
        self.threshold = float(threshold)
        self.mask = anomaly_mask(self.score, self.threshold, self.min_size)
        self.slice_scores = slice_scores(self.mask, self.axis)


# --- the normal estimate -------------------------------------------------------------------------
def restore(model: Model, stack: np.ndarray, mask: np.ndarray | None = None, *, steps: int = 30,
            weight: float = 0.05, lr: float = 0.1, batch: int = 32, device: str = "auto",
            job: Job | None = None) -> np.ndarray:
    """MAP restoration of a (n, 1, H, W) stack by gradient descent on ``y`` from ``x``:
    minimise ``|D(E(y)) - y|^2 + beta KL(y) + weight |y - x|_1`` (per pixel), so a pixel moves
    only where the VAE pulls harder than ``weight``: small normal residuals stay, lesions go."""
    dev = select_device(device)
    net = guard_logvar(model.net).to(dev).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    beta = float(model.params.beta)
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
            if job is not None:
                job.report(min(i + batch, len(stack)), len(stack), "restoring slices")
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
    if method == "diffusion":
        return diffusion_restore(model, stack, mask, device=device, job=job)
    raise UserError(f"Unknown anomaly method '{method}'; use one of {', '.join(METHODS)}.")


# --- per-tissue intensity model -----------------------------------------------------------------
def tissue_model(slices: np.ndarray, k: int = 4, iterations: int = 30) -> dict:
    """Means and standard deviations of ``k`` intensity classes (1D k-means) of normal normalised slices
    (exact zeros, the masked-out background, are left out)."""
    vals = np.asarray(slices, np.float32).ravel()
    vals = vals[vals > 1e-4][:: max(1, vals.size // 400_000)]
    if vals.size < 10 * k:
        return {"means": [0.5], "sds": [0.5]}
    means = np.quantile(vals, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        label = np.abs(vals[:, None] - means[None]).argmin(1)
        means = np.array([vals[label == c].mean() if (label == c).any() else means[c] for c in range(k)])
    label = np.abs(vals[:, None] - means[None]).argmin(1)
    sds = np.array([max(float(vals[label == c].std()) if (label == c).sum() > 1 else 0.0, 0.02) for c in range(k)])
    return {"means": [float(m) for m in means], "sds": [float(s) for s in sds]}


def intensity_outlier(normed: np.ndarray, tissue: dict) -> np.ndarray:
    """Signed distance to the nearest normal tissue intensity, in that tissue's standard deviations."""
    mu, sd = np.asarray(tissue["means"], np.float32), np.asarray(tissue["sds"], np.float32)
    x = np.asarray(normed, np.float32)
    best = None
    for m, s in zip(mu, sd):
        z = (x - m) / s
        best = z if best is None else np.where(np.abs(z) < np.abs(best), z, best)
    return best.astype(np.float32)


# --- post-processing ---------------------------------------------------------------------------
def anomaly_mask(score: np.ndarray, threshold: float, min_size: int = 10) -> np.ndarray:
    """Voxels above ``threshold``, without connected components smaller than ``min_size`` voxels."""
    binary = score > threshold
    if min_size and min_size > 1 and binary.any():
        lab, _ = ndimage.label(binary)
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


# --- scores and their calibration ---------------------------------------------------------------
def _restore_kw(opts: dict) -> dict:
    return {"steps": opts["restore_steps"], "weight": opts["restore_weight"], "lr": opts["restore_lr"]}


def scores(model: Model, normed: np.ndarray, normal: np.ndarray | None, method: str, sign: str,
           mask: np.ndarray | None, median: int, axis: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(score, which) for a normalised image and the VAE's normal estimate of it (same shape);
    ``which`` (combined only) is the index in :data:`PARTS` of the part that set each voxel's score."""
    if method in ("intensity", "combined") and not model.params.tissue:
        raise UserError("This model has no intensity model (trained by an older version); choose the "
                        "residual, samples or restoration method, or train it again.")
    if method == "intensity":
        return postprocess(intensity_outlier(normed, model.params.tissue), sign, mask, median, axis), None
    if method == "combined":
        return combine(combined_parts(model, normed, normal, sign, mask, median, axis), mask)
    return postprocess(normed - normal, sign, mask, median, axis), None


CALIBRATED = ("residual", "samples", "restoration", "intensity", "combined", "diffusion")  # in the order measured


def calibrate(model: Model, val_slices: np.ndarray, device: str = "auto", job: Job | None = None,
              unclipped: np.ndarray | None = None, methods: tuple | None = None) -> None:
    """Store percentiles of the scores of normal validation slices (n, H, W) for every method the model has
    and every sign, and the tail quantiles of every part of "combined" (measured first: "combined" is in
    their units), which scores ``unclipped`` (the same slices not clipped at the intensity window) where
    given.  With ``methods`` (e.g. ``("diffusion",)`` after that network was added) only those are
    measured and the rest of the calibration is kept."""
    stack = val_slices[:, None].astype(np.float32)
    raw = stack[:, 0] if unclipped is None else np.asarray(unclipped, np.float32)
    fg = stack[:, 0] > 0 if model.params.masked else None
    if not (methods and model.params.thresholds):
        model.params.thresholds = {"percentiles": PERCENTILES, "values": {}, "tails": {}}
    cal = model.params.thresholds
    table, tails = cal["values"], cal.setdefault("tails", {})
    wanted = set(methods or [m for m in CALIBRATED if m != "diffusion" or has_diffusion(model)])
    order = [m for m in CALIBRATED if m in wanted or (m == "restoration" and "combined" in wanted)]
    normals = {}
    for k, method in enumerate(order):
        if job is not None:
            job.report(k, len(order), "calibrating thresholds")
        if method in ("residual", "samples", "restoration", "diffusion"):
            kw = _restore_kw(DEFAULTS) if method == "restoration" else {}
            normals[method] = normal_estimate(model, stack, None if fg is None else fg[:, None], method,
                                              samples=DEFAULTS["samples"], device=device, job=job, **kw)[:, 0]
        if method == "combined":
            normals["combined"] = raw + normals["restoration"] - stack[:, 0]
            for part in PARTS:
                signed = signed_part(part, raw, raw - normals["combined"], fg)
                for tail in ("positive", "negative"):
                    score = postprocess(signed, tail, fg, DEFAULTS["median"])
                    vals = score[fg] if fg is not None else score.ravel()
                    tails[f"{part}/{tail}"] = [float(v) for v in np.quantile(vals, 1 - np.asarray(TAILS))]
        for sign in SIGNS:
            score, _ = scores(model, raw if method == "combined" else stack[:, 0],
                              normals.get(method, normals.get("restoration")), method, sign, fg, DEFAULTS["median"])
            vals = score[fg] if fg is not None else score.ravel()
            table[f"{method}/{sign}"] = [float(v) for v in np.percentile(vals, cal["percentiles"])]


def calibration_seconds(model: Model, val_slices: np.ndarray, unclipped: np.ndarray, device: str = "auto",
                        job: Job | None = None, enough: float = float("inf")) -> float:
    """About how long :func:`calibrate` takes on ``val_slices``: one slice calibrated on a copy of the model,
    timed after a warm-up run (the first run pays for setting up the network) unless that run already took
    ``enough`` seconds (a second one would eat into the budget), times the number of slices."""
    probe = model.copy()
    for _ in range(2):
        t0 = time.monotonic()
        calibrate(probe, val_slices[:1], device=device, job=job, unclipped=unclipped[:1])
        took = time.monotonic() - t0
        if took >= enough:
            break
    return took * len(val_slices)


def normal_threshold(model: Model, method: str, sign: str, percentile: float) -> float:
    """The score at ``percentile`` of normal validation voxels, from the model's calibration."""
    cal = model.params.thresholds or {}
    vals = cal.get("values", {}).get(f"{method}/{sign}")
    if vals is None:
        raise UserError(f"This model has no calibrated threshold for {method}/{sign}; give a threshold.")
    return float(np.interp(percentile, cal["percentiles"], vals))


def brain_mri(model: Model, ndim: int) -> bool:
    """Whether the model's normal scans look like brain MRI: volumes (``ndim`` of the scored image for models
    that did not record theirs) scaled one by one, named MR or unnamed (as NIfTI brains are), not CT."""
    done = model.config.training or {}
    return ((model.config.normalization or {}).get("kind") != "window" and done.get("modality", "") in ("", "MR")
            and done.get("ndim", ndim) == 3)


def _explain(method: str, which: np.ndarray | None, binary: np.ndarray, brain: bool = False) -> str:
    text = EXPLAIN[method] + (" (normal CSF is dark too)" if brain and method == "combined" else "")
    if which is not None and binary.any():
        shares = np.bincount(which[binary], minlength=len(PARTS)) / binary.sum()
        text += f". Flagged {'voxels' if binary.ndim == 3 else 'pixels'}, by the part that flagged them: " + ", ".join(
            f"{PART_NAMES[p]} {100 * v:.0f}%" for p, v in zip(PARTS, shares)) + "."
    return text


def anomaly_map(model: Model, image, mask=None, *, method: str | None = None, sign: str | None = None,
                percentile: float | None = None, threshold: float | None = None, median: int | None = None,
                min_size: int | None = None, samples: int | None = None, device: str = "auto",
                progress=None, stop=None) -> AnomalyResult:
    """Score every voxel of ``image`` (array or ImageData; same shape out) for how far it departs from
    normal anatomy.

    Defaults come from the model's ``params.scoring`` and then :data:`DEFAULTS`.  A volume stored in another
    orientation than the training scans is scored as they were stored (axes permuted and flipped, no
    resampling) and the result turned back. The mask's
    threshold is ``threshold`` if given, else the ``percentile`` of normal validation scores.
    An ImageData whose pixel spacing differs from the training spacing is resampled to it and the
    result back.  Raises :class:`~napari_medgen.engine.jobs.Cancelled` on stop (no partial output).
    """
    job = Job.of(progress, stop)
    model, image, mask = require_vae(model), opened(image), opened(mask)  # files read once
    how = as_stored_like(image, model.params.orientation)
    if how is not None:  # stored in another axis order or sense than the training scans: scored as they were
        mask = check_mask(mask, np.shape(image.data), image.geometry)
        return anomaly_map(model, turned(image, how), None if mask is None else turn(mask, how),
                           method=method, sign=sign, percentile=percentile, threshold=threshold, median=median,
                           min_size=min_size, samples=samples, device=device, progress=job).turned_back(how)
    opts = {**DEFAULTS, **(model.params.scoring or {})}
    given = {"method": method, "sign": sign, "percentile": percentile, "median": median,
             "min_size": min_size, "samples": samples}
    opts.update({k: v for k, v in given.items() if v is not None})
    if opts["method"] not in METHODS:
        raise UserError(f"Unknown anomaly method '{opts['method']}'; use one of {', '.join(METHODS)}.")
    if opts["method"] == "diffusion":
        require_diffusion(model)
    msgs = check_distribution(model, image, mask)
    prep = prepare(model, image, mask)
    axis = model.params.axis if prep.volume.ndim == 3 else 0
    job.report(0, 2, "scoring")
    net_method = "restoration" if opts["method"] == "combined" else opts["method"]
    change = None
    if net_method != "intensity":
        stack = prep.stack
        fg_stack = stack > 0 if prep.mask is not None else None  # masked images are zero outside
        busy = stack.reshape(len(stack), -1).any(1)
        change = np.zeros_like(stack)  # slices without foreground score zero
        if busy.any():
            change[busy] = normal_estimate(model, stack[busy], None if fg_stack is None else fg_stack[busy],
                                           net_method, samples=opts["samples"], device=device, job=job,
                                           **_restore_kw(opts)) - stack[busy]
        # a faithful normal image: the image's own detail plus the model's change, brought back to its grid
        # (resampling the model's image instead would flag all detail finer than the training spacing)
        change = prep.to_volume(change)
        if prep.mask is not None:
            change = change * prep.mask
    normed = prep.unclipped if opts["method"] == "combined" else prep.normed
    normal_vol = None if net_method == "intensity" else normed + change
    score, which = scores(model, normed, normal_vol, opts["method"], opts["sign"], prep.mask, opts["median"], axis)
    thr = float(threshold) if threshold is not None else normal_threshold(
        model, opts["method"], opts["sign"], opts["percentile"])
    binary = anomaly_mask(score, thr, opts["min_size"])
    job.report(2, 2, "scored")
    return AnomalyResult(score, thr, binary, slice_scores(binary, axis), axis, normal_vol, msgs, opts["method"],
                         opts["sign"], int(opts["min_size"]),
                         _explain(opts["method"], which, binary, brain_mri(model, prep.volume.ndim)))

"""The combined anomaly score: its parts (plain intensity, the restoration residual centred per tissue),
their calibration to tail probabilities on normal validation slices, and the shared post-processing
(sign selection, mask, in-plane median filter).  :mod:`napari_medgen.tasks.anomaly` explains the score."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import UserError
from ..models.checkpoint import Model

SIGNS = ("both", "positive", "negative")
TAILS = [1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4]  # calibrated tail probabilities
PARTS = ("brightness", "restoration")  # the parts of "combined"
# the parts each tail uses, its lead first: brighter than normal is what a threshold knows; darker is left to
# the model (normal CSF is as dark as a dark lesion: only anatomy tells them apart), plain darkness supporting it
# (capped at GATE) when the dark tail is asked for alone
TAIL_PARTS = {"positive": ("brightness",), "negative": ("restoration", "brightness")}
GATE = 2.0  # -log10 p: a supporting part counts up to its 1% normal tail, never beyond
RESCALE_TAIL = 0.02  # each scan's restoration residual is rescaled to match normal validation at this tail
TISSUE_BINS = 24  # the restoration residual is centred per bin of normal-estimate intensity
PART_NAMES = {"brightness": "plain intensity", "restoration": "VAE restoration residual"}


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


def robust_z(normed: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The plain threshold's view: intensity minus the scan's own foreground median, in units of its
    interquartile range (per-scan standardisation: another scanner or subject lands on the same scale)."""
    x = np.asarray(normed, np.float32)
    fg = x[mask] if mask is not None else x[x > 1e-4]
    if fg.size < 100:
        return np.zeros_like(x)
    q1, med, q3 = np.percentile(fg[:: max(1, fg.size // 400_000)], [25, 50, 75])
    out = (x - med) / max(q3 - q1, 1e-6)
    return (out if mask is None else out * mask).astype(np.float32)


def tissue_centred(residual: np.ndarray, normal: np.ndarray, mask: np.ndarray | None, bins: int = TISSUE_BINS):
    """``residual`` minus the scan's own median residual among voxels whose normal estimate is equally bright
    (``bins`` quantile bins of the foreground).  A restoration changes each tissue by its own systematic amount
    (on the benchmark's brains it brightened white matter and darkened the ventricles), and by a different amount
    on each scan and resolution; a lesion is what departs from its tissue's change.  Medians over bins of thousands of
    voxels are robust to lesions covering a few percent of the brain."""
    r = np.asarray(residual, np.float32)
    fg = mask if mask is not None else np.asarray(normal) > 1e-4
    if fg.sum() < 20 * bins:
        return r
    ref, v = np.asarray(normal, np.float32)[fg], r[fg]
    which = np.digitize(ref, np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    order = np.argsort(which, kind="stable")
    starts = np.searchsorted(which[order], np.arange(bins))
    medians = np.array([np.median(part) if part.size else 0.0 for part in np.split(v[order], starts[1:])])
    out = np.zeros_like(r)
    out[fg] = v - medians[which]
    return out


def signed_part(part: str, normed: np.ndarray, residual: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """A part of the combined score before sign selection: positive where brighter than normal."""
    if part == "brightness":
        return robust_z(normed, mask)
    return tissue_centred(residual, np.asarray(normed, np.float32) - residual, mask)


def surprise(score: np.ndarray, values) -> np.ndarray:
    """``-log10`` of the tail probability of ``score`` under normal scores whose quantiles at the tail
    probabilities :data:`TAILS` are ``values``; beyond the largest, the tail continues exponentially."""
    q, first = np.unique(np.asarray(values, np.float64), return_index=True)
    logp = -np.log10(np.asarray(TAILS, np.float64))[first]
    if len(q) < 2:
        return (score > q[0]).astype(np.float32) * logp[-1]
    slope = (logp[-1] - logp[-2]) / max(q[-1] - q[-2], 1e-9)
    out = np.interp(score, q, logp)
    beyond = score > q[-1]
    out[beyond] = logp[-1] + slope * (score[beyond] - q[-1])
    return out.astype(np.float32)


def tails_of(model: Model) -> dict:
    tails = (model.params.thresholds or {}).get("tails")
    if not tails:
        raise UserError("This model has no calibration for combined scores (trained by an older version); choose "
                        "the residual, samples, restoration or intensity method, or train it again.")
    return tails


def combined_parts(model: Model, normed: np.ndarray, normal: np.ndarray, sign: str, mask: np.ndarray | None,
                   median: int, axis: int = 0) -> dict:
    """``{"part/tail": surprise map}`` for the parts of "combined" in every tail that ``sign`` keeps
    (:data:`TAIL_PARTS`; with both signs only each tail's lead: plain darkness would lift normal CSF
    above faint lesions of either kind)."""
    tails = tails_of(model)
    out = {}
    for tail in (("positive", "negative") if sign == "both" else (sign,)):
        for part in TAIL_PARTS[tail][:1] if sign == "both" else TAIL_PARTS[tail]:
            score = postprocess(signed_part(part, normed, normed - normal, mask), tail, mask, median, axis)
            table = tails[f"{part}/{tail}"]
            out[f"{part}/{tail}"] = surprise(score if part == "brightness" else rescaled(score, table, mask), table)
    return out


def rescaled(score: np.ndarray, table, mask: np.ndarray | None, tail: float = RESCALE_TAIL) -> np.ndarray:
    """``score`` scaled so that its own ``tail`` quantile (over ``mask``) is that of normal validation scores
    (``table``, at :data:`TAILS`): the scan is mostly normal, lesions cover far less than ``tail`` of it."""
    vals = score[mask] if mask is not None else score.ravel()
    own = float(np.quantile(vals, 1 - tail)) if vals.size else 0.0
    normal = float(np.interp(-np.log10(tail), -np.log10(np.asarray(TAILS)), table))
    return score * (normal / own) if own > 1e-9 and normal > 0 else score


def combine(parts: dict, mask: np.ndarray | None = None, gate: float = GATE) -> tuple[np.ndarray, np.ndarray]:
    """(score, which part contributed most): each tail's lead part (the first of :data:`TAIL_PARTS`) in
    full, a supporting part up to ``gate`` (its normal 1% tail): it orders what the lead leaves tied or
    unsure but can never outweigh the lead's extreme evidence."""
    leads = {f"{v[0]}/{k}" for k, v in TAIL_PARTS.items()}
    terms = np.stack([v if k in leads else np.minimum(v, gate) for k, v in parts.items()])
    which = np.array([PARTS.index(k.split("/")[0]) for k in parts])[terms.argmax(0)]
    score = terms.sum(0)
    return (score if mask is None else score * mask).astype(np.float32), which

"""Which slice to annotate next: unannotated slices ranked by the model's uncertainty.

The score of a slice is the normalised predictive entropy of the flip-averaged
(test-time augmented) class probabilities summed over the slice's foreground (image above
its 10th percentile) per slice pixel: the expected share of uncertain object pixels, high
where the model is unsure or flipped predictions disagree.  It is damped for slices close
to an annotated one (by default on a quarter of the candidates' extent), which would teach the model
little new; on the sample brain the plain entropy picked near-empty end slices.
"""
from __future__ import annotations

import numpy as np

from ..data.annotations import painted_planes
from ..data.orientation import plane_turn, turn, turned
from ..data.slices import informative_slices
from ..engine.jobs import Job
from ..io.read import opened
from ..models.segmentation import load_segmentation_model
from .segment import segment
from ..errors import UserError


def rank_slices(model, image, labels=None, *, axis: int = 0, spacing=None, max_candidates: int = 64,
                spread: float = 0.25, device="auto", progress=None, stop=None) -> list[tuple[int, float]]:
    """``[(slice index, uncertainty), ...]`` for the unannotated slices along ``axis``, most uncertain first.

    ``axis`` and the indices are the caller's: a volume stored in another axis order than the model's
    volumes is ranked as the model sees it (its slices along ``axis`` are the model's planes).  A slice
    counts as annotated when it was painted as a slice along ``axis`` (paint along another axis crossing it
    does not).  Slices that are mostly empty (below the image's 10th percentile) are skipped; at most
    ``max_candidates`` evenly spread slices are scored; ``spread`` is the distance damping scale as a
    fraction of the candidates' extent.  Raises :class:`Cancelled` on stop.
    """
    job = Job.of(progress, stop)
    image, labels = opened(image), opened(labels)
    img = np.asarray(getattr(image, "data", image))
    if img.ndim != 3:
        raise UserError("Suggesting a slice needs a 3D volume.")
    m = load_segmentation_model(model)
    how = plane_turn(image, m.params.orientation)
    if how is not None:  # the model's axis order; indices said back along the caller's axis
        stored = how[0].index(axis)
        turned_labels = None if labels is None else turn(np.asarray(getattr(labels, "data", labels)), how)
        ranking = rank_slices(m, turned(image, how), turned_labels, axis=stored, spacing=None if spacing is None else
                              [spacing[-3:][p] for p in how[0]], max_candidates=max_candidates, spread=spread,
                              device=device, progress=job)
        n = img.shape[axis]
        return [(n - 1 - k if how[1][stored] else k, score) for k, score in ranking]
    spacing = spacing or getattr(getattr(image, "geometry", None), "spacing", None)
    lab = None if labels is None else np.asarray(getattr(labels, "data", labels))
    painted = painted_planes(lab, axis).get(axis, np.array([], int)) if lab is not None else np.array([], int)
    candidates = np.setdiff1d(informative_slices(img, axis), painted)
    if candidates.size == 0:
        return []
    if candidates.size > max_candidates:
        candidates = candidates[np.linspace(0, candidates.size - 1, max_candidates).round().astype(int)]
    sub = np.moveaxis(img, axis, 0)[candidates]
    sub_spacing = None if spacing is None else [spacing[axis]] + [s for i, s in enumerate(spacing) if i != axis]
    _, probs = segment(sub, m, axis=0, spacing=sub_spacing, device=device, tta=True,
                       return_probabilities=True, progress=job)
    p = np.clip(probs, 1e-6, 1.0)
    entropy = -(p * np.log(p)).sum(axis=0) / np.log(p.shape[0])  # (n, H, W) in [0, 1]
    foreground = sub > np.percentile(img, 10)
    score = (entropy * foreground).reshape(len(candidates), -1).mean(axis=1)
    if painted.size:
        dist = np.abs(candidates[:, None] - painted[None]).min(axis=1)
        scale = max(2.0, (candidates.max() - candidates.min()) * spread)
        score = score * (1.0 - np.exp(-dist / scale))
    order = np.argsort(-score, kind="stable")
    return [(int(candidates[i]), float(score[i])) for i in order]

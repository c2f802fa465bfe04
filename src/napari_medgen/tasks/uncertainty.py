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

from ..data.annotations import annotated_slices
from ..data.slices import informative_slices
from ..engine.jobs import Job
from ..io.read import opened
from .segment import segment
from ..errors import UserError


def rank_slices(model, image, labels=None, *, axis: int = 0, spacing=None, max_candidates: int = 64,
                spread: float = 0.25, device="auto", progress=None, stop=None) -> list[tuple[int, float]]:
    """``[(slice index, uncertainty), ...]`` for the unannotated slices along ``axis``, most uncertain first.

    Slices that are mostly empty (below the image's 10th percentile) are skipped; at most
    ``max_candidates`` evenly spread slices are scored; ``spread`` is the distance damping scale as a
    fraction of the candidates' extent.  Raises :class:`Cancelled` on stop.
    """
    job = Job.of(progress, stop)
    image, labels = opened(image), opened(labels)
    img = np.asarray(getattr(image, "data", image))
    spacing = spacing or getattr(getattr(image, "geometry", None), "spacing", None)
    if img.ndim != 3:
        raise UserError("Suggesting a slice needs a 3D volume.")
    painted = annotated_slices(np.asarray(getattr(labels, "data", labels)), axis) if labels is not None else np.array([], int)
    candidates = np.setdiff1d(informative_slices(img, axis), painted)
    if candidates.size == 0:
        return []
    if candidates.size > max_candidates:
        candidates = candidates[np.linspace(0, candidates.size - 1, max_candidates).round().astype(int)]
    sub = np.moveaxis(img, axis, 0)[candidates]
    sub_spacing = None if spacing is None else [spacing[axis]] + [s for i, s in enumerate(spacing) if i != axis]
    _, probs = segment(sub, model, axis=0, spacing=sub_spacing, device=device, tta=True,
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

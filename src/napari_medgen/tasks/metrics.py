"""Dice and 95th-percentile Hausdorff distance per class (MONAI metrics, HD95 in physical units)."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from ..errors import UserError


def segmentation_metrics(pred: np.ndarray, reference: np.ndarray, spacing=None,
                         class_names: list[str] | None = None) -> dict:
    """``{class name: {"dice": d, "hd95": mm}}`` for each foreground class of ``reference`` or ``pred``.

    ``spacing`` (napari order) makes HD95 physical (mm); without it, it is in voxels. A class absent
    from both arrays is left out; absent from one of them gives Dice 0 and HD95 ``inf``.
    """
    pred, ref = np.asarray(pred), np.asarray(reference)
    if pred.shape != ref.shape:
        raise UserError(f"The labels {pred.shape} and the reference {ref.shape} have different shapes.")
    values = sorted((set(np.unique(pred).tolist()) | set(np.unique(ref).tolist())) - {0})
    spacing = [float(s) for s in spacing][-pred.ndim:] if spacing is not None else None
    out = {}
    for v in values:
        p = torch.from_numpy(pred == v)[None, None]
        r = torch.from_numpy(ref == v)[None, None]
        name = class_names[v] if class_names and v < len(class_names) else f"label {v}"
        if not p.any() or not r.any():
            out[name] = {"dice": 0.0, "hd95": float("inf")}
            continue
        dice = compute_dice(p, r, include_background=True).item()
        with warnings.catch_warnings():  # a MONAI-internal deprecation notice
            warnings.simplefilter("ignore", FutureWarning)
            hd = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing).item()
        out[name] = {"dice": float(dice), "hd95": float(hd)}
    return out


def mean_dice(metrics: dict) -> float:
    """The mean Dice over the classes of :func:`segmentation_metrics`."""
    return float(np.mean([m["dice"] for m in metrics.values()])) if metrics else float("nan")

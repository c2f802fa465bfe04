"""Dice and 95th-percentile Hausdorff distance per class (MONAI metrics, HD95 in physical units),
volumes per class in mL (areas in cm² in 2D), and a CSV of any of them."""
from __future__ import annotations

import csv
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from ..errors import UserError
from ..io.read import opened


def segmentation_metrics(pred: np.ndarray, reference: np.ndarray, spacing=None,
                         class_names: list[str] | None = None) -> dict:
    """``{class name: {"dice": d, "hd95": mm}}`` for each foreground class of ``reference`` or ``pred``.

    ``spacing`` (napari order; default: the reference's, when it is an ImageData or file) makes HD95 physical
    (mm); without it, it is in voxels. A class absent
    from both arrays is left out; absent from one of them gives Dice 0 and HD95 ``inf``.
    """
    pred, reference = opened(pred), opened(reference)  # arrays, ImageData or their files
    if spacing is None:
        spacing = getattr(getattr(reference, "geometry", None), "spacing", None)
    pred, ref = np.asarray(getattr(pred, "data", pred)), np.asarray(getattr(reference, "data", reference))
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


def label_volumes_ml(labels: np.ndarray, spacing, class_names: list[str] | None = None) -> dict:
    """``{class name: mL}`` for each foreground class of 3D labels (named ones even when absent, then any other value).

    ``spacing`` (mm per voxel, napari order; default: the labels', when an ImageData or file) is required:
    volumes in voxels would be a silent wrong unit.  2D labels have areas (:func:`label_areas_cm2`), not volumes.
    """
    return _class_sizes(labels, spacing, class_names, 3)


def label_areas_cm2(labels: np.ndarray, spacing, class_names: list[str] | None = None) -> dict:
    """``{class name: cm²}`` for each foreground class of 2D labels (an X-ray's, a photo's), as
    :func:`label_volumes_ml` measures 3D ones."""
    return _class_sizes(labels, spacing, class_names, 2)


def _class_sizes(labels, spacing, class_names, ndim: int) -> dict:
    """Volumes in mL (mm³ / 1000) of ``ndim`` 3 labels, areas in cm² (mm² / 100) of ``ndim`` 2 labels."""
    what = "Volumes in mL" if ndim == 3 else "Areas in cm²"
    labels = opened(labels)
    if spacing is None:
        spacing = getattr(getattr(labels, "geometry", None), "spacing", None)
    labels = np.asarray(getattr(labels, "data", labels))
    if spacing is None:
        raise UserError(f"{what} need the image's voxel spacing (mm).")
    if labels.ndim != ndim:
        raise UserError(f"{what} are measured on {ndim}D labels; these are {labels.ndim}D"
                        + (" (measure their areas in cm²)." if labels.ndim == 2 else "."))
    spacing = [float(s) for s in np.ravel(spacing)][-labels.ndim:]
    if len(spacing) != labels.ndim or min(spacing) <= 0:
        raise UserError(f"The spacing {spacing} does not fit labels of shape {labels.shape}.")
    if labels.dtype.kind not in "biu":
        raise UserError(f"Labels must be integers, not {labels.dtype}.")
    if labels.size and labels.min() < 0:
        raise UserError("Labels must not be negative.")
    counts = np.bincount(labels.ravel().astype(np.intp, copy=False)) if labels.size else np.zeros(1, np.intp)
    unit = float(np.prod(spacing)) / (1000.0 if ndim == 3 else 100.0)
    names = list(class_names or [])
    values = sorted(set(range(1, len(names))) | set(np.flatnonzero(counts[1:]) + 1))
    return {(names[v] if v < len(names) else f"label {v}"): float(counts[v] if v < len(counts) else 0) * unit
            for v in values}


def metrics_to_csv(metrics: dict | None = None, volumes: dict | None = None, path: "str | os.PathLike | None" = None,
                   *, overwrite: bool = False, areas: dict | None = None) -> str:
    """A CSV table, one row per class: ``class, volume_ml, dice, hd95`` (columns of what is given).

    ``metrics`` is :func:`segmentation_metrics`' ``{class: {"dice", "hd95"}}``, ``volumes``
    :func:`label_volumes_ml`' ``{class: mL}``, ``areas`` (2D) :func:`label_areas_cm2`' ``{class: cm²}``, column
    ``area_cm2``. Returns the text; with ``path`` also writes it (refusing to replace a file unless ``overwrite``).
    """
    rows: dict = {name: {"volume_ml": ml} for name, ml in (volumes or {}).items()}
    for name, cm2 in (areas or {}).items():
        rows.setdefault(name, {})["area_cm2"] = cm2
    for name, values in (metrics or {}).items():
        rows.setdefault(name, {}).update(values)
    columns = list(dict.fromkeys(k for r in rows.values() for k in r))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", *columns])
    for name, r in rows.items():
        writer.writerow([name, *(_cell(r.get(c)) for c in columns)])
    text = buf.getvalue()
    if path is not None:
        p = Path(path)
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} already exists; not overwriting it.")
        try:
            p.write_text(text, encoding="utf-8")
        except OSError as err:
            raise UserError(f"Cannot write {p}: {err.strerror or type(err).__name__}.") from None
    return text


def _cell(v) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)

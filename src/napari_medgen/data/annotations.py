"""Training targets from what the user painted in a Labels layer.

Slices nobody touched are *unknown*, never background: only annotated slices
become targets.  Two styles:

- dense: a painted slice is complete, so 0 on it is background (class 0);
- sparse (scribbles): 0 is unknown everywhere and one label value is declared
  background; it becomes class 0, all unpainted pixels get :data:`IGNORE`.

Class ``c`` of the network is label value ``c`` (0 = background), so a prediction
can be written straight back into the annotation layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .slices import take_slices
from ..errors import UserError

IGNORE = -1  # target value the loss and the metrics skip


class AnnotationError(UserError):
    """Annotations that cannot be used for training."""


@dataclass
class Targets:
    """Known voxels of a volume as (n, H, W) slices along ``axis``, unknown pixels set to :data:`IGNORE`."""

    indices: np.ndarray  # slice indices along ``axis`` with at least one known pixel
    targets: np.ndarray  # int32 (n, H, W)
    classes: list  # class values present in the targets (0 = background)
    axis: int = 0  # the axis the slices are taken along
    planes: dict = None  # {axis: indices} of the slices painted along each axis

    @property
    def known_pixels(self) -> int:
        return int((self.targets != IGNORE).sum())


def annotated_slices(labels: np.ndarray, axis: int = 0) -> np.ndarray:
    """Indices of the slices along ``axis`` with at least one painted (non-zero) voxel; [0] for 2D."""
    lab = np.asarray(labels)
    if lab.ndim == 2:
        return np.array([0]) if lab.any() else np.array([], dtype=int)
    other = tuple(i for i in range(lab.ndim) if i != axis)
    return np.flatnonzero(lab.any(axis=other))


def _thin_planes(painted: np.ndarray, axis: int) -> np.ndarray:
    """Slices along ``axis`` whose painted voxels are mostly one voxel thin along it (a painted plane)."""
    p = np.moveaxis(painted, axis, 0)
    before = np.zeros_like(p)
    after = np.zeros_like(p)
    before[1:], after[:-1] = p[:-1], p[1:]
    thin = (p & ~before & ~after).reshape(len(p), -1).sum(1)
    total = p.reshape(len(p), -1).sum(1)
    return np.flatnonzero((total > 0) & (thin >= 0.5 * total))


def painted_planes(labels: np.ndarray, axis: int | None = None) -> dict:
    """``{axis: slice indices}`` of the slices painted along each axis (napari lets users paint in any view).

    A painted slice is recognised by its voxels being one voxel thin along its axis, so axial,
    coronal and sagittal slices painted in one layer are told apart.  When that does not explain
    the whole painting (adjacent painted slices, a complete label map), every slice with paint
    along one axis counts: ``axis`` if given, else the axis with the fewest such slices.
    """
    lab = np.asarray(labels)
    if lab.ndim == 2:
        return {0: np.array([0])} if lab.any() else {}
    painted = lab != 0
    if not painted.any():
        return {}
    candidates = {a: _thin_planes(painted, a) for a in range(3)}
    per_plane = {a: np.moveaxis(painted, a, 0)[i].sum() / len(i) if len(i) else 0 for a, i in candidates.items()}
    covered = np.zeros_like(painted)
    planes = {}
    for a in sorted(candidates, key=lambda a: -per_plane[a]):  # 2D paint first; a scribbled line is no plane
        keep = []
        for k in candidates[a]:
            sel = [slice(None)] * 3
            sel[a] = k
            here = painted[tuple(sel)]
            if (here & ~covered[tuple(sel)]).sum() > 0.5 * here.sum():
                keep.append(int(k))
                covered[tuple(sel)] = True
        if keep:
            planes[a] = np.asarray(keep)
    if (painted & ~covered).sum() <= 0.005 * painted.sum():
        return dict(sorted(planes.items()))
    if axis is None:
        axis = int(np.argmin([len(annotated_slices(lab, a)) for a in range(3)]))
    return {axis: annotated_slices(lab, axis)}


MAX_LABEL = 255  # one network output per label value
SPARSE_FROM = 16  # above this, label values must use at least half of 1..max (a 0/255 mask is refused)


def label_array(labels) -> np.ndarray:
    """``labels`` as an integer array: a float one (a label file saved as floats) cast when every value is whole;
    checked (:class:`AnnotationError`: 2D or 3D, values 0..255, painted as 1..N rather than e.g. a 0/255 mask)."""
    lab = np.asarray(labels)
    if lab.ndim not in (2, 3):
        raise AnnotationError(f"Annotations must be a 2D or 3D label array, not {lab.ndim}D.")
    if lab.dtype == bool:
        return lab.astype(np.uint8)
    if np.issubdtype(lab.dtype, np.floating):
        if not (np.isfinite(lab).all() and (lab == np.round(lab)).all()):
            raise AnnotationError("Annotations must hold whole label values (0, 1, 2, ...), not fractions.")
        small = lab.size and 0 <= lab.min() and lab.max() <= MAX_LABEL
        lab = lab.astype(np.uint8 if small else np.int64)  # (the checks below say what is wrong with the others)
    if not np.issubdtype(lab.dtype, np.integer):
        raise AnnotationError("Annotations must be an integer label array.")
    if lab.size and lab.min() < 0:
        raise AnnotationError("Annotations must not contain negative label values.")
    top = int(lab.max()) if lab.size else 0
    if top > MAX_LABEL:
        raise AnnotationError(f"Label value {top} is painted, but each value is one class of the model "
                              f"and values above {MAX_LABEL} are not supported; relabel the layer with small values.")
    values = np.unique(lab).size - 1 if top > SPARSE_FROM else 0
    if 2 * values < top and top > SPARSE_FROM:
        raise AnnotationError(f"Label value {top} is painted, which would train a network of {top + 1} classes for "
                              f"{values} painted value{'s' if values > 1 else ''}; paint the classes as 1..N"
                              + (f" (a 0/{top} mask as 0/1)." if values == 1 else "."))
    return lab


def make_targets(labels: np.ndarray, *, axis: int | None = None, slices="auto", sparse: bool = False,
                 background_label: int | None = None) -> Targets:
    """Targets of the known voxels as slices along ``axis`` (None: the axis with the most painted slices).

    ``slices="auto"`` finds the painted slices along every axis (:func:`painted_planes`); slices
    painted along another axis than ``axis`` give known rows in the slices along ``axis``.  A
    list of indices means those slices along ``axis`` (default 0) are the painted ones.  Dense
    style: a painted slice is complete (0 is background on it); sparse: only painted voxels are
    known.  The labels array is only read.  Raises :class:`AnnotationError` when nothing is
    painted or only one class is.
    """
    lab = label_array(labels)
    if isinstance(slices, str):
        if slices != "auto":
            raise AnnotationError(f"slices must be 'auto' or a list of slice indices, not '{slices}'.")
        planes = painted_planes(lab, axis)
    else:
        index = np.unique(np.asarray(list(slices), dtype=int))
        a = axis or 0
        n = 1 if lab.ndim == 2 else lab.shape[a]
        if index.size and (index.min() < 0 or index.max() >= n):
            raise AnnotationError(f"Slice indices must lie in 0..{n - 1} along axis {a}.")
        planes = {a: index} if index.size else {}
    if not planes:
        raise AnnotationError("No annotated slice found: paint at least one slice of the labels layer.")
    if lab.ndim == 2:
        axis = 0
    elif axis is None:
        axis = max(sorted(planes), key=lambda a: len(planes[a]))
    if sparse and background_label is not None and background_label <= 0:
        raise AnnotationError("The background label of sparse scribbles must be a painted value (> 0).")
    vol = take_slices(lab, axis)
    known = np.zeros(vol.shape, bool)
    for a, index in planes.items():
        if lab.ndim == 2:
            known[:] = True
            continue
        sel = [slice(None)] * 3
        moved_axis = 0 if a == axis else 1 + [i for i in range(3) if i != axis].index(a)
        sel[moved_axis] = np.asarray(index, int)
        known[tuple(sel)] = True
    if sparse:
        known = vol != 0  # scribbles: every painted voxel, wherever it is
    index = np.flatnonzero(known.reshape(len(known), -1).any(1))
    stack = np.asarray(vol[index], dtype=np.int32)
    targets = np.where(known[index], stack, IGNORE).astype(np.int32)
    if sparse and background_label is not None:
        targets[stack == background_label] = 0
    classes = [int(c) for c in np.unique(targets) if c != IGNORE]
    if len(classes) < 2:
        what = "background and one class" if not sparse else "at least two classes (or a class and the background label)"
        raise AnnotationError(f"Only one class is painted; training needs {what}.")
    return Targets(index, targets, classes, int(axis), {int(a): np.asarray(i, int) for a, i in planes.items()})

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
    """Annotated slices of a volume as (n, H, W) targets, unknown pixels set to :data:`IGNORE`."""

    indices: np.ndarray  # slice indices along the axis
    targets: np.ndarray  # int64 (n, H, W)
    classes: list  # class values present in the targets (0 = background)

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


def check_axis(labels: np.ndarray, axis: int) -> None:
    """Refuse annotations that were clearly painted on slices along another axis."""
    lab = np.asarray(labels)
    if lab.ndim != 3:
        return
    counts = [len(annotated_slices(lab, a)) for a in range(3)]
    best = int(np.argmin(counts))
    if best != axis and counts[best] <= 0.25 * lab.shape[best] and counts[axis] > 4 * counts[best]:
        raise AnnotationError(f"The labels look painted on {counts[best]} slice(s) along axis {best}, "
                              f"not along the chosen axis {axis}; choose axis {best}.")


def make_targets(labels: np.ndarray, *, axis: int = 0, slices="auto", sparse: bool = False,
                 background_label: int | None = None) -> Targets:
    """Targets of the annotated slices (``slices="auto"`` finds them) in the style asked for.

    The labels array is only read.  Raises :class:`AnnotationError` when nothing is painted,
    only one class is, or the painting lies along another axis.
    """
    lab = np.asarray(labels)
    if lab.ndim not in (2, 3):
        raise AnnotationError(f"Annotations must be a 2D or 3D label array, not {lab.ndim}D.")
    if not np.issubdtype(lab.dtype, np.integer):
        raise AnnotationError("Annotations must be an integer label array.")
    if lab.size and lab.min() < 0:
        raise AnnotationError("Annotations must not contain negative label values.")
    if isinstance(slices, str):
        if slices != "auto":
            raise AnnotationError(f"slices must be 'auto' or a list of slice indices, not '{slices}'.")
        check_axis(lab, axis)
        index = annotated_slices(lab, axis)
    else:
        index = np.unique(np.asarray(list(slices), dtype=int))
        n = 1 if lab.ndim == 2 else lab.shape[axis]
        if index.size and (index.min() < 0 or index.max() >= n):
            raise AnnotationError(f"Slice indices must lie in 0..{n - 1} along axis {axis}.")
    if index.size == 0:
        raise AnnotationError("No annotated slice found: paint at least one slice of the labels layer.")
    stack = np.array(take_slices(lab, axis, index), dtype=np.int64)
    if sparse:
        if background_label is not None and background_label <= 0:
            raise AnnotationError("The background label of sparse scribbles must be a painted value (> 0).")
        targets = np.where(stack == 0, IGNORE, stack)
        if background_label is not None:
            targets[stack == background_label] = 0
    else:
        targets = stack
    classes = [int(c) for c in np.unique(targets) if c != IGNORE]
    if len(classes) < 2:
        what = "background and one class" if not sparse else "at least two classes (or a class and the background label)"
        raise AnnotationError(f"Only one class is painted; training needs {what}.")
    return Targets(index, targets, classes)

"""``segment()``: an image and a model in, a label array on the image's grid out.

:func:`segment_result` gives the same labels with the sentences on how the image differs from
the model's training data (:mod:`napari_medgen.tasks.model_fit`) and the volumes (2D: areas) per class.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from ..data.normalize import normalize
from ..data.orientation import plane_turn, turn_back, turned
from ..data.resample import inplane_spacing, resize, target_shape
from ..engine.inference import predict
from ..engine.jobs import Job
from ..io.read import ImageData, opened
from ..models.segmentation import class_names, load_segmentation_model
from ..errors import UserError
from .metrics import label_areas_cm2, label_volumes_ml
from .model_fit import ModelMismatchWarning, mismatch_warnings

SLAB = 32  # slices a 2D model labels at a time (memory: one slab's class probabilities)


class ImageInputError(UserError):
    """An image that a segmentation model cannot take."""


@dataclass
class SegmentResult:
    """Labels on the image's grid, what to doubt about them, and what is needed to measure them."""

    labels: np.ndarray
    warnings: list = field(default_factory=list)  # sentences: how the image differs from the training data
    class_names: list = field(default_factory=list)
    spacing: "tuple | None" = None
    probabilities: "np.ndarray | None" = None

    def volumes_ml(self) -> dict:
        """``{class name: mL}`` of each foreground class of a 3D image (needs its spacing); 2D: :meth:`areas_cm2`."""
        return label_volumes_ml(self.labels, self.spacing, self.class_names)

    def areas_cm2(self) -> dict:
        """``{class name: cm²}`` of each foreground class of a 2D image (an X-ray's)."""
        return label_areas_cm2(self.labels, self.spacing, self.class_names)

    def sizes(self) -> tuple[str, dict]:
        """``("volume mL", volumes_ml())`` of a 3D image, ``("area cm²", areas_cm2())`` of a 2D one."""
        return ("area cm²", self.areas_cm2()) if self.labels.ndim == 2 else ("volume mL", self.volumes_ml())


def segment(image, model, *, spacing=None, axis: int | None = None, device="auto", tta: bool = False,
            batch_size: int | None = None, progress=None, stop=None, return_probabilities: bool = False,
            allow_code: bool = False):
    """Segment ``image`` (numpy, napari order (z, y, x) or (y, x); or an :class:`ImageData`) with ``model``.

    ``model`` is a Model, a built-in name (``"brain-tissue-2d"``) or a model file/folder; a TorchScript
    file is code and runs only with ``allow_code=True``.
    ``spacing`` (napari order, mm) lets the image be resampled to the model's training spacing;
    without it the image is taken to be at that spacing. 2D models run slice by slice along
    ``axis`` (default: the model's own plane: a volume stored in another orientation than the model's
    training data, e.g. a sagittal 3D T1 for an axial model, is reoriented to it, axes permuted and
    flipped without resampling, and its labels back; else axis 0); 3D models by sliding window. ``tta`` averages over flips. Returns integer labels of
    ``image``'s spatial shape, plus float32 probabilities ``(classes, *shape)`` if
    ``return_probabilities``. An image unlike the model's training data (CT into an MRI model,
    voxels or field of view far off) still gets labels, with a :class:`ModelMismatchWarning`.
    Raises :class:`~napari_medgen.Cancelled` on stop. The input is not modified.
    """
    res = segment_result(image, model, spacing=spacing, axis=axis, device=device, tta=tta, batch_size=batch_size,
                         progress=progress, stop=stop, probabilities=return_probabilities, allow_code=allow_code)
    for sentence in res.warnings:
        warnings.warn(ModelMismatchWarning(sentence), stacklevel=2)
    return (res.labels, res.probabilities) if return_probabilities else res.labels


def segment_result(image, model, *, spacing=None, axis: int | None = None, device="auto", tta: bool = False,
                   batch_size: int | None = None, progress=None, stop=None, probabilities: bool = False,
                   allow_code: bool = False) -> SegmentResult:
    """:func:`segment` returning a :class:`SegmentResult` (labels, mismatch sentences, class names, spacing)."""
    job = Job.of(progress, stop)
    m, image = load_segmentation_model(model, allow_code=allow_code), opened(image)
    cfg = m.params
    how = plane_turn(image, cfg.orientation) if axis is None else None
    if how is not None:
        res = segment_result(turned(image, how), m, spacing=None if spacing is None else [spacing[p] for p in how[0]],
                             axis=cfg.axis, device=device, tta=tta, batch_size=batch_size, progress=job,
                             probabilities=probabilities)
        res.labels = turn_back(res.labels, how)
        res.probabilities = None if res.probabilities is None else turn_back(res.probabilities, how, lead=1)
        res.spacing = None if res.spacing is None else tuple(res.spacing[i] for i in np.argsort(how[0]))
        return res
    axis = cfg.axis if axis is None else axis
    modality, rgb = "", None
    if isinstance(image, ImageData):
        extra = image.data.ndim - image.geometry.ndim - int(image.rgb)
        if extra > 0 and (cfg.in_channels == 1 or extra > 1):  # channels / time points of a vector or 4D file
            raise ImageInputError(f"'{image.name}' has {image.data.shape[0]} channels or time points besides its "
                                  f"{image.geometry.ndim}D space; this model takes {cfg.in_channels}-channel images, "
                                  "so pick one channel or time point first.")
        spacing = image.geometry.spacing if spacing is None else spacing
        modality, rgb = image.metadata.get("modality", ""), image.rgb
        image = image.data
    arr = check_image(image, cfg, axis, rgb=rgb)  # (Cin, *spatial), a view
    spatial = arr.shape[1:]
    spacing = check_spacing(spacing, len(spatial))
    finite = np.isfinite(arr).all(axis=0) if np.issubdtype(arr.dtype, np.floating) else None
    if finite is not None and not finite.any():
        raise ImageInputError("The image has no finite values (all NaN or Inf).")
    if finite is not None and finite.all():
        finite = None
    doubts = mismatch_warnings(arr, m, spacing=spacing, modality=modality, axis=axis)
    bad = "" if finite is None else f" ({int((~finite).sum())} NaN/Inf voxels are treated as background)"
    job.report(0, 1, "normalising" + bad)
    norm = [normalize(c, m.config.normalization, modality) for c in arr]
    x = norm[0][None] if len(norm) == 1 else np.stack(norm)
    del norm

    dims = cfg.spatial_dims
    work_axis = axis if len(spatial) == 3 else 0
    grid = _model_grid(spatial, spacing, cfg, work_axis)
    job.check()
    args = m.config.networks["net"].args
    kw = {"device": device, "tta": tta, "batch_size": batch_size, "context": int(cfg.context or 0),
          "divisor": int(np.prod(args["strides"])) if "strides" in args else 16}  # U-Net input multiple
    probs = None
    if dims == 2 and len(spatial) == 3 and not probabilities:
        labels = _slab_labels(m.net, x, spatial, grid, work_axis, job, **kw)
    else:
        if grid is not None:
            x = _resize_grid(x, grid, dims, work_axis)
        probs = predict(m.net, x, spatial_dims=dims, axis=work_axis, patch_size=cfg.patch_size, progress=job, **kw)
        del x
        if grid is not None:
            probs = _resize_grid(probs, spatial if dims == 3 else _inplane(spatial, work_axis), dims, work_axis)
        labels = _argmax(probs)
    if finite is not None:
        labels[~finite] = 0
    job.report(1, 1, "done")
    return SegmentResult(labels, doubts, class_names(m), spacing, probs if probabilities else None)


def check_spacing(spacing, ndim: int) -> "tuple | None":
    """The last ``ndim`` values of ``spacing`` as floats, or an :class:`ImageInputError` sentence."""
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in np.ravel(spacing))[-ndim:]
    except (TypeError, ValueError):
        raise ImageInputError(f"The spacing {spacing!r} is not a list of numbers (mm per voxel).") from None
    if len(values) != ndim or not all(np.isfinite(v) and v > 0 for v in values):
        raise ImageInputError(f"The spacing {spacing!r} must give {ndim} positive sizes in mm, one per image axis.")
    return values


def check_image(image, cfg, axis: int = 0, rgb: bool | None = None) -> np.ndarray:
    """The image as (channels, *spatial) without copying, or an :class:`ImageInputError` sentence."""
    try:
        arr = np.asarray(image)
    except ValueError:
        raise ImageInputError("The image is not a regular array (rows of different lengths?).") from None
    if arr.dtype.kind == "c":
        raise ImageInputError("The image has complex values (phase or k-space data?); segment its magnitude, "
                              "np.abs(image), or its real part explicitly.")
    if arr.dtype.kind not in "biuf":
        raise ImageInputError(f"The image has {arr.dtype} values; a numeric image is needed.")
    if arr.size == 0:
        raise ImageInputError(f"The image is empty (shape {arr.shape}).")
    cin, dims = int(cfg.in_channels), int(cfg.spatial_dims)
    if rgb is None:  # (y, x, 3|4) with a last axis far shorter than the others: a colour picture, not 3 slices
        rgb = arr.ndim == 3 and arr.shape[-1] in (3, 4) and (
            arr.dtype == np.uint8 or min(arr.shape[:2]) >= 8 * arr.shape[-1])
    if rgb:
        if cin != 1:
            arr = np.moveaxis(arr, -1, 0)
        else:
            raise ImageInputError(f"This model takes one-channel (greyscale) images, but the image is RGB "
                                  f"with {arr.shape[-1]} channels; convert it to greyscale first.")
    elif cin == 1:
        if arr.ndim not in (2, 3):
            raise ImageInputError(f"This model takes one-channel 2D or 3D images, but the image has "
                                  f"{arr.ndim} dimensions {arr.shape} (several channels or time points?).")
        arr = arr[None]
    elif arr.ndim not in (3, 4) or arr.shape[0] != cin:
        raise ImageInputError(f"This model takes {cin}-channel images (channels first), but the image has shape {arr.shape}.")
    spatial = arr.shape[1:]
    if dims == 3 and len(spatial) == 2:
        raise ImageInputError("This is a 3D model and cannot segment a 2D image; choose a 2D model.")
    if len(spatial) == 3 and not 0 <= axis < 3:
        raise ImageInputError(f"Axis {axis} does not exist in a 3D image; use 0, 1 or 2.")
    return arr


def _slab_labels(net, x: np.ndarray, spatial, grid, axis: int, job: Job, *, context: int, **predict_kw) -> np.ndarray:
    """Labels of a normalised (C, *spatial) volume by a 2D model, :data:`SLAB` slices along ``axis`` at a time, so
    class probabilities and their resampled copy exist for one slab only (a 512 x 512 x 1000 CT would need about
    12 GB for them at once).  A 2.5D model's neighbouring slices come along at the slab edges: every slice sees
    the neighbours it would see in the whole volume."""
    n, labels = spatial[axis], None
    for s0 in range(0, n, SLAB):
        s1 = min(n, s0 + SLAB)
        lo, hi = max(0, s0 - context), min(n, s1 + context)
        part = np.take(x, np.arange(lo, hi), axis=1 + axis)
        if grid is not None:
            part = _resize_grid(part, grid, 2, axis)
        def relay(ev, lo=lo):  # the slab's slice counts become the volume's; other news (out of memory) passes
            step = min(lo + ev.step, n)
            job.report(step, n, f"slices {step}/{n}" if ev.message.startswith("slices") else ev.message)
        probs = predict(net, part, spatial_dims=2, axis=axis, context=context,
                        progress=Job(relay, job.should_stop, job.cancelled), **predict_kw)
        probs = np.take(probs, np.arange(s0 - lo, s1 - lo), axis=1 + axis)
        if grid is not None:
            probs = _resize_grid(probs, _inplane(spatial, axis), 2, axis)
        part_labels = _argmax(probs)
        if labels is None:
            labels = np.empty(spatial, part_labels.dtype)
        index = [slice(None)] * len(spatial)
        index[axis] = slice(s0, s1)
        labels[tuple(index)] = part_labels
    return labels


def _argmax(probs: np.ndarray, chunk: int = 8) -> np.ndarray:
    """Class index per voxel, in chunks along the first spatial axis (no int64 copy of the volume)."""
    labels = np.empty(probs.shape[1:], dtype=np.uint8 if probs.shape[0] <= 256 else np.int32)
    for i in range(0, labels.shape[0], chunk):
        labels[i:i + chunk] = probs[:, i:i + chunk].argmax(axis=0)
    return labels


def _inplane(shape, axis: int) -> tuple:
    return tuple(s for i, s in enumerate(shape) if i != axis) if len(shape) == 3 else tuple(shape)


def _model_grid(spatial, spacing, cfg, axis):
    """The shape (spatial for 3D models, in-plane for 2D) at the model's spacing, or None if the same."""
    train = cfg.spacing
    if spacing is None or train is None:
        return None
    spacing = tuple(float(s) for s in spacing)[-len(spatial):]
    if cfg.spatial_dims == 2:
        have, shape = (inplane_spacing(spacing, axis) if len(spatial) == 3 else spacing), _inplane(spatial, axis)
    else:
        have, shape = spacing, spatial
    if len(have) != len(train) or np.allclose(have, train, rtol=0.02):
        return None
    return target_shape(shape, have, train)


def _resize_grid(x: np.ndarray, shape, dims: int, axis: int) -> np.ndarray:
    """Resize (C, *spatial): all spatial axes for 3D models, the two in-plane axes for 2D ones."""
    if dims == 3 or x.ndim == 3:
        return resize(x, shape)
    moved = np.moveaxis(x, 1 + axis, 1)  # (C, n, H, W): resize the last two axes
    return np.moveaxis(resize(moved, shape), 1, 1 + axis)

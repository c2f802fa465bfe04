"""``segment()``: an image and a model in, a label array on the image's grid out."""
from __future__ import annotations

import numpy as np

from ..data.normalize import normalize
from ..data.resample import inplane_spacing, resize, target_shape
from ..engine.inference import predict
from ..engine.jobs import Job
from ..io.read import ImageData
from ..models.segmentation import load_segmentation_model
from ..errors import UserError


class ImageInputError(UserError):
    """An image that a segmentation model cannot take."""


def segment(image, model, *, spacing=None, axis: int = 0, device="auto", tta: bool = False,
            batch_size: int | None = None, progress=None, stop=None, return_probabilities: bool = False):
    """Segment ``image`` (numpy, napari order (z, y, x) or (y, x); or an :class:`ImageData`) with ``model``.

    ``model`` is a Model, a built-in name (``"brain-tissue-2d"``) or a model file/folder.
    ``spacing`` (napari order, mm) lets the image be resampled to the model's training spacing;
    without it the image is taken to be at that spacing. 2D models run slice by slice along
    ``axis``; 3D models by sliding window. ``tta`` averages over flips. Returns integer labels of
    ``image``'s spatial shape, plus float32 probabilities ``(classes, *shape)`` if
    ``return_probabilities``. Raises :class:`~napari_medgen.Cancelled` on stop. The input is not modified.
    """
    job = Job.of(progress, stop)
    m = load_segmentation_model(model)
    cfg = m.params
    modality, rgb = "", None
    if isinstance(image, ImageData):
        spacing = image.geometry.spacing if spacing is None else spacing
        modality, rgb = image.metadata.get("modality", ""), image.rgb
        image = image.data
    arr = check_image(image, cfg, axis, rgb=rgb)  # (Cin, *spatial), a view
    spatial = arr.shape[1:]
    finite = np.isfinite(arr).all(axis=0) if np.issubdtype(arr.dtype, np.floating) else None
    if finite is not None and not finite.any():
        raise ImageInputError("The image has no finite values (all NaN or Inf).")
    if finite is not None and finite.all():
        finite = None
    bad = "" if finite is None else f" ({int((~finite).sum())} NaN/Inf voxels are treated as background)"
    job.report(0, 1, "normalising" + bad)
    norm = [normalize(c, m.config.normalization, modality) for c in arr]
    x = norm[0][None] if len(norm) == 1 else np.stack(norm)
    del norm

    dims = cfg.spatial_dims
    work_axis = axis if len(spatial) == 3 else 0
    grid = _model_grid(spatial, spacing, cfg, work_axis)
    if grid is not None:
        x = _resize_grid(x, grid, dims, work_axis)
    job.check()
    args = m.config.networks["net"].args
    divisor = int(np.prod(args["strides"])) if "strides" in args else 16  # U-Net input multiple
    probs = predict(m.net, x, spatial_dims=dims, axis=work_axis, patch_size=cfg.patch_size,
                    device=device, tta=tta, batch_size=batch_size, divisor=divisor, progress=job)
    del x
    if grid is not None:
        probs = _resize_grid(probs, spatial if dims == 3 else _inplane(spatial, work_axis), dims, work_axis)
    labels = _argmax(probs)
    if finite is not None:
        labels[~finite] = 0
    job.report(1, 1, "done")
    return (labels, probs) if return_probabilities else labels


def check_image(image, cfg, axis: int = 0, rgb: bool | None = None) -> np.ndarray:
    """The image as (channels, *spatial) without copying, or an :class:`ImageInputError` sentence."""
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise ImageInputError(f"The image has {arr.dtype} values; a numeric image is needed.")
    if arr.size == 0:
        raise ImageInputError(f"The image is empty (shape {arr.shape}).")
    cin, dims = int(cfg.in_channels), int(cfg.spatial_dims)
    if rgb is None:
        rgb = arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8
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

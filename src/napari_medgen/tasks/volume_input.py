"""Input checks shared by the generative models (VAE, GAN, mask-to-image GAN).

One sentence for arrays they cannot use (empty, 1D, 4D, colour), non-finite voxels
set to the lowest finite value with a warning, and the common count checks.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import UserError
from ..io.geometry import Geometry

MAX_SAMPLES = 10_000


class NonFiniteWarning(UserWarning):
    """The image held NaN or infinite voxels; they were replaced before use."""


def as_volume(image, what: str = "image", model: str = "This model") -> np.ndarray:
    """The voxel array of ``image`` (ImageData or array): 2D or 3D, single channel, finite.

    NaN/Inf voxels are set to the lowest finite value (a warning says how many).
    """
    arr = np.asarray(getattr(image, "data", image))
    if arr.size == 0:
        raise UserError(f"The {what} is empty (shape {arr.shape}); give a 2D slice or a 3D volume.")
    if arr.ndim < 2:
        raise UserError(f"The {what} has {arr.ndim} dimension(s) (shape {arr.shape}); {model} needs a 2D slice "
                        "or a 3D volume.")
    if arr.ndim > 3 or getattr(image, "rgb", False):
        raise UserError(f"The {what} has shape {arr.shape}: {arr.ndim} dimensions; {model} works on single-channel "
                        "2D or 3D images, so pick one channel or time point first.")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise UserError(f"The {what} holds {arr.dtype} values, not grey values.")
    finite = np.isfinite(arr)
    if not finite.all():
        if not finite.any():
            raise UserError(f"Every voxel of the {what} is NaN or infinite.")
        n_bad = int(arr.size - finite.sum())
        fill = float(arr[finite].min())
        warnings.warn(f"The {what} has {n_bad} NaN/infinite voxels; they were set to its lowest value ({fill:.4g}).",
                      NonFiniteWarning, stacklevel=3)
        arr = np.where(finite, arr, fill).astype(np.float32)
    return arr


def check_count(n, what: str = "samples", limit: int = MAX_SAMPLES) -> int:
    """``n`` as an int in 1..``limit``, else one sentence (before anything is allocated)."""
    if not 1 <= int(n) <= limit:
        raise UserError(f"Ask for between 1 and {limit} {what} (got {n}).")
    return int(n)


def check_batch(batch_size) -> int:
    if int(batch_size) < 1:
        raise UserError(f"The batch size must be at least 1 (got {batch_size}).")
    return int(batch_size)


def stack_geometry(spacing) -> Geometry:
    """Geometry of a stack of generated slices: sample index first, then the in-plane pixel spacing."""
    return Geometry((1.0, *(spacing or (1.0, 1.0))), (0.0, 0.0, 0.0))

"""Resampling arrays between voxel spacings (linear for intensities and probabilities)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def target_shape(shape, spacing, target_spacing) -> tuple:
    """The shape of ``shape`` voxels at ``spacing`` once resampled to ``target_spacing``."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))


def resize(array: "np.ndarray | torch.Tensor", shape, mode: str = "linear", chunk: int = 16):
    """Resize the trailing ``len(shape)`` axes of a (C, *spatial) array, chunked over channels.

    ``mode`` is ``"linear"`` (bi/trilinear, ``align_corners=False``) or ``"nearest"``. Returns the
    same kind (numpy or tensor) it was given; the input is unchanged.
    """
    shape = tuple(int(s) for s in shape)
    is_np = isinstance(array, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(array)) if is_np else array
    if tuple(t.shape[-len(shape):]) == shape:
        return array
    if mode == "linear":
        torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
        kw = {"align_corners": False}
    else:
        torch_mode, kw = "nearest-exact", {}
    lead = t.shape[:-len(shape)]
    flat = t.reshape((-1, 1) + tuple(t.shape[-len(shape):]))
    src_dtype = flat.dtype
    parts = [F.interpolate(flat[i:i + chunk].float(), size=shape, mode=torch_mode, **kw)
             for i in range(0, flat.shape[0], chunk)]
    out = torch.cat(parts).reshape(tuple(lead) + shape)
    if mode != "linear":
        out = out.to(src_dtype)
    return out.numpy() if is_np else out


def inplane_spacing(spacing, axis: int) -> tuple:
    """The two spacings of a volume's slices along ``axis`` (napari order)."""
    return tuple(s for i, s in enumerate(spacing) if i != axis)

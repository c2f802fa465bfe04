"""Running a segmentation network over an image: 2D slice by slice (batched) or 3D sliding window.

:func:`predict` takes a normalised float32 array (Cin, *spatial) and returns class probabilities
(Cout, *spatial). 3D models use MONAI's ``sliding_window_inference`` with nnU-Net's blending
(overlap 0.5, Gaussian weights). Batch sizes follow the device's free memory; on out-of-memory the
batch is halved, then the work moves to the CPU, and the user is told through ``job.report``.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from .device import is_out_of_memory, select_device
from .jobs import Job

OVERLAP = 0.5
BYTES_PER_VOXEL = 4 * 160  # rough activation memory of a small U-Net per input voxel (float32)


def predict(net: torch.nn.Module, image: np.ndarray, *, spatial_dims: int, axis: int = 0,
            patch_size=None, device="auto", tta: bool = False, batch_size: int | None = None,
            divisor: int = 16, context: int = 0, progress=None, stop=None) -> np.ndarray:
    """Class probabilities (Cout, *spatial) float32 for a normalised (Cin, *spatial) image.

    ``context``: a 2.5D model's neighbouring slices on each side, given as extra channels
    (slice order within each input channel; the volume's edge slices repeated)."""
    job = Job.of(progress, stop)
    dev = select_device(device)
    net.eval()
    if spatial_dims == 2:
        return _predict_2d(net, image, axis, dev, tta, batch_size, divisor, job, context)
    return _predict_3d(net, image, tuple(patch_size or (96, 96, 96)), dev, tta, batch_size, job)


def auto_batch_size(device: torch.device, item_voxels: int, cap: int) -> int:
    """How many items of ``item_voxels`` fit in half the device's free memory (1..cap)."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        per_item = item_voxels * BYTES_PER_VOXEL // 2  # float16 activations under AMP
    else:
        import psutil
        free = psutil.virtual_memory().available // 2
        per_item = item_voxels * BYTES_PER_VOXEL
    return int(max(1, min(cap, free // 2 // max(per_item, 1))))


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()


def _forward(net, x: torch.Tensor, tta: bool, device: torch.device) -> torch.Tensor:
    """Softmax probabilities of a batch, averaged over single-axis flips when ``tta``."""
    flips = [()] + ([(d,) for d in range(2, x.ndim)] if tta else [])
    out = None
    with _autocast(device):
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            p = torch.softmax(net(xi).float(), dim=1)
            p = torch.flip(p, dims) if dims else p
            out = p if out is None else out.add_(p)
    return out.div_(len(flips))


def pad_to(x: torch.Tensor, divisor: int) -> tuple:
    """Zero-pad the last two axes up to a multiple of ``divisor``, at least twice it (instance norm
    needs more than one pixel at the bottleneck)."""
    h, w = x.shape[-2:]
    ph, pw = (max(2 * divisor, n + (-n) % divisor) - n for n in (h, w))
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)), (ph // 2, pw // 2)


def _fallback(job: Job, device: torch.device, batch: int, net) -> tuple:
    """Next (device, batch) after an out-of-memory error; tells the user."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if batch > 1:
        job.report(0, 1, f"out of memory on {device}: retrying with batch size {batch // 2}")
        return device, batch // 2
    if device.type == "cpu":
        raise MemoryError("Out of memory even on the CPU with batch size 1; use a smaller image or model.")
    job.report(0, 1, f"out of memory on {device}: continuing on the CPU (slower)")
    net.to("cpu")
    return torch.device("cpu"), 1


def _with_context(vol: np.ndarray, start: int, stop: int, context: int) -> np.ndarray:
    """Slices start..stop of (Cin, n, H, W) as a batch (b, Cin * (2c+1), H, W): each slice with its neighbours."""
    if not context:
        return np.ascontiguousarray(vol[:, start:stop].transpose(1, 0, 2, 3))
    n = vol.shape[1]
    idx = np.clip(np.arange(start, stop)[:, None] + np.arange(-context, context + 1)[None], 0, n - 1)  # (b, 2c+1)
    x = vol[:, idx]  # (Cin, b, 2c+1, H, W)
    return np.ascontiguousarray(x.transpose(1, 0, 2, 3, 4).reshape(idx.shape[0], -1, *vol.shape[2:]))


def _predict_2d(net, image, axis, device, tta, batch_size, divisor, job, context=0) -> np.ndarray:
    vol = image[:, None] if image.ndim == 3 else np.moveaxis(image, 1 + axis, 1)  # (Cin, n, H, W)
    n, (h, w) = vol.shape[1], vol.shape[-2:]
    net.to(device)
    batch = batch_size or auto_batch_size(device, h * w, cap=64)
    out = None
    i = 0
    with torch.inference_mode():
        while i < n:
            job.check()
            b = min(batch, n - i)
            x = torch.from_numpy(_with_context(vol, i, i + b, context)).to(device)
            try:
                xp, (t, l) = pad_to(x, divisor)
                p = _forward(net, xp, tta, device)[..., t:t + h, l:l + w].cpu().numpy()
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not is_out_of_memory(err):
                    raise
                device, batch = _fallback(job, device, b, net)
                continue
            if out is None:
                out = np.empty((p.shape[1], n, h, w), dtype=np.float32)
            out[:, i:i + b] = p.transpose(1, 0, 2, 3)
            i += b
            job.report(i, n, f"slices {i}/{n}")
    return out[:, 0] if image.ndim == 3 else np.moveaxis(out, 1, 1 + axis)


def _n_windows(shape, roi) -> int:
    n = 1
    for s, r in zip(shape, roi):
        step = max(1, int(r * (1 - OVERLAP)))
        n *= 1 if s <= r else math.ceil((s - r) / step) + 1
    return n


def _predict_3d(net, image, roi, device, tta, batch_size, job) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(image))[None]
    total_windows = _n_windows(image.shape[1:], roi)
    batch = batch_size or auto_batch_size(device, int(np.prod(roi)), cap=8)
    while True:
        net.to(device)
        done = [0]

        def run(window: torch.Tensor, _dev=device) -> torch.Tensor:
            job.check()
            p = _forward(net, window.to(_dev), tta, _dev)
            done[0] += window.shape[0]
            job.report(min(done[0], total_windows), total_windows, f"windows {done[0]}/{total_windows}")
            return p

        # stitch on the GPU only when the whole output comfortably fits there
        out_bytes = 4 * 16 * int(np.prod(image.shape[1:]))
        stitch = device if device.type == "cuda" and out_bytes < torch.cuda.mem_get_info(device)[0] // 4 else "cpu"
        try:
            with torch.inference_mode():
                p = sliding_window_inference(x, roi, batch, run, overlap=OVERLAP, mode="gaussian",
                                             sw_device=device, device=stitch)
            return p[0].float().cpu().numpy()
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            device, batch = _fallback(job, device, batch, net)

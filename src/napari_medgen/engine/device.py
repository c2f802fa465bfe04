"""Choosing the compute device once, and describing it to the user."""
from __future__ import annotations

import torch
from ..errors import UserError


def select_device(device: "str | torch.device" = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU; anything else is used as given."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("CUDA was requested but no CUDA GPU is available; use device 'auto' or 'cpu'.")
    if name not in available_devices() and name != "cuda":
        raise UserError(f"Unknown or unavailable device '{device}'; use one of: {', '.join(available_devices())}.")
    return torch.device(name)


def describe_device(device: "str | torch.device" = "auto") -> str:
    """A one-line human description, e.g. ``cuda:0 (NVIDIA H100, 80 GiB)`` or ``cpu (2 threads)``."""
    dev = select_device(device)
    if dev.type == "cuda":
        idx = dev.index or 0
        props = torch.cuda.get_device_properties(idx)
        return f"cuda:{idx} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    if dev.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"


def available_devices() -> list[str]:
    """Device names to offer in a drop-down."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def is_out_of_memory(err: BaseException) -> bool:
    """True for an allocation failure: torch's GPU error, or the CPU allocator's plain RuntimeError."""
    msg = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in msg or "can't allocate memory" in msg

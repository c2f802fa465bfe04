"""torchrun/DDP helpers: who is rank 0, how many ranks, wrapping networks, agreeing on decisions.

Outside torchrun every helper is the identity, so the same training code runs in
one process and under ``torchrun --nproc_per_node=N`` (gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.distributed as dist


def active() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main_process() -> bool:
    return rank() == 0


def init_from_env(device: torch.device | None = None) -> bool:
    """Join the process group torchrun describes in the environment; False when not under torchrun."""
    if active():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def local_device(device: str = "auto") -> str:
    """Under torchrun with CUDA, each rank uses the GPU of its LOCAL_RANK."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on every rank if it is true on any rank (so all ranks take the same branch)."""
    if not active():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([float(bool(f)) for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def wrap_ddp(task, device: torch.device) -> Callable[[], None]:
    """Wrap ``task.ddp_networks`` in DistributedDataParallel (as ``task.wrapped``); returns the undo."""
    task.wrapped = {}
    if not active():
        return lambda: None
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index or 0] if device.type == "cuda" else None
    task.wrapped = {n: DDP(task.networks[n], device_ids=ids) for n in task.ddp_networks}

    def undo() -> None:
        task.wrapped = {}

    return undo

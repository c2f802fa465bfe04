"""torchrun/DDP helpers: who is rank 0, how many ranks, wrapping networks, agreeing on decisions,
splitting a cohort's files between ranks and merging what each rank did.

Outside torchrun every helper is the identity, so the same code runs in one process
and under ``torchrun --nproc_per_node=N`` (gloo on CPU, NCCL on GPU).  Batch verbs call
:func:`shard` on their sorted inputs and :func:`merge_summary` at the end.
"""
from __future__ import annotations

import csv
import io
import os
import signal
import sys
from contextlib import contextmanager
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

from ..atomic import replacing
from ..errors import UserError


def active() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main_process() -> bool:
    return rank() == 0


def launched() -> bool:
    """True when torchrun started this process (its environment names a rank and a world size)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device: torch.device | None = None) -> bool:
    """Join the process group torchrun describes in the environment; False when not under torchrun."""
    if active():
        return True
    if not launched():
        return False
    backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def local_device(device: str = "auto") -> str:
    """Under torchrun with CUDA, each rank uses the GPU of its LOCAL_RANK."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


class RankFailed(UserError):
    """Another process of a torchrun job failed, so this one stops too."""


def _peer_lost(err: BaseException) -> bool:
    """True for the errors a collective raises when another rank has gone away."""
    text = str(err).lower()
    return isinstance(err, dist.DistError) or any(
        k in text for k in ("connection closed", "connection reset", "broken pipe", "gloo", "nccl"))


def _failed_message() -> str:
    return (f"rank {rank()} of {world_size()} stopped because another rank of the job failed (see its "
            "message above); files written so far are complete.")


@contextmanager
def session(device: str = "auto"):
    """Join torchrun's process group (if launched by torchrun) for the block, then leave it.

    Yields the device string this rank should use.  When torchrun ends this rank because
    another one failed (SIGTERM), a :class:`RankFailed` sentence is raised instead of a traceback.
    """
    dev = local_device(device)
    if not launched():
        yield dev
        return
    from .device import select_device

    init_from_env(select_device(dev))

    def on_term(signum, frame):
        raise RankFailed(_failed_message())

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield dev
    except RuntimeError as err:  # e.g. DDP's gradient all-reduce after a peer died
        if world_size() > 1 and _peer_lost(err):
            raise RankFailed(_failed_message()) from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if active():
            dist.destroy_process_group()


def _collective(fn, *args, **kwargs):
    """Run a collective; a peer that died mid-job becomes a :class:`RankFailed` sentence."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError:  # incl. DistBackendError: a peer's connection closed
        raise RankFailed(_failed_message()) from None


def _reduce(values: Sequence[float], op) -> list[float]:
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if active():
        if dist.get_backend() == "nccl":
            t = t.cuda()
        _collective(dist.all_reduce, t, op=op)
    return t.cpu().tolist()


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on every rank if it is true on any rank (so all ranks take the same branch)."""
    if not active():
        return tuple(bool(f) for f in flags)
    return tuple(v > 0 for v in _reduce([bool(f) for f in flags], dist.ReduceOp.MAX))


def max_over_ranks(*values: float) -> tuple[float, ...]:
    """Each value's maximum over the ranks (e.g. the budget fraction used, so all ranks share one schedule)."""
    if not active():
        return tuple(float(v) for v in values)
    return tuple(_reduce(values, dist.ReduceOp.MAX))


def sum_over_ranks(*values: float) -> tuple[float, ...]:
    """Each value summed over the ranks (e.g. a metric's sum and count over each rank's share)."""
    if not active():
        return tuple(float(v) for v in values)
    return tuple(_reduce(values, dist.ReduceOp.SUM))


def gather(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects; ``[obj]`` alone)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    _collective(dist.all_gather_object, out, obj)
    return out


def agree_on_error(error: Optional[BaseException]) -> None:
    """Raise on every rank if any rank hit a user error (the first rank's sentence, naming its rank)."""
    if not active():
        if error is not None:
            raise error
        return
    messages = gather(None if error is None else str(error))
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        raise UserError(f"rank {failed[0][0]} of {world_size()}: {failed[0][1]}")


def shard(items: Sequence, num_parts: int = 1, part_id: int = 0) -> list:
    """This process's share of ``items``: every item goes to exactly one process.

    ``num_parts``/``part_id`` split the work between independent jobs (the nnU-Net convention for
    schedulers without torchrun); under torchrun each part is split again between the ranks.
    Items are dealt round-robin, so sorted inputs give every process a similar mix (the split of
    ``monai.data.partition_dataset(items, parts, shuffle=False, even_divisible=False)``: no item
    is repeated or dropped).
    """
    num_parts, part_id = int(num_parts), int(part_id)
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise UserError(f"--part-id must be between 0 and {num_parts - 1} for --num-parts {num_parts} "
                        f"(got {part_id}).")
    parts, index = num_parts * world_size(), part_id * world_size() + rank()
    return list(items)[index::parts]


def merge_summary(rows: list[dict], path: "str | os.PathLike", fields: Sequence[str]) -> list[dict]:
    """Gather every rank's ``rows``; rank 0 writes them, sorted by the first field, as one CSV.

    The file is written atomically.  Returns all ranks' rows (sorted) on every rank.
    """
    everyone = sorted((row for part in gather(rows) for row in part), key=lambda r: str(r.get(fields[0], "")))
    if not is_main_process():
        return everyone
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(everyone)
    with replacing(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return everyone


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


def say(*args, **kwargs) -> None:
    """``print`` on rank 0 only (so a job's log reads like one process's)."""
    if is_main_process():
        print(*args, **kwargs)
        (kwargs.get("file") or sys.stdout).flush()

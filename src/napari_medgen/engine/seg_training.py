"""The 2D segmentation training loop behind fine-tuning.

Patches around painted pixels, few-shot augmentation, Dice + cross-entropy that
skip unknown pixels, AdamW with a warm-up then cosine schedule, and
validation Dice on held-out slices; the best weights by validation Dice (the
starting weights included) are the ones kept, also when the user stops early.
"""
from __future__ import annotations

import copy
import math
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from ..data.annotations import IGNORE
from ..data.augment import augment_batch, few_shot_transform
from ..data.sampling import PatchSampler, patch_size_for
from .device import select_device
from .jobs import Cancelled, Job


class TrainingMemoryError(ValueError):
    """The device ran out of memory while training."""


_DICE = DiceLoss(to_onehot_y=True, softmax=True, ignore_index=IGNORE, batch=True)


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice + cross-entropy on known pixels only; ``targets`` (B, 1, H, W) holds IGNORE where unknown."""
    return _DICE(logits, targets) + F.cross_entropy(logits, targets[:, 0], ignore_index=IGNORE)


def predict_logits(net: torch.nn.Module, images: np.ndarray, device: torch.device, multiple: int = 16,
                   batch_size: int = 8) -> torch.Tensor:
    """Class scores (n, C, H, W) on the CPU for (n, H, W) slices, padded to a size the U-Net accepts."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    out = []
    net.eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.as_tensor(np.asarray(images[i:i + batch_size], np.float32))[:, None].to(device)
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            out.append(net(x)[..., :h, :w].float().cpu())
    return torch.cat(out)


def masked_dice(logits: torch.Tensor, targets: np.ndarray) -> float:
    """Mean Dice over the foreground classes present in ``targets``, on known pixels only."""
    n_cls = logits.shape[1]
    t = torch.as_tensor(np.asarray(targets, np.int64))[:, None]
    known = (t != IGNORE).float()
    pred = one_hot(logits.argmax(1, keepdim=True), n_cls) * known
    ref = one_hot(t.clamp(min=0), n_cls) * known
    # slices side by side: one Dice per class over all held-out pixels
    pred, ref = torch.cat(list(pred), -1)[None], torch.cat(list(ref), -1)[None]
    present = [c for c in range(1, n_cls) if bool(ref[0, c].any())]
    if not present:
        return float("nan")
    dice = compute_dice(pred, ref, include_background=True, ignore_empty=True)[0]
    return float(dice[present].mean())


def one_cycle(i: int, steps: int, warmup: float = 0.1) -> float:
    """Learning-rate factor at step ``i``: linear warm-up from 0.1 over the first 10 %, then cosine to 0.01."""
    warm = max(1, int(steps * warmup))
    if i < warm:
        return 0.1 + 0.9 * i / warm
    t = min(1.0, (i - warm) / max(1, steps - warm))
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))


def train_segmenter(net: torch.nn.Module, images: np.ndarray, targets: np.ndarray, *,
                    val_images: np.ndarray | None = None, val_targets: np.ndarray | None = None,
                    steps: int = 200, lr: float = 1e-3, batch_size: int = 8, patch_size=None,
                    augment: bool = True, eval_every: int | None = None, device="auto", seed: int = 0,
                    progress=None, stop=None) -> dict:
    """Train ``net`` in place on (n, H, W) normalised slices and targets; returns the history.

    ``history`` holds ``step``/``loss`` per step, ``val_step``/``val_dice`` per evaluation,
    ``best_val_dice``, ``best_step``, ``seconds`` and ``stopped``.  The best weights by validation
    Dice are loaded into ``net`` at the end (the last ones without validation data).  Stopping
    before the first step raises :class:`Cancelled` and leaves ``net`` as it was.
    """
    job = Job.of(progress, stop)
    dev = select_device(device)
    steps = max(1, int(steps))
    torch.manual_seed(seed)
    sampler = PatchSampler(images, targets, patch_size or patch_size_for(images.shape[1:]), seed=seed)
    transform = few_shot_transform(seed) if augment else None
    has_val = val_images is not None and len(val_images) > 0
    eval_every = eval_every or max(1, steps // 10)
    history = {"step": [], "loss": [], "val_step": [], "val_dice": [], "best_val_dice": None,
               "best_step": 0, "stopped": False, "seconds": 0.0, "device": str(dev)}
    net.to(dev)
    best_state = None

    def evaluate(step: int) -> float:
        nonlocal best_state
        dice = masked_dice(predict_logits(net, val_images, dev), val_targets)
        history["val_step"].append(step)
        history["val_dice"].append(dice)
        if best_state is None or (np.isfinite(dice) and dice >= (history["best_val_dice"] or -1.0)):
            history["best_val_dice"], history["best_step"] = dice, step
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in net.state_dict().items()})
        return dice

    t0 = time.monotonic()
    try:
        if has_val:
            history["initial_val_dice"] = evaluate(0)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(one_cycle, steps=steps))
        for step in range(1, steps + 1):
            if job.should_stop():
                if step == 1:
                    net.cpu()
                    raise Cancelled("Stopped before the first training step; the model is unchanged.")
                history["stopped"] = True
                break
            net.train()
            x, y = sampler.sample(batch_size)
            if transform is not None:
                x, y = augment_batch(transform, x, y)
            x, y = torch.as_tensor(x).to(dev), torch.as_tensor(y).to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = net(x)
            logits = logits.float()
            loss = segmentation_loss(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            history["step"].append(step)
            history["loss"].append(loss.item())
            metrics = {"loss": history["loss"][-1]}
            if has_val and (step % eval_every == 0 or step == steps):
                metrics["val_dice"] = evaluate(step)
            job.report(step, steps, "training", **metrics)
        if has_val and history["step"] and history["val_step"][-1] != history["step"][-1]:
            evaluate(history["step"][-1])
    except torch.cuda.OutOfMemoryError:
        net.cpu()
        raise TrainingMemoryError("The GPU ran out of memory while training; try a smaller batch or patch "
                                  "size, or the CPU. The previous model is unchanged.") from None
    net.cpu()
    if best_state is not None:
        net.load_state_dict(best_state)
    history["seconds"] = time.monotonic() - t0
    return history

"""2D segmentation training as a :class:`~napari_medgen.engine.fit.TrainTask`.

Patches around painted pixels, few-shot augmentation, Dice + cross-entropy that
skip unknown pixels, and validation Dice on held-out slices; the loop, budget,
best weights and stops are :func:`~napari_medgen.engine.fit.fit`'s.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from ..data.annotations import IGNORE
from ..data.augment import augment_batch, few_shot_transform
from ..data.sampling import PatchSampler, patch_size_for
from .fit import Budget, TrainTask, fit


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


class SegmentationTask(TrainTask):
    """2D segmentation on patches around painted pixels, with few-shot augmentation."""

    def __init__(self, net, images, targets, *, val_images=None, val_targets=None, lr=1e-3,
                 batch_size=8, patch_size=None, augment=True, seed=0):
        torch.manual_seed(seed)
        self.networks = {"net": net}
        self.optimizers = [torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)]
        self.sampler = PatchSampler(images, targets, patch_size or patch_size_for(images.shape[1:]), seed=seed)
        self.transform = few_shot_transform(seed) if augment else None
        self.batch_size = batch_size
        self.val = (val_images, val_targets) if val_images is not None and len(val_images) else None
        self.device = torch.device("cpu")

    def to(self, device):
        self.device = device

    def train_step(self, step):
        x, y = self.sampler.sample(self.batch_size)
        if self.transform is not None:
            x, y = augment_batch(self.transform, x, y)
        x, y = torch.as_tensor(x).to(self.device), torch.as_tensor(y).to(self.device)
        loss = segmentation_loss(self.model()(x).float(), y)
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss}

    def validate(self):
        if self.val is None:
            return None
        return masked_dice(predict_logits(self.networks["net"], self.val[0], self.device), self.val[1])

    def shrink(self):
        if self.batch_size <= 1:
            return False
        self.batch_size //= 2
        return True


def train_segmenter(net: torch.nn.Module, images: np.ndarray, targets: np.ndarray, *,
                    val_images: np.ndarray | None = None, val_targets: np.ndarray | None = None,
                    steps: int | None = 200, seconds: float | None = None, lr: float = 1e-3,
                    batch_size: int = 8, patch_size=None, augment: bool = True, eval_every: int | None = None,
                    keep_initial: bool = False, device="auto", seed: int = 0, progress=None, stop=None,
                    cancel=None) -> dict:
    """Train ``net`` in place on (n, H, W) normalised slices and targets with :func:`fit`; returns the history.

    The validation metric is the mean foreground Dice on the held-out slices; the best weights
    by it are kept (the starting ones only with ``keep_initial``).
    """
    task = SegmentationTask(net, images, targets, val_images=val_images, val_targets=val_targets, lr=lr,
                            batch_size=batch_size, patch_size=patch_size, augment=augment, seed=seed)
    return fit(task, Budget(steps, seconds), device=device, keep_initial=keep_initial,
               val_every=eval_every or max(1, (steps or 200) // 10), progress=progress, stop=stop, cancel=cancel)

"""2D / 2.5D segmentation training from sparse annotations, as a :class:`~napari_medgen.engine.fit.TrainTask`.

Patches around painted pixels (with neighbouring slices as context channels), few-shot
augmentation, Dice + cross-entropy that skip unknown pixels, and optional pseudo-labels
(e.g. interpolated slices between painted ones) with a lower weight.  Every painted slice
is trained on; the weights are selected by the Dice on the painted slices (no augmentation,
whole region of interest) averaged with the agreement with the pseudo-labels, so no slice
is sacrificed to validation.  The loop, budget, best weights and stops are
:func:`~napari_medgen.engine.fit.fit`'s.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from ..data.annotations import IGNORE
from ..data.augment import augment_batch
from ..data.sampling import PaintedPatchSampler, context_stack, patch_size_for
from ..data.slices import evenly_spread
from .fit import Budget, TrainTask, fit
from .inference import pad_to
from .jobs import Job

_DICE = DiceLoss(to_onehot_y=True, softmax=True, ignore_index=IGNORE, batch=True)
MIN_LEARNED_DICE = 0.1  # below this on the painted slices, the network has not learned the structure
PREVIEW_COST = 4.0  # after a live preview taking d seconds, the next waits at least this many times d


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice + cross-entropy on known pixels only; ``targets`` (B, 1, H, W) holds IGNORE where unknown."""
    if not bool((targets != IGNORE).any()):
        return logits.sum() * 0.0
    return _DICE(logits, targets) + F.cross_entropy(logits, targets[:, 0], ignore_index=IGNORE)


def padding_multiple(net: torch.nn.Module) -> int:
    """What a U-Net's input sizes are padded to a multiple of: the product of its strides (16 if it has none)."""
    return int(np.prod(getattr(net, "strides", None) or (16,)))


def predict_logits(net: torch.nn.Module, volume: np.ndarray, indices, device: torch.device, *, context: int = 0,
                   box: tuple | None = None, batch_size: int = 8) -> torch.Tensor:
    """Class scores (n, C, h, w) on the CPU for slices ``indices`` of a (N, H, W) volume (inside the in-plane
    ``box`` (y0, y1, x0, x1) if given), padded as inference pads them (so a Dice of these is the output's)."""
    y0, y1, x0, x1 = box or (0, volume.shape[1], 0, volume.shape[2])
    h, w = y1 - y0, x1 - x0
    out = []
    net.eval()
    with torch.inference_mode():
        for i in range(0, len(indices), batch_size):
            x = np.stack([context_stack(volume, k, context)[:, y0:y1, x0:x1] for k in indices[i:i + batch_size]])
            x, (top, left) = pad_to(torch.as_tensor(x, dtype=torch.float32).to(device), padding_multiple(net))
            out.append(net(x)[..., top:top + h, left:left + w].float().cpu())
    return torch.cat(out)


def masked_dice(logits: torch.Tensor, targets: np.ndarray) -> float:
    """Mean Dice over the foreground classes present in ``targets``, on known pixels only."""
    n_cls = logits.shape[1]
    t = torch.as_tensor(np.asarray(targets, np.int64))[:, None]
    known = (t != IGNORE).float()
    pred = one_hot(logits.argmax(1, keepdim=True), n_cls) * known
    ref = one_hot(t.clamp(min=0), n_cls) * known
    pred, ref = torch.cat(list(pred), -1)[None], torch.cat(list(ref), -1)[None]  # one Dice over all slices
    present = [c for c in range(1, n_cls) if bool(ref[0, c].any())]
    if not present:
        return float("nan")
    dice = compute_dice(pred, ref, include_background=True, ignore_empty=True)[0]
    return float(dice[present].mean())


class SegmentationTask(TrainTask):
    """2D/2.5D segmentation on patches around painted pixels, pseudo-labels optional.

    ``volume`` (N, H, W) normalised, slices along the training axis; ``painted`` and ``pseudo``
    are ``(indices, targets (n, H, W))`` with IGNORE where unknown.  ``box`` (y0, y1, x0, x1) is
    the in-plane region of interest that patches prefer and validation looks at.
    """

    def __init__(self, net, volume, painted, *, pseudo=None, pseudo_weight=0.5, context=0, lr=1e-3,
                 batch_size=8, patch_size=None, augment=True, box=None, preview=None, seed=0):
        torch.manual_seed(seed)
        self.networks = {"net": net}
        self.optimizers = [torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)]
        self.volume, self.context, self.box = volume, int(context), box
        patch = tuple(patch_size or patch_size_for(volume.shape[1:]))
        self.painted = painted
        self.sampler = PaintedPatchSampler(volume, painted[1], painted[0], patch, context=context, roi=box, seed=seed)
        self.pseudo = None
        if pseudo is not None and len(pseudo[0]) and (np.asarray(pseudo[1]) != IGNORE).any():
            self.pseudo = pseudo
            self.pseudo_sampler = PaintedPatchSampler(volume, pseudo[1], pseudo[0], patch, context=context, roi=box,
                                                      boundary_share=0.0, seed=seed + 1)
        self.pseudo_weight = float(pseudo_weight)
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.batch_size = batch_size
        self.device = torch.device("cpu")
        self.preview = preview  # (callable(labels of the box), seconds between calls) or None
        self._last_preview, self._preview_wait = None, 0.0
        self.painted_scores = []  # Dice on the painted slices at each validation

    def to(self, device):
        self.device = device

    def _batch(self, sampler, n):
        x, y = sampler.sample(n)
        x, y = augment_batch(x, y, self.rng) if self.augment else (torch.as_tensor(x), torch.as_tensor(y))
        return x.to(self.device), y.to(self.device)

    def train_step(self, step):
        n_pseudo = self.batch_size // 4 if self.pseudo is not None and self.batch_size >= 2 else 0
        x, y = self._batch(self.sampler, self.batch_size - n_pseudo)
        loss = segmentation_loss(self.model()(x).float(), y)
        losses = {"loss": loss}
        if n_pseudo:
            xp, yp = self._batch(self.pseudo_sampler, n_pseudo)
            pseudo = segmentation_loss(self.model()(xp).float(), yp)
            loss = loss + self.pseudo_weight * pseudo
            losses["pseudo_loss"] = pseudo
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return losses

    def _dice(self, indices, targets) -> float:
        box = self.box or (0, self.volume.shape[1], 0, self.volume.shape[2])
        logits = predict_logits(self.networks["net"], self.volume, indices, self.device, context=self.context, box=box)
        return masked_dice(logits, np.asarray(targets)[:, box[0]:box[1], box[2]:box[3]])

    def validate(self):
        scores = [self._dice(*self.painted)]
        self.painted_scores.append(scores[0])
        if self.pseudo is not None:
            idx, tgt = self.pseudo
            pick = evenly_spread(len(idx), 8)
            scores.append(self._dice(idx[pick], tgt[pick]))
        self._maybe_preview()
        finite = [s for s in scores if np.isfinite(s)]
        return float(np.mean(finite)) if finite else float("nan")

    def _maybe_preview(self):
        if self.preview is None:
            return
        send, every = self.preview
        now = time.monotonic()
        if self._last_preview is not None and now - self._last_preview < max(every, self._preview_wait):
            return
        send(self.networks["net"], self.device)
        self._last_preview = time.monotonic()
        # a preview of a large region takes seconds: at most a fifth of the training time goes to them
        self._preview_wait = PREVIEW_COST * (self._last_preview - now)

    def nothing_learned(self, best_metric):
        if best_metric is None or not np.isfinite(best_metric) or best_metric < MIN_LEARNED_DICE:
            shown = "none" if best_metric is None or not np.isfinite(best_metric) else f"{best_metric:.2f}"
            return (f"The network never learned to predict the painted structure (best Dice {shown} on the painted "
                    "slices); paint more slices or train longer.")
        return None


def train_segmenter(net: torch.nn.Module, volume: np.ndarray, painted: tuple, *, pseudo: tuple | None = None,
                    pseudo_weight: float = 0.5, context: int = 0, steps: int | None = None,
                    seconds: float | None = 60.0, lr: float = 1e-3, batch_size: int = 8, patch_size=None,
                    augment: bool = True, box: tuple | None = None, val_seconds: float | None = None,
                    patience: int | None = 8, keep_initial: bool = False, preview=None, device="auto", seed: int = 0,
                    progress=None, stop=None, cancel=None) -> dict:
    """Train ``net`` in place on a (N, H, W) normalised volume and the painted ``(indices, targets)`` with
    :func:`fit`; returns the history.  ``preview``: ``(callable(net, device), seconds)`` called at
    validations at most that often, for live views."""
    job = Job.of(progress, stop, cancel)
    task = SegmentationTask(net, volume, painted, pseudo=pseudo, pseudo_weight=pseudo_weight, context=context,
                            lr=lr, batch_size=batch_size, patch_size=patch_size, augment=augment, box=box,
                            preview=preview, seed=seed)
    val_every = max(10, steps // 10) if steps and not seconds else None
    every = val_seconds or (None if val_every else min(10.0, max(2.0, (seconds or 60.0) / 12)))  # steps: no clock
    history = fit(task, Budget(steps, seconds), device=device, keep_initial=keep_initial, val_every=val_every,
                  val_seconds=every, patience=patience, min_delta=1e-3, progress=job)
    if history["best_step"] is not None and task.painted_scores:
        history["painted_dice"] = task.painted_scores[history["val_step"].index(history["best_step"])]
    return history

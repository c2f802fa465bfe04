"""Classifier training as a :class:`~napari_medgen.engine.fit.TrainTask`, and its validation metrics.

Class-balanced batches (each class equally often, whatever its share), MONAI augmentation,
cross-entropy, and freeze-then-unfreeze for transferred layers: during the first
``freeze`` fraction of the budget only the new layers learn, then all of them.
The validation metric is the mean of balanced accuracy and macro AUROC.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from monai import transforms as mt
from monai.metrics import compute_roc_auc

from ..engine.fit import Budget, TrainTask


def classification_metrics(probs: np.ndarray, y: np.ndarray, classes: list) -> dict:
    """Accuracy, balanced accuracy, AUROC per class (one-vs-rest) and the confusion matrix (rows = truth)."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y, np.int64)
    n = len(classes)
    pred = probs.argmax(1)
    cm = np.zeros((n, n), int)
    np.add.at(cm, (y, pred), 1)
    present = cm.sum(1) > 0
    recall = np.diag(cm)[present] / cm.sum(1)[present]
    auroc = {}
    for c in range(n):
        pos = y == c
        if pos.any() and (~pos).any():
            auroc[str(classes[c])] = float(compute_roc_auc(torch.as_tensor(probs[:, c]), torch.as_tensor(pos * 1)))
    return {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(recall.mean()),
            "auroc": auroc, "auroc_macro": float(np.mean(list(auroc.values()))) if auroc else float("nan"),
            "confusion_matrix": cm.tolist(), "n": int(len(y))}


class NotValidatedWarning(UserWarning):
    """No image was held out for validation: nothing says whether the classifier learned."""


def score(metrics: dict) -> float:
    """The one validation number: mean of balanced accuracy and macro AUROC (balanced accuracy alone without AUROC)."""
    auc = metrics["auroc_macro"]
    return metrics["balanced_accuracy"] if np.isnan(auc) else 0.5 * (metrics["balanced_accuracy"] + auc)


def augmentation(spatial_dims: int, seed: int) -> mt.Compose:
    """Left-right flips, a small affine and intensity jitter, per image (C, *spatial)."""
    rot = 0.15 if spatial_dims == 2 else (0.15, 0.05, 0.05)
    t = mt.Compose([mt.RandFlip(prob=0.5, spatial_axis=spatial_dims - 1),
                    mt.RandAffine(prob=0.8, rotate_range=rot, scale_range=0.1, translate_range=6,
                                  padding_mode="zeros"),
                    mt.RandScaleIntensity(factors=0.1, prob=0.5), mt.RandShiftIntensity(offsets=0.05, prob=0.5),
                    mt.RandAdjustContrast(prob=0.3, gamma=(0.8, 1.25))])
    t.set_random_state(seed=seed)
    return t


def predict(net: torch.nn.Module, x: np.ndarray, device, batch_size: int = 16) -> np.ndarray:
    """Class probabilities (n, C) of prepared images (n, *size)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[i:i + batch_size])[:, None].to(device)
            out.append(torch.softmax(net(xb).float(), 1).cpu().numpy())
    return np.concatenate(out)


class ClassifierTask(TrainTask):
    """Cross-entropy on class-balanced, augmented batches; transferred layers frozen for a while."""

    min_batch = 2
    def __init__(self, net, x, y, classes, *, val=None, budget: Budget, frozen=(), freeze: float = 0.0,
                 lr: float = 1e-3, batch_size: int = 8, augment: bool = True, seed: int = 0):
        torch.manual_seed(seed)
        self.networks = {"net": net}
        self.optimizers = [torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)]
        self.x, self.y, self.classes, self.val = x, y, classes, val
        self.scored = []  # (score, metrics) of each validation
        self.by_class = [np.flatnonzero(y == c) for c in range(len(classes)) if (y == c).any()]
        self.frozen = [p for n, p in net.named_parameters() if n in set(frozen)]
        self.freeze, self.budget = freeze, budget
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.aug = augmentation(x.ndim - 1, seed) if augment else None
        self.device = torch.device("cpu")
        self.metrics: dict = {}
        self._t0 = None

    def to(self, device):
        self.device = device

    def frozen_now(self, step: int) -> bool:
        if not self.frozen or self.freeze <= 0:
            return False
        self._t0 = self._t0 or time.monotonic()
        return self.budget.fraction(step - 1, time.monotonic() - self._t0) < self.freeze

    def train_step(self, step):
        cls = self.rng.integers(len(self.by_class), size=self.batch_size)
        idx = np.array([self.rng.choice(self.by_class[c]) for c in cls])
        batch = self.x[idx][:, None]
        if self.aug is not None:
            batch = np.stack([np.asarray(self.aug(b), np.float32) for b in batch])
        xb = torch.as_tensor(batch).to(self.device)
        yb = torch.as_tensor(self.y[idx]).to(self.device)
        loss = F.cross_entropy(self.model()(xb).float(), yb)
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.frozen_now(step):
            for p in self.frozen:
                p.grad = None
        opt.step()
        return {"loss": loss}

    def validate(self):
        if self.val is None:
            return None
        probs = predict(self.networks["net"], self.val[0], self.device)
        self.metrics = classification_metrics(probs, self.val[1], self.classes)
        self.scored.append((score(self.metrics), self.metrics))
        return self.scored[-1][0]

    def nothing_learned(self, best):
        chance = 1.0 / len(self.classes)
        # with fewer than two validation images of a class, chance level is a coin flip, not evidence
        too_few = self.val is None or np.bincount(self.val[1], minlength=len(self.classes)).min() < 2
        if too_few or best is None or not self.scored:
            return None
        kept = max(self.scored, key=lambda item: item[0])[1]  # the returned weights' validation
        if kept["balanced_accuracy"] <= chance + 1e-6:  # e.g. one class for every image, however they rank
            return ("The classifier did not learn to tell the classes apart: with its best weights every class is "
                    f"recognised at chance on the {len(self.val[1])} validation images (balanced accuracy "
                    f"{kept['balanced_accuracy']:.2f}, AUROC {kept['auroc_macro']:.2f}); give more images per class, "
                    "a longer budget, or an intensity window that shows the finding.")
        return None

"""Two-scale GAN for slices at their native resolution: a coarse GAN, then a full-resolution refiner.

A full-resolution GAN learns coarse anatomy slowly on a CPU (every step pays for every pixel).  The
cascade spends the first :data:`COARSE_FRACTION` of the budget on an unconditional GAN over 4x
average-pooled slices (1/16 of the pixels: cheap steps, anatomy learned fast), then the rest on a
refiner: a MONAI ``UNet`` that adds the full-resolution detail to a bicubically upsampled coarse
slice, trained on random crops of real slices (input: the crop pooled and upsampled back) with an
L1 term and a conditional spectral-norm patch discriminator.  Its last convolution starts
at zero, so before the refiner trains the cascade is the coarse GAN upsampled.

One :class:`CascadeTask` runs both stages in one :func:`~napari_medgen.engine.fit.fit`: the
learning-rate schedule (:func:`stage_schedule`) tells the task which stage the budget is in, and
validation always scores the whole pipeline (patch SWD at every Laplacian level between its samples
and the training slices: a distribution distance needs many slices, more than a held-out tenth of a
few dozen), so the best weights are comparable across stages.  The refiner stage starts from the
best-validated coarse GAN.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.fit import TrainTask, warmup_cosine
from ..models.config import NetSpec
from .gan_training import N_VAL_SAMPLES, GANTask, Previews, _AdversarialTask, generate, latents
from .synthesis_report import pyramid_swd

FACTOR = 4  # the coarse GAN works on slices average-pooled by this factor
COARSE_FRACTION = 0.7  # of the budget spent on the coarse GAN
CROP = 64  # the refiner (local: a small UNet and a patch discriminator) trains on crops of this size
FLAT = 1e-3  # samples whose intensities vary less than this (in [0, 1]) are blank


def refiner_config(width: int = 16) -> NetSpec:
    """The MONAI UNet that adds full-resolution detail to an upsampled coarse slice."""
    return NetSpec("UNet", {"spatial_dims": 2, "in_channels": 1, "out_channels": 1,
                            "channels": [width, 2 * width, 4 * width, 4 * width], "strides": [2, 2, 2],
                            "num_res_units": 0,
                            "norm": "BATCH"})


def zero_output(net: torch.nn.Module) -> torch.nn.Module:
    """Zero the last (output) convolution: the refiner starts by adding nothing."""
    last = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))][-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    return net


def upsample(low: torch.Tensor, size) -> torch.Tensor:
    """(n, 1, h, w) images to ``size`` by bicubic interpolation."""
    return F.interpolate(low, size=tuple(size), mode="bicubic", align_corners=False)


def refined(refiner: torch.nn.Module, low: torch.Tensor, size) -> torch.Tensor:
    """Full-resolution images in [-1, 1] from coarse ones in [-1, 1]."""
    up = upsample(low, size)
    return (up + refiner(up)).clamp(-1, 1)


@torch.no_grad()
def cascade_generate(gen: torch.nn.Module, refiner: torch.nn.Module, z: torch.Tensor, size,
                     batch: int = 32) -> np.ndarray:
    """Images in [0, 1] of shape (n, *size) from latents: coarse GAN, upsampled, refined."""
    low = torch.from_numpy(generate(gen, z, batch))[:, None] * 2 - 1
    was_training = refiner.training
    refiner.eval()
    dev = next(refiner.parameters()).device
    out = [refined(refiner, low[i:i + batch].to(dev), size).float().cpu() for i in range(0, len(low), batch)]
    refiner.train(was_training)
    return ((torch.cat(out) + 1) / 2)[:, 0].numpy()


def stage_schedule(task: "CascadeTask"):
    """A learning-rate schedule for :func:`fit` that restarts warm-up and cosine decay for the refiner
    stage and tells ``task`` the fraction of the budget used."""
    def schedule(frac: float) -> float:
        task.frac = frac
        split = COARSE_FRACTION
        return warmup_cosine(frac / split) if frac < split else warmup_cosine((frac - split) / (1 - split))
    return schedule


class RefineTask(_AdversarialTask):
    """The refiner stage: crops of real slices pooled and upsampled in, the crops out (L1 + adversarial)."""

    def __init__(self, refiner, disc, images, *, l1_weight: float, crop: int = CROP, **kw):
        super().__init__(refiner, disc, images, **kw)
        self.l1_weight = l1_weight
        self.crop = [min(crop, s) // 8 * 8 for s in images.shape[-2:]]

    def _crops(self, idx: torch.Tensor) -> torch.Tensor:
        """Random crops (offsets on the coarse grid: pooled like the whole slice) of the chosen slices."""
        (ch, cw), (h, w), f = self.crop, self.real.shape[-2:], FACTOR
        ys = torch.randint((h - ch) // f + 1, (len(idx),), generator=self.rng) * f
        xs = torch.randint((w - cw) // f + 1, (len(idx),), generator=self.rng) * f
        return torch.stack([self.real[i, :, y:y + ch, x:x + cw] for i, y, x in zip(idx, ys, xs)])

    def train_step(self, step):
        idx = torch.randint(len(self.real), (self.batch_size,), generator=self.rng)
        flip = torch.rand(self.batch_size, 1, 1, 1, generator=self.rng) < 0.5
        real = self._crops(idx)
        real = torch.where(flip, real.flip(-1), real).to(self.device)
        up = upsample(F.avg_pool2d(real, FACTOR), real.shape[-2:])
        fake = up + self.model("gen")(up).float()
        l1 = F.l1_loss(fake, real)
        d_loss, g_loss = self._step(fake, real, cond=up, extra=self.l1_weight * l1)
        return {"loss": d_loss + g_loss + self.l1_weight * l1, "d_loss": d_loss, "g_loss": g_loss, "l1": l1}


class CascadeTask(Previews, TrainTask):
    """Coarse GAN, then refiner, in one run; validation: mean patch SWD over all pyramid levels between
    the pipeline's samples and ``val_images`` (lower is better)."""

    metric_mode = "min"
    min_batch = 2

    def __init__(self, coarse: GANTask, refine: RefineTask, val_images: np.ndarray, *, to_intensity):
        self.stages = {"coarse": coarse, "refine": refine}
        self.networks, self.optimizers = {}, []
        for prefix, stage in self.stages.items():
            self.networks.update({f"{prefix}.{k}": net for k, net in stage.networks.items()})
            self.optimizers += stage.optimizers
            stage.model = lambda name, p=prefix: self.model(f"{p}.{name}")  # DDP wrappers live here
        self.ddp_networks = tuple(f"{p}.{k}" for p, s in self.stages.items() for k in s.ddp_networks)
        self.val_images = val_images
        self.size = val_images.shape[-2:]
        self.fixed = latents(N_VAL_SAMPLES, 12345, coarse.latent_size)
        self.to_intensity = to_intensity
        self.frac = 0.0
        self.best_coarse = (float("inf"), None)  # (metric, coarse weights) of the best coarse-stage validation

    @property
    def batch_size(self) -> int:
        return self.stages["coarse"].batch_size

    def shrink(self) -> bool:
        return all([s.shrink() for s in self.stages.values()])

    def to(self, device):
        for stage in self.stages.values():
            stage.to(device)

    def train_step(self, step):
        if self.frac < COARSE_FRACTION:
            return self.stages["coarse"].train_step(step)
        if self.best_coarse[1] is not None:  # refine the best coarse GAN, not the last one
            for name, net in self.stages["coarse"].networks.items():
                net.load_state_dict(self.best_coarse[1][name])
            self.best_coarse = (self.best_coarse[0], None)
        return self.stages["refine"].train_step(step)

    def samples(self, z: torch.Tensor) -> np.ndarray:
        return cascade_generate(self.networks["coarse.ema"].module, self.networks["refine.ema"].module, z, self.size)

    def validate(self):
        unit = self.samples(self.fixed)
        self.preview = self.to_intensity(unit[:8])
        if float(unit.std()) < FLAT:
            return float("nan")  # blank images are never the best
        metric = float(np.mean(pyramid_swd(unit, self.val_images)))
        if self.frac < COARSE_FRACTION and metric < self.best_coarse[0]:
            self.best_coarse = (metric, {k: copy.deepcopy(net.state_dict())
                                         for k, net in self.stages["coarse"].networks.items()})
        return metric

    def nothing_learned(self, best_metric):
        if best_metric is None:
            return "The GAN only produced blank images; train longer or check that the images have contrast."
        return None

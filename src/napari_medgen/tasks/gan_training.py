"""GAN training recipes as :class:`~napari_medgen.engine.fit.TrainTask` s (unconditional and mask-to-image).

Recipe for few images on a CPU: a spectral-norm MONAI ``PatchDiscriminator``, least-squares
``PatchAdversarialLoss``, differentiable augmentation of what the discriminator sees, and an
exponential moving average (EMA) of the generator, which is what is validated, kept and sampled.
Validation: the single-scale unconditional GAN scores the sliced Wasserstein distance of its EMA
samples' patches to a held-out tenth of the real slices (lower is better); the default cascade
(:mod:`.cascade_gan`) scores its samples against all the training slices (a distribution distance
needs more slices than a held-out tenth; ``gan-report`` measures memorisation); the mask-to-image
GAN the L1 error of its renderings of held-out label maps.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from monai.networks.utils import one_hot
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..engine.fit import TrainTask
from .synthesis_report import laplacian_pyramid, sliced_wasserstein

N_VAL_SAMPLES = 32


def spectral_discriminator(in_channels: int, channels: int = 32, layers: int = 3) -> torch.nn.Module:
    """A MONAI PatchDiscriminator with spectral norm on every convolution, no batch norm."""
    disc = PatchDiscriminator(spatial_dims=2, channels=channels, in_channels=in_channels, num_layers_d=layers,
                              norm=None, bias=True)
    for m in disc.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.utils.parametrizations.spectral_norm(m)
    return disc


def patch_layers(size, most: int = 3) -> int:
    """Strided layers of a patch discriminator for images of ``size`` (its last convolutions need 4 px)."""
    return max(1, min(most, int(np.log2(max(1, min(size)))) - 2))


def diff_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Differentiable augmentation (brightness, contrast, translation, cutout) for the discriminator."""
    n, dev = x.shape[0], x.device
    r = lambda *s: torch.rand(*s, generator=gen).to(dev)  # noqa: E731
    x = x + (r(n, 1, 1, 1) - 0.5) * 0.4
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (r(n, 1, 1, 1) * 0.5 + 0.75) + mean
    h, w = x.shape[-2:]
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = (r(n, 2) - 0.5) * 0.25  # shifts of up to 1/16 of the image
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), padding_mode="border",
                      align_corners=False)
    cy, cx = (r(n) * h).long(), (r(n) * w).long()
    yy = torch.arange(h, device=dev)[None, :, None]
    xx = torch.arange(w, device=dev)[None, None, :]
    keep = ((yy - cy[:, None, None]).abs() >= h // 8) | ((xx - cx[:, None, None]).abs() >= w // 8)
    return x * keep[:, None].to(x.dtype)


def latents(n: int, seed: int, latent_size: int) -> torch.Tensor:
    """The ``n`` latent vectors of ``seed``: the first k are the same whatever ``n`` is."""
    return torch.randn(n, latent_size, generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def generate(net: torch.nn.Module, z: torch.Tensor, batch: int = 32) -> np.ndarray:
    """Images in [0, 1] of shape (n, H, W) from latents (unconditional) or one-hot maps (SPADE)."""
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    out = []
    for i in range(0, len(z), batch):
        y = net(z[i:i + batch].to(dev))
        y = y[0] if isinstance(y, (tuple, list)) else y
        out.append(((torch.tanh(y.float()) + 1) / 2)[:, 0].cpu())
    net.train(was_training)
    return torch.cat(out).numpy()


class Previews:
    """The last samples a GAN task drew at validation, handed to the progress report once."""

    preview = None

    def take_preview(self):
        preview, self.preview = self.preview, None
        return preview


class _AdversarialTask(Previews, TrainTask):
    """Shared parts: generator, EMA, discriminator, optimisers, real images in [-1, 1], the last preview."""

    min_batch = 2
    metric_mode = "min"
    ddp_networks = ("gen", "disc")

    def __init__(self, gen, disc, images: np.ndarray, *, lr: float, ema_decay: float, batch_size: int, seed: int):
        torch.manual_seed(seed)
        ema = AveragedModel(gen, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        self.networks = {"gen": gen, "disc": disc, "ema": ema}
        self.optimizers = [torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.99)),
                           torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.99))]
        self.adv = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
        self.real = torch.from_numpy(images * 2 - 1)[:, None]
        self.batch_size = batch_size
        self.rng = torch.Generator().manual_seed(seed)
        self.device = torch.device("cpu")

    def to(self, device):
        self.device = device

    def _step(self, fake, real, cond=None, extra=None):
        """One discriminator and one generator update; ``extra`` adds a generator loss term."""
        cat = (lambda x: torch.cat([x, cond], 1)) if cond is not None else (lambda x: diff_augment(x, self.rng))
        disc, (opt_g, opt_d) = self.model("disc"), self.optimizers
        d_loss = 0.5 * (self.adv(disc(cat(fake.detach()))[-1], target_is_real=False, for_discriminator=True)
                        + self.adv(disc(cat(real))[-1], target_is_real=True, for_discriminator=True))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = self.adv(disc(cat(fake))[-1], target_is_real=True, for_discriminator=False)
        opt_g.zero_grad(set_to_none=True)
        (g_loss + (extra if extra is not None else 0)).backward()
        opt_g.step()
        self.networks["ema"].update_parameters(self.networks["gen"])
        return d_loss, g_loss


class GANTask(_AdversarialTask):
    """Unconditional GAN; validation: patch SWD (full and coarse scale) of EMA samples to held-out slices."""

    def __init__(self, gen, disc, images, val_images, *, latent_size: int, to_intensity, **kw):
        super().__init__(gen, disc, images, **kw)
        self.latent_size = latent_size
        self.val_images = val_images
        self.fixed = latents(N_VAL_SAMPLES, 12345, latent_size)
        self.to_intensity = to_intensity

    def train_step(self, step):
        idx = torch.randint(len(self.real), (self.batch_size,), generator=self.rng)
        flip = torch.rand(self.batch_size, 1, 1, 1, generator=self.rng) < 0.5
        real = torch.where(flip, self.real[idx].flip(-1), self.real[idx]).to(self.device)
        z = torch.randn(self.batch_size, self.latent_size, generator=self.rng).to(self.device)
        fake = torch.tanh(self.model("gen")(z).float())
        d_loss, g_loss = self._step(fake, real)
        return {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss}

    def validate(self):
        unit = generate(self.networks["ema"].module, self.fixed)
        self.preview = self.to_intensity(unit[:8])
        a, b = (laplacian_pyramid(torch.from_numpy(x)[:, None], 3) for x in (unit, self.val_images))
        return float(np.mean([sliced_wasserstein(x, y, n_patches=2048, n_proj=64)
                              for x, y in ((a[0], b[0]), (a[-1], b[-1]))]))


class ConditionalGANTask(_AdversarialTask):
    """SPADE mask-to-image GAN with an L1 term; validation: L1 of EMA renderings of held-out label maps."""

    def __init__(self, gen, disc, images, labels, val_images, val_labels, *, n_classes: int, l1_weight: float,
                 to_intensity, **kw):
        super().__init__(gen, disc, images, **kw)
        self.n_classes, self.l1_weight = n_classes, l1_weight
        self.seg = one_hot(torch.from_numpy(labels)[:, None], n_classes)
        self.val_images = val_images
        self.val_seg = one_hot(torch.from_numpy(val_labels)[:, None], n_classes)
        self.to_intensity = to_intensity

    def train_step(self, step):
        idx = torch.randint(len(self.real), (self.batch_size,), generator=self.rng)
        flip = torch.rand(self.batch_size, 1, 1, 1, generator=self.rng) < 0.5
        real = torch.where(flip, self.real[idx].flip(-1), self.real[idx]).to(self.device)
        seg = torch.where(flip, self.seg[idx].flip(-1), self.seg[idx]).to(self.device)
        fake = torch.tanh(self.model("gen")(seg)[0].float())
        l1 = F.l1_loss(fake, real)
        d_loss, g_loss = self._step(fake, real, cond=seg, extra=self.l1_weight * l1)
        return {"loss": d_loss + g_loss + self.l1_weight * l1, "d_loss": d_loss, "g_loss": g_loss, "l1": l1}

    def validate(self):
        unit = generate(self.networks["ema"].module, self.val_seg, batch=16)
        self.preview = self.to_intensity(unit[:4])
        return float(np.abs(unit - self.val_images).mean())

"""Unconditional 2D GAN: train on the slices of volumes, synthesize new slices reproducibly from seeds.

Recipe for few images on a CPU: MONAI ``Generator`` (batch norm, tanh output) against a MONAI
``PatchDiscriminator`` with spectral norm, least-squares ``PatchAdversarialLoss``,
differentiable augmentation of everything the discriminator sees, and an exponential
moving average (EMA) of the generator, which is what is saved and sampled.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..data.normalize import intensity_window, normalize, resolve
from ..data.slices import fit_to_size, informative_slices, take_slices
from ..engine.device import select_device
from ..engine.jobs import Job
from ..io.geometry import Geometry
from ..io.read import ImageData
from ..models.checkpoint import Model, build_network
from ..errors import UserError

MIN_SLICES = 8
MAX_SAMPLES = 10_000
PREVIEW_SEEDS = 8


class TooFewImagesError(UserError):
    """Not enough training slices."""


# --- data ------------------------------------------------------------------------------------------
def as_image(item, geometry: Geometry | None = None) -> ImageData:
    """An :class:`ImageData` from an ImageData or a plain array (unit spacing)."""
    if isinstance(item, ImageData):
        return item
    arr = np.asarray(item)
    return ImageData(arr, geometry or Geometry.identity(arr.ndim))


def _as_list(images) -> list[ImageData]:
    return [as_image(i) for i in (images if isinstance(images, (list, tuple)) else [images])]


def inplane_spacing(item: ImageData, axis: int) -> tuple[float, float]:
    sp = list(item.geometry.spacing)
    if item.data.ndim == 3:
        sp.pop(axis)
    return tuple(float(s) for s in sp[-2:])


def training_slices(images, axis: int = 0, labels=None, downsample: int = 1, size=None,
                    min_slices: int = MIN_SLICES) -> dict:
    """Informative slices of ``images`` scaled to [0, 1], all on one in-plane grid.

    Returns ``{"images": (n, H, W) float32, "labels": (n, H, W) int or None, "spacing",
    "native_shape", "size", "intensity": [low, high], "normalization"}``. Slices of mixed
    shapes are centre-padded/cropped to a common size; mixed pixel spacings are refused.
    """
    items = _as_list(images)
    labs = None if labels is None else _as_list(labels)
    if labs is not None and [l.data.shape for l in labs] != [i.data.shape for i in items]:
        raise UserError("Each label map must have the same shape as its image.")
    spacings = {tuple(round(s, 3) for s in inplane_spacing(i, axis)) for i in items}
    if len(spacings) > 1:
        raise UserError(f"The training images have different pixel spacings {sorted(spacings)}; "
                         "resample them to one spacing first.")
    if int(downsample) < 1:
        raise UserError("downsample must be 1 (full resolution) or more.")
    stacks, lab_stacks, lows, highs, specs = [], [], [], [], []
    for k, item in enumerate(items):
        vol = np.asarray(item.data, dtype=np.float32)
        spec = resolve(None, vol, item.metadata.get("modality", ""))  # CT: HU window; else percentiles
        specs.append(spec)
        lo, hi = intensity_window(vol, spec)
        lows.append(lo), highs.append(hi)
        norm = normalize(vol, {"kind": "window", "low": lo, "high": hi})
        mask = None if labs is None else labs[k].data > 0
        idx = informative_slices(vol, axis, mask=mask) if vol.ndim == 3 else np.array([0])
        stacks.append(_pool(take_slices(norm, axis, idx), downsample))
        if labs is not None:
            lab_stacks.append(take_slices(np.asarray(labs[k].data), axis, idx)[:, ::downsample, ::downsample])
    shapes = [s.shape[-2:] for s in stacks]
    native = tuple(int(max(s[d] for s in shapes)) for d in (0, 1))
    size = tuple(int(s) for s in size) if size else tuple(-(-n // 8) * 8 for n in native)
    imgs = np.concatenate([fit_to_size(s, size) for s in stacks])
    if len(imgs) < min_slices:
        raise TooFewImagesError(f"Only {len(imgs)} informative slices were found; a GAN needs at least {min_slices}.")
    out_labels = None
    if labs is not None:
        out_labels = np.concatenate([fit_to_size(lab, size) for lab in lab_stacks]).astype(np.int64)
    sp = next(iter(spacings))
    return {"images": imgs.astype(np.float32), "labels": out_labels, "size": list(size),
            "spacing": [sp[0] * downsample, sp[1] * downsample], "native_shape": list(native),
            "intensity": [float(np.mean(lows)), float(np.mean(highs))], "normalization": specs[0]}


def _pool(stack: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return stack
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    return F.avg_pool2d(t, factor, ceil_mode=True)[:, 0].numpy()


def real_slices(images, config: dict) -> np.ndarray:
    """Informative real slices of ``images`` on a trained model's grid, in its intensity units:
    the reference for :func:`~napari_medgen.tasks.synthesis_report.synthesis_report`."""
    data = training_slices(images, config.get("axis", 0), downsample=config.get("downsample", 1),
                           size=config["size"], min_slices=2)
    return _to_intensity(data["images"], config)


# --- training recipe helpers (shared with the conditional GAN) -----------------------------------------
def spectral_discriminator(in_channels: int, channels: int = 32, layers: int = 3) -> torch.nn.Module:
    """A MONAI PatchDiscriminator with spectral norm on every convolution, no batch norm."""
    disc = PatchDiscriminator(spatial_dims=2, channels=channels, in_channels=in_channels, num_layers_d=layers,
                              norm=None, bias=True)
    for m in disc.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.utils.parametrizations.spectral_norm(m)
    return disc


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


def ema_of(net: torch.nn.Module, decay: float) -> AveragedModel:
    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


# --- unconditional GAN -----------------------------------------------------------------------------
def gan_config(size, latent_dim: int = 64, width: int = 16) -> dict:
    """Config of a fresh MONAI Generator producing ``size`` (multiples of 8) images."""
    h, w = (int(s) for s in size)
    if h % 8 or w % 8:
        raise UserError("The GAN image size must be a multiple of 8 in both axes.")
    args = {"latent_shape": [latent_dim], "start_shape": [8 * width, h // 8, w // 8],
            "channels": [4 * width, 2 * width, width, 1], "strides": [2, 2, 2, 1], "num_res_units": 0,
            "norm": "BATCH"}
    return {"task": "gan", "name": "gan", "networks": {"net": {"arch": "Generator", "args": args}},
            "latent_dim": latent_dim, "size": [h, w]}


def train_gan(images, axis: int = 0, steps: int = 2000, batch_size: int = 16, latent_dim: int = 64,
              width: int = 16, downsample: int = 1, lr: float = 5e-4, ema_decay: float = 0.99,
              seed: int = 0, preview_every: int | None = None, device="auto", progress=None, stop=None):
    """Train a GAN on the informative slices of ``images`` (ImageData/arrays, one or several volumes).

    Reports ``d_loss``/``g_loss`` metrics and, every ``preview_every`` steps, a preview of the EMA
    generator on fixed seeds (``(8, H, W)`` in training intensity units). Returns ``(model, history)``;
    on stop the EMA weights so far are returned with ``history["stopped"] = True``.
    """
    job = Job.of(progress, stop)
    if steps < 1:
        raise UserError("Training needs at least one step.")
    data = training_slices(images, axis, downsample=downsample)
    config = gan_config(data["size"], latent_dim, width)
    config.update({k: data[k] for k in ("spacing", "native_shape", "intensity", "normalization")},
                  axis=int(axis), downsample=int(downsample), n_train=int(len(data["images"])))
    dev = select_device(device)
    torch.manual_seed(seed)
    gen_net = build_network(config["networks"]["net"]).to(dev)
    disc = spectral_discriminator(1, channels=2 * width).to(dev)
    ema = ema_of(gen_net, ema_decay)
    adv = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
    opt_g = torch.optim.Adam(gen_net.parameters(), lr=lr, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.99))
    real_all = torch.from_numpy(data["images"] * 2 - 1)[:, None]
    rng = torch.Generator().manual_seed(seed)
    fixed = latents(PREVIEW_SEEDS, 12345, latent_dim).to(dev)
    preview_every = preview_every or max(1, steps // 20)
    history = {"d_loss": [], "g_loss": [], "steps": 0, "stopped": False}
    t0 = time.monotonic()
    for step in range(1, steps + 1):
        if job.should_stop():
            history["stopped"] = True
            break
        idx = torch.randint(len(real_all), (batch_size,), generator=rng)
        real = real_all[idx].to(dev)
        real = torch.where(torch.rand(batch_size, 1, 1, 1, generator=rng).to(dev) < 0.5, real, real.flip(-1))
        z = torch.randn(batch_size, latent_dim, generator=rng).to(dev)
        fake = torch.tanh(gen_net(z))
        d_loss = 0.5 * (adv(disc(diff_augment(fake.detach(), rng))[-1], target_is_real=False, for_discriminator=True)
                        + adv(disc(diff_augment(real, rng))[-1], target_is_real=True, for_discriminator=True))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = adv(disc(diff_augment(fake, rng))[-1], target_is_real=True, for_discriminator=False)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        ema.update_parameters(gen_net)
        d_val, g_val = float(d_loss.detach()), float(g_loss.detach())
        history["d_loss"].append(d_val), history["g_loss"].append(g_val)
        history["steps"] = step
        preview = None
        if step % preview_every == 0 or step == steps:
            preview = _to_intensity(_generate(ema.module, fixed), config)
        job.report(step, steps, f"step {step}/{steps}", preview=preview,
                   d_loss=d_val, g_loss=g_val)
    history["seconds"] = time.monotonic() - t0
    model = Model(config, {"net": ema.module.cpu().eval()})
    return model, history


def latents(n: int, seed: int, latent_dim: int) -> torch.Tensor:
    """The ``n`` latent vectors of ``seed``: the first k are the same whatever ``n`` is."""
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def _generate(net: torch.nn.Module, z: torch.Tensor, batch: int = 32) -> np.ndarray:
    """Images in [0, 1] of shape (n, H, W)."""
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    out = [((torch.tanh(net(z[i:i + batch].to(dev))) + 1) / 2)[:, 0].cpu() for i in range(0, len(z), batch)]
    net.train(was_training)
    return torch.cat(out).numpy()


def _to_intensity(unit: np.ndarray, config: dict) -> np.ndarray:
    """Back from [0, 1] to the training data's intensity units, cropped to the native slice shape."""
    lo, hi = config["intensity"]
    return fit_to_size(unit * (hi - lo) + lo, tuple(config["native_shape"])).astype(np.float32)


def check_count(n: int) -> int:
    if not 1 <= int(n) <= MAX_SAMPLES:
        raise UserError(f"Ask for between 1 and {MAX_SAMPLES} samples (got {n}).")
    return int(n)


def sample_geometry(config: dict) -> Geometry:
    """Geometry of a sample stack: sample index first, then the training pixel spacing."""
    return Geometry((1.0, *config["spacing"]), (0.0, 0.0, 0.0))


def _check_gan(model: Model) -> None:
    if model.task != "gan":
        raise UserError(f"This is a {model.task or 'unknown'} model, not an (unconditional) GAN.")


def synthesize(model: Model, n: int = 16, seed: int = 0, device="auto", progress=None, stop=None) -> ImageData:
    """``n`` new slices from ``seed`` (sample i depends only on seed and i) as an (n, H, W) stack
    in the training intensity scale and pixel spacing."""
    _check_gan(model)
    n = check_count(n)
    job = Job.of(progress, stop)
    net = model.net.to(select_device(device))
    z = latents(n, seed, model.config["latent_dim"])
    out = []
    for i in range(0, n, 32):
        job.check()
        out.append(_generate(net, z[i:i + 32]))
        job.report(min(i + 32, n), n, "synthesizing")
    data = _to_intensity(np.concatenate(out), model.config)
    return ImageData(data, sample_geometry(model.config), name=f"GAN samples seed {seed}",
                     metadata={"seed": int(seed), "model": model.name})


def interpolate_seeds(model: Model, seed_a: int, seed_b: int, steps: int = 8, device="auto",
                      progress=None, stop=None) -> ImageData:
    """A stack walking the latent space from the first sample of ``seed_a`` to that of ``seed_b`` (slerp)."""
    _check_gan(model)
    steps = check_count(steps)
    Job.of(progress, stop).check()
    dim = model.config["latent_dim"]
    a, b = latents(1, seed_a, dim)[0], latents(1, seed_b, dim)[0]
    omega = torch.arccos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1, 1))
    t = torch.linspace(0, 1, steps)[:, None]
    so = torch.sin(omega)
    z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / so if so > 1e-6 else (1 - t) * a + t * b
    data = _to_intensity(_generate(model.net.to(select_device(device)), z), model.config)
    return ImageData(data, sample_geometry(model.config), name=f"GAN interpolation {seed_a}-{seed_b}",
                     metadata={"seeds": [int(seed_a), int(seed_b)]})

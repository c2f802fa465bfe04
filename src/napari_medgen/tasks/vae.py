"""A 2D variational autoencoder (MONAI ``VarAutoEncoder``) on slices of normal scans.

``train_vae`` learns normal anatomy from one or more volumes (optionally restricted
to a foreground mask), ``reconstruct`` passes a scan through it, ``sample_vae``
draws new slices from the prior and ``interpolate`` walks the latent space between
two slices. Anomaly scoring lives in :mod:`napari_medgen.tasks.anomaly`.
"""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import torch
from monai import transforms as mt

from ..data.normalize import normalize, resolve
from ..data.slices import fit_to_size, informative_slices, put_slices, take_slices
from ..engine.device import select_device
from ..engine.jobs import Job
from ..models.checkpoint import Model
from ..errors import UserError

MIN_SLICES = 8
PERCENTILES = [50.0, 90.0, 95.0, 98.0, 99.0, 99.5, 99.9]


class OutOfDistributionWarning(UserWarning):
    """The image differs strongly from what the model was trained on."""


class NoModelError(UserError):
    """Scoring or sampling was asked for without a trained VAE."""


# --- preparing slices ----------------------------------------------------------------------------
def _as_volume(image) -> np.ndarray:
    arr = np.asarray(getattr(image, "data", image))
    if arr.ndim not in (2, 3):
        raise UserError(f"The VAE works on single-channel 2D or 3D images; this one has shape {arr.shape}.")
    return arr


def _check_mask(mask, shape) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(getattr(mask, "data", mask)) > 0
    if m.shape != tuple(shape):
        raise UserError(f"The mask shape {m.shape} differs from the image shape {tuple(shape)}.")
    return m


def _normalized(volume: np.ndarray, mask: np.ndarray | None, spec: dict) -> np.ndarray:
    img = normalize(volume, spec)
    return img * mask if mask is not None else img


def to_slices(volume: np.ndarray, size, axis: int = 0) -> np.ndarray:
    """Normalised volume -> (n, 1, H, W) float32 stack at the network's ``size``."""
    return fit_to_size(take_slices(volume, axis), tuple(size))[:, None].astype(np.float32)


def from_slices(stack: np.ndarray, shape, axis: int = 0) -> np.ndarray:
    """(n, 1, H, W) network output -> volume of ``shape`` (inverse of :func:`to_slices`)."""
    plane = tuple(take_slices(np.empty(shape, bool), axis).shape[1:])
    return put_slices(fit_to_size(stack[:, 0], plane), axis, ndim=len(shape))


def _to_input_units(raw: np.ndarray, normed: np.ndarray):
    """The linear map from normalised units back to the image's own units (fit on unclipped voxels)."""
    r, n = np.asarray(raw, np.float64).ravel(), np.asarray(normed, np.float64).ravel()
    ok = (n > 1e-3) & (n < 1 - 1e-3)
    if ok.sum() < 2 or np.ptp(n[ok]) == 0:
        return 1.0, 0.0
    scale, offset = np.polyfit(n[ok][::max(1, ok.sum() // 100_000)], r[ok][::max(1, ok.sum() // 100_000)], 1)
    return float(scale), float(offset)


# --- training ------------------------------------------------------------------------------------
def _augment() -> mt.Compose:
    return mt.Compose([
        mt.RandFlip(prob=0.5, spatial_axis=1),
        mt.RandAffine(prob=0.8, rotate_range=0.12, scale_range=0.08, translate_range=(4, 4),
                      padding_mode="zeros"),
        mt.RandScaleIntensity(factors=0.08, prob=0.5),
        mt.RandAdjustContrast(gamma=(0.85, 1.15), prob=0.3),
    ])


def vae_loss(net, x, beta: float):
    """(total, reconstruction, KL): mean L1 per pixel plus ``beta`` x KL per pixel."""
    recon, mu, logvar, _ = net(x)
    rec = torch.mean(torch.abs(recon - x))
    kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)) / x[0].numel()
    return rec + beta * kl, rec, kl


def train_vae(images, masks=None, *, latent_size: int = 64, channels=(16, 32, 64, 128),
              steps: int = 1500, batch_size: int = 16, lr: float = 2e-3, beta: float = 0.05,
              axis: int = 0, normalization: dict | None = None, augment: bool = True,
              val_images=None, val_masks=None, val_fraction: float = 0.15, val_every: int = 100, seed: int = 0,
              device: str = "auto", name: str = "vae", progress=None, stop=None):
    """Train a VAE on the slices of normal ``images`` (arrays or ImageData); return ``(model, history)``.

    ``masks`` (one per image, or None) restrict training to the foreground: the image is set
    to zero outside. Normal validation slices (``val_images``/``val_masks``, else a random
    ``val_fraction`` of the training slices) keep the best weights and calibrate the anomaly
    thresholds (percentiles of normal scores) stored in the config.
    On stop the best weights so far are returned with ``history["stopped"] = True``.
    """
    from .anomaly import calibrate  # circular: anomaly scoring uses this module

    job = Job.of(progress, stop)
    vols, mask_list = _volumes_and_masks(images, masks)
    spec = resolve(normalization, vols[0])
    plane_shapes = [take_slices(v, axis).shape[1:] for v in vols]
    slice_shape = tuple(int(max(s[i] for s in plane_shapes)) for i in range(2))
    size = tuple(int(math.ceil(s / 2 ** len(channels)) * 2 ** len(channels)) for s in slice_shape)
    data = _slice_stack(vols, mask_list, spec, size, axis)
    if len(data) < MIN_SLICES:
        raise UserError(f"Training needs at least {MIN_SLICES} slices with foreground; these images give {len(data)}.")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    if val_images is not None:
        val, train = _slice_stack(*_volumes_and_masks(val_images, val_masks), spec, size, axis), data
    else:
        order = rng.permutation(len(data))
        n_val = max(2, int(round(val_fraction * len(data))))
        val, train = data[order[:n_val]], data[order[n_val:]]

    config = {
        "task": "vae", "name": name, "axis": axis, "size": list(size), "slice_shape": list(slice_shape),
        "normalization": spec, "masked": mask_list[0] is not None, "channels": 1, "beta": beta,
        "networks": {"net": {"arch": "VarAutoEncoder", "args": {
            "spatial_dims": 2, "in_shape": [1, *size], "out_channels": 1, "latent_size": latent_size,
            "channels": list(channels), "strides": [2] * len(channels), "num_res_units": 1}}},
        "training_stats": _intensity_stats(vols, mask_list),
    }
    model = Model(config)
    dev = select_device(device)
    net = model.net.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 2), pct_start=0.1)
    aug = _augment() if augment else None
    if aug is not None:
        aug.set_random_state(seed=seed)
    xval = torch.from_numpy(val).to(dev)
    history = {"step": [], "reconstruction": [], "kl": [], "val_step": [], "val_loss": [], "stopped": False}
    best, best_state = math.inf, copy.deepcopy(net.state_dict())
    for step in range(1, steps + 1):
        if job.should_stop():
            history["stopped"] = True
            break
        net.train()
        batch = train[rng.integers(len(train), size=min(batch_size, len(train)))]
        if aug is not None:
            batch = np.stack([np.asarray(aug(b)) for b in batch]).astype(np.float32)
        x = torch.from_numpy(batch).to(dev)
        loss, rec, kl = vae_loss(net, x, beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history["step"].append(step)
        metrics = {"reconstruction": rec.item(), "kl": kl.item()}
        history["reconstruction"].append(metrics["reconstruction"])
        history["kl"].append(metrics["kl"])
        if step % val_every == 0 or step == steps:
            net.eval()
            with torch.no_grad():
                vloss = float(vae_loss(net, xval, beta)[0])
            history["val_step"].append(step)
            history["val_loss"].append(vloss)
            metrics["val_loss"] = vloss
            if vloss < best:
                best, best_state = vloss, copy.deepcopy(net.state_dict())
        job.report(step, steps, "training", **metrics)
    if best == math.inf:  # stopped before the first validation: score what we have
        best_state = copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.eval().cpu()
    model.config["history"] = {k: history[k] for k in ("val_step", "val_loss", "stopped")}
    calibrate(model, val[:, 0], device=device)
    return model, history


def _volumes_and_masks(images, masks):
    vols = [_as_volume(im) for im in (images if isinstance(images, (list, tuple)) else [images])]
    mask_list = masks if isinstance(masks, (list, tuple)) else [masks] * len(vols)
    if len(mask_list) != len(vols):
        raise UserError(f"Got {len(mask_list)} masks for {len(vols)} images; give one mask per image or none.")
    return vols, [_check_mask(m, v.shape) for m, v in zip(mask_list, vols)]


def _slice_stack(vols, masks, spec, size, axis) -> np.ndarray:
    stacks = []
    for v, m in zip(vols, masks):
        keep = informative_slices(v, axis, mask=m) if v.ndim == 3 else np.array([0])
        stacks.append(to_slices(_normalized(v, m, spec), size, axis)[keep])
    return np.concatenate(stacks)


def _intensity_stats(vols, masks) -> dict:
    vals = np.concatenate([np.asarray(v if m is None else v[m], np.float32).ravel()[::7] for v, m in zip(vols, masks)])
    lo, hi = np.percentile(vals, [0.5, 99.5])
    return {"low": float(lo), "high": float(hi)}


def require_vae(model) -> Model:
    """The model, checked to be a trained VAE."""
    if model is None:
        raise NoModelError("No VAE model yet: train one on normal scans or load a .medgen.pt VAE file first.")
    if getattr(model, "task", None) != "vae":
        raise NoModelError(f"This is a {getattr(model, 'task', 'unknown')} model, not a VAE.")
    return model


def check_distribution(model: Model, image, mask=None) -> list[str]:
    """Out-of-distribution messages (also emitted as :class:`OutOfDistributionWarning`)."""
    arr = np.asarray(getattr(image, "data", image))
    if arr.ndim not in (2, 3):
        raise UserError(f"The model was trained on single-channel images; this image has shape {arr.shape} "
                         "(several channels?). Pick one channel.")
    msgs = []
    stats = model.config.get("training_stats")
    if stats:
        m = _check_mask(mask, arr.shape)
        vals = np.asarray(arr[m] if m is not None else arr, np.float32).ravel()[::7]
        lo, hi = np.percentile(vals, [0.5, 99.5])
        span, tspan = hi - lo, stats["high"] - stats["low"]
        off = abs((lo + hi) / 2 - (stats["low"] + stats["high"]) / 2) / max(tspan, 1e-6)
        ratio = span / max(tspan, 1e-6)
        if ratio > 3 or ratio < 1 / 3 or off > 1.5:
            msgs.append(f"Out of distribution: this image's intensities ({lo:.4g}..{hi:.4g}) differ strongly from "
                        f"the training data ({stats['low']:.4g}..{stats['high']:.4g}); scores may be meaningless.")
    if model.config.get("masked") and mask is None:
        msgs.append("The model was trained on masked images; pass a foreground mask for meaningful scores.")
    for msg in msgs:
        warnings.warn(msg, OutOfDistributionWarning, stacklevel=3)
    return msgs


# --- inference -----------------------------------------------------------------------------------
def prepare(model: Model, image, mask=None):
    """(volume, mask, normalised slice stack) for a model's input, with shape checks."""
    vol = _as_volume(image)
    m = _check_mask(mask, vol.shape)
    normed = _normalized(vol, m, model.config["normalization"])
    return vol, m, normed, to_slices(normed, model.config["size"], model.config.get("axis", 0))


def decode_mean(model: Model, stack: np.ndarray, samples: int = 0, batch: int = 32, device: str = "auto",
                job: Job | None = None, seed: int = 0) -> np.ndarray:
    """Reconstructions of a (n, 1, H, W) stack: decoded posterior mean, or mean of ``samples`` draws."""
    dev = select_device(device)
    net = model.net.to(dev).eval()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = np.empty_like(stack)
    with torch.no_grad():
        for i in range(0, len(stack), batch):
            if job is not None:
                job.check()
            x = torch.from_numpy(stack[i:i + batch]).to(dev)
            mu, logvar = net.encode_forward(x)
            if samples:
                eps = torch.randn((samples, *mu.shape), generator=gen).to(dev)
                z = mu[None] + eps * torch.exp(0.5 * logvar)[None]
                rec = torch.stack([net.decode_forward(zi, net.use_sigmoid) for zi in z]).mean(0)
            else:
                rec = net.decode_forward(mu, net.use_sigmoid)
            out[i:i + batch] = rec.cpu().numpy()
    net.cpu()
    return out


def reconstruct(model: Model, image, mask=None, *, device: str = "auto", progress=None, stop=None) -> np.ndarray:
    """The VAE's reconstruction of ``image`` (same shape, in the image's own intensity units)."""
    job = Job.of(progress, stop)
    require_vae(model)
    check_distribution(model, image, mask)
    vol, m, normed, stack = prepare(model, image, mask)
    rec = from_slices(decode_mean(model, stack, device=device, job=job), vol.shape, model.config.get("axis", 0))
    if m is not None:
        rec = rec * m
    scale, offset = _to_input_units(vol, normed)
    job.report(1, 1, "reconstructed")
    return (rec * scale + offset).astype(np.float32)


def _decode(model: Model, z: torch.Tensor, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    net = model.net.cpu().eval()
    with torch.no_grad():
        out = net.decode_forward(z, net.use_sigmoid).numpy()
    return (fit_to_size(out[:, 0], tuple(model.config["slice_shape"])) * scale + offset).astype(np.float32)


def sample_vae(model: Model, n: int = 8, *, seed: int = 0, temperature: float = 1.0,
               progress=None, stop=None) -> np.ndarray:
    """``n`` slices drawn from the prior (seeded, reproducible): shape (n, H, W), normalised units."""
    job = Job.of(progress, stop)
    require_vae(model)
    if n < 1:
        raise UserError("Ask for at least one sample.")
    gen = torch.Generator().manual_seed(int(seed))
    latent = model.config["networks"]["net"]["args"]["latent_size"]
    z = torch.randn((n, latent), generator=gen) * float(temperature)
    job.check()
    out = _decode(model, z)
    job.report(1, 1, "sampled")
    return out


def interpolate(model: Model, image, index_a: int, index_b: int, steps: int = 8, mask=None, *,
                progress=None, stop=None) -> np.ndarray:
    """Decode ``steps`` points on the line between the encodings of two slices: (steps, H, W),
    in the image's intensity units."""
    job = Job.of(progress, stop)
    require_vae(model)
    vol, _m, normed, stack = prepare(model, image, mask)
    n = len(stack)
    for idx in (index_a, index_b):
        if not 0 <= idx < n:
            raise UserError(f"Slice {idx} is outside the image (0..{n - 1}).")
    job.check()
    net = model.net.cpu().eval()
    with torch.no_grad():
        mu, _ = net.encode_forward(torch.from_numpy(stack[[index_a, index_b]]))
    t = torch.linspace(0, 1, max(2, steps))[:, None]
    z = mu[0][None] * (1 - t) + mu[1][None] * t
    scale, offset = _to_input_units(vol, normed)
    out = _decode(model, z, scale, offset)
    job.report(1, 1, "interpolated")
    return out

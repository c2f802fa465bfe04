"""Mask-to-image GAN: paint a label map, get an image with that anatomy.

MONAI ``SPADENet`` (SPADE-normalised decoder, no encoder: the label map alone drives it) trained
from paired image/label slices against a spectral-norm MONAI ``PatchDiscriminator`` that sees the
image with its one-hot label map; least-squares adversarial loss plus an L1 term to the paired
image, EMA of the generator. The mapping is deterministic: one label map, one image.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss

from ..data.slices import fit_to_size
from ..engine.device import select_device
from ..engine.jobs import Job
from ..io.geometry import Geometry
from ..io.read import ImageData
from ..models.checkpoint import Model, build_network
from .gan import _to_intensity, check_count, ema_of, spectral_discriminator, training_slices
from ..errors import UserError

TASK = "gan-conditional"
MAX_CLASSES = 32


class UnknownLabelsError(UserError):
    """A label map with classes the model was not trained on."""


def conditional_config(size, n_classes: int, width: int = 16) -> dict:
    """Config of a fresh SPADENet generator for ``n_classes`` label values and ``size`` (multiples of 8)."""
    h, w = (int(s) for s in size)
    if h % 8 or w % 8:
        raise UserError("The conditional GAN image size must be a multiple of 8 in both axes.")
    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "label_nc": int(n_classes),
            "input_shape": [h, w], "channels": [width, 2 * width, 4 * width], "is_vae": False,
            "spade_intermediate_channels": 2 * width, "last_act": None}
    return {"task": TASK, "name": "conditional-gan", "classes": int(n_classes), "size": [h, w],
            "networks": {"net": {"arch": "SPADENet", "args": args}}}


def load_conditional(path) -> Model:
    """Load a conditional GAN file (.medgen.pt)."""
    return Model.load(path, task=TASK)


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(n, H, W) integer labels to (n, C, H, W) float."""
    return F.one_hot(labels.long(), n_classes).permute(0, 3, 1, 2).float()


def train_conditional_gan(images, labels, axis: int = 0, steps: int = 1000, batch_size: int = 8, width: int = 16,
                          downsample: int = 1, lr: float = 5e-4, l1_weight: float = 10.0, ema_decay: float = 0.99,
                          seed: int = 0, preview_every: int | None = None, device="auto", progress=None, stop=None):
    """Train mask-to-image synthesis on paired ``images``/``labels`` (volumes or lists of them).

    The preview is 4 training label maps rendered by the EMA generator. Returns ``(model, history)``;
    on stop the EMA weights so far, with ``history["stopped"] = True``.
    """
    job = Job.of(progress, stop)
    if steps < 1:
        raise UserError("Training needs at least one step.")
    data = training_slices(images, axis, labels=labels, downsample=downsample)
    labs = data["labels"]
    if labs.min() < 0 or labs.max() >= MAX_CLASSES:
        raise UserError(f"Label values must lie in 0..{MAX_CLASSES - 1}; is the label layer really a label map?")
    n_classes = int(labs.max()) + 1
    config = conditional_config(data["size"], n_classes, width)
    config.update({k: data[k] for k in ("spacing", "native_shape", "intensity", "normalization")},
                  axis=int(axis), downsample=int(downsample), n_train=int(len(labs)),
                  present_classes=sorted(int(c) for c in np.unique(labs)))
    dev = select_device(device)
    torch.manual_seed(seed)
    gen_net = build_network(config["networks"]["net"]).to(dev)
    disc = spectral_discriminator(1 + n_classes, channels=2 * width).to(dev)
    ema = ema_of(gen_net, ema_decay)
    adv = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
    opt_g = torch.optim.Adam(gen_net.parameters(), lr=lr, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.99))
    real_all = torch.from_numpy(data["images"] * 2 - 1)[:, None]
    seg_all = one_hot(torch.from_numpy(labs), n_classes)
    fixed = seg_all[np.linspace(0, len(labs) - 1, 4).round().astype(int)].to(dev)
    rng = torch.Generator().manual_seed(seed)
    preview_every = preview_every or max(1, steps // 20)
    history = {"d_loss": [], "g_loss": [], "l1": [], "steps": 0, "stopped": False}
    t0 = time.monotonic()
    for step in range(1, steps + 1):
        if job.should_stop():
            history["stopped"] = True
            break
        idx = torch.randint(len(real_all), (batch_size,), generator=rng)
        flip = torch.rand(batch_size, 1, 1, 1, generator=rng) < 0.5
        real = torch.where(flip, real_all[idx].flip(-1), real_all[idx]).to(dev)
        seg = torch.where(flip, seg_all[idx].flip(-1), seg_all[idx]).to(dev)
        fake = torch.tanh(gen_net(seg)[0])
        d_loss = 0.5 * (adv(disc(torch.cat([fake.detach(), seg], 1))[-1], target_is_real=False, for_discriminator=True)
                        + adv(disc(torch.cat([real, seg], 1))[-1], target_is_real=True, for_discriminator=True))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        l1 = F.l1_loss(fake, real)
        g_adv = adv(disc(torch.cat([fake, seg], 1))[-1], target_is_real=True, for_discriminator=False)
        opt_g.zero_grad(set_to_none=True)
        (g_adv + l1_weight * l1).backward()
        opt_g.step()
        ema.update_parameters(gen_net)
        vals = {"d_loss": float(d_loss.detach()), "g_loss": float(g_adv.detach()), "l1": float(l1.detach())}
        for k, v in vals.items():
            history[k].append(v)
        history["steps"] = step
        preview = None
        if step % preview_every == 0 or step == steps:
            preview = _to_intensity(_render(ema.module, fixed), config)
        job.report(step, steps, f"step {step}/{steps}", preview=preview, **vals)
    history["seconds"] = time.monotonic() - t0
    return Model(config, {"net": ema.module.cpu().eval()}), history


@torch.no_grad()
def _render(net: torch.nn.Module, seg: torch.Tensor, batch: int = 16) -> np.ndarray:
    """Images in [0, 1], (n, H, W), from one-hot maps."""
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    out = [((torch.tanh(net(seg[i:i + batch].to(dev))[0]) + 1) / 2)[:, 0].cpu() for i in range(0, len(seg), batch)]
    net.train(was_training)
    return torch.cat(out).numpy()


def check_labels(model: Model, labels: np.ndarray) -> np.ndarray:
    """Integer label map(s) the model knows; unseen classes are refused with one sentence."""
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3) or min(arr.shape[-2:]) < 8:
        raise UserError("Give a 2D label map (H, W) or a stack of them (n, H, W).")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise UserError("The label map must hold integer class values.")
        arr = arr.astype(np.int64)
    known = set(model.config.get("present_classes", range(model.config["classes"])))
    unseen = sorted(set(np.unique(arr).tolist()) - known)
    if unseen:
        raise UnknownLabelsError(f"The label map has classes {unseen} that the model never saw "
                                 f"(it knows {sorted(known)}).")
    return arr


def synthesize_from_labels(model: Model, labels, spacing=None, device="auto", progress=None, stop=None) -> ImageData:
    """Images with the anatomy of ``labels`` ((H, W) or (n, H, W)), in training intensity units.

    ``spacing`` (in-plane, (y, x) mm) of the label map: when it differs from the model's, the map is
    resampled (nearest) to the training pixel spacing and the image back to the map's grid, so the
    output always lies on the label map's grid.
    """
    if model.task != TASK:
        raise UserError(f"This is a {model.task or 'unknown'} model, not a conditional GAN.")
    job = Job.of(progress, stop)
    arr = check_labels(model, labels)
    stack = arr[None] if arr.ndim == 2 else arr
    check_count(len(stack))
    cfg = model.config
    spacing = tuple(float(s) for s in (spacing[-2:] if spacing is not None else cfg["spacing"]))
    t = torch.from_numpy(stack.astype(np.int64))
    resample = not np.allclose(spacing, cfg["spacing"], rtol=0.01)
    if resample:
        shape = [max(8, round(n * s / m)) for n, s, m in zip(stack.shape[-2:], spacing, cfg["spacing"])]
        t = F.interpolate(t[:, None].float(), size=shape, mode="nearest")[:, 0].long()
    grid_shape = tuple(t.shape[-2:])
    seg = one_hot(torch.from_numpy(fit_to_size(t.numpy(), tuple(cfg["size"]))), cfg["classes"])
    net = model.net.to(select_device(device))
    out = []
    for i in range(0, len(seg), 16):
        job.check()
        out.append(_render(net, seg[i:i + 16]))
        job.report(min(i + 16, len(seg)), len(seg), "synthesizing")
    unit = torch.from_numpy(fit_to_size(np.concatenate(out), grid_shape))[:, None]
    if resample:
        unit = F.interpolate(unit, size=stack.shape[-2:], mode="bilinear", align_corners=False)
    lo, hi = cfg["intensity"]
    data = (unit[:, 0].numpy() * (hi - lo) + lo).astype(np.float32)
    geometry = Geometry(spacing, (0.0, 0.0), np.eye(2)) if arr.ndim == 2 else Geometry((1.0, *spacing), (0.0,) * 3)
    return ImageData(data[0] if arr.ndim == 2 else data, geometry, name="conditional GAN image",
                     metadata={"model": model.name})

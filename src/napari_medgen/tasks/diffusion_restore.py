"""Diffusion restoration of slices: the second model of normal anatomy in a VAE anomaly model.

After AnoDDPM (Wyatt et al., CVPR Workshops 2022), with Gaussian instead of simplex noise: a small
MONAI ``DiffusionModelUNet`` (the model's network ``"diffusion"``) learns to predict the noise added
to normal slices at noise levels up to ``t0`` (``noise_level`` of the schedule: it is never asked for
more).  To restore a slice, it is noised to ``t0`` (seeded) and denoised by DDIM in ``ddim_steps``
steps, and the restorations of ``draws`` noise draws are averaged (what one draw invents in normal
tissue differs from draw to draw; what replaces a lesion does not): whatever normal anatomy cannot
explain is not put back, so ``x - restored`` is the anomaly residual (method ``"diffusion"`` of
:func:`~napari_medgen.tasks.anomaly.anomaly_map`).
Training is :func:`~napari_medgen.tasks.diffusion_training.add_diffusion`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from ..engine.device import select_device
from ..engine.jobs import Job
from ..errors import UserError

NET = "diffusion"  # the network's name in the model
# CPU: minutes on a laptop; CUDA: a larger U-Net (memory-efficient attention at the coarsest level, 1/8 of the
# slice: 64 x 64 tokens for a 512 x 512 CT slice), larger batches, more DDIM steps and noise draws
CONFIGS = {
    "cpu": {"net": {"channels": [16, 32, 64], "attention_levels": [False, False, False], "num_res_blocks": 1,
                    "norm_num_groups": 8, "num_head_channels": 64},
            "batch_size": 8, "ddim_steps": 10, "draws": 3},
    "cuda": {"net": {"channels": [64, 128, 256, 256], "attention_levels": [False, False, False, True],
                     "num_res_blocks": 2, "norm_num_groups": 32, "num_head_channels": 32, "use_flash_attention": True},
             "batch_size": 32, "ddim_steps": 25, "draws": 4},
}
SCHEDULE = {"timesteps": 1000, "schedule": "linear_beta", "noise_level": 0.25}


class NoDiffusionError(UserError):
    """Diffusion scoring was asked of a model without a diffusion network."""


def has_diffusion(model) -> bool:
    return model is not None and NET in getattr(model, "networks", {})


def require_diffusion(model) -> None:
    if not has_diffusion(model):
        raise NoDiffusionError("This model has no diffusion network; add one trained on normal scans with "
                               "add_diffusion(model, normal_images) (widget: Advanced training options, 'Add "
                               "diffusion'; command line: vae-train --diffusion SECONDS).")


def net_args(config: str, channels=None) -> dict:
    """``DiffusionModelUNet`` arguments of a :data:`CONFIGS` entry (one grey-value channel in and out), with
    other ``channels`` per level if given (attention only at the coarsest level then)."""
    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, **CONFIGS[config]["net"]}
    if channels:
        groups = math.gcd(args["norm_num_groups"], *channels)
        args.update(channels=[int(c) for c in channels], attention_levels=[False] * (len(channels) - 1) + [
            args["attention_levels"][-1]], norm_num_groups=groups, num_head_channels=int(channels[-1]))
    return args


def chain(params: dict) -> tuple[DDIMScheduler, list[int]]:
    """The DDIM scheduler and the timesteps restoration denoises through, from ``t0`` down (``ddim_steps``
    of them, evenly spaced by the scheduler's own stride)."""
    total, steps = int(params["timesteps"]), max(1, int(params["ddim_steps"]))
    stride = max(1, round(float(params["noise_level"]) * total / steps))
    sched = DDIMScheduler(num_train_timesteps=total, schedule=params["schedule"], clip_sample=True)
    sched.set_timesteps(total // stride)
    stride = total // sched.num_inference_steps  # the stride DDIMScheduler.step uses
    return sched, [t for t in range(min(steps * stride, total - 1), 0, -stride)]


def training_scheduler(params: dict) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=int(params["timesteps"]), schedule=params["schedule"])


def to_net(x):
    """Normalised [0, 1] slices to the network's [-1, 1]."""
    return x * 2 - 1


def diffusion_restore(model, stack: np.ndarray, mask: np.ndarray | None = None, *, batch: int = 16,
                      device: str = "auto", seed: int = 0, job: Job | None = None) -> np.ndarray:
    """Restorations of a (n, 1, H, W) stack of normalised slices (the same units back): noised to ``t0``,
    denoised by DDIM, averaged over the model's ``draws``.  The noise depends only on ``seed`` and the
    slice (not on the batching), so the answer is the same every time.  Outside ``mask`` the slice is
    returned unchanged."""
    require_diffusion(model)
    params = model.params.diffusion
    dev = select_device(device)
    net = model.networks[NET].to(dev).eval()
    sched, steps = chain(params)
    draws = max(1, int(params.get("draws", 1)))
    noise = torch.randn((draws, *stack.shape), generator=torch.Generator().manual_seed(int(seed)))
    out = np.zeros_like(stack)
    try:
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            for i in range(0, len(stack), batch):
                x0 = to_net(torch.from_numpy(stack[i:i + batch]).to(dev))
                for draw in noise[:, i:i + batch]:
                    x = sched.add_noise(x0, draw.to(dev), torch.full((len(x0),), steps[0], device=dev))
                    for t in steps:
                        if job is not None:
                            job.check()
                        eps = net(x, timesteps=torch.full((len(x),), t, device=dev))
                        x, _ = sched.step(eps.float(), t, x.float())
                    out[i:i + batch] += ((x.float().clamp(-1, 1) + 1) / 2).cpu().numpy() / draws
    finally:
        net.cpu()
    return out if mask is None else np.where(mask, out, stack)

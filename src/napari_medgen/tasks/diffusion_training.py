"""Adding a diffusion model of normal slices to a VAE anomaly model, with the one training loop.

The diffusion network learns on the same normal slices as the VAE would (each volume normalised by
the model's spec on its own intensities, resampled to its pixel spacing, fitted to its size) to
predict Gaussian noise added at timesteps up to ``t0`` (restoration never noises further); it is
validated on normal slices held out by subject (or ``val_images``), which then calibrate the
``"diffusion"`` anomaly thresholds (on as many of them as the budget allows, as for the VAE).  The
result is a new model holding both networks: one file.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from monai.inferers import DiffusionInferer

from ..data.slices import evenly_spread
from ..engine.device import select_device
from ..engine.fit import Budget, TrainTask, fit
from ..engine.jobs import Job
from ..errors import UserError
from ..models.checkpoint import Model, build_network
from ..models.config import NetSpec
from .anomaly import calibrate
from .diffusion_restore import CONFIGS, NET, SCHEDULE, net_args, to_net, training_scheduler
from .vae import require_vae
from .vae_training import (CALIBRATION_SHARE, MIN_CALIBRATION_SLICES, MIN_SLICES, MIN_TRAIN_SHARE,
                           STEPS_CALIBRATION_SLICES, augmentation, checked_volumes, plane_shapes, slice_stacks,
                           split_rows, subject_ids)
from .volume_input import check_batch

LEARNED = 0.8  # validation loss (noise MSE) at or above this share of predicting no noise: nothing learned


class DiffusionTask(TrainTask):
    """Noise-prediction MSE at random timesteps up to ``t_max``; validation: the same with fixed noise and
    timesteps (lower is better)."""

    metric_mode = "min"
    ddp_networks = (NET,)

    def __init__(self, net, train: np.ndarray, val: np.ndarray, params: dict, *, lr: float, batch_size: int,
                 augment: bool, seed: int):
        torch.manual_seed(seed)
        self.networks = {NET: net}
        self.optimizers = [torch.optim.AdamW(net.parameters(), lr=lr)]
        self.train, self.batch_size = train, batch_size
        self.inferer = DiffusionInferer(training_scheduler(params))
        self.t_max = int(round(params["noise_level"] * params["timesteps"]))
        self.aug = augmentation(seed) if augment else None
        self.rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed + 1)
        self.val = torch.from_numpy(val)
        self.val_noise = torch.randn(val.shape, generator=gen)
        self.val_t = torch.randint(0, self.t_max + 1, (len(val),), generator=gen)
        self.device = torch.device("cpu")

    def to(self, device):
        self.device = device

    def _loss(self, net, x, noise, t):
        pred = self.inferer(inputs=to_net(x), diffusion_model=net, noise=noise, timesteps=t)
        return torch.mean((pred.float() - noise) ** 2)

    def train_step(self, step):
        batch = self.train[self.rng.integers(len(self.train), size=min(self.batch_size, len(self.train)))]
        if self.aug is not None:
            batch = np.stack([np.asarray(self.aug(b)) for b in batch]).astype(np.float32)
        x = torch.from_numpy(batch).to(self.device)
        noise = torch.randn_like(x)
        t = torch.randint(0, self.t_max + 1, (len(x),), device=self.device)
        loss = self._loss(self.model(NET), x, noise, t)
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.networks[NET].parameters(), 1.0)
        opt.step()
        return {"loss": loss}

    def validate(self):
        total = 0.0
        for i in range(0, len(self.val), 32):
            part = [t[i:i + 32].to(self.device) for t in (self.val, self.val_noise, self.val_t)]
            total += float(self._loss(self.networks[NET], *part)) * len(part[0])
        return total / len(self.val)

    def nothing_learned(self, best):
        if best is None or best >= LEARNED:
            return ("The diffusion model learned nothing usable (its validation noise error is not below "
                    f"{LEARNED:g} of predicting no noise); train it longer or on more normal slices.")
        return None


def _normal_split(model: Model, images, masks, val_images, val_masks, val_fraction: float, seed: int):
    """(train, val, split, held-out subjects): (n, 1, H, W) normal slices on the VAE's grid and in its units,
    validation by held-out subject when there are several, as :func:`~.vae_training.train_vae` does."""
    p, spec = model.params, model.config.normalization

    def stacks(items, vols, mask_list):
        shapes = plane_shapes(items, vols, mask_list, p.axis, p.spacing, (model.config.training or {}).get(
            "pixel_grid", False))
        return slice_stacks(vols, mask_list, spec, tuple(p.size), p.axis, shapes)

    items, vols, mask_list = checked_volumes(images, masks, "training")
    if (mask_list[0] is not None) != bool(p.masked):
        raise UserError("The VAE was trained " + ("inside foreground masks; give masks" if p.masked else
                        "without masks; leave them out") + " for the diffusion model's normal images too.")
    per_volume = stacks(items, vols, mask_list)
    n_slices = sum(len(s) for s in per_volume)
    if n_slices < MIN_SLICES:
        raise UserError(f"Training needs at least {MIN_SLICES} slices with foreground; these images give {n_slices}.")
    if val_images is not None:
        val = np.concatenate(stacks(*checked_volumes(val_images, val_masks, "validation")))
        return np.concatenate(per_volume), val, "given", []
    rows, val_rows, split, held = split_rows(per_volume, subject_ids(items), val_fraction, seed)
    data = np.concatenate(per_volume)
    return data[rows], data[val_rows], split, held


def _calibration_plan(model: Model, spec: NetSpec, params: dict, val: np.ndarray, seconds: float | None,
                      started: float, device, job: Job) -> tuple[np.ndarray, float | None]:
    """(validation rows to calibrate on, training seconds), as :func:`~.vae_training.train_vae` plans: with a
    seconds budget, as many evenly spread rows as fit in its ``CALIBRATION_SHARE`` (timed on one slice with an
    untrained network of the same shape; at least ``MIN_CALIBRATION_SLICES``), training keeping at least
    ``MIN_TRAIN_SHARE`` of it; with steps alone, at most ``STEPS_CALIBRATION_SLICES`` rows."""
    if not seconds:
        return evenly_spread(len(val), STEPS_CALIBRATION_SLICES), seconds
    job.report(0, 1, "timing the calibration")
    probe = model.copy()
    probe.config.networks[NET], probe.networks[NET] = spec, build_network(spec)
    probe.params.diffusion = params
    for _ in range(2):  # the first run pays for setting up the network
        t0 = time.monotonic()
        calibrate(probe, val[:1, 0], device=device, job=Job(None, None, job.cancelled), methods=(NET,))
    per_slice = time.monotonic() - t0
    cal = evenly_spread(len(val), max(MIN_CALIBRATION_SLICES, int(CALIBRATION_SHARE * seconds / max(per_slice, 1e-6))))
    return cal, max(seconds - (time.monotonic() - started) - per_slice * len(cal), MIN_TRAIN_SHARE * seconds)


def add_diffusion(model: "Model | str", images, masks=None, *, seconds: float | None = 300.0, steps: int | None = None,
                  config: str = "auto", channels=None, noise_level: float | None = None, ddim_steps: int | None = None,
                  batch_size: int | None = None, lr: float = 1e-3, augment: bool = True, val_images=None,
                  val_masks=None, val_fraction: float = 0.15, val_every: int | None = None, seed: int = 0,
                  device: str = "auto", progress=None, stop=None, cancel=None):
    """Train a diffusion model of normal anatomy for ``model`` (a VAE anomaly model or its file) on normal
    ``images`` (and ``masks`` when the VAE was trained with them; each an array, ImageData or its file, or a
    list of them); return ``(new model, history)``: a copy of ``model`` that also holds the network
    ``"diffusion"`` and its calibrated thresholds, so ``anomaly_map(new, image, method="diffusion")`` works
    and one ``.medgen.pt`` file keeps both.

    The budget is ``steps`` and/or ``seconds`` (five minutes by default); ``seconds`` is the whole call,
    calibration included, planned as :func:`~napari_medgen.tasks.vae_training.train_vae` plans it.
    ``config`` "cpu" is a small U-Net (minutes on a laptop), "cuda" a larger one with attention and more
    DDIM steps (trained under bf16 autocast); "auto" picks by ``device``; ``channels`` (per level)
    overrides the config's.
    ``noise_level`` (fraction of the 1000-step schedule restoration noises to, default 0.25) and
    ``ddim_steps`` are kept in the model for scoring.  Split, stop and cancel are those of
    :func:`~napari_medgen.tasks.vae_training.train_vae`; ``model`` itself is never changed.
    """
    started = time.monotonic()
    job = Job.of(progress, stop, cancel)
    Budget(steps, seconds)  # a bad budget is refused before any work, in the user's own numbers
    model = require_vae(model)
    if config == "auto":
        config = "cuda" if select_device(device).type == "cuda" else "cpu"
    if config not in CONFIGS:
        raise UserError(f"Unknown diffusion config '{config}'; use auto, {' or '.join(CONFIGS)}.")
    batch_size = batch_size or CONFIGS[config]["batch_size"]
    check_batch(batch_size)
    if noise_level is not None and not 0 < float(noise_level) < 1:
        raise UserError(f"The noise level is a fraction of the schedule between 0 and 1 (got {noise_level}).")
    if ddim_steps is not None and int(ddim_steps) < 1:
        raise UserError(f"Restoration needs at least one denoising step (got {ddim_steps}).")
    params = {**SCHEDULE, "config": config, "ddim_steps": int(ddim_steps or CONFIGS[config]["ddim_steps"]),
              "draws": CONFIGS[config]["draws"]}
    if noise_level is not None:
        params["noise_level"] = float(noise_level)
    train, val, split, held = _normal_split(model, images, masks, val_images, val_masks, val_fraction, seed)
    spec = NetSpec("DiffusionModelUNet", net_args(config, channels))
    factor = 2 ** (len(spec.args["channels"]) - 1)
    if any(int(s) % factor for s in model.params.size):
        raise UserError(f"The VAE's slices ({' x '.join(map(str, model.params.size))}) do not halve "
                        f"{len(spec.args['channels']) - 1} times; give the diffusion model fewer channel levels.")
    cal, seconds = _calibration_plan(model, spec, params, val, seconds, started, device, job)
    torch.manual_seed(seed)  # the starting weights too
    net = build_network(spec)
    task = DiffusionTask(net, train, val, params, lr=lr, batch_size=batch_size, augment=augment, seed=seed)
    history = fit(task, Budget(steps, seconds), device=device, val_every=val_every, progress=job,
                  val_seconds=float("inf") if val_every else None, message="training diffusion")
    new = model.copy()
    new.config.networks[NET], new.networks[NET] = spec, net
    new.params.diffusion = params
    new.config.training[NET] = {**{k: history[k] for k in ("best_step", "best_metric", "returned", "stopped",
                                                           "stop_reason", "seconds", "device", "events")},
                                "n_train": int(len(train)), "n_val": int(len(val)), "n_calibration": int(len(cal)),
                                "split": split, "val_subjects": held}
    history.update(split=split, val_subjects=held)
    # calibration continues after a stop request (the model is wanted) but honours a cancel
    calib = Job(lambda ev: job.report(ev.step, ev.total, "calibrating thresholds"), None, job.cancelled)
    calibrate(new, val[cal, 0], device=device, job=calib, methods=(NET,))
    return new, history

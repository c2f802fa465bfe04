"""Mask-to-image GAN: paint a label map, get an image with that anatomy.

MONAI ``SPADENet`` (SPADE-normalised decoder, no encoder: the label map alone drives it) trained
from paired image/label slices against a spectral-norm MONAI ``PatchDiscriminator`` that sees the
image with its one-hot label map; least-squares adversarial loss plus an L1 term to the paired
image, EMA of the generator (:class:`~napari_medgen.tasks.gan_training.ConditionalGANTask`, run by
the one training loop). The mapping is deterministic: one label map, one image.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.utils import one_hot

from ..data.slices import fit_to_size
from ..engine.device import select_device
from ..engine.jobs import Job
from ..errors import UserError
from ..io.geometry import Geometry
from ..io.read import ImageData, opened
from ..models.checkpoint import Model, as_model, build_network
from ..models.config import ConditionalGANParams, ModelConfig, NetSpec, Task
from .gan import _to_intensity, holdout, run_adversarial, summary, training_slices
from .gan_training import ConditionalGANTask, generate, spectral_discriminator
from .volume_input import check_batch, check_count

MAX_CLASSES = 32


class UnknownLabelsError(UserError):
    """A label map with classes the model was not trained on."""


def conditional_config(size, n_classes: int, width: int = 16) -> NetSpec:
    """A SPADENet generator for ``n_classes`` label values and ``size`` (multiples of 8)."""
    h, w = (int(s) for s in size)
    if h % 8 or w % 8:
        raise UserError("The conditional GAN image size must be a multiple of 8 in both axes.")
    return NetSpec("SPADENet", {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "label_nc": int(n_classes),
                                "input_shape": [h, w], "channels": [width, 2 * width, 4 * width], "is_vae": False,
                                "spade_intermediate_channels": 2 * width, "last_act": None})


def load_conditional(path) -> Model:
    """Load a conditional GAN file (.medgen.pt)."""
    return Model.load(path, expect=Task.CONDITIONAL_GAN)


def train_conditional_gan(images, labels, axis: int = 0, steps: int | None = None, seconds: float | None = 180.0,
                          batch_size: int = 8, width: int = 16, downsample: int = 1, lr: float = 5e-4,
                          l1_weight: float = 10.0, ema_decay: float = 0.99, seed: int = 0, device="auto",
                          progress=None, stop=None, cancel=None):
    """Train mask-to-image synthesis on paired ``images``/``labels`` (volumes or lists of them).

    The budget is ``steps`` and/or ``seconds`` (three minutes by default).  Every tenth slice pair
    is held out and the EMA generator that renders their label maps closest to their images is kept.
    The preview is 4 held-out label maps rendered by the EMA generator.  Returns ``(model, history)``;
    a stop request keeps the best weights so far (``history["stopped"]``), a cancel raises ``Cancelled``.
    """
    job = Job.of(progress, stop, cancel)
    check_batch(batch_size)
    data = training_slices(images, axis, labels=labels, downsample=downsample)
    labs = data["labels"]
    if labs.min() < 0 or labs.max() >= MAX_CLASSES:
        raise UserError(f"Label values must lie in 0..{MAX_CLASSES - 1}; is the label layer really a label map?")
    n_classes = int(labs.max()) + 1
    params = ConditionalGANParams(axis=int(axis), size=data["size"], classes=n_classes,
                                  present_classes=sorted(int(c) for c in np.unique(labs)), spacing=data["spacing"],
                                  native_shape=data["native_shape"], intensity=data["intensity"],
                                  downsample=int(downsample), n_train=int(len(labs)))
    config = ModelConfig(task=Task.CONDITIONAL_GAN, name="conditional-gan",
                         networks={"net": conditional_config(data["size"], n_classes, width)}, params=params,
                         normalization=data["normalization"], description="mask-to-image (SPADE) GAN")
    torch.manual_seed(seed)
    gen_net = build_network(config.networks["net"])
    val = holdout(len(labs))
    task = ConditionalGANTask(gen_net, spectral_discriminator(1 + n_classes, channels=2 * width),
                              np.delete(data["images"], val, 0), np.delete(labs, val, 0), data["images"][val],
                              labs[val], n_classes=n_classes, l1_weight=l1_weight,
                              to_intensity=lambda u: _to_intensity(u, params), lr=lr, ema_decay=ema_decay,
                              batch_size=batch_size, seed=seed)
    history = run_adversarial(task, job, steps, seconds, device)
    model = Model(config, {"net": task.networks["ema"].module.eval()})
    model.config.training = summary(history, n_train=len(labs) - len(val), n_val=len(val))
    return model, history


def check_labels(model: Model, labels: np.ndarray) -> np.ndarray:
    """Integer label map(s) the model knows; unseen classes are refused with one sentence."""
    arr = np.asarray(getattr(labels, "data", labels))
    if arr.ndim not in (2, 3) or min(arr.shape[-2:]) < 8:
        raise UserError("Give a 2D label map (H, W) or a stack of them (n, H, W).")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise UserError("The label map must hold integer class values.")
        arr = arr.astype(np.int64)
    known = set(model.params.present_classes or range(model.params.classes))
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
    model, labels = as_model(model, Task.CONDITIONAL_GAN), opened(labels)
    if spacing is None and isinstance(labels, ImageData):  # a label map from a file or layer says its own
        spacing = labels.geometry.spacing
    if model.task != Task.CONDITIONAL_GAN:
        raise UserError(f"This is a {model.task or 'unknown'} model, not a conditional GAN.")
    job = Job.of(progress, stop)
    arr = check_labels(model, labels)
    stack = arr[None] if arr.ndim == 2 else arr
    check_count(len(stack), "label slices")
    cfg = model.params
    spacing = tuple(float(s) for s in (spacing[-2:] if spacing is not None else cfg.spacing))
    t = torch.from_numpy(stack.astype(np.int64))
    resample = not np.allclose(spacing, cfg.spacing, rtol=0.01)
    if resample:
        shape = [max(8, round(n * s / m)) for n, s, m in zip(stack.shape[-2:], spacing, cfg.spacing)]
        t = F.interpolate(t[:, None].float(), size=shape, mode="nearest")[:, 0].long()
    grid_shape = tuple(t.shape[-2:])
    seg = one_hot(torch.from_numpy(fit_to_size(t.numpy(), tuple(cfg.size)))[:, None], cfg.classes)
    net = model.net.to(select_device(device))
    out = []
    for i in range(0, len(seg), 16):
        job.check()
        out.append(generate(net, seg[i:i + 16], batch=16))
        job.report(min(i + 16, len(seg)), len(seg), "synthesizing")
    unit = torch.from_numpy(fit_to_size(np.concatenate(out), grid_shape))[:, None]
    if resample:
        unit = F.interpolate(unit, size=stack.shape[-2:], mode="bilinear", align_corners=False)
    lo, hi = cfg.intensity
    data = (unit[:, 0].numpy() * (hi - lo) + lo).astype(np.float32)
    geometry = Geometry(spacing, (0.0, 0.0), np.eye(2)) if arr.ndim == 2 else Geometry((1.0, *spacing), (0.0,) * 3)
    return ImageData(data[0] if arr.ndim == 2 else data, geometry, name="conditional GAN image",
                     metadata={"model": model.name})

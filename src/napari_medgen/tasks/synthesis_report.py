"""How realistic, how diverse and how original synthetic slices are, compared with real ones.

- ``mmd``: MONAI ``MMDMetric`` (linear kernel, per pixel, unbiased: can dip below 0) between samples
  and reference images in [0, 1] (lower is closer).
- ``ms_ssim_diversity``: mean MS-SSIM between pairs of samples (lower is more diverse);
  ``ms_ssim_reference`` is the same among the reference images, the level to aim for.
- ``fd_medgen``: Fréchet distance (MONAI ``FIDMetric``) on the pooled features of ``fd-medgen``, a
  small MONAI ``Regressor`` trained inside this project on the sample brain (slice position and
  tissue fractions). It is NOT comparable with Inception FID, only between reports of this project.
- memorisation: for every sample the most similar training image by SSIM; the distribution of those
  similarities (compare with ``memorisation_baseline``, the same for as many reference images) and
  the most suspicious pairs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from monai.metrics import FIDMetric, MMDMetric, MultiScaleSSIMMetric, SSIMMetric

from ..data.slices import evenly_spread, fit_to_size
from ..engine.jobs import Job
from ..io.read import opened
from ..models.checkpoint import SUFFIX, Model
from ..models.config import Task
from ..errors import UserError

FEATURES_PATH = Path(__file__).resolve().parents[1] / "models" / "builtin" / f"fd-medgen{SUFFIX}"
FD_NAME = "FD-medgen"
MS_SSIM_WEIGHTS = {3: (0.2, 0.3, 0.5), 2: (0.4, 0.6), 1: (1.0,)}  # fewer scales for small images


def to_unit(stack, window) -> torch.Tensor:
    """(n, H, W) intensities to a (n, 1, H, W) tensor clipped to [0, 1] by ``window=(low, high)``."""
    lo, hi = window
    arr = (np.asarray(stack, dtype=np.float32) - lo) / max(hi - lo, 1e-6)
    return torch.from_numpy(np.clip(arr, 0, 1))[:, None]


def _per_pixel(t: torch.Tensor) -> torch.Tensor:
    """Flattened and scaled so that MMD does not grow with the image size."""
    return t.flatten(1) / float(np.sqrt(t[0].numel()))


def reference_window(reference) -> tuple[float, float]:
    lo, hi = np.percentile(np.asarray(reference, dtype=np.float32), [0.5, 99.5])
    return float(lo), float(hi)


def load_feature_net(path=FEATURES_PATH) -> torch.nn.Module:
    """The convolutional part of the ``fd-medgen`` regressor, in eval mode."""
    model = Model.load(path, expect=Task.FEATURES)
    return model.net.net.eval()


@torch.no_grad()
def features(images: torch.Tensor, net: torch.nn.Module) -> torch.Tensor:
    """Globally averaged feature maps of ``net`` for (n, 1, H, W) images in [0, 1]."""
    return torch.cat([net(images[i:i + 64]).mean(dim=(2, 3)) for i in range(0, len(images), 64)])


@torch.no_grad()
def mean_pairwise_ms_ssim(x: torch.Tensor, max_pairs: int = 300, seed: int = 0) -> float:
    """Mean MS-SSIM over (at most ``max_pairs`` random) distinct pairs of ``x``."""
    n = len(x)
    if n < 2:
        return float("nan")
    i, j = np.triu_indices(n, 1)
    if len(i) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(i), max_pairs, replace=False)
        i, j = i[pick], j[pick]
    side = min(x.shape[-2:])
    scales = next((k for k in (3, 2, 1) if side // 2 ** (k - 1) > 6), 1)
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=7, weights=MS_SSIM_WEIGHTS[scales])
    return float(metric(x[i], x[j]).mean())


@torch.no_grad()
def nearest_by_ssim(x: torch.Tensor, train: torch.Tensor, job: Job | None = None, itself=None,
                    message: str = "memorisation check") -> tuple[np.ndarray, np.ndarray]:
    """For each image of ``x`` the index of, and SSIM to, the most similar image of ``train``
    (``itself[k]``: the index of image k of ``x`` in ``train``, which it is not compared with)."""
    metric = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=7, reduction="none")
    best, where = np.zeros(len(x), np.float32), np.zeros(len(x), np.int64)
    for k in range(len(x)):
        if job is not None:
            job.check()
        s = metric(x[k:k + 1].expand(len(train), -1, -1, -1), train).reshape(-1).numpy()
        if itself is not None:
            s[itself[k]] = -np.inf
        where[k], best[k] = int(np.argmax(s)), float(np.max(s))
        if job is not None:
            job.report(k + 1, len(x), message)
    return where, best


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels of (n, 1, H, W) images, finest first; the last level is the low-pass residue."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    kernel = (k[:, None] * k[None])[None, None]
    out, cur = [], x
    for _ in range(levels - 1):
        if min(cur.shape[-2:]) < 16:
            break
        low = F.conv2d(F.pad(cur, (2, 2, 2, 2), mode="reflect"), kernel)[..., ::2, ::2]
        up = F.interpolate(low, size=cur.shape[-2:], mode="bilinear", align_corners=False)
        out.append(cur - up)
        cur = low
    return out + [cur]


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, patch: int = 7, n_patches: int = 4096,
                       n_proj: int = 128, seed: int = 0) -> float:
    """Sliced Wasserstein distance between the ``patch`` x ``patch`` patches of two image sets (n, 1, H, W),
    patches standardised together (Karras et al. 2018), averaged over random unit directions."""
    gen = torch.Generator().manual_seed(seed)

    def patches(x):  # the patches F.unfold would give at random positions, without unfolding every position
        x = x.float()
        n, _, h, w = x.shape
        rows, cols = h - patch + 1, w - patch + 1
        idx = torch.randint(n * rows * cols, (min(n_patches, n * rows * cols),), generator=gen)
        image, at = idx // (rows * cols), idx % (rows * cols)
        off = torch.arange(patch)
        ys, xs = (at // cols)[:, None] + off, (at % cols)[:, None] + off
        return x[image[:, None, None], 0, ys[:, :, None], xs[:, None, :]].reshape(-1, patch * patch)

    pa, pb = patches(a), patches(b)
    both = torch.cat([pa, pb])
    mean, std = both.mean(0, keepdim=True), both.std(0, keepdim=True).clamp_min(1e-6)
    pa, pb = (pa - mean) / std, (pb - mean) / std
    d = torch.randn(patch * patch, n_proj, generator=gen)
    d = d / d.norm(dim=0, keepdim=True)
    qa, qb = torch.sort((pa @ d).T.contiguous(), 1)[0], torch.sort((pb @ d).T.contiguous(), 1)[0]
    n = min(qa.shape[1], qb.shape[1])
    pick = lambda q: q[:, torch.linspace(0, q.shape[1] - 1, n).round().long()]  # noqa: E731
    return float((pick(qa) - pick(qb)).abs().mean())


def pyramid_swd(samples, reference, levels: int = 4, seed: int = 0) -> list[float]:
    """Patch SWD between two stacks (n, H, W) in [0, 1] at every Laplacian pyramid level (finest first)."""
    a = torch.as_tensor(np.asarray(samples, np.float32))[:, None]
    b = torch.as_tensor(np.asarray(reference, np.float32))[:, None]
    return [sliced_wasserstein(x, y, seed=seed + i)
            for i, (x, y) in enumerate(zip(laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)))]


def _stack(item) -> np.ndarray | None:
    """The slices of an array, ImageData or image file as an array (None stays None)."""
    item = opened(item)
    return None if item is None else np.asarray(getattr(item, "data", item))


def synthesis_report(samples, reference, training=None, window=None, n_suspicious: int = 5,
                     feature_net: torch.nn.Module | None = None, progress=None, stop=None) -> dict:
    """Quality report of ``samples`` (n, H, W) against real ``reference`` slices (held-out, same units).

    ``training``: the slices the generator was trained on, for the memorisation check (skipped when None);
    it may be ``reference`` itself, then the baseline compares each real slice with the other ones.
    Each of the three is an (n, H, W) array, an ImageData or its file (a volume's slices along its first axis).
    ``window``: (low, high) intensities mapped to [0, 1]; by default the reference's 0.5-99.5 percentiles.
    """
    job = Job.of(progress, stop)
    same = training is reference
    samples, reference = _stack(samples), _stack(reference)
    training = reference if same else _stack(training)
    if any(a is None or a.ndim != 3 or len(a) < 2 for a in (samples, reference)):
        raise UserError("A synthesis report needs at least two samples and two reference images, as (n, H, W) stacks.")
    window = window or reference_window(reference)
    size = reference.shape[-2:]
    x = to_unit(fit_to_size(samples, size), window)
    ref = to_unit(reference, window)
    m = min(len(x), len(ref))
    report = {"n_samples": len(x), "n_reference": len(ref), "window": [float(w) for w in window]}
    job.report(0, 5, "MMD")
    report["mmd"] = float(MMDMetric(y_mapping=_per_pixel)(ref[:m], x[:m]))
    job.check()
    real = ref[:, 0].numpy()
    report["swd"] = pyramid_swd(x[:, 0].numpy(), real)  # patch SWD per pyramid level, finest first
    # what the samples' SWD means: a blurred copy of the real slices (full resolution), and half of the real
    # slices against the other half (coarsest level, the slice's layout)
    report["swd_blurred"] = pyramid_swd(ndimage.gaussian_filter(real, (0, 2, 2)), real)[0]
    if len(real) >= 4:
        report["swd_real_halves"] = pyramid_swd(real[::2], real[1::2])[-1]
    job.report(1, 5, "MS-SSIM diversity")
    report["ms_ssim_diversity"] = mean_pairwise_ms_ssim(x)
    report["ms_ssim_reference"] = mean_pairwise_ms_ssim(ref)
    job.check()
    job.report(2, 5, FD_NAME)
    net = feature_net or load_feature_net()
    try:
        report["fd_medgen"] = float(FIDMetric()(features(x, net), features(ref, net)))
    except ValueError:  # covariance square root failed numerically (too few images for the features)
        report["fd_medgen"] = float("nan")
    if training is not None:
        train = to_unit(fit_to_size(training, size), window)
        where, best = nearest_by_ssim(x, train, job.sub(3, 1, 5))
        order = np.argsort(-best)[:n_suspicious]
        report["memorisation"] = {
            "nearest_index": where.tolist(), "nearest_ssim": best.tolist(),
            "median": float(np.median(best)), "p95": float(np.percentile(best, 95)), "max": float(best.max()),
            "suspicious": [[int(i), int(where[i]), float(best[i])] for i in order]}
        same = same or (training.shape == reference.shape and np.array_equal(training, reference))
        # as many real slices as samples (evenly spread): their maximum is then comparable with the samples'
        pick = evenly_spread(len(ref), len(x))
        _, base = nearest_by_ssim(ref[pick], train, job.sub(4, 1, 5), pick if same else None,
                                  "memorisation baseline")
        report["memorisation_baseline"] = {"median": float(np.median(base)), "max": float(base.max()),
                                           "n": int(len(pick))}
    job.report(5, 5, "done")
    return report


def verdict(report: dict) -> list[str]:
    """Sentences saying whether the samples look like the real slices at the finest and the coarsest scale."""
    swd, out = report["swd"], []
    blurred, halves = report.get("swd_blurred"), report.get("swd_real_halves")
    if blurred is not None and swd[0] > 0.5 * blurred:  # not clearly closer than a blurred copy
        out.append(f"At full resolution the samples are not clearly closer to the real slices than a blurred copy "
                   f"of them (SWD {swd[0]:.3g} vs {blurred:.3g}): the generator has not learned their detail; "
                   "train longer.")
    if halves is not None and swd[-1] > 2 * halves:
        out.append(f"At the coarsest scale the samples are more than twice as far from the real slices as two halves "
                   f"of the real slices are from each other ({swd[-1]:.3g} vs {halves:.3g}): they do not have the "
                   "real slices' layout; train longer.")
    if not out and blurred is not None and halves is not None:
        out.append("The samples are less than half as far from the real slices as a blurred copy at full resolution "
                   "and within "
                   "twice the real slices' own spread at the coarsest scale.")
    return out


def format_report(report: dict) -> str:
    """A few plain-text lines for a widget or a terminal."""
    lines = [f"{report['n_samples']} samples vs {report['n_reference']} reference images",
             f"MMD {report['mmd']:.4g} (lower = closer)",
             "patch SWD fine -> coarse " + " ".join(f"{v:.3g}" for v in report["swd"]) + " (lower = closer)",
             f"MS-SSIM among samples {report['ms_ssim_diversity']:.3f} (reference {report['ms_ssim_reference']:.3f}; "
             "lower = more diverse)",
             f"{FD_NAME} {report['fd_medgen']:.4g} (project features; not comparable with Inception FID)"]
    lines += verdict(report)
    mem = report.get("memorisation")
    if mem:
        base = report["memorisation_baseline"]
        lines.append(f"Nearest training SSIM: median {mem['median']:.3f}, max {mem['max']:.3f} "
                     f"({base['n']} real reference slices: median {base['median']:.3f}, max {base['max']:.3f})")
        lines.append("Most suspicious: " + ", ".join(f"sample {i} ~ train {j} ({s:.3f})"
                                                     for i, j, s in mem["suspicious"]))
    return "\n".join(lines)


def side_by_side(report: dict, samples, training, gap: int = 4) -> np.ndarray:
    """The suspicious pairs as a (k, H, 2W + gap) stack: sample left, nearest training image right."""
    samples, training = np.asarray(samples), np.asarray(training)
    size = training.shape[-2:]
    pairs = report["memorisation"]["suspicious"]
    left = fit_to_size(samples[[i for i, _, _ in pairs]], size)
    right = training[[j for _, j, _ in pairs]]
    pad = np.full(left.shape[:-1] + (gap,), float(min(left.min(), right.min())), np.float32)
    return np.concatenate([left, pad, right], axis=-1).astype(np.float32)

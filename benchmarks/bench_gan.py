"""GAN synthesis benchmark on the sample brain: quality reports of GAN, VAE and two references.

Axial informative slices of the MNI152 T1, reduced ``--downsample`` times, are split by index
into training slices (i % 4 in {0, 2}), a reference set (i % 4 == 1) and a held-out real set
(i % 4 == 3). Every row is reported against the reference with the training slices for the
memorisation check, with the same number of images per row:

- GAN: EMA generator trained here (CPU time measured), seed 1.
- VAE: ``napari_medgen.synthesize_vae`` of a VAE trained here on the same training slices.
- real held-out slices: the floor a perfect generator would reach.
- blurred + noised real held-out slices (Gaussian sigma 2 px, noise 30 % of the range): known-bad.

Run: ``flock /tmp/medgen-cpu.lock python benchmarks/bench_gan.py`` (writes docs/bench_gan.md and
docs/images/gan_samples.png).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

import napari_medgen
from napari_medgen.data.slices import fit_to_size
from napari_medgen.engine.device import describe_device
from napari_medgen.io import Geometry
from napari_medgen.io.read import ImageData
from napari_medgen.sample_data import brain_t1, brain_tissue
from napari_medgen.tasks.conditional_gan import synthesize_from_labels, train_conditional_gan
from napari_medgen.tasks.segment import segment
from napari_medgen.tasks.gan import synthesize, train_gan, training_slices
from napari_medgen.tasks.synthesis_report import synthesis_report

ROOT = Path(__file__).resolve().parents[1]


def known_bad(stack: np.ndarray, low: float, high: float, seed: int = 0) -> np.ndarray:
    """Blurred (sigma 2 px) and noised (30 % of the intensity range) copies: a known-bad reference."""
    rng = np.random.default_rng(seed)
    blurred = np.stack([gaussian_filter(x, 2.0) for x in stack])
    return (blurred + rng.normal(0, 0.3 * (high - low), stack.shape)).astype(np.float32)


def vae_samples(train_full: np.ndarray, n: int, shape, ds: int, steps: int, low: float, high: float):
    """Samples of a VAE trained on the full-resolution training slices, on the GAN's grid and units."""
    t0 = time.monotonic()
    model, _ = napari_medgen.train_vae(train_full, steps=steps, seconds=None)
    seconds = time.monotonic() - t0
    lo, hi = model.params.intensity
    unit = (np.asarray(napari_medgen.synthesize_vae(model, n, seed=1).data, dtype=np.float32) - lo) / (hi - lo)
    if ds > 1:
        unit = F.avg_pool2d(torch.from_numpy(unit)[:, None], ds, ceil_mode=True)[:, 0].numpy()
    return fit_to_size(np.clip(unit, 0, 1), tuple(shape)) * (high - low) + low, seconds


def tissue_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean grey/white-matter Dice."""
    return float(np.mean([2 * ((pred == c) & (target == c)).sum() / ((pred == c).sum() + (target == c).sum())
                          for c in (2, 3)]))


def conditional_benchmark(steps: int, ds: int) -> dict:
    """Mask-to-image GAN trained on 3 of 4 paired slices; held-out maps rendered and re-segmented."""
    data = training_slices(brain_t1(), labels=brain_tissue())
    low, high = data["intensity"]
    idx = np.arange(len(data["labels"]))
    images = data["images"] * (high - low) + low
    geo = Geometry((1.0, 2.0, 2.0))
    t0 = time.monotonic()
    model, _ = train_conditional_gan(ImageData(images[idx % 4 != 3], geo), ImageData(data["labels"][idx % 4 != 3], geo),
                                     steps=steps, seconds=None, downsample=ds, width=16)
    seconds = time.monotonic() - t0
    maps = data["labels"][idx % 4 == 3]
    made = synthesize_from_labels(model, maps, spacing=(2.0, 2.0)).data
    dice = tissue_dice(segment(made, "brain-tissue-2d", spacing=(1.0, 2.0, 2.0), axis=0), maps)
    ceiling = tissue_dice(segment(images[idx % 4 == 3], "brain-tissue-2d", spacing=(1.0, 2.0, 2.0), axis=0), maps)
    return {"dice": dice, "ceiling": ceiling, "seconds": seconds, "n": len(maps), "maps": maps, "made": made,
            "real": images[idx % 4 == 3]}


def save_grid(stacks: dict, path: Path, window, n: int = 8) -> None:
    """One row per image set, all shown with the same intensity window."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(stacks), n, figsize=(n * 1.3, len(stacks) * 1.55))
    for row, (name, stack) in zip(np.atleast_2d(axes), stacks.items()):
        for k, ax in enumerate(row):
            ax.imshow(stack[k * len(stack) // n], cmap="gray", vmin=window[0], vmax=window[1])
            ax.set_xticks([]), ax.set_yticks([])
        row[0].set_ylabel(name.split(" (")[0], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--vae-steps", type=int, default=800)
    ap.add_argument("--cond-steps", type=int, default=1000)
    ap.add_argument("--downsample", type=int, default=2)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = args.downsample
    vol = brain_t1()
    data = training_slices(vol, downsample=ds)
    low, high = data["intensity"]
    stack = fit_to_size(data["images"], data["native_shape"]) * (high - low) + low
    idx = np.arange(len(stack))
    train, ref, held = stack[idx % 4 % 2 == 0], stack[idx % 4 == 1], stack[idx % 4 == 3]
    n = min(len(ref), len(held))
    spacing = [2.0 * ds, 2.0 * ds]

    t0 = time.monotonic()
    model, history = train_gan(ImageData(train, Geometry((1.0, *spacing))), steps=args.steps, seconds=None,
                               width=args.width, architecture="single-scale")
    gan_seconds = time.monotonic() - t0
    gan = synthesize(model, n, seed=1).data

    full = training_slices(vol)
    full_stack = fit_to_size(full["images"], full["native_shape"])
    vae, vae_seconds = vae_samples(full_stack[idx % 4 % 2 == 0], n, data["native_shape"], ds, args.vae_steps,
                                   low, high)
    rows = {"GAN (EMA generator)": gan}
    if vae is not None:
        rows["VAE (prior samples)"] = vae
    rows["real held-out (floor)"] = held[:n]
    rows["blurred + noised (known bad)"] = known_bad(held[:n], low, high)
    reports = {name: synthesis_report(x, ref[:n], training=train) for name, x in rows.items()}
    save_grid(rows, ROOT / "docs" / "images" / "gan_samples.png", reports["real held-out (floor)"]["window"])

    lines = ["## GAN synthesis", "",
             f"Sample brain (MNI152 T1), axial informative slices reduced {ds}x to {spacing[0]:g} mm "
             f"({data['native_shape'][0]}x{data['native_shape'][1]} px): {len(train)} training, {n} reference and "
             f"{n} held-out slices (interleaved by index). {n} images per row, reported against the reference "
             "set; memorisation against the training slices. Device: "
             f"{describe_device('cpu')} on a shared 2-core machine; no GPU in this session.", "",
             "| images | MMD | MS-SSIM among images (ref {:.3f}) | FD-medgen | nearest-train SSIM median / max |"
             .format(reports["real held-out (floor)"]["ms_ssim_reference"]),
             "|---|---|---|---|---|"]
    for name, r in reports.items():
        mem = r["memorisation"]
        lines.append(f"| {name} | {r['mmd']:.4f} | {r['ms_ssim_diversity']:.3f} | {r['fd_medgen']:.4f} | "
                     f"{mem['median']:.3f} / {mem['max']:.3f} |")
    lines += ["", f"Training time on CPU: GAN (single-scale) {args.steps} steps (batch 16, width {args.width}) "
              f"{gan_seconds:.0f} s ({gan_seconds / args.steps:.2f} s/step)"
              + f"; VAE {args.vae_steps} steps {vae_seconds:.0f} s.",
              "",
              "Lower MMD / FD-medgen is closer to the reference; MS-SSIM among images should be near the "
              "reference's own level (much higher = mode collapse). FD-medgen uses features of a small network "
              "trained inside this project (scripts/make_fd_features.py) and is not comparable with Inception FID. "
              "A nearest-train SSIM well above the held-out real row would flag memorisation.",
              "", "![GAN, VAE and reference samples](images/gan_samples.png)", ""]
    cond = conditional_benchmark(args.cond_steps, ds)
    lines += ["### Mask-to-image (SPADE) GAN", "",
              f"Trained {args.cond_steps} steps on 3 of every 4 paired T1/tissue slices (reduced {ds}x; "
              f"{cond['seconds']:.0f} s on CPU). The {cond['n']} held-out tissue maps were rendered at 2 mm and "
              "segmented by the project's `brain-tissue-2d` segmenter: mean grey/white-matter Dice with the "
              f"given maps **{cond['dice']:.3f}** (the same segmenter on the real held-out T1 slices: "
              f"{cond['ceiling']:.3f}).", "",
              "![tissue map, conditional GAN image, real T1](images/gan_conditional.png)", ""]
    k = np.linspace(1, cond["n"] - 2, 6).round().astype(int)
    save_grid({"tissue map": cond["maps"][k].astype(np.float32) * (high - low) / 3 + low,
               "mask-to-image GAN": cond["made"][k], "real T1": cond["real"][k]},
              ROOT / "docs" / "images" / "gan_conditional.png", (low, high), n=6)
    (ROOT / "docs" / "bench_gan.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

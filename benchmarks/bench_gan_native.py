"""GAN at native resolution with the default budget: patch SWD per Laplacian-pyramid level against held-out slices.

Axial informative slices of a T1 brain at its own spacing are split by index: i % 4 in {0, 2} train,
i % 4 == 1 reference A, i % 4 == 3 reference B.  ``train_gan`` runs with its defaults (a budget of seconds, CPU).
Rows (each against reference A, same number of images): GAN samples (three sample seeds); the cascade's coarse
GAN upsampled without its refiner (ablation); real set B (the level to reach); real training slices drawn at
random (what a perfect copy of the training set would score with this few images); reference A blurred with a
Gaussian of sigma 2 px (the full-resolution level a GAN must beat).  Writes the "Native resolution" section of
docs/bench_gan.md and docs/images/gan_native_samples.png.

    nice -n 10 python benchmarks/bench_gan_native.py [--data sample|mni1mm]
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from napari_medgen.data.slices import fit_to_size
from napari_medgen.io import Geometry, ImageData
from napari_medgen.sample_data import brain_t1
from napari_medgen.tasks.cascade_gan import cascade_generate, zero_output
from napari_medgen.tasks.gan import synthesize, train_gan, training_slices
from napari_medgen.tasks.gan_training import latents
from napari_medgen.tasks.synthesis_report import pyramid_swd, synthesis_report

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"sample": "### Native resolution, default budget", "mni1mm": "### Native 1 mm, default budget"}
SEEDS = (1, 2, 3)


def load(name: str) -> tuple[ImageData, str]:
    if name == "sample":
        return brain_t1(), "Sample brain (MNI152 T1 at 2 mm)"
    from nilearn.datasets import load_mni152_template
    img = load_mni152_template(resolution=1)
    data = np.asarray(img.get_fdata(), np.float32).transpose(2, 1, 0)  # (x, y, z) -> (z, y, x)
    return ImageData(data, Geometry((1.0, 1.0, 1.0))), "MNI152 2009 T1 template at 1 mm (nilearn)"


def save_grid(rows: dict, path: Path, n: int = 8) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    h, w = next(iter(rows.values())).shape[1:]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 1.4, len(rows) * 1.4 * h / w + 0.2))
    for row, (name, stack) in zip(axes, rows.items()):
        for k, ax in enumerate(row):
            ax.imshow(stack[k * len(stack) // n], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        row[0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=("sample", "mni1mm"), default="sample")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    volume, what = load(args.data)
    data = training_slices(volume)
    imgs = fit_to_size(data["images"], data["native_shape"])
    idx = np.arange(len(imgs))
    train, ref_a, ref_b = imgs[idx % 2 == 0], imgs[idx % 4 == 1], imgs[idx % 4 == 3]
    n = min(len(ref_a), len(ref_b))
    ref_a, ref_b = ref_a[:n], ref_b[:n]
    lo, hi = data["intensity"]
    load0 = os.getloadavg()
    t0, cpu0 = time.monotonic(), time.process_time()
    model, hist = train_gan(ImageData(train * (hi - lo) + lo, Geometry((1.0, *data["spacing"]))), device="cpu")
    seconds, cpu = time.monotonic() - t0, time.process_time() - cpu0
    print("validation (step, mean patch SWD):",
          [(s, round(v, 3)) for s, v in zip(hist["val_step"], hist["val_metric"])])
    model.save(f"/tmp/bench_gan_native_{args.data}.medgen.pt")
    load1 = os.getloadavg()

    def unit(stack):
        return np.clip((stack - lo) / (hi - lo), 0, 1)

    samples = {s: unit(synthesize(model, n, seed=s).data) for s in SEEDS}
    bare = zero_output(copy.deepcopy(model.networks["refine"])) if model.params.architecture == "cascade" else None
    coarse = None if bare is None else np.clip(fit_to_size(
        cascade_generate(model.net, bare, latents(n, SEEDS[0], model.params.latent_size), model.params.size),
        imgs.shape[1:]), 0, 1)
    rng = np.random.default_rng(0)
    draws = [train[rng.integers(0, len(train), n)] for _ in SEEDS]
    # levels down to a low-pass residue of about 15 px, where a 7x7 patch spans half the slice
    n_levels = 1 + int(np.ceil(np.log2(min(imgs.shape[1:]) / 16)))
    swd = lambda x: np.array(pyramid_swd(x, ref_a, levels=n_levels))  # noqa: E731
    gan = np.stack([swd(samples[s]) for s in SEEDS])
    real_draw = np.stack([swd(d) for d in draws])
    rows = {f"GAN samples (seeds {SEEDS[0]}-{SEEDS[-1]}: mean, min-max)": gan,
            **({"coarse GAN, bicubic, no refiner (ablation)": swd(coarse)[None]} if coarse is not None else {}),
            "real set B": swd(ref_b)[None],
            "real training slices drawn at random (3 draws)": real_draw,
            "reference A blurred (sigma 2 px)": swd(np.stack([gaussian_filter(x, 2.0) for x in ref_a]))[None]}
    report = synthesis_report(samples[SEEDS[0]], ref_a, training=train, window=(0.0, 1.0))
    mem = report["memorisation"]
    image = "gan_native_samples.png" if args.data == "sample" else f"gan_native_samples_{args.data}.png"
    save_grid({"GAN samples": samples[SEEDS[0]], "real slices": ref_a}, ROOT / "docs" / "images" / image)

    levels = gan.shape[1]
    steps = hist["step"][-1]
    cell = lambda v: f"{v.mean():.3f}" + (f" ({v.min():.3f}-{v.max():.3f})" if len(v) > 1 else "")  # noqa: E731
    section = SECTIONS[args.data]
    lines = [f"{section}: patch SWD per pyramid level", "",
             f"{what}, axial informative slices at native resolution ({imgs.shape[1]}x{imgs.shape[2]} px, "
             f"{data['spacing'][0]:g} mm): {len(train)} training slices (i % 4 in {{0, 2}}), {n} reference slices A "
             f"(i % 4 = 1) and {n} real comparison slices B (i % 4 = 3). `train_gan` with its defaults "
             f"({model.params.architecture}, budget 600 s, batch 16, width 16) on the CPU with {args.threads} "
             f"torch thread(s) of a 2-core machine shared with other jobs (load average {load0[0]:.1f} at the "
             f"start, {load1[0]:.1f} at the end; the process got {cpu:.0f} s of CPU time): {steps} steps in "
             f"{seconds:.0f} s, kept {hist['returned']}. "
             "One training run. Sliced Wasserstein distance of 7x7 patches (standardised) per Laplacian level, "
             f"{n} images per set, lower is closer; level 0 is full resolution, level {levels - 1} the low-pass "
             "residue where a 7x7 patch spans about half the slice.", "",
             "| images vs reference A | " + " | ".join(f"level {i}" for i in range(levels)) + " |",
             "|---" * (1 + levels) + "|"]
    for k, v in rows.items():
        lines.append(f"| {k} | " + " | ".join(cell(v[:, i]) for i in range(levels)) + " |")
    g, b, blur = gan.mean(0), rows["real set B"][0], rows["reference A blurred (sigma 2 px)"][0]
    worst = gan.max(0)
    lines += ["", f"- Full resolution (level 0): GAN {g[0]:.3f} (worst seed {worst[0]:.3f}) vs blurred {blur[0]:.3f}: "
              + ("**met**" if worst[0] < blur[0] else ("met on average, not by every seed" if g[0] < blur[0]
                                                       else "**missed**")) + ".",
              f"- Coarsest level ({levels - 1}): GAN {g[-1]:.3f} (worst seed {worst[-1]:.3f}) vs 2 x real-to-real "
              f"{2 * b[-1]:.3f}: " + ("**met**" if worst[-1] <= 2 * b[-1] else (
                  "met on average, not by every seed" if g[-1] <= 2 * b[-1] else "**missed**"))
              + f" (real training slices drawn at random: {real_draw[:, -1].mean():.3f}).",
              f"- Memorisation (seed {SEEDS[0]}): nearest-training-slice SSIM of the samples median "
              f"{mem['median']:.3f}, "
              f"max {mem['max']:.3f}; real reference slices to their nearest training slice median "
              f"{report['memorisation_baseline']['median']:.3f}, max {report['memorisation_baseline']['max']:.3f}.",
              "", "![GAN samples (top) beside real reference slices (bottom), native resolution]"
              f"(images/{image})", ""]
    text = "\n".join(lines)
    print(text)
    doc = ROOT / "docs" / "bench_gan.md"
    old = doc.read_text()
    if section in old:  # replace this section, up to the next one of the same level
        start = old.index(section)
        end = old.find("\n### ", start + 1)
        doc.write_text(old[:start] + text + ("\n" + old[end + 1:] if end >= 0 else ""))
    else:
        doc.write_text(old.rstrip() + "\n\n" + text)


if __name__ == "__main__":
    main()

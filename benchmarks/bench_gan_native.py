"""GAN at native resolution with the default budget: patch SWD per Laplacian-pyramid level against held-out slices.

Axial informative slices of the sample brain at its native 2 mm are split by index: i % 4 in {0, 2} train,
i % 4 == 1 reference A, i % 4 == 3 reference B.  ``train_gan`` runs with its defaults (a budget of seconds, CPU).
Rows (each against reference A, same number of images): GAN samples; real set B (the level to reach);
reference A blurred with a Gaussian of sigma 2 px (the full-resolution level a GAN must beat).

    nice -n 10 python benchmarks/bench_gan_native.py
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from napari_medgen.data.slices import fit_to_size
from napari_medgen.io import Geometry, ImageData
from napari_medgen.sample_data import brain_t1
from napari_medgen.tasks.gan import synthesize, train_gan, training_slices
from napari_medgen.tasks.synthesis_report import pyramid_swd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=180.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    brain = brain_t1()
    data = training_slices(brain)
    imgs = data["images"]
    idx = np.arange(len(imgs))
    train, ref_a, ref_b = imgs[idx % 2 == 0], imgs[idx % 4 == 1], imgs[idx % 4 == 3]
    lo, hi = data["intensity"]
    t0 = time.monotonic()
    model, hist = train_gan(ImageData(train * (hi - lo) + lo, Geometry((1.0, *data["spacing"]))),
                            seconds=args.seconds, device="cpu")
    seconds = time.monotonic() - t0
    n = min(len(ref_a), len(ref_b))
    gan = (synthesize(model, n, seed=1).data - lo) / (hi - lo)
    gan = np.clip(fit_to_size(gan, imgs.shape[1:]), 0, 1)
    rows = {"GAN samples": gan, "real set B": ref_b[:n],
            "reference blurred (sigma 2 px)": np.stack([gaussian_filter(x, 2.0) for x in ref_a[:n]])}
    levels = {k: pyramid_swd(v, ref_a[:n], levels=4) for k, v in rows.items()}
    lines = ["### Native resolution, default budget: patch SWD per pyramid level", "",
             f"Sample brain at 2 mm ({imgs.shape[1]}x{imgs.shape[2]} px): {len(train)} training slices, {n} reference "
             f"and {n} real comparison slices. `train_gan` defaults (budget {args.seconds:.0f} s, CPU, 2 threads of "
             f"a shared 2-core machine): {hist['step'][-1]} steps in {seconds:.0f} s, kept {hist['returned']}. "
             "Sliced Wasserstein distance of 7x7 patches (standardised) per Laplacian level, lower is closer; "
             "level 0 is full resolution.", "",
             "| images vs reference A | " + " | ".join(f"level {i}" for i in range(len(levels['GAN samples'])))
             + " |", "|---" * (1 + len(levels["GAN samples"])) + "|"]
    for k, v in levels.items():
        lines.append(f"| {k} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
    g, r, b = levels["GAN samples"], levels["real set B"], levels["reference blurred (sigma 2 px)"]
    lines += ["", f"Full resolution: GAN {g[0]:.3f} vs blurred {b[0]:.3f} "
              f"({'below: met' if g[0] < b[0] else 'not below: missed'}); coarsest level: GAN {g[-1]:.3f} vs "
              f"2 x real-to-real {2 * r[-1]:.3f} ({'within: met' if g[-1] <= 2 * r[-1] else 'not within: missed'})."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Diffusion restoration against VAE restoration and plain intensity thresholds, same run, synthetic lesions.

The data, lesions, baselines and metrics are bench_vae.py's (imported, not copied): a VAE is trained with
its default budget on normal axial slices of the sample brain (``TRAIN``, validated on ``VAL``), then a
diffusion model is added with ``add_diffusion``'s default CPU config and budget on the same slices; both
are calibrated on ``VAL``; the test block is never seen.  Subjects A (sample brain), B (1 mm MNI152
2009) and C (ITK's example T1, another adult) as in bench_vae; lesion types bright, dark, mixed and
mis-shaped; lesion seeds from 0 (bench_vae's settings were chosen on 100-101; nothing here was tuned
on any seed: the noise level 0.25 is AnoDDPM's).  Each method scores with the sign the lesion type
calls for (bright: positive, dark: negative, mixed and mis-shaped: both), as a user who knows what to
look for would; the baselines are bench_vae's plain thresholds, the best of them per row.

    nice -n 10 python benchmarks/bench_diffusion.py --out docs/bench_diffusion.md
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vae import (SIGNED, TEST, TRAIN, TYPES, VAL, all_rows, auroc_auprc, baselines, lesions, report,  # noqa: E402
                       subjects_for)

from napari_medgen.io import ImageData  # noqa: E402
from napari_medgen.models.checkpoint import Model  # noqa: E402
from napari_medgen.models.config import Task  # noqa: E402
from napari_medgen.sample_data import brain_t1, brain_tissue  # noqa: E402
from napari_medgen.tasks.anomaly import anomaly_map  # noqa: E402
from napari_medgen.tasks.diffusion_training import add_diffusion  # noqa: E402
from napari_medgen.tasks.vae_training import train_vae  # noqa: E402

METHODS = ("diffusion", "restoration")
NAMES = {"diffusion": "diffusion restoration", "restoration": "VAE restoration"}


def models(args, t1, brain, vol):
    """The VAE (train_vae's default budget) and the same model with a diffusion network (add_diffusion's)."""
    images = [ImageData(vol[a:b], t1.geometry) for a, b in TRAIN]
    masks = [brain[a:b] for a, b in TRAIN]
    val = {"val_images": [ImageData(vol[a:b], t1.geometry) for a, b in VAL], "val_masks": [brain[a:b] for a, b in VAL]}
    if Path(args.model).exists() and not args.retrain:
        return Model.load(args.model, expect=Task.VAE)
    vae, _ = train_vae(images, masks, seconds=args.vae_seconds, device="cpu", name="bench", **val)
    model, _ = add_diffusion(vae, images, masks, seconds=args.seconds, device="cpu", **val)
    model.save(args.model)
    return model


def score(model, subject, kind, seed, rows, timing):
    vol, brain, geo, block = subject["vol"], subject["brain"], subject["geo"], subject["block"]
    centres = block[len(block) // 4: -len(block) // 4]
    img, truth = lesions(vol, brain, kind, centres, subject["scale"], seed)
    sub = slice(block[0], block[-1] + 1)
    fg = brain[sub]
    for method in METHODS:
        t = time.monotonic()
        res = anomaly_map(model, ImageData(img[sub], geo), fg, method=method, sign=SIGNED.get(kind, "both"),
                          device="cpu")
        timing[method] = time.monotonic() - t
        rows.setdefault((subject["name"], kind, NAMES[method]), []).append(auroc_auprc(res.score[fg], truth[sub][fg]))
    for name, s in baselines(img, brain).items():
        rows.setdefault((subject["name"], kind, name), []).append(auroc_auprc(s[sub][fg], truth[sub][fg]))


def table(rows) -> list[str]:
    """Per subject and lesion type: diffusion, VAE restoration and the best baseline (by mean AUPRC)."""
    mean = {k: np.mean(v, axis=0) for k, v in rows.items()}
    out = ["| subject | lesions | diffusion AUROC | AUPRC | VAE restoration AUROC | AUPRC | best threshold | AUROC | "
           "AUPRC | diffusion - threshold AUROC | AUPRC |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for subj in dict.fromkeys(k[0] for k in mean):
        for kind in TYPES:
            d, r = mean[(subj, kind, NAMES["diffusion"])], mean[(subj, kind, NAMES["restoration"])]
            base = {k[2]: v for k, v in mean.items() if k[:2] == (subj, kind) and k[2].startswith("baseline")}
            name, b = max(base.items(), key=lambda kv: kv[1][1])
            out.append(f"| {subj} | {kind} | {d[0]:.3f} | {d[1]:.3f} | {r[0]:.3f} | {r[1]:.3f} | {name[9:]} | "
                       f"{b[0]:.3f} | {b[1]:.3f} | {d[0] - b[0]:+.3f} | {d[1] - b[1]:+.3f} |")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=300.0, help="diffusion training budget (add_diffusion's default)")
    ap.add_argument("--vae-seconds", type=float, default=120.0, help="VAE training budget (train_vae's default)")
    ap.add_argument("--model", default="/tmp/bench_diffusion.medgen.pt", help="cache: reuse if it exists")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--subjects", default="ABC", help="which of bench_vae's subjects (letters)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    t1 = brain_t1()
    brain = brain_tissue().data > 0
    vol = np.where(brain, t1.data, 0).astype(np.float32)
    t0 = time.monotonic()
    model = models(args, t1, brain, vol)
    vae_tr, dif_tr = model.config.training, model.config.training["diffusion"]
    subjects = [s for s in subjects_for(t1, brain, vol) if s["name"][0] in args.subjects]
    rows, timing = {}, {}
    for subject in subjects:
        for kind in TYPES:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                score(model, subject, kind, seed, rows, timing)
            print(subject["name"], kind, "done", flush=True)
    d = model.params.diffusion
    dnet = model.config.networks["diffusion"].args
    lines = [
        "## Diffusion restoration vs VAE restoration vs intensity thresholds (synthetic lesions)", "",
        f"CPU only ({platform.machine()}, 1 thread, a 2-core machine shared with other agents' jobs; load average "
        f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; no GPU). "
        f"VAE: train_vae's default budget {args.vae_seconds:.0f} s, best weights at step {vae_tr.get('best_step')}. "
        f"Diffusion: MONAI DiffusionModelUNet {dnet['channels']} (add_diffusion's '{d['config']}' config), budget "
        f"{args.seconds:.0f} s: {dif_tr['n_train']} training / {dif_tr['n_val']} validation slices, "
        f"{dif_tr['seconds']:.0f} s of training, best weights at step {dif_tr['best_step']} (validation noise MSE "
        f"{dif_tr['best_metric']:.3f}). Restoration: Gaussian noise to t = {d['noise_level'] * d['timesteps']:.0f} of "
        f"{d['timesteps']} ({d['schedule']}), DDIM {d['ddim_steps']} steps, mean of {d['draws']} noise draws. "
        f"Same data as bench_vae.py: training slices {TRAIN}, validation {VAL}, test block {TEST[0]}-{TEST[1] - 1}; "
        f"mean over {args.seeds} lesion seeds ({args.first_seed}-{args.first_seed + args.seeds - 1}). Sign per "
        "lesion type: bright positive, dark negative, mixed and mis-shaped both. Scoring time per test block "
        "(1 thread): " + ", ".join(f"{NAMES[k]} {v:.1f} s" for k, v in timing.items()) + ".", "", *table(rows), "",
        "All rows (mean AUROC, AUPRC over seeds):", "", *all_rows(rows)]
    report(lines, args.out, t0)


if __name__ == "__main__":
    main()

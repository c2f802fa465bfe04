"""VAE anomaly maps on a head CT: the fixed -1000..1000 HU window against the masked tissue's own window.

    apt-get install -y invesalius-examples          # the head CT (GPL; read at benchmark time, never committed)
    nice -n 10 python benchmarks/bench_vae_ct.py --seconds 60 --out /tmp/vae_ct.md

One CT head only is available offline, so both VAEs train on its lesion-free copy and are scored on copies of it
with lesions inserted (a best case: the normal anatomy is the very one seen in training; nothing here says how
the VAE does on another patient's CT).  Brain mask: inside the head, more than 12 px from its surface, 0-80 HU,
from slice 35 up.  Lesions: 6 per copy, radii 3, 5, 7 voxels, bright and dark (contrast 0.5 of the mask's
intensity range), lesion seeds 1-2.  Baselines: plain thresholds of the CT's own HU in the same run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from bench_vae import auroc_auprc, baselines  # noqa: E402
from classify_scans import cranium  # noqa: E402

from napari_medgen.data.lesions import inject_lesions  # noqa: E402
from napari_medgen.data.normalize import CT_WINDOW  # noqa: E402
from napari_medgen.io import ImageData  # noqa: E402
from napari_medgen.tasks.anomaly import anomaly_map  # noqa: E402
from napari_medgen.tasks.vae_training import train_vae  # noqa: E402

METHODS = ("combined", "intensity", "restoration")


def brain_mask(ct: np.ndarray) -> np.ndarray:
    head = np.stack([ndimage.binary_fill_holes(z) for z in ct > -300])
    depth = np.stack([ndimage.distance_transform_edt(z) for z in head])
    brain = (depth > 12) & (ct > 0) & (ct < 80)
    brain[:35] = False
    return ndimage.binary_opening(brain, iterations=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="training budget of each VAE")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="lesion seeds")
    ap.add_argument("--out", default="/tmp/vae_ct.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    scan = cranium()
    ct = np.asarray(scan.data, np.float32)
    brain = brain_mask(ct)
    normal = ImageData(scan.data, scan.geometry, "head CT", metadata={"modality": "CT"})
    models = {}
    for name, spec in (("fixed -1000..1000 HU", CT_WINDOW), ("tissue window (default)", None)):
        t = time.monotonic()
        models[name], _ = train_vae(normal, brain, seconds=args.seconds, normalization=spec, device="cpu", seed=0)
        print(f"{name}: trained in {time.monotonic() - t:.0f} s, window {models[name].config.normalization}")
    rows: dict = {}
    for seed in args.seeds:
        img, truth = inject_lesions(ct, brain, n=6, radii=(3.0, 5.0, 7.0), polarity="both", contrast=0.5, seed=seed)
        fg = brain | truth
        for name, model in models.items():
            for method in METHODS:
                res = anomaly_map(model, ImageData(img, scan.geometry, "CT", metadata={"modality": "CT"}), brain,
                                  method=method, device="cpu")
                rows.setdefault((f"VAE, {name}", method), []).append(auroc_auprc(res.score[fg], truth[fg]))
        for name, score in baselines(img, brain).items():
            rows.setdefault((name, "-"), []).append(auroc_auprc(score[fg], truth[fg]))
    lines = [f"Head CT (InVesalius), {int(brain.sum())} brain voxels, 6 lesions per copy, lesion seeds "
             f"{args.seeds}, VAE budget {args.seconds:g} s each; mean over seeds.", "",
             "| model | method | AUROC | AUPRC |", "|---|---|---|---|"]
    for (model, method), vals in rows.items():
        a, p = np.mean(vals, axis=0)
        lines.append(f"| {model.replace('|', chr(92) + '|')} | {method} | {a:.3f} | {p:.3f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

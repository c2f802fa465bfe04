"""Train the built-in "brain-tissue-2d" model: a small 2D MONAI UNet on axial slices of the MNI152 brain.

Usage (heavy: run it under the shared CPU lock)::

    flock /tmp/medgen-cpu.lock python scripts/train_builtin_segmenter.py [--seconds 450]

A block of axial slices (z 46-59 of 95) plus a 2-slice gap each side is never trained on; the
Dice there, measured through ``napari_medgen.segment`` (the real inference path), goes into the
model's description. Augmentation (affine scale/rotation, flips, gamma, contrast, bias field,
noise, blur) is there so it copes with other subjects and scanners a little; it is still trained
on ONE template brain, skull-stripped, and should be treated as a demo and a fine-tuning start.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.transforms import (Compose, RandAdjustContrastd, RandAffined, RandBiasFieldd, RandCropByLabelClassesd,
                              RandFlipd, RandGaussianNoised, RandGaussianSmoothd, RandScaleIntensityd,
                              RandShiftIntensityd)

from napari_medgen.data.normalize import MRI_DEFAULT, normalize
from napari_medgen.data.slices import fit_to_size
from napari_medgen.models.checkpoint import Model
from napari_medgen.models.segmentation import BUILTIN, segmentation_config
from napari_medgen.sample_data import TISSUE_CLASSES, brain_t1, brain_tissue
from napari_medgen.tasks import segment
from napari_medgen.tasks.metrics import segmentation_metrics

HOLDOUT = (46, 60)  # axial slices never trained on (z index, end exclusive)
GAP = 2             # neighbours of the held-out block also left out
SIZE = (128, 128)   # slices are padded to this canvas, augmented, then cropped to PATCH
PATCH = (96, 96)    # crops centred on each class in turn (CSF is small) keep steps cheap


def augment() -> Compose:
    keys = ("image", "label")
    return Compose([
        RandAffined(keys, prob=0.8, rotate_range=0.3, scale_range=(0.25, 0.25), translate_range=(10, 10),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandBiasFieldd("image", prob=0.4, coeff_range=(0.0, 0.3)),
        RandAdjustContrastd("image", prob=0.5, gamma=(0.6, 1.6)),
        RandScaleIntensityd("image", factors=0.2, prob=0.5),
        RandShiftIntensityd("image", offsets=0.1, prob=0.3),
        RandGaussianSmoothd("image", prob=0.2, sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0)),
        RandGaussianNoised("image", prob=0.4, std=0.04),
        RandCropByLabelClassesd(keys, "label", PATCH, ratios=[1, 2, 1, 1], num_classes=4, num_samples=2),
    ])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=450.0, help="training time budget")
    ap.add_argument("--steps", type=int, default=None, help="also stop after this many steps (reproducible runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(BUILTIN["brain-tissue-2d"]))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="no available indices")  # empty slices have no class to centre on
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    t1, tissue = brain_t1(), brain_tissue()
    img = normalize(t1.data, MRI_DEFAULT)
    lab = tissue.data.astype(np.int64)
    z = np.arange(img.shape[0])
    train_z = z[(z < HOLDOUT[0] - GAP) | (z >= HOLDOUT[1] + GAP)]
    items = [{"image": fit_to_size(img[k][None], SIZE), "label": fit_to_size(lab[k][None], SIZE)} for k in train_z]
    loader = DataLoader(Dataset(items, augment()), batch_size=8, shuffle=True, num_workers=0, drop_last=True)

    config = segmentation_config("brain-tissue-2d", TISSUE_CLASSES, spatial_dims=2, channels=(16, 32, 64, 128),
                                 strides=(2, 2, 2), num_res_units=1, normalization=MRI_DEFAULT,
                                 spacing=t1.geometry.spacing[1:], axis=0,
                                 orientation=t1.geometry.direction)
    model = Model(config)
    net = model.net
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    t0, step = time.monotonic(), 0
    def progress() -> float:
        frac = (time.monotonic() - t0) / args.seconds
        return min(1.0, max(frac, step / args.steps if args.steps else 0.0))

    while progress() < 1.0:
        for batch in loader:
            frac = progress()
            for g in opt.param_groups:
                g["lr"] = 3e-3 * 0.5 * (1 + np.cos(np.pi * frac))  # cosine decay over the budget
            net.train()
            opt.zero_grad()
            loss = loss_fn(net(batch["image"].float()), batch["label"].long())
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0:
                print(f"step {step}  {time.monotonic() - t0:5.0f}s  loss {loss.item():.4f}", flush=True)
            if progress() >= 1.0:
                break

    net.eval()
    pred = segment(t1, model)
    sl = slice(*HOLDOUT)
    m = segmentation_metrics(pred[sl], tissue.data[sl], t1.geometry.spacing, TISSUE_CLASSES)
    dice = {k: round(v["dice"], 3) for k, v in m.items()}
    print(f"held-out slices z {HOLDOUT[0]}-{HOLDOUT[1] - 1}: {m}")
    config["holdout"] = {"axis": 0, "slices": list(HOLDOUT), "dice": dice,
                         "hd95_mm": {k: round(v["hd95"], 2) for k, v in m.items()}}
    config["training"] = {"steps": step, "seconds": round(time.monotonic() - t0), "slices": int(len(train_z))}
    config["description"] = (
        "2D U-Net for brain tissue (CSF, grey matter, white matter) on axial T1 slices, trained on ONE "
        "template brain (MNI152 2009, 2 mm, skull-stripped) with intensity and geometric augmentation. "
        f"Dice on held-out axial slices {HOLDOUT[0]}-{HOLDOUT[1] - 1} of that brain: "
        + ", ".join(f"{k} {v:.2f}" for k, v in dice.items())
        + ". Good for demos and as a starting point for fine-tuning; expect errors on other subjects, "
          "non-skull-stripped heads, pathology and other contrasts. Not for clinical use.")
    print(config["description"])
    print("saved", model.save(args.out))


if __name__ == "__main__":
    main()

"""Classification: lesion presence + pointing game, scan type (2D, 3D), transfer vs scratch, vs a plain MONAI DenseNet121.

Data (all offline; nothing here is committed):

- lesion training set: axial slices of the packaged MNI152 2 mm T1 resampled to 1 mm, with lesions
  inserted by ``data.lesions.inject_lesions`` (seed 1), each lesion slice beside its lesion-free original;
- untuned lesion sets: nilearn's ICBM152 2009a 1 mm T1 (the same template family as the
  sample, at another resolution: NOT a new subject) and nibabel's test ``anatomical.nii`` (a
  different real subject, 2 mm), lesions from other seeds;
- scan type, split by subject (see ``classify_scans.py`` for the sources): 2D CT / MR / US from
  pydicom-data, pydicom, Debian's invesalius-examples and insighttoolkit5-examples, nibabel, nilearn
  and dipy files; 3D T1 / EPI volumes, leave one subject out.

Every model gets the same wall-clock budget; the baseline is MONAI's DenseNet121 on the same
prepared inputs (Adam 1e-4, cross-entropy, random batches of 8) with last-layer Grad-CAM.
The script writes the tables of the ``--parts`` it runs to ``--out``:

    pip install --no-deps --target /tmp/pydicom-data pydicom-data
    pip install --no-deps --target /tmp/dipy-files dipy
    apt-get install -y invesalius-examples insighttoolkit5-examples
    nice -n 10 python benchmarks/bench_classify.py --parts scan2d --seconds 180 --out /tmp/scan2d.md
    nice -n 10 python benchmarks/bench_classify.py --parts scan3d --seconds3d 60 --out /tmp/scan3d.md
    nice -n 10 python benchmarks/bench_classify.py --parts lesion --seconds 120 --out /tmp/lesion.md
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import nibabel
import nilearn
import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_roc_auc
from monai.networks.nets import DenseNet121
from monai.visualize import GradCAM
from scipy import ndimage
from skimage.filters import threshold_otsu

import classify_scans
from napari_medgen.data.lesions import inject_lesions
from napari_medgen.data.orientation import stored_alike, stored_direction
from napari_medgen.data.resample import resize, target_shape
from napari_medgen.errors import NothingLearnedError
from napari_medgen.io import Geometry, ImageData, read_image
from napari_medgen.sample_data import brain_t1, brain_tissue
from napari_medgen.tasks.classify import classify, train_classifier, unit_scale
from napari_medgen.tasks.classify_data import DEFAULT_SPEC, as_images, prepare, to_image_grid

NIBABEL = Path(nibabel.__file__).parent / "tests" / "data"
NILEARN = Path(nilearn.__file__).parent / "datasets" / "data"
LESIONS = {"n": 40, "radii": (2.0, 3.0, 4.0), "polarity": "both", "contrast": 0.5}  # radii in voxels
TRAIN_MM = 1.0  # training lesions are inserted into the sample resampled to 1 mm: 2-4 mm radii, as on ICBM152
SMALL_MM = 6.0  # lesions less than this across (in their slice) count as small


# --- data ----------------------------------------------------------------------------------------
def slice_geometry(img: ImageData) -> Geometry:
    return Geometry(img.geometry.spacing[1:], img.geometry.origin[1:], np.eye(2))


def head_mask(vol: np.ndarray) -> np.ndarray:
    m = vol > threshold_otsu(vol)
    m = ndimage.binary_fill_holes(ndimage.binary_closing(m, iterations=2))
    return ndimage.binary_erosion(m, iterations=2)


def lesion_slices(img: ImageData, mask: np.ndarray, seed: int, step: int = 1, min_area: int = 300, radii=None):
    """(images, labels, lesion masks): each slice with a lesion, and lesion-free slices."""
    vol = img.data.astype(np.float32)
    les, lm = inject_lesions(vol, mask, seed=seed, **{**LESIONS, **({"radii": radii} if radii else {})})
    geo = slice_geometry(img)
    out = ([], [], [])
    for z in range(0, len(vol), step):
        if mask[z].sum() < min_area:
            continue
        if lm[z].sum() >= 4:
            for lst, v in zip(out, (ImageData(les[z], geo, f"{img.name} {z} lesion"), "lesion", lm[z])):
                lst.append(v)
        for lst, v in zip(out, (ImageData(vol[z], geo, f"{img.name} {z}"), "healthy", None)):
            lst.append(v)
    return out


def at_spacing(img: ImageData, mask: np.ndarray, mm: float) -> tuple[ImageData, np.ndarray]:
    """``img`` and its mask resampled to isotropic ``mm`` (linear / nearest)."""
    shape = target_shape(img.data.shape, img.geometry.spacing, [mm] * 3)
    data = resize(img.data.astype(np.float32), shape)
    m = resize(mask.astype(np.float32), shape) > 0.5
    return ImageData(data, Geometry((mm,) * 3, img.geometry.origin, np.eye(3)), img.name), m


def icbm() -> tuple[ImageData, np.ndarray]:
    img = read_image(NILEARN / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm = read_image(NILEARN / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").data
    wm = read_image(NILEARN / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").data
    return img, (gm + wm) > 0.5


# --- baseline ------------------------------------------------------------------------------------
def train_densenet(images, labels, classes, size, spacing, seconds, dims, spec=DEFAULT_SPEC):
    x = torch.as_tensor(np.stack([prepare(im, spec, spacing, size)[0] for im in as_images(images)]))[:, None]
    y = torch.as_tensor([classes.index(lab) for lab in labels])
    net = DenseNet121(spatial_dims=dims, in_channels=1, out_channels=len(classes))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    t0, steps = time.monotonic(), 0
    net.train()
    while time.monotonic() - t0 < seconds:
        idx = torch.randint(len(x), (8,), generator=g)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return net.eval(), steps


def densenet_predict(net, images, classes, size, spacing, target=None, spec=DEFAULT_SPEC):
    probs, maps = [], []
    cam = GradCAM(net, target_layers="class_layers.relu", postprocessing=unit_scale)
    for im in images:
        x, placement = prepare(im, spec, spacing, size)
        xt = torch.as_tensor(x)[None, None]
        with torch.no_grad():
            probs.append(torch.softmax(net(xt), 1)[0].numpy())
        if target is not None:
            hm = cam(xt.requires_grad_(True), class_idx=classes.index(target))[0, 0].detach().numpy()
            maps.append(to_image_grid(hm, placement, im.data.shape))
    return np.array(probs), maps


# --- evaluation ----------------------------------------------------------------------------------
def auroc(p_pos: np.ndarray, truth: np.ndarray) -> float:
    return float(compute_roc_auc(torch.as_tensor(p_pos, dtype=torch.float32), torch.as_tensor(truth * 1.0)))


def pointing_hits(maps, masks) -> np.ndarray:
    """Per lesion image: does the heatmap maximum lie within 10 px of the lesion?"""
    return np.array([ndimage.distance_transform_edt(~m)[np.unravel_index(np.argmax(h), h.shape)] <= 10
                     for h, m in zip(maps, masks) if m is not None])


def ours_lesion_eval(model, images, masks):
    rs = [classify(model, im, target="lesion", heatmap=m is not None) for im, m in zip(images, masks)]
    p = np.array([r.probabilities["lesion"] for r in rs])
    return p, [r.heatmap for r, m in zip(rs, masks) if m is not None]


def lesion_row(name, p, maps, labels, masks, seconds, mm: float) -> str:
    """AUROC and pointing game, overall and for small / larger lesions (lesion slices of that size vs all healthy)."""
    truth = np.array([lab == "lesion" for lab in labels])
    lesion_masks = [m for m in masks if m is not None]
    hits = pointing_hits(maps, lesion_masks)
    small = np.array([2 * np.sqrt(m.sum() / np.pi) * mm < SMALL_MM for m in lesion_masks])
    cells = [f"{auroc(p, truth):.3f}", f"{hits.mean():.2f}"]
    for sel in (small, ~small):
        pp = np.concatenate([p[truth][sel], p[~truth]])
        tt = np.r_[np.ones(sel.sum()), np.zeros((~truth).sum())]
        cells += [f"{auroc(pp, tt):.3f}", f"{hits[sel].mean():.2f}"] if sel.any() else ["-", "-"]
    return f"| {name} | {' | '.join(cells)} | {seconds:.0f} |"


def size_counts(labels, masks, mm: float) -> str:
    across = [2 * np.sqrt(m.sum() / np.pi) * mm for m in masks if m is not None]
    return (f"{sum(a < SMALL_MM for a in across)} lesion slices < {SMALL_MM:.0f} mm across, "
            f"{sum(a >= SMALL_MM for a in across)} larger")


def train_ours(images, labels, seconds, **kw):
    t0 = time.monotonic()
    try:
        model, h = train_classifier(images, labels, steps=None, seconds=seconds, val_every=25, **kw)
    except NothingLearnedError:
        return None, time.monotonic() - t0
    return model, time.monotonic() - t0


# --- scan type -----------------------------------------------------------------------------------
PCT = {"kind": "percentile", "lower": 0.5, "upper": 99.5}  # the same for every class: no HU window from tags


def scan_rows(names, labels, fold, probs, classes) -> list[str]:
    """Per-subject rows and the totals (image accuracy, balanced accuracy, subject accuracy), one column per model."""
    models = list(probs)
    rows = ["| class | held-out subject | fold | images | " + " | ".join(models) + " |",
            "|---|---|---|---|" + "---|" * len(models)]
    hits = {m: [] for m in models}
    subj = {m: [] for m in models}
    truth = []
    for i, name in enumerate(names):
        t = classes.index(labels[i])
        cells = []
        for m in models:
            ok = probs[m][i].argmax(1) == t
            hits[m] += list(ok)
            subj[m].append(probs[m][i].mean(0).argmax() == t)
            cells.append(f"{ok.mean():.2f}")
        truth += [t] * len(ok)
        rows.append(f"| {labels[i]} | {name} | {fold[i]} | {len(ok)} | {' | '.join(cells)} |")
    truth = np.array(truth)
    bal = {m: np.mean([np.mean(np.array(h)[truth == c]) for c in np.unique(truth)]) for m, h in hits.items()}
    rows += [f"| all | accuracy over images | | {len(truth)} | " + " | ".join(f"{np.mean(hits[m]):.2f}" for m in models)
             + " |",
             f"| all | balanced accuracy (mean over classes) | | {len(truth)} | "
             + " | ".join(f"{bal[m]:.2f}" for m in models) + " |",
             f"| all | subjects right (mean probability of their images) | | {len(names)} | "
             + " | ".join(f"{np.mean(subj[m]):.2f}" for m in models) + " |"]
    return rows


def scan_type(args, dims: int) -> list[str]:
    """Scan type on held-out subjects: 2D CT / MR / US by subject folds, 3D T1 / EPI leave-one-subject-out."""
    icbm_t1 = (lambda: icbm()[0])
    if dims == 2:
        subs = classify_scans.subjects_2d(args.pydicom_data, classify_scans.cranium, icbm_t1, args.dipy_files)
        names, labels, loads = [s.name for s in subs], [s.label for s in subs], [s.load for s in subs]
        fold = classify_scans.folds(labels, args.folds)
        data = [ld() for ld in loads]
        size, kw, seconds = (128, 128), {}, args.seconds
    else:
        subs = classify_scans.subjects_3d(icbm_t1, None)
        names, labels = [n for n, _, _ in subs], [lab for _, lab, _ in subs]
        fold = list(range(len(subs)))
        vols = [ld() for _, _, ld in subs]  # stored as the first is, for both models (ours would do it itself)
        data = [[v] for v in stored_alike(vols, stored_direction(vols[0]))[0]]
        size, kw, seconds = (32, 32, 32), {"body": {"channels": [8, 16, 32], "strides": [2, 2]}}, args.seconds3d
    classes = sorted(set(labels))
    ours = {f"ours, {p} pooling": p for p in args.poolings}
    probs = {m: [None] * len(names) for m in [*ours, "DenseNet121"]}
    rng = np.random.default_rng(1)
    steps = []
    for k in sorted(set(fold)):
        x, y = [], []
        for i in (i for i in range(len(names)) if fold[i] != k):
            ims = data[i] if dims == 2 else classify_scans.crops(data[i][0], classify_scans.PER_SUBJECT, rng)
            x += [ims[j % len(ims)] for j in range(classify_scans.PER_SUBJECT)]  # each subject equally often
            y += [labels[i]] * classify_scans.PER_SUBJECT
        held = [i for i in range(len(names)) if fold[i] == k]
        for m, pooling in ours.items():
            model, _ = train_ours(x, y, seconds, size=size, normalization=PCT, val_fraction=0, pooling=pooling, **kw)
            spacing = model.params.spacing
            for i in held:
                probs[m][i] = np.array([[classify(model, im, heatmap=False).probabilities[c] for c in classes]
                                        for im in data[i]])
        dn, n = train_densenet(x, y, classes, size, spacing, seconds, dims, spec=PCT)
        steps.append(n)
        for i in held:
            probs["DenseNet121"][i] = densenet_predict(dn, data[i], classes, size, spacing, spec=PCT)[0]
        print(f"fold {k} done", flush=True)
    per_class = {c: labels.count(c) for c in classes}
    head = (f"\n### Scan type {dims}D ({' / '.join(classes)}), held-out subjects\n\n"
            f"Subjects per class: {per_class}. "
            + (f"{args.folds} folds by subject (round robin within each class); each model trains {seconds:.0f} s "
               f"per fold on the other folds' subjects, up to {classify_scans.PER_SUBJECT} images per subject "
               "(axial slices spread over the volume, frames of a clip), each subject repeated to "
               f"{classify_scans.PER_SUBJECT} so that every subject weighs the same"
               if dims == 2 else
               f"leave one subject out; each model trains {seconds:.0f} s per fold on "
               f"{classify_scans.PER_SUBJECT} random sub-volumes (60-100 % extent) of each other subject")
            + f"; network grid {'x'.join(map(str, size))}; DenseNet121 made {min(steps)}-{max(steps)} steps "
            "in the same time. Intensities: per-image percentiles 0.5-99.5 for every image (no HU window "
            "chosen from the DICOM modality tag). Accuracy of the held-out subjects' images:\n")
    return [head] + scan_rows(names, labels, fold, probs, classes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0, help="training wall time per 2D model")
    ap.add_argument("--seconds3d", type=float, default=30.0, help="training wall time per 3D model and fold")
    ap.add_argument("--out", default="docs/bench_classify.md")
    ap.add_argument("--parts", nargs="+", default=["lesion", "transfer", "scan2d", "scan3d"],
                    choices=["lesion", "lesion1", "transfer", "scan2d", "scan3d"],
                    help="lesion1: only the lesion table's first row (e.g. at another --seconds)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--folds", type=int, default=3, help="subject folds of the 2D scan-type set")
    ap.add_argument("--poolings", nargs="+", default=["mean", "lse"], choices=["mean", "lse"],
                    help="scan type: one 'ours' column per pooling")
    ap.add_argument("--fine-spacing", type=float, default=1.2, help="lesion part: grid spacing (mm) of the finer row")
    ap.add_argument("--fine-size", type=int, default=160, help="lesion part: grid size of the finer row")
    ap.add_argument("--pydicom-data", type=Path, default=Path("/tmp/pydicom-data/data_store/data"),
                    help="pydicom-data's files: pip install --target /tmp/pydicom-data pydicom-data")
    ap.add_argument("--dipy-files", type=Path, default=Path("/tmp/dipy-files/dipy/data/files"),
                    help="dipy's shipped files: pip install --no-deps --target /tmp/dipy-files dipy")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lines = ["## Classification (issue 13)\n",
             f"CPU only (torch {torch.__version__}, 1 thread, {platform.machine()}, a 2-core machine shared with "
             f"other jobs; no GPU in this session). Within a table every model trains for the same wall time. "
             "Ours = `train_classifier` (U-Net body, per-pixel class evidence pooled by log-sum-exp or by the mean, "
             "as each table says; Grad-CAM on the full-resolution output); baseline = MONAI `DenseNet121`, "
             "Adam 1e-4, cross-entropy, same prepared "
             "inputs (resampled, normalised, fitted to the same grid), Grad-CAM on its last layer.\n"]
    if {"lesion", "lesion1", "transfer"} & set(args.parts):
        lines += lesion_parts(args)
    for dims, part in ((2, "scan2d"), (3, "scan3d")):
        if part in args.parts:
            lines += scan_type(args, dims)
            print("\n".join(lines[-12:]), flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


def lesion_parts(args) -> list[str]:
    S, lines = args.seconds, []
    # 1. lesion presence and pointing game
    b, t = brain_t1(), brain_tissue()
    old_imgs, old_labels, _ = lesion_slices(b, t.data > 0, seed=1)
    fine, fine_mask = at_spacing(b, t.data > 0, TRAIN_MM)
    tr_imgs, tr_labels, tr_masks = lesion_slices(fine, fine_mask, seed=1, step=2, min_area=1200)
    ic_img, ic_mask = icbm()
    anat = read_image(NIBABEL / "anatomical.nii")
    ev = {"ICBM152 2009a 1 mm (same template, other resolution)":
          (lesion_slices(ic_img, ic_mask, seed=7, step=3, min_area=1200), float(ic_img.geometry.spacing[1])),
          "nibabel anatomical.nii (other subject, 2 mm)":
          (lesion_slices(anat, head_mask(anat.data.astype(np.float32)), seed=3, min_area=150),
           float(anat.geometry.spacing[1]))}
    lines.append(f"### Lesion present? (2D axial slices)\n\nTraining set: every 2nd axial slice of the sample T1 "
                 f"resampled to {TRAIN_MM:g} mm with lesions inserted there ({LESIONS}, radii in voxels, seed 1), each "
                 f"lesion slice beside its lesion-free original: {len(tr_imgs)} slices, {tr_labels.count('lesion')} "
                 f"with lesions ({size_counts(tr_labels, tr_masks, TRAIN_MM)}). The row 'lesions at 2 mm' trains instead on "
                 f"the earlier set: the same lesions inserted at the sample's own 2 mm ({len(old_imgs)} slices), "
                 "so twice as large. Test sets (untuned, other seeds): the same lesion generator, 2-4 mm radii on "
                 "ICBM152 at 1 mm, 4-8 mm on anatomical.nii at 2 mm. Pointing game: share of lesion slices whose heatmap "
                 f"maximum lies within 10 px of the lesion mask; 'small' = less than {SMALL_MM:.0f} mm across in its "
                 "slice (AUROC of those lesion slices against all healthy slices). The row "
                 f"'{args.fine_spacing:g} mm grid' is the first row on the grid spacing={args.fine_spacing:g}, "
                 f"size={args.fine_size}x{args.fine_size} instead of the default (the median field of view fitted to "
                 "128x128). Every 'ours' row pools by `lse` (the default).\n")
    models = {"ours, from brain-tissue-2d": train_ours(tr_imgs, tr_labels, S, pretrained="brain-tissue-2d")}
    if "lesion" in args.parts:
        models["ours, from brain-tissue-2d, lesions at 2 mm"] = train_ours(old_imgs, old_labels, S,
                                                                         pretrained="brain-tissue-2d")
        models["ours, from scratch"] = train_ours(tr_imgs, tr_labels, S)
        fine_name = f"ours, from brain-tissue-2d, {args.fine_spacing:g} mm grid ({args.fine_size}x{args.fine_size})"
        models[fine_name] = train_ours(tr_imgs, tr_labels, S, pretrained="brain-tissue-2d",
                                       spacing=[args.fine_spacing] * 2, size=(args.fine_size,) * 2)
        spacing = models["ours, from brain-tissue-2d"][0].params.spacing
        dn, dn_steps = train_densenet(tr_imgs, tr_labels, ["healthy", "lesion"], (128, 128), spacing, S, 2)
    for ev_name, ((imgs, labels, masks), ev_mm) in ev.items():
        lines += [f"\n{ev_name}: {len(imgs)} slices, {labels.count('lesion')} with lesions "
                  f"({size_counts(labels, masks, ev_mm)}).\n",
                  "| model | lesion AUROC | pointing game | AUROC small | pointing small | AUROC larger | "
                  "pointing larger | train s |", "|---|---|---|---|---|---|---|---|"]
        for name, (model, secs) in models.items():
            if model is None:
                lines.append(f"| {name} | learned nothing | - | - | - | - | - | {secs:.0f} |")
                continue
            p, maps = ours_lesion_eval(model, imgs, masks)
            lines.append(lesion_row(name, p, maps, labels, masks, secs, ev_mm))
        if "lesion" not in args.parts:
            continue
        probs, maps = densenet_predict(dn, [im for im in imgs], ["healthy", "lesion"], (128, 128), spacing,
                                       target="lesion")
        lesion_maps = [mp for mp, m in zip(maps, masks) if m is not None]
        lines.append(lesion_row(f"DenseNet121 ({dn_steps} steps)", probs[:, 1], lesion_maps, labels, masks, S, ev_mm))
        print("\n".join(lines[-7:]), flush=True)

    if "transfer" not in args.parts:
        return lines
    # 2. transfer vs scratch by training-set size (evaluated on the ICBM set)
    (imgs, labels, masks), _ = next(iter(ev.values()))
    truth = np.array([lab == "lesion" for lab in labels])
    rng = np.random.default_rng(0)
    pos = [i for i, lab in enumerate(tr_labels) if lab == "lesion"]
    neg = [i for i, lab in enumerate(tr_labels) if lab == "healthy"]
    lines += ["\n### Transfer versus scratch by number of labelled slices\n",
              "Half lesion, half healthy slices drawn from the tuning set; lesion AUROC on the ICBM152 set. "
              "'from brain-tissue-2d' freezes the transferred layers for the first 30 % of the budget.\n",
              "| labelled slices | from brain-tissue-2d | from scratch |", "|---|---|---|"]
    for n in args.sizes:
        k = min(n // 2, len(pos))
        pick = list(rng.choice(pos, k, replace=False)) + list(rng.choice(neg, k, replace=False))
        row = [f"| {2 * k} |"]
        for pre in ("brain-tissue-2d", None):
            if 2 * k >= len(tr_imgs) - 2:
                model = models["ours, from brain-tissue-2d" if pre else "ours, from scratch"][0]
            else:
                model = train_ours([tr_imgs[i] for i in pick], [tr_labels[i] for i in pick], S, pretrained=pre,
                                   val_fraction=0.25)[0]
            row.append(" learned nothing |" if model is None else
                       f" {auroc(ours_lesion_eval(model, imgs, [None] * len(imgs))[0], truth):.3f} |")
        lines.append("".join(row))
        print(lines[-1], flush=True)

    return lines


if __name__ == "__main__":
    main()

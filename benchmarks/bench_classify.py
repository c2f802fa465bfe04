"""Classification: lesion presence + pointing game, scan type (2D, 3D), transfer vs scratch, vs a plain MONAI DenseNet121.

Data (all offline; nothing here is committed):

- tuning set: axial slices of the packaged MNI152 2009 2 mm T1 with lesions inserted by
  ``data.lesions.inject_lesions`` (seed 1), each lesion slice beside its lesion-free original;
- untuned lesion sets: nilearn's ICBM152 2009a 1 mm T1 (the same template family as the
  sample, at another resolution: NOT a new subject) and nibabel's test ``anatomical.nii`` (a
  different real subject, 2 mm), lesions from other seeds;
- scan type (CT / T1 / EPI): training on the Debian ``invesalius-examples`` head CT
  (``apt-get install invesalius-examples``), the sample T1 and volume 0 of nibabel's
  ``example4d.nii.gz`` (EPI); testing on pydicom's ``CT_small.dcm``, ``anatomical.nii`` (T1),
  nilearn's ICBM152 (T1, same template as training) and nibabel's ``functional.nii`` (EPI).

Every model gets the same wall-clock budget; the baseline is MONAI's DenseNet121 on the same
prepared inputs (Adam 1e-4, cross-entropy, random batches of 8) with last-layer Grad-CAM.

    nice -n 10 python benchmarks/bench_classify.py --seconds 60 --out docs/bench_classify.md
"""
from __future__ import annotations

import argparse
import platform
import plistlib
import tarfile
import tempfile
import time
from pathlib import Path

import nibabel
import nilearn
import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from monai.metrics import compute_roc_auc
from monai.networks.nets import DenseNet121
from monai.visualize import GradCAM
from scipy import ndimage
from skimage.filters import threshold_otsu

from napari_medgen.data.lesions import inject_lesions
from napari_medgen.errors import NothingLearnedError
from napari_medgen.io import Geometry, ImageData, read_image
from napari_medgen.sample_data import brain_t1, brain_tissue
from napari_medgen.tasks.classify import classify, train_classifier, unit_scale
from napari_medgen.tasks.classify_data import DEFAULT_SPEC, as_images, prepare, to_image_grid

NIBABEL = Path(nibabel.__file__).parent / "tests" / "data"
NILEARN = Path(nilearn.__file__).parent / "datasets" / "data"
CRANIUM = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
LESIONS = {"n": 40, "radii": (2.0, 3.0, 4.0), "polarity": "both", "contrast": 0.5}


# --- data ----------------------------------------------------------------------------------------
def slice_geometry(img: ImageData) -> Geometry:
    return Geometry(img.geometry.spacing[1:], img.geometry.origin[1:], np.eye(2))


def head_mask(vol: np.ndarray) -> np.ndarray:
    m = vol > threshold_otsu(vol)
    m = ndimage.binary_fill_holes(ndimage.binary_closing(m, iterations=2))
    return ndimage.binary_erosion(m, iterations=2)


def lesion_slices(img: ImageData, mask: np.ndarray, seed: int, step: int = 1, min_area: int = 300):
    """(images, labels, lesion masks): each slice with a lesion, and lesion-free slices."""
    vol = img.data.astype(np.float32)
    les, lm = inject_lesions(vol, mask, seed=seed, **LESIONS)
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


def icbm() -> tuple[ImageData, np.ndarray]:
    img = read_image(NILEARN / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm = read_image(NILEARN / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").data
    wm = read_image(NILEARN / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").data
    return img, (gm + wm) > 0.5


def cranium() -> ImageData:
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(CRANIUM) as tar:
            tar.extractall(tmp, filter="data")
        main = next(Path(tmp).glob("*/main.plist"))
        meta = plistlib.loads(main.read_bytes())
        vol = np.fromfile(main.parent / meta["matrix"]["filename"], np.int16).reshape(meta["matrix"]["shape"])
    sx, sy, sz = meta["spacing"]
    return ImageData(vol, Geometry((sz, sy, sx), (0, 0, 0), np.eye(3)), "Cranium CT", metadata={"modality": "CT"})


def axial(img: ImageData, label: str, step: int = 1, min_fraction: float = 0.15):
    """Axial slices of ``img`` that are at least ``min_fraction`` foreground."""
    vol = img.data
    fg = vol > threshold_otsu(vol)
    geo = slice_geometry(img)
    keep = [z for z in range(0, len(vol), step) if fg[z].mean() >= min_fraction]
    return [ImageData(vol[z], geo, f"{img.name} {z}", metadata=dict(img.metadata)) for z in keep], [label] * len(keep)


def frame(path: Path, t: int, name: str) -> ImageData:
    nii = nibabel.load(path)
    arr = np.asarray(nii.dataobj[..., t], np.float32)
    zooms = nii.header.get_zooms()[:3]
    return ImageData(np.ascontiguousarray(arr.transpose(2, 1, 0)), Geometry(zooms[::-1], (0, 0, 0), np.eye(3)), name)


def crops(img: ImageData, n: int, rng) -> list[ImageData]:
    """``n`` random sub-volumes (60-100 % of each extent): more 3D training images from one scan."""
    out = []
    for i in range(n):
        ext = [max(4, int(s * rng.uniform(0.6, 1.0))) for s in img.data.shape]
        start = [int(rng.integers(0, s - e + 1)) for s, e in zip(img.data.shape, ext)]
        sl = tuple(slice(a, a + e) for a, e in zip(start, ext))
        out.append(ImageData(img.data[sl], img.geometry, f"{img.name} crop {i}", metadata=dict(img.metadata)))
    return out


# --- baseline ------------------------------------------------------------------------------------
def train_densenet(images, labels, classes, size, spacing, seconds, dims):
    x = torch.as_tensor(np.stack([prepare(im, DEFAULT_SPEC, spacing, size)[0] for im in as_images(images)]))[:, None]
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


def densenet_predict(net, images, classes, size, spacing, target=None):
    probs, maps = [], []
    cam = GradCAM(net, target_layers="class_layers.relu", postprocessing=unit_scale)
    for im in images:
        x, _ = prepare(im, DEFAULT_SPEC, spacing, size)
        xt = torch.as_tensor(x)[None, None]
        with torch.no_grad():
            probs.append(torch.softmax(net(xt), 1)[0].numpy())
        if target is not None:
            hm = cam(xt.requires_grad_(True), class_idx=classes.index(target))[0, 0].detach().numpy()
            maps.append(to_image_grid(hm, prepare(im, DEFAULT_SPEC, spacing, size)[1], im.data.shape))
    return np.array(probs), maps


# --- evaluation ----------------------------------------------------------------------------------
def auroc(p_pos: np.ndarray, truth: np.ndarray) -> float:
    return float(compute_roc_auc(torch.as_tensor(p_pos, dtype=torch.float32), torch.as_tensor(truth * 1.0)))


def pointing(maps, masks) -> float:
    hits = [ndimage.distance_transform_edt(~m)[np.unravel_index(np.argmax(h), h.shape)] <= 10
            for h, m in zip(maps, masks) if m is not None]
    return float(np.mean(hits))


def ours_lesion_eval(model, images, masks):
    rs = [classify(model, im, target="lesion", heatmap=m is not None) for im, m in zip(images, masks)]
    p = np.array([r.probabilities["lesion"] for r in rs])
    return p, [r.heatmap for r, m in zip(rs, masks) if m is not None]


def lesion_row(name, p, maps, labels, masks, seconds):
    truth = np.array([lab == "lesion" for lab in labels])
    return f"| {name} | {auroc(p, truth):.3f} | {pointing(maps, [m for m in masks if m is not None]):.2f} | {seconds:.0f} |"


def train_ours(images, labels, seconds, **kw):
    t0 = time.monotonic()
    try:
        model, h = train_classifier(images, labels, steps=None, seconds=seconds, val_every=25, **kw)
    except NothingLearnedError:
        return None, time.monotonic() - t0
    return model, time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--out", default="docs/bench_classify.md")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--lesion-only", action="store_true",
                    help="only ours from brain-tissue-2d on the lesion sets (e.g. with a longer budget)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    S = args.seconds
    lines = [f"## Classification (issue 13)\n",
             f"CPU only (torch {torch.__version__}, 1 thread, {platform.machine()}, a 2-core machine shared with "
             f"other jobs; no GPU in this session). Every model trains for the same wall time, {S:.0f} s. "
             "Ours = `train_classifier` (U-Net body, per-pixel class evidence pooled by log-sum-exp, Grad-CAM on the "
             "full-resolution output); baseline = MONAI `DenseNet121`, Adam 1e-4, cross-entropy, same prepared "
             "inputs (resampled, normalised, fitted to 128x128 / 32^3), Grad-CAM on its last layer.\n"]

    # 1. lesion presence and pointing game
    b, t = brain_t1(), brain_tissue()
    tr_imgs, tr_labels, _ = lesion_slices(b, t.data > 0, seed=1)
    ic_img, ic_mask = icbm()
    ev = {"ICBM152 2009a 1 mm (same template, other resolution)": lesion_slices(ic_img, ic_mask, seed=7, step=3,
                                                                             min_area=1200),
          "nibabel anatomical.nii (other subject, 2 mm)": None}
    anat = read_image(NIBABEL / "anatomical.nii")
    ev["nibabel anatomical.nii (other subject, 2 mm)"] = lesion_slices(anat, head_mask(anat.data.astype(np.float32)),
                                                                       seed=3, min_area=150)
    lines.append(f"### Lesion present? (2D axial slices)\n\nTrained on the tuning set ({len(tr_imgs)} slices of the "
                 f"sample, {tr_labels.count('lesion')} with lesions; inserted lesions: {LESIONS}). Pointing game: "
                 "share of lesion slices whose heatmap maximum lies within 10 px of the lesion mask.\n")
    models = {}
    models["ours, from brain-tissue-2d"] = train_ours(tr_imgs, tr_labels, S, pretrained="brain-tissue-2d")
    if not args.lesion_only:
        models["ours, from scratch"] = train_ours(tr_imgs, tr_labels, S)
        dn, dn_steps = train_densenet(tr_imgs, tr_labels, ["healthy", "lesion"], (128, 128), [2.0, 2.0], S, 2)
    for ev_name, (imgs, labels, masks) in ev.items():
        lines += [f"\n{ev_name}: {len(imgs)} slices, {labels.count('lesion')} with lesions.\n",
                  "| model | lesion AUROC | pointing game | train s |", "|---|---|---|---|"]
        for name, (model, secs) in models.items():
            if model is None:
                lines.append(f"| {name} | learned nothing | - | {secs:.0f} |")
                continue
            p, maps = ours_lesion_eval(model, imgs, masks)
            lines.append(lesion_row(name, p, maps, labels, masks, secs))
        if args.lesion_only:
            continue
        probs, maps = densenet_predict(dn, [im for im in imgs], ["healthy", "lesion"], (128, 128), [2.0, 2.0],
                                       target="lesion")
        lesion_maps = [mp for mp, m in zip(maps, masks) if m is not None]
        lines.append(lesion_row(f"DenseNet121 ({dn_steps} steps)", probs[:, 1], lesion_maps, labels, masks, S))
        print("\n".join(lines[-6:]), flush=True)

    if args.lesion_only:
        Path(args.out).write_text("\n".join(lines) + "\n")
        return
    # 2. transfer vs scratch by training-set size (evaluated on the ICBM set)
    imgs, labels, masks = next(iter(ev.values()))
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

    # 3. scan type, 2D and 3D
    ct = cranium()
    epi0 = frame(NIBABEL / "example4d.nii.gz", 0, "example4d EPI")
    tr = [axial(ct, "CT", 3), axial(b, "T1", 2), axial(epi0, "EPI", 1)]
    s_imgs = [im for ims, _ in tr for im in ims]
    s_labels = [lab for _, labs in tr for lab in labs]
    ct_small = read_image(pydicom.data.get_testdata_file("CT_small.dcm"))
    func = frame(NIBABEL / "functional.nii", 0, "functional EPI")
    tests = {"CT: pydicom CT_small.dcm": ([ct_small], ["CT"]),
             "T1: nibabel anatomical.nii": axial(anat, "T1", 1),
             "T1: ICBM152 1 mm (same template as training)": axial(ic_img, "T1", 6),
             "EPI: nibabel functional.nii": axial(func, "EPI", 1, 0.05)}
    classes = ["CT", "EPI", "T1"]
    lines += ["\n### Scan type (CT / T1 / EPI)\n",
              f"Training: {len(s_imgs)} slices (Cranium CT every 3rd axial slice, sample T1 every 2nd, example4d "
              "volume 0). 3D: 8 random sub-volumes (60-100 % extent) of each of the same three volumes, 32^3 "
              "network grid. Test sets are other scans; accuracy per test set (n).\n"]
    runs = {"2D": (s_imgs, s_labels, tests, (128, 128))}
    rng = np.random.default_rng(1)
    vols = [crops(v, 8, rng) for v in (ct, b, epi0)]
    runs["3D"] = ([c for cs in vols for c in cs], [lab for lab in ("CT", "T1", "EPI") for _ in range(8)],
                  {"T1: nibabel anatomical.nii": ([anat], ["T1"]),
                   "T1: ICBM152 1 mm (same template)": ([ic_img], ["T1"]),
                   "EPI: nibabel functional.nii": ([func], ["EPI"]),
                   "EPI: example4d volume 1 (same subject, other time point)":
                       ([frame(NIBABEL / "example4d.nii.gz", 1, "example4d 1")], ["EPI"])}, (32, 32, 32))
    for dim, (x, y, tset, size) in runs.items():
        kw = {"size": size} if dim == "2D" else {"size": size, "body": {"channels": [8, 16, 32], "strides": [2, 2]}}
        model, secs = train_ours(x, y, S, **kw)
        spacing = model.params.spacing if model is not None else [4.0] * len(size)
        dn, dn_steps = train_densenet(x, y, classes, size, spacing, S, len(size))
        lines += [f"\n{dim}: ours {secs:.0f} s, DenseNet121 {dn_steps} steps in {S:.0f} s.\n",
                  "| test set | n | ours | DenseNet121 |", "|---|---|---|---|"]
        tot = {"ours": [], "dn": [], "cls": []}
        for name, (ims, labs) in tset.items():
            ours = ([classify(model, im, heatmap=False).label == lab for im, lab in zip(ims, labs)] if model
                    else [False] * len(ims))
            dnp = densenet_predict(dn, ims, classes, size, spacing)[0]
            dnr = [classes[int(p.argmax())] == lab for p, lab in zip(dnp, labs)]
            tot["ours"] += ours
            tot["dn"] += dnr
            tot["cls"] += list(labs)
            lines.append(f"| {name} | {len(ims)} | {np.mean(ours):.2f} | {np.mean(dnr):.2f} |")
        lines.append(f"| all (accuracy) | {len(tot['dn'])} | {np.mean(tot['ours']):.2f} | {np.mean(tot['dn']):.2f} |")
        per = {k: [np.mean([ok for ok, c in zip(v, tot["cls"]) if c == cl]) for cl in sorted(set(tot["cls"]))]
               for k, v in tot.items() if k != "cls"}
        lines.append(f"| all (balanced: mean over true classes) | {len(tot['dn'])} | {np.mean(per['ours']):.2f} | "
                     f"{np.mean(per['dn']):.2f} |")
        print("\n".join(lines[-8:]), flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

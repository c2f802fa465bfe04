"""Few-shot segmentation benchmark: finetune() + complete_labels() on real CT and MRI, side by side with two anchors.

Data (fetched at benchmark time, never committed):
- head CT: the Debian package ``invesalius-examples`` (``apt-get install -y invesalius-examples``), whose
  Cranium.inv3 is a tar.gz with a raw int16 volume in HU and a .plist with shape and spacing; read as float32
  HU with no modality hint (the loop must recognise CT by value range);
- MRI: nilearn's MNI152 1 mm T1 template and brain mask (``pip install nilearn``; loads offline).
Structures: whole brain (MRI), bone (CT), and tumours inserted with ``data/lesions.py`` (MRI and CT),
painted on 1, 3 or 5 slices.  Dice over every unpainted slice along the painted axis (false positives anywhere
count).  Anchors in the same run: a plain MONAI 2D U-Net (DiceCE, Adam 1e-3, flips) trained on the full painted
slices for 60 s, and ITK's MorphologicalContourInterpolator (Albu et al. 2008; ``pip install
itk-morphologicalcontourinterpolation``).  One torch thread (on this shared 2-core machine two threads were up
to 10x slower whenever another process was busy).

    nice -n 10 python benchmarks/bench_finetune.py            # writes docs/bench_finetune.md (+ .json)
"""
from __future__ import annotations

import argparse
import json
import plistlib
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from scipy import ndimage

from napari_medgen.data.interpolate import interpolate_labels
from napari_medgen.data.lesions import inject_lesions
from napari_medgen.data.normalize import normalize, resolve
from napari_medgen.models.checkpoint import Model
from napari_medgen.models.segmentation import segmentation_config
from napari_medgen.tasks.finetune import complete_labels, finetune
from napari_medgen.tasks.segment import segment

INV3 = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")


# --- data ------------------------------------------------------------------------------------------
def load_ct() -> tuple[np.ndarray, list]:
    """The InVesalius head CT as float32 HU (z, y, x) and its spacing."""
    if not INV3.is_file():
        raise SystemExit("apt-get install -y invesalius-examples first (the head CT of this benchmark).")
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(INV3) as tar:
        tar.extractall(tmp, filter="data")
        main = next(Path(tmp).rglob("main.plist"))
        meta = plistlib.loads(main.read_bytes())
        m = meta["matrix"]
        vol = np.fromfile(main.parent / m["filename"], m["dtype"]).reshape(m["shape"]).astype(np.float32)
    sx, sy, sz = meta["spacing"]
    return vol, [float(sz), float(sy), float(sx)]


def load_mri() -> tuple[np.ndarray, np.ndarray, list]:
    """nilearn's MNI152 1 mm T1 template and brain mask in (z, y, x) order."""
    from nilearn import datasets
    t1 = datasets.load_mni152_template(resolution=1).get_fdata().transpose(2, 1, 0)
    mask = datasets.load_mni152_brain_mask(resolution=1).get_fdata().transpose(2, 1, 0) > 0.5
    return np.ascontiguousarray(t1, np.float32), mask, [1.0, 1.0, 1.0]


def ct_structures(ct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bone (HU > 300, largest component) and the brain (soft tissue inside the skull, largest component)."""
    bone = ndimage.binary_opening(ct > 300, iterations=1)
    parts, _ = ndimage.label(bone)
    bone = parts == np.bincount(parts.ravel())[1:].argmax() + 1
    smooth = ndimage.gaussian_filter(ct, (0.7, 1.5, 1.5))
    tissue = ndimage.binary_opening((smooth > 15) & (smooth < 65), iterations=2)
    parts, _ = ndimage.label(tissue)
    return bone, parts == np.bincount(parts.ravel())[1:].argmax() + 1


def tumour(image, mask, radius, seed, spacing, contrast=0.5, polarity="dark"):
    """One soft-edged tumour of ``radius`` mm inside ``mask``: (image, tumour mask).  MRI: T1-dark (a bright
    one is lost in white matter); CT: brighter than brain (enhancing)."""
    r = radius / np.asarray(spacing)
    img, les = inject_lesions(image, ndimage.binary_erosion(mask, iterations=2), n=1, radii=(float(r.mean()),),
                              polarity=polarity, contrast=contrast, softness=0.2, seed=seed)
    return img, les


# --- protocol --------------------------------------------------------------------------------------
def pick(mask: np.ndarray, axis: int, n: int, inset: float) -> list[int]:
    """``n`` slices spread over the structure's extent along ``axis``, ``inset`` of it left at each end."""
    idx = np.flatnonzero(np.moveaxis(mask, axis, 0).any((1, 2)))
    lo, hi = idx[0], idx[-1]
    if n == 1:
        return [int(round((lo + hi) / 2))]
    return [int(round(v)) for v in np.linspace(lo + inset * (hi - lo), hi - inset * (hi - lo), n)]


def painted(mask: np.ndarray, axis: int, idx) -> np.ndarray:
    lab = np.zeros(mask.shape, np.uint8)
    sel = [slice(None)] * 3
    sel[axis] = idx
    lab[tuple(sel)] = mask[tuple(sel)]
    return lab


def dice_unpainted(pred, truth, axis, idx) -> float:
    keep = np.ones(truth.shape[axis], bool)
    keep[idx] = False
    p, t = np.moveaxis(pred > 0, axis, 0)[keep], np.moveaxis(truth > 0, axis, 0)[keep]
    return float(2 * (p & t).sum() / max(1, p.sum() + t.sum()))


def anchor_mci(labels: np.ndarray) -> np.ndarray | None:
    try:
        import itk
    except ImportError:
        return None
    f = itk.MorphologicalContourInterpolator.New(itk.image_from_array(np.ascontiguousarray(labels, np.uint8)))
    f.Update()
    return itk.array_from_image(f.GetOutput())


def anchor_unet(image, labels, axis, idx, seconds: float) -> np.ndarray:
    """Plain MONAI: UNet, DiceCELoss, Adam 1e-3, the full painted slices (batch of up to 4), flips only."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spec = resolve({"kind": "auto"}, image)
    model = Model(segmentation_config("plain", 2, axis=axis, normalization=spec))
    x = np.moveaxis(normalize(image, spec), axis, 0)[idx]
    y = np.moveaxis(labels, axis, 0)[idx].astype(np.int64)
    pad = [(0, 0), (0, (-x.shape[1]) % 8), (0, (-x.shape[2]) % 8)]
    x, y = np.pad(x, pad), np.pad(y, pad)
    net, loss_fn = model.net, DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    t0 = time.monotonic()
    net.train()
    while time.monotonic() - t0 < seconds:
        b = rng.choice(len(idx), size=min(4, len(idx)), replace=False)
        xb, yb = torch.as_tensor(x[b])[:, None], torch.as_tensor(y[b])[:, None]
        for dim in (2, 3):
            if rng.random() < 0.5:
                xb, yb = xb.flip(dim), yb.flip(dim)
        loss = loss_fn(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return segment(image, model, axis=axis, device="cpu")


def run_case(name, image, truth, spacing, axis, n, inset, seconds, anchors=True) -> dict:
    idx = pick(truth, axis, n, inset)
    lab = painted(truth, axis, idx)
    row = {"case": name, "axis": axis, "slices": idx, "n": n}
    t0 = time.monotonic()
    interp = interpolate_labels(lab, spacing=spacing)
    row["interp"], row["interp_s"] = dice_unpainted(interp, truth, axis, idx), time.monotonic() - t0
    t0 = time.monotonic()
    model, hist = finetune(None, image, lab, spacing=spacing, seconds=seconds, device="cpu")
    row["finetune_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    out = complete_labels(model, image, lab, spacing=spacing, device="cpu")
    row["complete_s"] = time.monotonic() - t0
    row["ours"] = dice_unpainted(out, truth, axis, idx)
    row["ours_net_only"] = dice_unpainted(complete_labels(model, image, lab, spacing=spacing, device="cpu",
                                                          prior_weight=0.0), truth, axis, idx)
    row.update(steps=len(hist["step"]), returned=hist["returned"], stop_reason=hist["stop_reason"],
               norm=model.config.normalization["kind"], pseudo_slices=hist["pseudo_slices"],
               painted_dice=hist.get("painted_dice"))
    if anchors:
        mci = anchor_mci(lab)
        row["mci"] = None if mci is None else dice_unpainted(mci, truth, axis, idx)
        row["unet"] = dice_unpainted(anchor_unet(image, lab, axis, idx, seconds), truth, axis, idx)
    print(json.dumps(row), flush=True)
    return row


def small_lesion(name, image, mask, spacing, radius, seed, seconds) -> dict:
    """One slice through a small lesion painted; Dice on each of its other slices, against copying the
    painted slice onto exactly the lesion's slices (a copy told where the lesion ends)."""
    img, les = tumour(image, mask, radius, seed, spacing)
    zs = np.flatnonzero(les.any((1, 2)))
    mid = int(zs[len(zs) // 2])
    lab = painted(les, 0, [mid])
    model, hist = finetune(None, img, lab, spacing=spacing, seconds=seconds, device="cpu")
    out = complete_labels(model, img, lab, spacing=spacing, device="cpu")
    others = [int(z) for z in zs if z != mid]

    def d(a, b):
        return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
    ours = [d(out[z] > 0, les[z]) for z in others]
    copy = [d(les[mid], les[z]) for z in others]
    outside = int((out[np.setdiff1d(np.arange(len(out)), zs)] > 0).sum())
    row = {"case": name, "radius_mm": radius, "slices": len(zs), "ours": float(np.mean(ours)),
           "copy": float(np.mean(copy)), "ours_fp_beyond": outside, "steps": len(hist["step"])}
    print(json.dumps(row), flush=True)
    return row


def markdown(res: dict) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["## Few-shot segmentation: paint a few slices, fill the volume", "",
             f"CPU only, torch 1 thread on a shared 2-core machine (load from other jobs), no GPU in this session. "
             f"Settings: {res['settings']}. Dice over every unpainted slice along the painted axis (false "
             "positives anywhere count). *ours* = `finetune(None, image, labels, spacing=...)` at its defaults "
             "(60 s budget) then `complete_labels(...)`; *net only* = the same without the interpolation prior; "
             "*interp.* = our shape-based interpolation alone; *ITK MCI* = MorphologicalContourInterpolator; "
             "*plain U-Net* = MONAI UNet on the painted full slices for 60 s.", "",
             "| case | painted slices | ours | net only | interp. | ITK MCI | plain U-Net | finetune s | complete s | steps | normalisation |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["cases"]:
        lines.append(f"| {r['case']} | {r['n']} {r['slices']} | **{f(r['ours'])}** | {f(r['ours_net_only'])} | "
                     f"{f(r['interp'])} | {f(r.get('mci'))} | {f(r.get('unet'))} | {r['finetune_s']:.0f} | "
                     f"{r['complete_s']:.0f} | {r['steps']} | {r['norm']} |")
    if res.get("small"):
        lines += ["", "### One painted slice through a small lesion", "",
                  "Mean Dice over the lesion's other slices; *copy* = the painted slice copied onto exactly the "
                  "lesion's slices (told where it ends); *FP beyond* = voxels we paint on slices without the lesion.", "",
                  "| case | lesion slices | ours | copy | FP beyond | steps |", "|---|---|---|---|---|---|"]
        for r in res["small"]:
            lines.append(f"| {r['case']} | {r['slices']} | **{f(r['ours'])}** | {f(r['copy'])} | "
                         f"{r['ours_fp_beyond']} | {r['steps']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--cases", default="brain-ax,brain-cor,mri-tumour,ct-tumour,ct-bone,small")
    ap.add_argument("--out", default="docs/bench_finetune.md")
    ap.add_argument("--render", default=None, help="only re-write the markdown from a saved .json")
    args = ap.parse_args()
    if args.render:
        Path(args.out).write_text(markdown(json.loads(Path(args.render).read_text())))
        return
    torch.set_num_threads(1)
    want = set(args.cases.split(","))
    res = {"settings": f"seconds={args.seconds}", "cases": [], "small": []}
    t0 = time.monotonic()
    t1, brain, mspacing = load_mri()
    if "brain-ax" in want:
        res["cases"].append(run_case("MRI whole brain, axial", t1, brain, mspacing, 0, 5, 0.1, args.seconds))
    if "brain-cor" in want:
        res["cases"].append(run_case("MRI whole brain, coronal", t1, brain, mspacing, 1, 5, 0.1, args.seconds))
    if "mri-tumour" in want:
        img, les = tumour(t1, brain, 7.0, 1, mspacing)
        res["cases"].append(run_case("MRI brain tumour (r 7 mm)", img, les, mspacing, 0, 3, 0.2, args.seconds))
    ct, cspacing = load_ct()
    bone, ct_brain = ct_structures(ct)
    if "ct-tumour" in want:
        img, les = tumour(ct, ct_brain, 9.0, 2, cspacing, contrast=0.8, polarity="bright")
        res["cases"].append(run_case("CT brain tumour (r 9 mm)", img, les, cspacing, 0, 3, 0.2, args.seconds))
    if "ct-bone" in want:
        res["cases"].append(run_case("CT bone (skull)", ct, bone, cspacing, 0, 3, 0.1, args.seconds))
    if "small" in want:
        for seed in (3, 4):
            res["small"].append(small_lesion(f"MRI small lesion (seed {seed})", t1, brain, mspacing, 4.0, seed,
                                             args.seconds))
    res["total_seconds"] = time.monotonic() - t0
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    out.write_text(markdown(res) + f"\nBenchmark run took {res['total_seconds']:.0f} s.\n")
    print(markdown(res))


if __name__ == "__main__":
    main()

"""Cohort benchmark: 1 process vs 2 processes (torchrun, gloo) for ``train-cohort`` and batch ``segment``.

Data (built offline, written to a temporary folder, never committed):
- training cohort: N_TRAIN randomly deformed versions of the packaged MNI152 2009 2 mm T1 and its
  4-class tissue map (MONAI Rand3DElastic: rotation, scaling, elastic warp; bias field, gamma, noise,
  intensity scale; half mirrored left-right; a third resampled to 1.5 mm and a third to 2.5 mm in-plane),
  in the nnU-Net layout;
- held-out subjects: N_HELD more deformed versions (other seeds) and nilearn's MNI ICBM152 2009 1 mm
  template with a tissue map from its GM/WM probability maps and brain mask (CSF = brain - GM - WM).
  All share one anatomy: this measures robustness to deformation, contrast and spacing, not to new brains.

Measured: Dice (CSF/GM/WM mean) on the held-out subjects of a 1-process and a 2-process model trained
for the same steps with the same per-process batch; training throughput (patches/s) and peak memory per
rank; batch segmentation time per scan with 1 and 2 processes.  Writes docs/bench_cohort.md and .json.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_cohort.py [--steps 500] [--work DIR]``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_HELD = 12, 4


def deformed_subjects(n: int, seed: int):
    """``n`` (image, labels, spacing) deformations of the sample brain."""
    import torch
    from monai import transforms as mt

    from napari_medgen.data.resample import resize
    from napari_medgen.sample_data import brain_t1, brain_tissue

    t1, tissue = brain_t1(), brain_tissue()
    keys = ("image", "label")
    warp = mt.Compose([
        mt.Rand3DElasticd(keys, sigma_range=(6, 8), magnitude_range=(40, 120), prob=1.0, rotate_range=(0.12,) * 3,
                          scale_range=(0.1,) * 3, mode=("bilinear", "nearest"), padding_mode="zeros"),
        mt.RandBiasFieldd("image", coeff_range=(0.1, 0.3), prob=0.8),
        mt.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.8),
        mt.RandGaussianNoised("image", std=20.0, prob=0.5),
    ])
    warp.set_random_state(seed)
    rng = np.random.default_rng(seed)
    for i in range(n):
        out = warp({"image": t1.data[None].astype(np.float32), "label": tissue.data[None].astype(np.float32)})
        img, lab = np.asarray(out["image"][0]), np.rint(np.asarray(out["label"][0])).astype(np.uint8)
        img = np.clip(img, 0, None) * rng.uniform(0.6, 1.6)
        if i % 2:
            img, lab = img[:, :, ::-1].copy(), lab[:, :, ::-1].copy()
        spacing = 2.0 if i % 3 == 0 else (1.5 if i % 3 == 1 else 2.5)
        if spacing != 2.0:
            shape = tuple(int(round(s * 2.0 / spacing)) for s in img.shape[1:])
            img = resize(img, shape)
            lab = resize(torch.from_numpy(lab), shape, mode="nearest").numpy()
        yield img.astype(np.int16), lab, (2.0, spacing, spacing), t1.geometry


def mni_1mm():
    """nilearn's MNI ICBM152 2009 1 mm T1 and a 4-class tissue map from its probability maps."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata()
    mask = datasets.load_mni152_brain_mask(resolution=1).get_fdata() > 0.5
    csf = np.clip(1 - gm - wm, 0, 1)
    lab = np.where(mask, np.argmax(np.stack([csf, gm, wm]), 0) + 1, 0).astype(np.uint8)
    return t1, lab


def build(root: Path) -> tuple[Path, Path]:
    """The training dataset folder and a folder of held-out images + ``*_label`` files."""
    import nibabel as nib

    from napari_medgen.io import Geometry, write_image

    ds, held = root / "Dataset002_MNIDeformed", root / "heldout"
    for d in (ds / "imagesTr", ds / "labelsTr", held):
        d.mkdir(parents=True, exist_ok=True)
    for k, (img, lab, sp, geo) in enumerate(deformed_subjects(N_TRAIN + N_HELD, seed=7)):
        g = Geometry(sp, geo.origin, geo.direction)
        if k < N_TRAIN:
            write_image(ds / "imagesTr" / f"sub{k:02d}_0000.nii.gz", img, g, overwrite=True)
            write_image(ds / "labelsTr" / f"sub{k:02d}.nii.gz", lab, g, overwrite=True)
        else:
            write_image(held / f"deformed{k:02d}.nii.gz", img, g, overwrite=True)
            write_image(held / f"deformed{k:02d}_label.nii.gz", lab, g, overwrite=True)
    t1, lab = mni_1mm()
    nib.save(nib.Nifti1Image((t1.get_fdata() * 1000).astype(np.int16), t1.affine), held / "mni1mm.nii.gz")
    nib.save(nib.Nifti1Image(lab, t1.affine), held / "mni1mm_label.nii.gz")
    return ds, held


def launch(args: list, nproc: int, threads: int) -> dict:
    """Run the CLI in ``nproc`` processes (torchrun if > 1); wall time and peak RSS per process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cli = [sys.executable, "-m", "napari_medgen.cli"]
    if nproc > 1:
        cli = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "napari_medgen.cli"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cli + [str(a) for a in args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peak: dict[int, int] = {}
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [parent] + parent.children(recursive=True)
            for p in procs:
                if "napari_medgen.cli" in " ".join(p.cmdline()) and "torch.distributed.run" not in " ".join(p.cmdline()):
                    peak[p.pid] = max(peak.get(p.pid, 0), p.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, args[:2]))} failed:\n{err[-3000:]}")
    return {"wall_s": time.monotonic() - t0, "peak_rss_mb": sorted(round(v / 2**20) for v in peak.values()),
            "stdout": out}


def dice_on(model_path: Path, held: Path) -> dict:
    from napari_medgen import read_image, segment, segmentation_metrics

    out = {}
    for img_path in sorted(held.glob("*.nii.gz")):
        if "_label" in img_path.name:
            continue
        img = read_image(img_path)
        ref = read_image(held / img_path.name.replace(".nii.gz", "_label.nii.gz")).data
        m = segmentation_metrics(segment(img, str(model_path), device="cpu"), ref)
        out[img_path.name.split(".")[0]] = float(np.mean([v["dice"] for v in m.values()]))
    return out


TRAIN_RUNS = (  # name, processes, patches per step and process
    ("1 process, batch 8", 1, 8),
    ("2 processes, batch 8 each (2x the samples)", 2, 8),
    ("2 processes, batch 4 each (the same samples)", 2, 4),
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--work", default=None, help="folder for the data, models and finished runs (kept between "
                                                  "invocations: a rerun only does what is missing)")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="bench_cohort_"))
    cache = work / "runs.json"
    res = json.loads(cache.read_text()) if cache.is_file() else {}
    if res.get("steps") != a.steps:
        t0 = time.monotonic()
        ds, held = build(work)
        res = {"steps": a.steps, "n_train_cases": N_TRAIN, "build_s": round(time.monotonic() - t0, 1),
               "heldout": sorted(p.name for p in held.glob("*[0-9].nii.gz")), "cpu_count": os.cpu_count(),
               "runs": {}}
    ds, held = work / "Dataset002_MNIDeformed", work / "heldout"
    common = ["--device", "cpu", "-q", "--checkpoint-every", "1e9", "--overwrite", "--steps", a.steps]
    from napari_medgen import Model

    for k, (name, nproc, batch) in enumerate(TRAIN_RUNS):
        if name in res["runs"]:
            continue
        model = work / f"model{k}.medgen.pt"
        r = launch(["train-cohort", ds, "--out", model, "--batch-size", batch] + common, nproc, 1)
        rec = Model.load(model).config.training
        r.update(steps=rec["steps"], samples_seen=rec["samples_seen"], train_s=round(rec["seconds"], 1),
                 patches_per_s=round(rec["samples_seen"] / rec["seconds"], 2), val_dice=rec["val_dice"],
                 world_size=rec["world_size"], heldout_dice=dice_on(model, held))
        r["heldout_mean"] = round(float(np.mean(list(r["heldout_dice"].values()))), 4)
        r.pop("stdout")
        res["runs"][name] = r
        cache.write_text(json.dumps(res, indent=1))
        print(name, json.dumps(r), flush=True)
    for nproc in (1, 2):
        out = work / f"seg{nproc}"
        shutil.rmtree(out, ignore_errors=True)
        r = launch(["segment", ds / "imagesTr", out, "--model", work / "model0.medgen.pt", "--device", "cpu",
                    "-q"], nproc, 1)
        r.pop("stdout")
        with open(out / "segment_summary.csv") as fh:
            rows = list(csv.DictReader(fh))
        r["scans"] = len(rows)
        r["s_per_scan_in_rank"] = round(float(np.mean([float(x["seconds"]) for x in rows])), 2)
        r["busiest_rank_s"] = round(max(sum(float(x["seconds"]) for x in rows if x["rank"] == str(k))
                                        for k in range(nproc)), 1)
        res["runs"][f"segment {len(rows)} scans, {nproc} process(es)"] = r
        print(nproc, json.dumps(r), flush=True)
    cache.write_text(json.dumps(res, indent=1))
    (ROOT / "docs" / "bench_cohort.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

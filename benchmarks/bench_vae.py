"""Anomaly detection on synthetic lesions: the VAE's methods against plain intensity thresholds, same run.

Protocol (Baur et al., MedIA 2021, on the data we have): a VAE is trained with its default budget
(seconds, CPU) on normal axial slices of the sample brain (MNI152 2009, 2 mm, skull-stripped by
its brain mask); two other blocks of normal slices (``VAL``) stop training and calibrate every
score; a test block is never seen.  Lesions go into four subjects' test blocks: (A) the sample
brain's own, (B) the same block of nilearn's 1 mm MNI152 2009 template (the same anatomy, scored
through the resampling path), (C) the matching axial slices of another adult's T1 head, ITK's
example ``KmeansTest_T1UCharRaw`` (3 x 2 x 2 mm, uint8, with its skull-strip mask; from the Debian
package ``insighttoolkit5-examples``), reoriented to the sample brain's axes and cropped to its
brain, and (D) Colin27, one adult scanned 27 times and averaged (MRIcron's skull-stripped ``ch2bet``,
1 mm, in MNI space; from the Debian package ``mricron-data``).  C and D are read at run time and
never committed; the VAE and its calibration never see them.  With ``--cohort`` three more VAEs are
trained, leave one subject out: each on two of the three real brains (the sample brain, C, D: their
slices at the heights of ``TRAIN``, validated on their ``VAL`` slices) and tested on the third, which it
never saw (the sample brain's fold is tested on A and B).  Lesion types: bright, dark,
mixed (alternating bright and dark), and iso-intense but mis-shaped (an ellipsoid filled with the
brain tissue 6 mm away: normal intensities, wrong structure).  Metrics on the test block's brain
voxels: AUROC and AUPRC of each heatmap; baselines are plain thresholds of the image's own
(unclipped) intensities with the same mask and median filter.  The combined score's settings were
chosen on lesion seeds 100-101 with another training run (training seed 1); the report uses seeds 0
and up.

    apt-get install -y insighttoolkit5-examples mricron-data
    nice -n 10 python benchmarks/bench_vae.py --retrain --cohort --out /tmp/bench_vae.md
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from monai.metrics import compute_average_precision, compute_roc_auc

from napari_medgen.data.lesions import inject_lesions
from napari_medgen.io import Geometry, ImageData, read_image
from napari_medgen.models.checkpoint import Model
from napari_medgen.models.config import Task
from napari_medgen.sample_data import brain_t1, brain_tissue
from napari_medgen.tasks.anomaly import anomaly_map
from napari_medgen.tasks.anomaly_scores import postprocess
from napari_medgen.tasks.vae_training import train_vae

TEST = (38, 54)  # held-out block (axial slices of the 2 mm brain)
TRAIN = [(0, 30), (62, 95)]
VAL = [(30, 36), (56, 62)]  # normal slices never trained on: early stopping and the calibration of every score
RADII = (2.0, 3.0, 4.5)  # voxels at 2 mm
TYPES = ("bright", "dark", "mixed", "mis-shaped")
METHODS = [("residual", "both"), ("restoration", "both"), ("intensity", "both"), ("combined", "both")]
SIGNED = {"bright": "positive", "dark": "negative"}


def auroc_auprc(score, truth):
    s, t = torch.from_numpy(score.astype(np.float32)), torch.from_numpy(truth.astype(np.float32))
    return float(compute_roc_auc(s, t)), float(compute_average_precision(s, t))


def nilearn_1mm():
    """nilearn's 1 mm MNI152 2009 template and brain mask as ImageData (read through NIfTI, as users would)."""
    import nibabel as nib
    from nilearn import datasets

    out = []
    with tempfile.TemporaryDirectory() as d:
        for name, img in (("t1", datasets.load_mni152_template(resolution=1)),
                          ("mask", datasets.load_mni152_brain_mask(resolution=1))):
            path = Path(d) / f"{name}.nii.gz"
            nib.Nifti1Image(np.asarray(img.get_fdata(), np.float32), img.affine).to_filename(path)
            out.append(read_image(path))
    return out


ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")  # apt-get install insighttoolkit5-examples


def reorient_like(img, like, *arrays):
    """``img.data`` and ``arrays`` with axes permuted and flipped to point along ``like``'s axes, and the geometry."""
    d_s, d_t = np.asarray(img.geometry.direction), np.asarray(like.direction)
    perm, flips = [], []
    for i in range(3):
        dots = d_t[:, i] @ d_s
        perm.append(int(np.argmax(np.abs(dots))))
        flips.append(dots[perm[-1]] < 0)
    out = []
    for a in (img.data, *arrays):
        a = np.transpose(a, perm)
        out.append(np.ascontiguousarray(np.flip(a, [k for k, f in enumerate(flips) if f])))
    return out, Geometry(tuple(img.geometry.spacing[j] for j in perm), (0.0, 0.0, 0.0), like.direction)


def itk_t1(like):
    """ITK's example T1 head (a real adult, 3 x 2 x 2 mm, uint8) with its skull-strip mask, axial slices along axis 0
    like the sample brain, cropped to the brain (the VAE's field of view is the template's)."""
    t1 = read_image(ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz")
    strip = read_image(ITK_DATA / "KmeansTest_T1RawSkullStrip.nii.gz").data > 0
    (vol, brain), geo = reorient_like(t1, like, strip)
    idx = np.argwhere(brain)
    box = tuple(slice(max(a - 4, 0), b + 5) for a, b in zip(idx.min(0), idx.max(0)))
    return np.where(brain, vol, 0)[box].astype(np.float32), brain[box], geo


COLIN = Path("/usr/share/mricron/templates/ch2bet.nii.gz")  # apt-get install mricron-data


def colin27():
    """Colin Holmes' brain (Colin27: one adult scanned 27 times and averaged, 1 mm, already skull-stripped by BET;
    MRIcron's ``ch2bet``), in MNI space like the sample brain; the brain mask is its non-zero voxels."""
    img = read_image(COLIN)
    brain = ndimage.binary_fill_holes(img.data > 0)
    return np.where(brain, img.data, 0).astype(np.float32), brain, img.geometry


def block_like(brain, ref_brain, ref_block):
    """Axial slices at the same relative height in ``brain`` as ``ref_block`` is in ``ref_brain``."""
    span = lambda m: np.where(m.any((1, 2)))[0][[0, -1]]  # noqa: E731
    (r0, r1), (b0, b1) = span(ref_brain), span(brain)
    f = (np.array([ref_block[0], ref_block[-1]]) - r0) / (r1 - r0)
    lo, hi = np.round(b0 + f * (b1 - b0)).astype(int)
    return np.arange(lo, hi + 1)


def matching_slices(geo_from, index_range, geo_to, n_to) -> np.ndarray:
    """Slices (axis 0) of a second grid whose world position lies within ``index_range`` of the first."""
    z = lambda g, k: float(g.index_to_world([k, 0, 0])[0])  # noqa: E731
    lo, hi = sorted((z(geo_from, index_range[0]), z(geo_from, index_range[1] - 1)))
    return np.array([k for k in range(n_to) if lo <= z(geo_to, k) <= hi])


def lesions(vol, brain, kind, slices, scale, seed):
    """(image, truth) with lesions of ``kind`` centred on ``slices``."""
    radii = tuple(r * scale for r in RADII)
    if kind != "mis-shaped":
        pol = {"mixed": "both"}.get(kind, kind)
        return inject_lesions(vol, brain, n=6, radii=radii, polarity=pol, contrast=0.35, slices=slices, seed=seed)
    _, where = inject_lesions(vol, brain, n=6, radii=radii, contrast=0.0, slices=slices, seed=seed)
    shift = int(round(3 * scale))
    src = np.roll(vol, (0, shift, shift), axis=(0, 1, 2))
    ok = where & np.roll(brain, (0, shift, shift), axis=(0, 1, 2))
    img = np.where(ok, src, vol).astype(np.float32)
    return img, ok


def baselines(img, brain):
    """Plain intensity thresholds of the image's own intensities, unclipped (same mask and median filter)."""
    x = np.asarray(img, np.float32) * brain
    med = float(np.median(x[brain]))
    return {"baseline intensity": postprocess(x, "positive", brain),
            "baseline |x - median|": postprocess(np.abs(x - med), "positive", brain),
            "baseline median - x": postprocess(np.clip(med - x, 0, None), "positive", brain)}


def score_all(model, subject, kind, seed, rows, timing):
    vol, brain, geo, block, scale = subject["vol"], subject["brain"], subject["geo"], subject["block"], subject["scale"]
    centres = block[len(block) // 4: -len(block) // 4]
    img, truth = lesions(vol, brain, kind, centres, scale, seed)
    sub = slice(block[0], block[-1] + 1)
    fg = brain[sub]
    methods = METHODS + ([(m, SIGNED[kind]) for m in ("restoration", "combined")] if kind in SIGNED else [])
    for method, sign in methods:
        t = time.monotonic()
        res = anomaly_map(model, ImageData(img[sub], geo), brain[sub], method=method, sign=sign, device="cpu")
        timing[method] = time.monotonic() - t
        rows.setdefault((subject["name"], kind, f"{method}, sign {sign}"), []).append(
            auroc_auprc(res.score[fg], truth[sub][fg]))
    for name, score in baselines(img, brain).items():
        rows.setdefault((subject["name"], kind, name), []).append(auroc_auprc(score[sub][fg], truth[sub][fg]))


def verdicts(rows) -> list[str]:
    """Combined (best sign) against the best baseline of the same run, per subject and lesion type."""
    mean = {k: np.mean(v, axis=0) for k, v in rows.items()}
    out = []
    for subj in dict.fromkeys(k[0] for k in mean):
        for kind in TYPES:
            ours = {k[2]: v for k, v in mean.items() if k[:2] == (subj, kind) and k[2].startswith("combined")}
            base = {k[2]: v for k, v in mean.items() if k[:2] == (subj, kind) and k[2].startswith("baseline")}
            if not ours:
                continue
            o_auc = max(ours.items(), key=lambda kv: kv[1][0])
            o_ap = max(ours.items(), key=lambda kv: kv[1][1])
            b_auc = max(base.items(), key=lambda kv: kv[1][0])
            b_ap = max(base.items(), key=lambda kv: kv[1][1])
            d_auc, d_ap = o_auc[1][0] - b_auc[1][0], o_ap[1][1] - b_ap[1][1]
            ok = "meets" if d_auc >= -0.02 and (kind != "mixed" or d_ap > 0) else "MISSES"
            out.append(f"| {subj} | {kind} | {o_auc[1][0]:.3f} ({o_auc[0]}) | {b_auc[1][0]:.3f} ({b_auc[0][9:]}) | "
                       f"{d_auc:+.3f} | {o_ap[1][1]:.3f} | {b_ap[1][1]:.3f} ({b_ap[0][9:]}) | {d_ap:+.3f} | {ok} |")
    return out


def subjects_for(t1, brain, vol) -> list[dict]:
    """The test subjects: A (the training brain's own held-out block), B, C and D (see the module docstring)."""
    out = [{"name": "A: sample brain 2 mm", "vol": vol, "brain": brain, "geo": t1.geometry,
            "block": np.arange(*TEST), "scale": 1.0, "brain_of": "sample", "at": lambda rng: np.arange(*rng)}]
    try:
        hi_t1, hi_mask = nilearn_1mm()
        hb = hi_mask.data > 0
        block = matching_slices(t1.geometry, TEST, hi_t1.geometry, hi_t1.data.shape[0])
        out.append({"name": "B: MNI152 2009 1 mm", "vol": np.where(hb, hi_t1.data, 0).astype(np.float32),
                    "brain": hb, "geo": hi_t1.geometry, "block": block, "scale": 2.0, "brain_of": "sample"})
    except ImportError:
        print("nilearn is not installed: subject B skipped")
    if ITK_DATA.is_dir():
        cv, cb, cg = itk_t1(t1.geometry)
        out.append({"name": "C: ITK example T1 (other adult)", "vol": cv, "brain": cb, "geo": cg,
                    "block": block_like(cb, brain, np.arange(*TEST)), "scale": 1.0, "brain_of": "itk",
                    "at": lambda rng: block_like(cb, brain, np.arange(*rng))})
    else:
        print("apt-get install insighttoolkit5-examples for subject C")
    if COLIN.exists():
        dv, db, dg = colin27()
        out.append({"name": "D: Colin27 1 mm (other adult)", "vol": dv, "brain": db, "geo": dg,
                    "block": matching_slices(t1.geometry, TEST, dg, dv.shape[0]), "scale": 2.0, "brain_of": "colin",
                    "at": lambda rng: matching_slices(t1.geometry, rng, dg, dv.shape[0])})
    else:
        print("apt-get install mricron-data for subject D")
    return out


def trained(path, retrain, images, masks, val_images, val_masks, seconds, seed, name):
    """A VAE trained with ``train_vae``'s defaults (cached at ``path``)."""
    if Path(path).exists() and not retrain:
        return Model.load(path, expect=Task.VAE)
    model, _ = train_vae(images, masks, val_images=val_images, val_masks=val_masks, seconds=seconds, device="cpu",
                         name=name, seed=seed)
    model.save(path)
    return model


def cohort_data(brains):
    """Training and validation pieces of several subjects: each one's slices at the heights of ``TRAIN`` and ``VAL``
    (its test-block slices and the gaps beside them left out)."""
    out = [], [], [], []
    for b in brains:
        for ranges, (imgs, masks) in ((TRAIN, out[:2]), (VAL, out[2:])):
            rows = np.unique(np.clip(np.concatenate([b["at"](r) for r in ranges]), 0, len(b["vol"]) - 1))
            imgs.append(ImageData(b["vol"][rows], b["geo"], name=b["brain_of"]))
            masks.append(b["brain"][rows])
    return out


def cohort_runs(subjects, path, retrain, seconds, seed) -> tuple[list, list[str]]:
    """Leave one subject out: a VAE trained on two of the three real brains, tested on the third (unseen)."""
    brains = {s["brain_of"]: s for s in subjects if "at" in s}
    runs, described = [], []
    for held in brains:
        rest = [b for k, b in brains.items() if k != held]
        label = " + ".join(b["name"][:1] for b in rest)
        model = trained(path.replace(".medgen.pt", f"_without_{held}.medgen.pt"), retrain, *cohort_data(rest),
                        seconds, seed, f"bench-{label}")
        tests = [s for s in subjects if s["brain_of"] == held]
        runs.append((model, [{**s, "name": f"{s['name']}, model of {label}"} for s in tests]))
        described.append(describe(model, f"Two-subject model {label}"))
    return runs, described


def describe(model, label) -> str:
    tr, args = model.config.training, model.config.networks["net"].args
    return (f"{label}: MONAI VarAutoEncoder {args['channels']}, latent {args['latent_size']}, trained at "
            f"{model.params.spacing} mm on {tr.get('n_train')} slices, validated on {tr.get('n_val')} normal slices, "
            f"best weights at step {tr.get('best_step')}, {tr.get('seconds', 0):.0f} s of training")


def all_rows(rows) -> list[str]:
    """Markdown table of every (subject, lesions, method) row: mean AUROC and AUPRC over the lesion seeds."""
    lines = ["| subject | lesions | method | AUROC | AUPRC |", "|---|---|---|---|---|"]
    for (subj, kind, name), ms in rows.items():
        m = np.mean(ms, axis=0)
        lines.append(f"| {subj} | {kind} | {name} | {m[0]:.3f} | {m[1]:.3f} |")
    return lines


def report(lines: list[str], out, t0: float) -> None:
    """Print the markdown report, write it to ``out`` if given, and the total wall time."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).write_text(text)
    print(f"total {time.monotonic() - t0:.0f} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120.0, help="VAE training budget (the default of train_vae)")
    ap.add_argument("--model", default="/tmp/vae_bench.medgen.pt", help="cache: reuse if it exists")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--train-seed", type=int, default=0, help="the VAE's seed (the tuning run used another)")
    ap.add_argument("--cohort", action="store_true", help="also train three two-subject models, leave one subject "
                    "out (sample brain, ITK T1, Colin27), each tested on the brain it did not see")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0, help="lesion seeds from here (settings were chosen on 100-101)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t1 = brain_t1()
    brain = brain_tissue().data > 0
    vol = np.where(brain, t1.data, 0).astype(np.float32)
    t0 = time.monotonic()
    model = trained(args.model, args.retrain, [ImageData(vol[a:b], t1.geometry) for a, b in TRAIN],
                    [brain[a:b] for a, b in TRAIN], [ImageData(vol[a:b], t1.geometry) for a, b in VAL],
                    [brain[a:b] for a, b in VAL], args.seconds, args.train_seed, "bench")
    subjects = subjects_for(t1, brain, vol)
    runs = [(model, subjects)]
    described = [describe(model, "One-brain model")]
    if args.cohort and len({s["brain_of"] for s in subjects}) == 3:
        more, text = cohort_runs(subjects, args.model, args.retrain, args.seconds, args.train_seed)
        runs += more
        described += text
    rows, timing = {}, {}
    for net, subs in runs:
        for subject in subs:
            for kind in TYPES:
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    score_all(net, subject, kind, seed, rows, timing)
                print(subject["name"], kind, "done", flush=True)
    lines = ["## VAE anomaly detection vs intensity thresholds (synthetic lesions)", "",
             f"CPU only ({platform.machine()}, 1 thread, shared 2-core machine; no GPU). "
             + "; ".join(described) + f". Budget {args.seconds:.0f} s each, training seed {args.train_seed}. "
             f"Validation (normal, never trained on): slices {VAL}. "
             f"Test block: axial slices {TEST[0]}-{TEST[1] - 1} of the 2 mm brain (never trained on); 6 lesions per "
             f"volume, radii {RADII} voxels at 2 mm (doubled at 1 mm), contrast 0.35 of the brain's range; mean over "
             f"{args.seeds} lesion seeds ({args.first_seed}-{args.first_seed + args.seeds - 1}; settings were chosen on "
             f"100-101). Load average at the end: {' / '.join(f'{v:.1f}' for v in os.getloadavg())}. Scoring time per "
             "test block (1 thread): " + ", ".join(f"{k} {v:.1f} s" for k, v in timing.items()) + ".", "",
             *all_rows(rows)]
    lines += ["", "Combined score (best of its signs) against the best plain threshold of the same run "
              "(target: AUPRC above the threshold's on mixed lesions, AUROC never more than 0.02 below):", "",
              "| subject | lesions | combined AUROC | best threshold AUROC | Δ | combined AUPRC | best threshold AUPRC"
              " | Δ | target |", "|---|---|---|---|---|---|---|---|---|", *verdicts(rows)]
    report(lines, args.out, t0)


if __name__ == "__main__":
    main()

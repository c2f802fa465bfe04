"""``napari-medgen segment INPUT OUTPUT --model M``: one image, a DICOM folder, a folder of files or a glob.

A batch (folder or glob) can be split: under ``torchrun --nproc_per_node=N`` each rank segments
its share of the files, and ``--num-parts K --part-id I`` splits the files between independent
jobs (nnU-Net's convention); every file is segmented exactly once.  A batch skips outputs that
already exist (so an interrupted run resumes).  An OUTPUT folder always gets ``segment_summary.csv``,
even for one image.
"""
from __future__ import annotations

import csv
import glob
import re
import sys
import time
from pathlib import Path

from .options import (add_common, case_error, check_output, existing, model_identity,
                      skipped_label_files, warn_other_models)
from ..errors import UserError
from ..naming import LABEL_NAME, PICTURES, image_stem

SUMMARY_FIELDS = ("input", "output", "status", "seconds", "model", "rank", "message")


def add_parser(sub) -> None:
    p = sub.add_parser("segment", help="segment images with a U-Net; labels keep the input's geometry",
                       description="Segment one image (file or DICOM series folder), every image in a folder (NIfTI, NRRD, "
                                   "MetaImage, PNG/JPEG/TIFF, and DICOM series folders beside them), "
                                   "or a glob such as 'scans/*.nii.gz'. OUTPUT is a file for one image, "
                                   "else a folder that receives <name>_seg.nii.gz per image and "
                                   "segment_summary.csv. In a folder or "
                                   "glob, files whose names contain label, mask or seg are skipped.",
                       epilog="examples:\n  napari-medgen segment t1.nii.gz t1_seg.nii.gz\n"
                              "  napari-medgen segment 'scans/*.nii.gz' segs/ --model mine.medgen.pt --tta\n"
                              "  torchrun --nproc_per_node=4 -m napari_medgen.cli segment scans/ segs/\n"
                              "splitting a batch between processes or jobs: docs/cohorts.md")
    p.add_argument("input", type=existing, help="image file, DICOM folder, folder of images, or a quoted glob")
    p.add_argument("output", help="output file (one image) or folder")
    p.add_argument("--model", "-m", default="brain-tissue-2d",
                   help="built-in name, .medgen.pt file, MONAI bundle folder or TorchScript file "
                        "(default brain-tissue-2d)")
    p.add_argument("--axis", type=int, default=None,
                   help="slicing axis of 2D models (napari order); default: the model's own plane (a volume "
                        "stored in another orientation is reoriented to the model's, without resampling), else 0")
    p.add_argument("--tta", action="store_true", help="average over flipped copies (slower, smoother; default off)")
    p.add_argument("--allow-torchscript", action="store_true",
                   help="allow a TorchScript --model: it is code that runs on this computer; only for files you trust")
    p.add_argument("--num-parts", type=int, default=1,
                   help="split a batch into this many independent jobs (default 1: no split)")
    p.add_argument("--part-id", type=int, default=0,
                   help="which part this job segments, 0 .. num-parts - 1 (default 0)")
    add_common(p)
    p.set_defaults(func=run)


def find_cases(spec: str) -> tuple[list[Path], list[Path]]:
    """The inputs named by a file, a DICOM folder, a folder of image files, or a glob; and the
    label-like files (names with label/mask/seg) a folder or glob held, which are left out."""
    from ..io.read import EXTENSIONS, is_supported

    if any(c in spec for c in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(spec))]
        if not paths:
            raise FileNotFoundError(f"No files match {spec}.")
        return _without_labels(paths, spec)
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist.")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(EXTENSIONS + PICTURES)
                       and not f.name.lower().endswith(".dcm"))
        if files:  # and the DICOM folders beside them, one case each
            return _without_labels(files + sorted(d for d in p.iterdir() if d.is_dir() and is_supported(d)), spec)
        if is_supported(p):
            return [p], []
        raise FileNotFoundError(f"{p} holds no image files and no DICOM series.")
    return [p], []


def _without_labels(paths: list[Path], spec: str) -> tuple[list[Path], list[Path]]:
    labels = [p for p in paths if LABEL_NAME.search(p.name)]
    images = [p for p in paths if p not in labels]
    if not images:
        raise FileNotFoundError(f"{spec} holds only label files (names with label, mask or seg); "
                                "name an image file or a folder of images.")
    return images, labels


def check_output_name(out: Path, n_cases: int) -> None:
    """Refuse an OUTPUT that names a file of the wrong kind, before anything is created."""
    from ..io.write import WRITE_EXTENSIONS

    if out.is_dir():
        return
    is_image = out.name.lower().endswith(WRITE_EXTENSIONS)
    if n_cases == 1 and not is_image and re.search(r"\.[A-Za-z][A-Za-z0-9]{1,4}$", out.name):
        raise UserError(f"Cannot write the labels to {out.name}: name a {', '.join(WRITE_EXTENSIONS)} "
                        "file or a folder.")
    if n_cases > 1 and (is_image or out.is_file()):
        raise UserError(f"{out.name} names a file, but {n_cases} images give {n_cases} label files; "
                        "name a folder as OUTPUT.")


def case_names(cases: list[Path]) -> dict[Path, str]:
    """A distinct output name per input: its name without extension, with as many parent folder names in
    front as tell apart inputs of one name (``a/sub00``, ``b/sub00`` -> ``a_sub00``, ``b_sub00``), and its
    extension kept where only that differs (``sub00.nii``, ``sub00.nii.gz``)."""
    base = [image_stem(c.name) if c.is_file() else c.name for c in cases]
    names = list(base)
    parents = [[p for p in c.resolve().parent.parts if p != c.anchor] for c in cases]
    for depth in range(1, 1 + max((len(p) for p in parents), default=0)):
        clash = [i for i, n in enumerate(names) if names.count(n) > 1]
        for i in clash:
            names[i] = "_".join([*parents[i][-depth:], base[i]])
    for i in [i for i, n in enumerate(names) if names.count(n) > 1]:
        names[i] = cases[i].name.replace(".", "_")
    return dict(zip(cases, names))


def _output_path(out: Path, name: str, single: bool) -> Path:
    from ..io.write import WRITE_EXTENSIONS

    if single and str(out).lower().endswith(WRITE_EXTENSIONS):
        return out
    safe = re.sub(r"[^\w.-]+", "_", name).strip("_") or "image"
    return out / f"{safe}_seg.nii.gz"


def _segment_case(case: Path, case_name: str, out: Path, model, args, single: bool, label: str,
                  quiet: bool) -> list[dict]:
    """Segment one input (several images for a folder of DICOM series) into ``<case_name>[_<image>]_seg.nii.gz``;
    one summary row per output, naming the file each image came from."""
    from ..io import write_image
    from ..tasks.segment import segment
    from .case_items import case_items
    from .progress import terminal_job

    if not single and case.is_file():
        target = _output_path(out, case_name, False)
        if target.exists() and not args.overwrite:
            return [{"input": str(case), "output": str(target), "status": "exists"}]
    rows = []
    items = case_items(case)
    if single and len(items) > 1 and _output_path(out, "", True) == out:
        raise UserError(f"{case.name} holds {len(items)} series, which give {len(items)} label files; "
                        "name a folder as OUTPUT.")
    for item in items:
        t0 = time.monotonic()
        img = item.image
        target = _output_path(out, "_".join(filter(None, (case_name, item.name))), single and len(items) == 1)
        if not single and target.exists() and not args.overwrite:
            rows.append({"input": item.source, "output": str(target), "status": "exists"})
            continue
        check_output(target, args.overwrite)
        with terminal_job(label, quiet=quiet) as job:
            labels = segment(img, model, axis=args.axis, device=args.device, tta=args.tta, progress=job)
        write_image(target, labels, img.geometry, overwrite=args.overwrite)
        rows.append({"input": item.source, "output": str(target), "status": "written", "model": args.model_identity,
                     "seconds": f"{time.monotonic() - t0:.2f}"})
    return rows


def run(args) -> int:
    from .. import Cancelled
    from ..engine import distributed as dist
    from ..models.segmentation import load_segmentation_model

    out = Path(args.output)
    cases, label_files = find_cases(args.input)
    check_output_name(out, len(cases))
    single = len(cases) == 1  # one input: its error is the command's error
    to_file = single and _output_path(out, "", True) == out  # else OUTPUT is a folder and gets the summary
    model = load_segmentation_model(args.model, allow_code=args.allow_torchscript)
    args.model_identity = model_identity(model, args.model)
    with dist.session(args.device) as device:
        args.device = device
        if label_files:
            dist.say(skipped_label_files(label_files), file=sys.stderr)
        mine = dist.shard(cases, args.num_parts, args.part_id)
        quiet = args.quiet or not dist.is_main_process()
        rows, names = [], case_names(cases)
        for i, case in enumerate(mine, 1):
            try:
                rows += _segment_case(case, names[case], out, model, args, single, f"[{i}/{len(mine)}] {case.name}",
                                      quiet)
            except Cancelled:
                print("napari-medgen: stopped; outputs written so far are complete.", file=sys.stderr)
                return 130
            except dist.RankFailed:
                raise
            except Exception as err:  # noqa: BLE001 - one bad input must not end a batch
                if single:
                    raise
                why = case_error(err)
                rows.append({"input": str(case), "status": "failed", "message": why})
                print(f"napari-medgen: skipping {case.name}: {why}", file=sys.stderr)
        earlier = _earlier_models(out)
        for row in rows:
            row["rank"] = dist.rank()
            if row["status"] == "exists":  # made by whichever model the earlier summary names
                row["model"] = earlier.get(row["output"], "")
        if dist.is_main_process():
            warn_other_models((r["model"] for r in rows if r["status"] == "exists"), args.model_identity, "outputs")
        if dist.is_main_process() and args.part_id == 0:  # in the summary too (once), so a skipped scan is seen
            rows += [{"input": str(p), "status": "skipped", "message": "a label file, by its name (label, mask or seg)"}
                     for p in label_files]
        if to_file:
            for row in rows:
                if row.get("output"):
                    print(row["output"])
            return 0
        name = "segment_summary.csv" if args.num_parts == 1 else \
            f"segment_summary.part{args.part_id}of{args.num_parts}.csv"
        rows = dist.merge_summary(rows, out / name, SUMMARY_FIELDS)
        return _report(rows, out / name, dist.is_main_process())


def _earlier_models(out: Path) -> dict[str, str]:
    """``{output: model}`` from the summary an earlier run left in ``out`` (empty when there is none)."""
    found = {}
    for summary in sorted(out.glob("segment_summary*.csv")) if out.is_dir() else []:  # the whole run's and parts'
        try:
            with open(summary, newline="", encoding="utf-8") as fh:
                found.update({r["output"]: r.get("model") or "" for r in csv.DictReader(fh) if r.get("model")})
        except (OSError, csv.Error, KeyError):
            continue
    return found


def _report(rows: list[dict], summary: Path, main: bool) -> int:
    """Print the outputs and failures of the whole run (rank 0); exit status 1 if any input failed."""
    failed = [r for r in rows if r["status"] == "failed"]
    if main:
        for row in rows:
            if row["status"] == "written":
                print(row["output"])
        done = sum(r["status"] == "exists" for r in rows)
        if done:
            print(f"napari-medgen: {done} outputs already existed and were kept (use --overwrite to redo them).",
                  file=sys.stderr)
        if failed:
            n_inputs = len({r["input"] for r in rows if r["status"] != "skipped"})
            print(f"napari-medgen: {len(failed)} of {n_inputs} inputs failed:", file=sys.stderr)
            for row in failed:
                print(f"  {row['input']}: {row['message']}", file=sys.stderr)
        if summary.exists():
            print(f"napari-medgen: summary in {summary}", file=sys.stderr)
    return 1 if failed else 0

"""``napari-medgen classify-train FOLDER LABELS.csv -o M`` and ``napari-medgen classify INPUT... -o OUT.csv``.

``classify`` splits a batch like ``segment``: under ``torchrun --nproc_per_node=N`` each rank
classifies its share of the files, and ``--num-parts K --part-id I`` splits them between
independent jobs (each writes ``OUT.partIofK.csv``); every file is classified exactly once.
Files already listed in OUT, in its part files or in the progress files of an interrupted run
are kept unless ``--overwrite``, so a plain run after the parts merges them into OUT.
"""
from __future__ import annotations

import csv
import os
import re
import sys
import warnings
from pathlib import Path

from .options import (add_budget, add_common, add_table, add_window, case_error, check_model_output, check_output,
                      existing, model_identity, skipped_label_files, table_of, warn_other_models, window_of)
from ..errors import UserError


def add_parser(sub) -> None:
    t = sub.add_parser("classify-train", help="train an image classifier from a folder and a CSV of labels",
                       description="Train a classifier on the images listed in a CSV (columns file,label; files "
                                   "relative to FOLDER). Prints the validation metrics and writes the model.",
                       epilog="example:\n  napari-medgen classify-train scans/ labels.csv --out sorter.medgen.pt "
                              "--pretrained brain-tissue-2d\n"
                              "  (the same: napari-medgen classify-train scans/ --csv labels.csv -o sorter.medgen.pt)")
    t.add_argument("folder", type=existing, help="folder holding the images named in the CSV")
    add_table(t, "CSV with columns file,label (file relative to FOLDER, label a class name)")
    t.add_argument("--out", "--output", "-o", dest="output", required=True, metavar="MODEL",
                   help="model file to write (.medgen.pt is appended if missing)")
    t.add_argument("--pretrained", default=None,
                   help="start from a network: brain-tissue-2d, a segmentation or VAE .medgen.pt, a MONAI "
                        "bundle folder, a MONAI UNet state dict or a torchvision ResNet state dict (2D) "
                        "(default: random initial weights)")
    add_budget(t, steps=300)
    t.add_argument("--size", type=int, nargs="+", default=None,
                   help="network input size in pixels, e.g. 128 128 or 64 64 64 (default 128x128 in 2D, "
                        "64^3 in 3D)")
    t.add_argument("--spacing", type=float, default=None, metavar="MM",
                   help="grid spacing in mm, the same along every axis (default: the median image's field of "
                        "view fits --size); e.g. 1.2 with --size 160 160 for findings a few mm wide in a head")
    add_window(t, "by modality: CT -1000..1000 HU, MRI and others each image's percentiles")
    t.add_argument("--pooling", choices=["lse", "mean"], default="lse",
                   help="how per-pixel class evidence becomes the image's class: lse = where it is strongest "
                        "(findings, lesions), mean = over the whole image (scan type, sequence, body part) "
                        "(default lse)")
    t.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of each class held out for validation, 0 to 1 (default 0.2)")
    add_common(t)
    t.set_defaults(func=run_train)

    c = sub.add_parser("classify", help="classify images; writes a CSV of class probabilities",
                       description="Classify image files, DICOM folders or folders of images with a trained "
                                   "classifier; one CSV row per image (file, label, one column per class, the model). "
                                   "Files already listed in the --out CSV (or in its part files) are kept unless "
                                   "--overwrite, so an interrupted or split run resumes. In a folder or glob, files "
                                   "whose names contain label, mask or seg are skipped (and listed on stderr).",
                       epilog="example:\n  napari-medgen classify new_scans/ --model sorter.medgen.pt --out "
                              "probabilities.csv --heatmaps heatmaps/")
    c.add_argument("inputs", nargs="+", type=existing,
                   help="image files, DICOM folders, folders of images or quoted globs")
    c.add_argument("--model", "-m", required=True, type=existing,
                   help="classifier .medgen.pt file (from classify-train)")
    c.add_argument("--out", "--output", "-o", dest="output", required=True, metavar="CSV",
                   help="CSV file to write, e.g. probs.csv; with --num-parts K part I writes probs.partIofK.csv "
                        "instead, and a later run without --num-parts merges the parts into it")
    c.add_argument("--heatmaps", default=None, metavar="FOLDER",
                   help="also write each image's Grad-CAM heatmap as <name>_heatmap.nii.gz with the image's "
                        "geometry (default: no heatmaps)")
    c.add_argument("--num-parts", type=int, default=1,
                   help="split the inputs into this many independent jobs (default 1: no split)")
    c.add_argument("--part-id", type=int, default=0,
                   help="which part this job classifies, 0 .. num-parts - 1 (default 0)")
    add_common(c)
    c.set_defaults(func=run_classify)


def run_train(args) -> int:
    from ..models.checkpoint import SUFFIX
    from ..tasks.classify import train_classifier
    from ..tasks.classify_data import read_label_csv
    from .progress import terminal_job

    out = str(check_model_output(args.output, args.overwrite))
    files, labels = read_label_csv(table_of(args), args.folder)
    with terminal_job("classify-train", quiet=args.quiet) as job:
        model, history = train_classifier([str(f) for f in files], labels, pretrained=args.pretrained,
                                          steps=args.steps, seconds=args.seconds, seed=args.seed, size=args.size,
                                          spacing=args.spacing, pooling=args.pooling,
                                          normalization=window_of(args),
                                          val_fraction=args.val_fraction, device=args.device,
                                          name=Path(out).name[:-len(SUFFIX)], progress=job)
    model.save(out)
    m = history.get("metrics")
    if m:
        auc = ", ".join(f"{k} {v:.3f}" for k, v in m["auroc"].items())
        print(f"validation ({m['n']} images): accuracy {m['accuracy']:.3f}, balanced accuracy "
              f"{m['balanced_accuracy']:.3f}, AUROC {auc}; confusion matrix {m['confusion_matrix']}",
              file=sys.stderr)
    print(out)
    return 0


def run_classify(args) -> int:
    from .. import Cancelled
    from ..engine import distributed as dist
    from ..io.write import check_writable
    from ..tasks.classify import load_classifier
    from .segment import case_names, find_cases

    out = Path(args.output)
    model = load_classifier(args.model)
    args.model_identity = model_identity(model, args.model)
    header = ["file", "label", *(str(c) for c in model.params.classes), "model"]
    found = [find_cases(spec) for spec in args.inputs]
    cases, label_files = [c for images, _ in found for c in images], [p for _, labels in found for p in labels]
    args.case_names = case_names(cases)  # heatmap names that two inputs never share
    target = out if args.num_parts == 1 else out.with_name(f"{_stem(out)}.part{args.part_id}of{args.num_parts}.csv")
    check_writable(target, overwrite=True)  # a folder or a read-only place is refused before any work
    sources = [] if args.overwrite else _earlier_tables(out)
    kept = {}
    for path in sources:
        kept.update(_read_table(path, header))
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.heatmaps:
        if Path(args.heatmaps).exists() and not Path(args.heatmaps).is_dir():
            raise UserError(f"--heatmaps takes a folder; {args.heatmaps} is a file.")
        Path(args.heatmaps).mkdir(parents=True, exist_ok=True)
    with dist.session(args.device) as device:
        args.device = device
        if label_files:
            dist.say(skipped_label_files(label_files), file=sys.stderr)
        mine = dist.shard(cases, args.num_parts, args.part_id)
        quiet = args.quiet or not dist.is_main_process()
        log = out.with_name(f".{out.name}.part{args.part_id}of{args.num_parts}.rank{dist.rank()}.{os.getpid()}"
                            ".partial")
        try:
            rows, failed, n_kept = _classify_share(mine, len(cases), kept, model, args, quiet, log, header)
        except Cancelled:
            print("napari-medgen: stopped; rerun the same command to finish the rest.", file=sys.stderr)
            return 130
        if args.num_parts == 1 and dist.is_main_process():  # rows of files not named this time stay
            owned = {r["file"] for case in cases for r in _rows_of(case, kept)}
            rows += [r for f, r in kept.items() if f not in owned]
        dist.merge_summary(rows, target, header)
        failed = [f for part in dist.gather(failed) for f in part]  # after rank 0 wrote the table
        n_kept = sum(dist.gather(n_kept))
        log.unlink(missing_ok=True)
        if args.num_parts == 1 and dist.is_main_process():
            for path in sources:
                if path.name.endswith(".partial"):
                    path.unlink(missing_ok=True)
        if dist.is_main_process():
            print(target)
            if n_kept:
                print(f"napari-medgen: {n_kept} inputs were already classified in earlier runs and were kept "
                      "(use --overwrite to redo them).", file=sys.stderr)
            warn_other_models((r["model"] for case in cases for r in _rows_of(case, kept)), args.model_identity,
                              "rows")
            if failed:
                print(f"napari-medgen: {len(failed)} of {len(cases)} inputs failed.", file=sys.stderr)
    return 1 if failed else 0


def _classify_share(mine: list[Path], n_cases: int, kept: dict, model, args, quiet: bool, log: Path,
                    header: list[str]) -> tuple[list[dict], list[str], int]:
    """Classify this process's inputs (keeping earlier rows); each new row is appended to ``log`` at once,
    so an interrupted run resumes.  Returns (rows, failures, number of inputs kept)."""
    from ..engine.distributed import RankFailed
    from ..engine.jobs import Cancelled

    rows, failed, n_kept, n_new = [], [], 0, 0
    try:
        with open(log, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for i, case in enumerate(mine, 1):
                done = _rows_of(case, kept)
                if done:
                    rows += done
                    n_kept += 1
                    continue
                try:
                    new = _classify_case(case, model, args, f"[{i}/{len(mine)}] {case.name}", quiet)
                except (RankFailed, Cancelled):
                    raise
                except Exception as err:  # noqa: BLE001 - one bad input must not end a batch
                    if n_cases == 1:
                        raise
                    why = case_error(err)
                    failed.append(f"{case}: {why}")
                    print(f"napari-medgen: skipping {case.name}: {why}", file=sys.stderr)
                    continue
                writer.writerows([[r[k] for k in header] for r in new])
                fh.flush()
                rows, n_new = rows + new, n_new + len(new)
    finally:
        if not n_new:  # nothing to resume from
            log.unlink(missing_ok=True)
    return rows, failed, n_kept


def _classify_case(case: Path, model, args, label: str, quiet: bool) -> list[dict]:
    """One row per image of ``case`` (several for a folder of DICOM series), naming the file each came from; writes
    the heatmaps if asked and prints how an image differs from the classifier's training images."""
    from ..io import write_image
    from ..tasks.classify import classify
    from ..tasks.model_fit import ModelMismatchWarning
    from .case_items import case_items
    from .progress import terminal_job

    rows = []
    for item in case_items(case):
        img = item.image
        with terminal_job(label, quiet=quiet) as job, warnings.catch_warnings():
            warnings.simplefilter("ignore", ModelMismatchWarning)  # said below, with the file it is about
            r = classify(model, img, heatmap=bool(args.heatmaps), device=args.device, progress=job)
        for msg in r.warnings:
            print(f"napari-medgen: warning: {item.source}: {msg}", file=sys.stderr)
        rows.append({"file": item.source, "label": r.label,
                     **{str(k): f"{p:.6f}" for k, p in r.probabilities.items()}, "model": args.model_identity})
        if args.heatmaps:
            name = "_".join(filter(None, (args.case_names[case], item.name)))
            heatmap = Path(args.heatmaps) / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_')}_heatmap.nii.gz"
            check_output(heatmap, args.overwrite)
            write_image(heatmap, r.heatmap, img.geometry, overwrite=args.overwrite)
    return rows


def _stem(path: Path) -> str:
    return path.name[:-4] if path.name.lower().endswith(".csv") else path.name


def _earlier_tables(out: Path) -> list[Path]:
    """OUT, its part files and the progress files of interrupted runs: the rows already made."""
    part = re.compile(rf"{re.escape(_stem(out))}\.part\d+of\d+\.csv|\.{re.escape(out.name)}\.part.*\.partial")
    found = [out] if out.exists() else []
    return found + sorted(p for p in out.parent.glob("*") if part.fullmatch(p.name) and p.is_file())


def _read_table(path: Path, header: list[str]) -> dict[str, dict]:
    """Rows of an earlier table by file; a table with other columns is refused (it is not ours)."""
    if path.is_dir():
        raise UserError(f"Cannot write {path}: it is a folder; give a file name.")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        lines = list(csv.reader(fh))
    if lines and lines[0] not in (header, header[:-1]):  # a table written before rows named their model
        raise UserError(f"{path} already exists and is not a table of this classifier ({','.join(header)}); "
                        "use --overwrite to replace it or name another file.")
    return {line[0]: {"model": "", **dict(zip(lines[0], line))} for line in lines[1:] if len(line) == len(lines[0])}


def _rows_of(case: Path, kept: dict[str, dict]) -> list[dict]:
    """The earlier rows of one input (a file's row, or every series of a DICOM folder)."""
    key = str(case)
    if key in kept:
        return [kept[key]]
    return [r for f, r in kept.items() if f.startswith(key + "/")] if case.is_dir() else []


"""``napari-medgen classify-train FOLDER LABELS.csv -o M`` and ``napari-medgen classify INPUT... -o OUT.csv``."""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from .options import add_common, check_output


def add_parser(sub) -> None:
    t = sub.add_parser("classify-train", help="train an image classifier from a folder and a CSV of labels",
                       description="Train a classifier on the images listed in a CSV (columns file,label; files "
                                   "relative to FOLDER). Prints the validation metrics and writes the model.")
    t.add_argument("folder", help="folder holding the images")
    t.add_argument("labels", help="CSV with columns file,label")
    t.add_argument("--output", "-o", required=True, help="model file to write (.medgen.pt)")
    t.add_argument("--pretrained", default=None,
                   help="start from a network: brain-tissue-2d, a segmentation or VAE .medgen.pt, a MONAI "
                        "bundle folder or a MONAI UNet state dict")
    t.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    t.add_argument("--seconds", type=float, default=None, help="wall-time budget (whichever ends first)")
    t.add_argument("--size", type=int, nargs="+", default=None, help="network input size (default 128x128 "
                                                                       "or 64^3)")
    t.add_argument("--val-fraction", type=float, default=0.2, help="share of each class held out (default 0.2)")
    add_common(t)
    t.set_defaults(func=run_train)

    c = sub.add_parser("classify", help="classify images; writes a CSV of class probabilities",
                       description="Classify image files, DICOM folders or folders of images with a trained "
                                   "classifier; one CSV row per image (file, label, one column per class).")
    c.add_argument("inputs", nargs="+", help="image files, DICOM folders, folders of images or quoted globs")
    c.add_argument("--model", "-m", required=True, help="classifier .medgen.pt file")
    c.add_argument("--output", "-o", required=True, help="CSV file to write")
    c.add_argument("--heatmaps", default=None, metavar="FOLDER",
                   help="also write each image's Grad-CAM heatmap as <name>_heatmap.nii.gz (its geometry)")
    add_common(c)
    c.set_defaults(func=run_classify)


def run_train(args) -> int:
    from ..models.checkpoint import SUFFIX
    from ..tasks.classify import train_classifier
    from ..tasks.classify_data import read_label_csv
    from .progress import terminal_job

    out = args.output if args.output.endswith(SUFFIX) else args.output + SUFFIX
    check_output(out, args.overwrite)
    files, labels = read_label_csv(args.labels, args.folder)
    with terminal_job("classify-train", quiet=args.quiet) as job:
        model, history = train_classifier([str(f) for f in files], labels, pretrained=args.pretrained,
                                          steps=args.steps, seconds=args.seconds, size=args.size,
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
    from ..io import read_path, write_image
    from ..tasks.classify import classify, load_classifier
    from . import USER_ERRORS
    from .progress import terminal_job
    from .segment import find_cases

    model = load_classifier(args.model)
    classes = [str(c) for c in model.params.classes]
    check_output(args.output, args.overwrite)
    cases = [c for spec in args.inputs for c in find_cases(spec)[0]]
    if args.heatmaps:
        Path(args.heatmaps).mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    for i, case in enumerate(cases, 1):
        try:
            for img in read_path(case):
                with terminal_job(f"[{i}/{len(cases)}] {case.name}", quiet=args.quiet) as job:
                    r = classify(model, img, heatmap=bool(args.heatmaps), device=args.device, progress=job)
                rows.append([str(case) if case.is_file() else f"{case}/{img.name}", r.label,
                             *(f"{p:.6f}" for p in r.probabilities.values())])
                if args.heatmaps:
                    target = Path(args.heatmaps) / f"{img.name}_heatmap.nii.gz"
                    check_output(target, args.overwrite)
                    write_image(target, r.heatmap, img.geometry, overwrite=args.overwrite)
        except USER_ERRORS as err:
            if len(cases) == 1:
                raise
            failed.append(f"{case}: {err}")
            print(f"napari-medgen: skipping {case.name}: {err}", file=sys.stderr)
    _write_csv(Path(args.output), ["file", "label", *classes], rows)
    print(args.output)
    if failed:
        print(f"napari-medgen: {len(failed)} of {len(cases)} inputs failed.", file=sys.stderr)
        return 1
    return 0


def _write_csv(path: Path, header: list, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    os.replace(tmp, path)

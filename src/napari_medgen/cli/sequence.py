"""``napari-medgen sequence-*``: train a CNN + LSTM on image time series listed in a CSV, and predict.

The CSV (read by :mod:`napari_medgen.tasks.sequence_targets`, as the Time series panel reads it) has a
header with ``file`` (or ``sequence`` or ``layer``: a 4D image, a cine DICOM or a folder of frames,
relative to the folder; a name without its image extension is the image file of that name) and
``target`` (class name or number); an optional ``region`` column names a mask file that restricts
the model to a lesion.
"""
from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

from .options import (add_budget, add_common, add_table, case_error, check_model_output, check_output, existing,
                      table_of)
from .progress import terminal_job
from ..errors import UserError

SECONDS_PER = {"s": 1.0, "ms": 1e-3, "min": 60.0}  # time units a series may store, in seconds


def add_parser(sub) -> None:
    p = sub.add_parser("sequence-train", help="train a CNN + LSTM on time series listed in a CSV",
                       description="Train a per-frame CNN followed by an LSTM on the time series listed in a CSV "
                                   "(columns file (or sequence or layer), target and optionally region, paths "
                                   "relative to FOLDER), for classification or regression; prints the best "
                                   "validation score.",
                       epilog="examples:\n  napari-medgen sequence-train loops/ targets.csv --out cine.medgen.pt\n"
                              "  napari-medgen sequence-train loops/ --csv ef.csv --task regression --readout "
                              "fraction --out ef.medgen.pt")
    p.add_argument("folder", type=existing, help="folder holding the sequences (and region masks) named in the CSV")
    add_table(p, "CSV with a header: file (or sequence or layer), target (or label, value or class) and "
                 "optionally region (paths relative to FOLDER)")
    p.add_argument("--task", choices=["classification", "regression"], default="classification",
                   help="classification: targets are class names; regression: targets are numbers "
                        "(default classification)")
    p.add_argument("--out", required=True, help="model file to write (.medgen.pt)")
    add_budget(p, steps=300)
    p.add_argument("--size", type=int, nargs="+",
                   help="frame size in pixels for the network, e.g. 64 64 (default 64x64, or 32^3 for 3D frames)")
    p.add_argument("--bidirectional", action="store_true",
                   help="LSTM reads the frames in both directions (default: forward only)")
    p.add_argument("--readout", choices=["final", "fraction"], default="final",
                   help="regression answer: 'final' reads the LSTM's last state; 'fraction' is (max - min) / max "
                        "of a learned per-frame volume, for targets between 0 and 1 such as an ejection fraction "
                        "(default final)")
    p.add_argument("--pretrained",
                   help="a .medgen.pt model whose encoder weights start the frame encoder (default: random weights)")
    add_common(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("sequence-predict", help="class or value of time series, with a per-frame curve",
                       description="Print the class (with its probability) or the value of each time series; "
                                   "--curves also writes the model's per-frame curve and the mean signal.",
                       epilog="example:\n  napari-medgen sequence-predict loop.nii.gz --model cine.medgen.pt "
                              "--region lesion.nii.gz --curves curves.csv")
    p.add_argument("inputs", nargs="+", type=existing,
                   help="4D images, cine DICOMs, folders of frames or 3D (t, y, x) images")
    p.add_argument("--model", required=True, type=existing,
                   help="sequence model .medgen.pt file (from sequence-train)")
    p.add_argument("--region", type=existing,
                   help="mask image restricting the model and the signal, the same for every input "
                        "(default: whole frame)")
    p.add_argument("--curves",
                   help="CSV file to write with the per-frame curve and mean signal of each input: columns file, "
                        "frame, time_s (seconds from the first frame; empty for a series that stores no time "
                        "step), the curve, signal (default: none)")
    add_common(p)
    p.set_defaults(func=run_predict)


def read_sequence(path) -> tuple:
    """(array with time first, time step) of a time-series file or folder; a 3D image counts as (t, y, x)."""
    from ..io import read_path
    from ..io.timeseries import is_time_series, time_step

    item = read_path(path)[0]
    if not is_time_series(item.metadata):
        if item.data.ndim != 3:
            raise UserError(f"{path} is not a time series (shape {item.data.shape}); give a 4D image, a cine "
                            "DICOM, a folder of frames or a 3D (t, y, x) image.")
        warnings.warn(f"{Path(path).name} holds no time axis; its first axis ({len(item.data)} slices "
                      f"{item.geometry.spacing[0]:.3g} mm apart) is read as {len(item.data)} frames.", stacklevel=2)
    return item.data, time_step(item.metadata)


def run_train(args) -> int:
    from ..io import read_image
    from ..tasks.sequence import train_sequence_model
    from ..tasks.sequence_targets import in_folder, read_targets

    args.out = str(check_model_output(args.out, args.overwrite))
    table = Path(table_of(args))
    rows = in_folder(read_targets(table, numbers=args.task == "regression"), args.folder, table.name)
    seqs = [read_sequence(file)[0] for file, _, _ in rows]
    regions = [read_image(region).data if region else None for _, _, region in rows]
    targets = [target for _, target, _ in rows]
    with terminal_job("sequence-train", args.quiet) as job:
        model, hist = train_sequence_model(seqs, targets, args.task, regions=regions, size=args.size,
                                           names=[file.name for file, _, _ in rows],
                                           steps=args.steps, seconds=args.seconds, seed=args.seed,
                                           bidirectional=args.bidirectional,
                                           readout=args.readout,
                                           pretrained=args.pretrained, device=args.device,
                                           name=Path(args.out).name.split(".")[0], progress=job)
    model.save(args.out)
    metric = "accuracy" if args.task == "classification" else "MAE"
    note = " (stopped early; best weights so far)" if hist["stopped"] else ""
    where = (" (on the training set: too few series per class to hold any out)"
             if model.params.metrics.get("validation is training set") else "")
    print(f"saved {args.out}{note}; best validation {metric} {hist['best_metric']:.4g}{where}")
    return 0


def run_predict(args) -> int:
    from ..io import read_image
    from ..engine.jobs import Cancelled
    from ..tasks.sequence import load_sequence_model, predict_sequence

    if args.curves:
        check_output(args.curves, args.overwrite)
    model = load_sequence_model(args.model)
    region = read_image(args.region).data if args.region else None
    results, lines, failed = [], [], []
    with terminal_job("sequence-predict", args.quiet) as job:
        for path in args.inputs:
            try:
                data, (step, unit) = read_sequence(path)
                results.append((path, step, unit, predict_sequence(model, data, region, device=args.device,
                                                                   progress=job)))
            except Cancelled:
                raise
            except Exception as err:  # noqa: BLE001 - one bad input must not end a batch
                if len(args.inputs) == 1:
                    raise
                failed.append(path)
                print(f"napari-medgen: skipping {path}: {case_error(err)}", file=sys.stderr)
    for path, step, unit, res in results:
        answer = (f"{res.label} ({res.probabilities[res.label]:.0%})" if res.label is not None
                  else f"{res.value:.4g}")
        print(f"{path}: {answer}")
        for msg in res.warnings:
            print(f"warning: {path}: {msg}")
        seconds = SECONDS_PER.get(unit)  # None: frames without a time step
        lines += [[str(path), k, "" if seconds is None else f"{k * step * seconds:g}", f"{c:.6g}", f"{s:.6g}"]
                  for k, (c, s) in enumerate(zip(res.curve, res.signal))]
    if args.curves and results:
        Path(args.curves).parent.mkdir(parents=True, exist_ok=True)
        with open(args.curves, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "frame", "time_s", results[0][3].curve_name, "signal"])
            w.writerows(lines)
        print(f"saved {args.curves}")
    if failed:
        print(f"napari-medgen: {len(failed)} of {len(args.inputs)} inputs failed.", file=sys.stderr)
    return 1 if failed else 0

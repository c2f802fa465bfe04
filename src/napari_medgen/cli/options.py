"""Options and output checks shared by the model verbs."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def existing(text: str) -> str:
    """argparse ``type`` of an input path: a missing file is said at once, before torch is imported
    (a glob such as 'scans/*.nii.gz' is left to the verb)."""
    if any(c in text for c in "*?[") or os.path.exists(text):
        return text
    raise argparse.ArgumentTypeError(f"{text} does not exist")


def int_list(text: str) -> list[int]:
    """A comma-separated list of whole numbers (``--channels 16,32``); anything else is one clear sentence."""
    from ..errors import UserError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"'{text}' is not a comma-separated list of whole numbers.") from None


def add_table(p, what: str) -> None:
    """The CSV of a training verb, after FOLDER or as ``--csv``: both spellings work."""
    p.add_argument("table", nargs="?", type=existing, metavar="CSV",
                   help=f"{what}; right after FOLDER, or give it as --csv")
    p.add_argument("--csv", type=existing, help="the same CSV as an option, instead of after FOLDER")


def table_of(args) -> str:
    """The CSV named by :func:`add_table`'s arguments; one clear sentence when it is missing or given twice."""
    from ..errors import UserError

    if args.table and args.csv and Path(args.table).resolve() != Path(args.csv).resolve():
        raise UserError(f"Two CSVs given ({args.table} and --csv {args.csv}); give one.")
    if not (args.table or args.csv):
        raise UserError("Name the CSV: FOLDER CSV, or FOLDER --csv CSV.")
    return args.table or args.csv


def add_common(p, device: bool = True) -> None:
    """``--device`` (unless the verb computes nothing on one), ``--overwrite`` and ``--quiet`` for a verb's parser."""
    if device:
        p.add_argument("--device", default="auto",
                       help="compute device: auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar on stderr")


def add_budget(p, *, seconds: "float | None" = None, steps: "int | None" = None, neither: str = "",
               whole_call: bool = False) -> None:
    """``--seconds``, ``--steps`` and ``--seed``: the training budget every trainer takes (whichever ends first);
    ``neither`` says what a run without either does, when that is not "no limit"; ``whole_call``: the trainer
    spends its seconds on preparing the images too (finetune, vae-train).  A default in seconds
    applies only when ``--steps`` is not given (:func:`budget_defaults`): ``--steps`` alone is a budget in steps,
    which a seeded run repeats exactly."""
    shown = f"{seconds:g}, or none when --steps is given" if seconds is not None else neither or "no time limit"
    counted = ("preparing the images counts, reading and writing files and predicting afterwards do not"
               if whole_call else
               "the clock starts when training does: reading and preparing the images do not count")
    p.add_argument("--seconds", type=float, default=None,
                   help=f"training budget in seconds of wall time ({counted}); training stops at whichever of "
                        f"--seconds/--steps ends first (default: {shown})")
    p.add_argument("--steps", type=int, default=steps,
                   help="training budget in optimizer steps; with --steps alone (no --seconds) the run is "
                        "reproducible: the same seed gives the same model on the same CPU machine "
                        f"(default: {steps if steps is not None else neither or 'no step limit'})")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the initial weights, the sampling and the augmentation (default 0)")
    p.set_defaults(default_seconds=seconds)


def budget_defaults(args) -> None:
    """The default ``--seconds`` of a verb when neither ``--seconds`` nor ``--steps`` was given."""
    if getattr(args, "default_seconds", None) is not None and args.seconds is None and args.steps is None:
        args.seconds = args.default_seconds


def add_window(p, default: str) -> None:
    """``--window LOW HIGH``: a fixed intensity window instead of the modality's default."""
    p.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="fixed intensity window in the image's units, e.g. -20 120 (HU) for brain findings on CT "
                        f"(default: {default})")


def window_of(args) -> "dict | None":
    """The normalization spec ``--window`` asks for, or None (the modality's default)."""
    from ..data.normalize import window_spec

    return None if args.window is None else window_spec(*args.window)


def check_output(path: "str | os.PathLike", overwrite: bool) -> None:
    """Before any computation: refuse to replace an existing file unless ``--overwrite`` was given,
    and refuse an output that cannot be written (a read-only folder, a file in the way)."""
    from ..io.write import check_writable

    p = Path(path)
    if p.is_dir():  # an output folder
        check_writable(p / ".napari-medgen-check", overwrite=True)
        return
    if p.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; use --overwrite to replace it.")
    check_writable(p, overwrite=True)


def check_image_output(path: "str | os.PathLike", overwrite: bool) -> None:
    """:func:`check_output` for an image file: a format that cannot be written (``pred.png``) or a folder is
    refused too, before any computation, so a long run never ends in "Cannot write"."""
    from ..errors import UserError
    from ..io.write import WRITE_EXTENSIONS, check_writable

    p = Path(path)
    if not p.name.lower().endswith(WRITE_EXTENSIONS) or p.is_dir():
        raise UserError(f"Cannot write {p.name or p}: name a {', '.join(WRITE_EXTENSIONS)} file.")
    if p.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; use --overwrite to replace it.")
    check_writable(p, overwrite=True)


def check_model_output(path: "str | os.PathLike", overwrite: bool) -> Path:
    """:func:`check_output` for a model file; ``.medgen.pt`` is appended to a name without it (as the
    panels' Save model does), so every trainer writes a file the loaders recognise."""
    from ..errors import UserError
    from ..models.checkpoint import SUFFIX

    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p} is a folder; give the model file's name (e.g. {p / ('model' + SUFFIX)}).")
    if not p.name.endswith(SUFFIX):
        p = p.with_name((p.name[:-3] if p.name.endswith(".pt") else p.name) + SUFFIX)
    check_output(p, overwrite)
    return p


def model_identity(model, given) -> str:
    """Which model made a result, for the tables a batch writes: the name given and, when its file says, when it
    was saved and a digest of its weights (a retrained model of the same file name is another model)."""
    name = Path(str(given)).name
    saved = getattr(model, "saved", None) or {}
    return f"{name} (saved {saved['at']}, weights {saved['weights']})" if saved.get("weights") else name


def case_error(err: Exception) -> str:
    """What a batch says of an input it skips: the user's sentence, or an unexpected error's type and message (a bug,
    reported for that input so the rest of the batch goes on)."""
    from . import USER_ERRORS

    return str(err) if isinstance(err, USER_ERRORS) else f"unexpected error ({type(err).__name__}: {err})"


def skipped_label_files(files) -> str:
    """The line that says which files of a folder or glob a batch verb left out as label files, by their names."""
    names = ", ".join(p.name for p in files[:5]) + (" ..." if len(files) > 5 else "")
    return f"napari-medgen: skipping {len(files)} label files (names with label, mask or seg): {names}"


def warn_other_models(made_by, identity: str, what: str) -> None:
    """One warning when some of ``what`` a re-run keeps were made, as ``made_by`` (model identities) says, by a
    model other than ``identity`` (unknown makers, "", are not counted)."""
    import sys

    others = sorted(set(made_by) - {"", identity})
    if others:
        print(f"napari-medgen: warning: kept {what} were made by another model ({', '.join(others)}); use "
              "--overwrite to redo them with this one.", file=sys.stderr)

"""``napari-medgen segment INPUT OUTPUT --model M``: one image, a DICOM folder, a folder of files or a glob."""
from __future__ import annotations

import glob
import re
import sys
from pathlib import Path

from .options import add_common, check_output


def add_parser(sub) -> None:
    p = sub.add_parser("segment", help="segment images with a U-Net; labels keep the input's geometry",
                       description="Segment one image (file or DICOM series folder), every image in a folder, "
                                   "or a glob such as 'scans/*.nii.gz'. OUTPUT is a file for one image, "
                                   "else a folder that receives <name>_seg.nii.gz per image.")
    p.add_argument("input", help="image file, DICOM folder, folder of images, or a quoted glob")
    p.add_argument("output", help="output file (one image) or folder")
    p.add_argument("--model", "-m", default="brain-tissue-2d",
                   help="built-in name, .medgen.pt file, MONAI bundle folder or TorchScript file")
    p.add_argument("--axis", type=int, default=0, help="slicing axis of 2D models (napari order; default 0)")
    p.add_argument("--tta", action="store_true", help="average over flipped copies (slower, smoother)")
    add_common(p)
    p.set_defaults(func=run)


def find_cases(spec: str) -> list[Path]:
    """The inputs named by a file, a DICOM folder, a folder of image files, or a glob."""
    from ..io.read import EXTENSIONS, is_supported

    if any(c in spec for c in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(spec))]
        if not paths:
            raise FileNotFoundError(f"No files match {spec}.")
        return paths
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist.")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(EXTENSIONS)
                       and not f.name.lower().endswith(".dcm"))
        if files:
            return files
        if is_supported(p):
            return [p]
        raise FileNotFoundError(f"{p} holds no image files and no DICOM series.")
    return [p]


def _output_path(out: Path, name: str, single: bool) -> Path:
    from ..io.write import WRITE_EXTENSIONS

    if single and str(out).lower().endswith(WRITE_EXTENSIONS):
        return out
    safe = re.sub(r"[^\w.-]+", "_", name).strip("_") or "image"
    return out / f"{safe}_seg.nii.gz"


def run(args) -> int:
    from .. import Cancelled
    from ..io import read_path, write_image
    from ..models.segmentation import load_segmentation_model
    from ..tasks.segment import segment
    from . import USER_ERRORS
    from .progress import terminal_job

    model = load_segmentation_model(args.model)
    cases = find_cases(args.input)
    out = Path(args.output)
    single = len(cases) == 1
    failed, written = [], []
    for i, case in enumerate(cases, 1):
        try:
            images = read_path(case)
            for img in images:
                name = img.name if case.is_file() else case.name + (f"_{img.name}" if len(images) > 1 else "")
                target = _output_path(out, name, single and len(images) == 1)
                check_output(target, args.overwrite)
                with terminal_job(f"[{i}/{len(cases)}] {case.name}", quiet=args.quiet) as job:
                    labels = segment(img, model, axis=args.axis, device=args.device, tta=args.tta, progress=job)
                written.append(write_image(target, labels, img.geometry, overwrite=args.overwrite))
        except Cancelled:
            print("napari-medgen: stopped; outputs written so far are complete.", file=sys.stderr)
            return 130
        except USER_ERRORS as err:
            if single:
                raise
            failed.append(f"{case}: {err}")
            print(f"napari-medgen: skipping {case.name}: {err}", file=sys.stderr)
    for path in written:
        print(path)
    if failed:
        print(f"napari-medgen: {len(failed)} of {len(cases)} inputs failed:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


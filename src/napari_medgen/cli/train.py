"""``napari-medgen train IMAGE LABELS --out MODEL``: fine-tune a segmenter on painted slices."""
from __future__ import annotations

import json
from pathlib import Path

from .options import add_budget, add_common, check_image_output, check_model_output, existing, int_list
from ..errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a 2.5D segmenter on the painted slices of a labels file (any axis)",
                       description="Fine-tune a 2.5D U-Net on the slices painted in LABELS (along any axis; "
                                   "unpainted slices are unknown, never background) and write the model; "
                                   "--predict also writes the painting completed by the model. --seconds "
                                   "bounds preparing the painting and training together, but training gets at "
                                   "least half of it, so a large volume can take longer (preparing a "
                                   "490x490x324 CT takes 10-25 s on two CPU cores); starting, reading, "
                                   "completing and writing come on top.",
                       epilog="example:\n  napari-medgen train t1.nii.gz painted.nii.gz --out mine.medgen.pt "
                              "--seconds 60 --predict completed.nii.gz\n"
                              "  napari-medgen segment t2.nii.gz t2_seg.nii.gz --model mine.medgen.pt")
    p.add_argument("image", type=existing, help="image file or DICOM folder")
    p.add_argument("labels", type=existing, help="labels file on the image's grid (unpainted slices are unknown)")
    p.add_argument("--out", required=True, help="model file to write (.medgen.pt)")
    p.add_argument("--from", dest="start", default="fresh",
                   help="start from: 'fresh' (a new U-Net; the default), a built-in name or a model file")
    p.add_argument("--axis", type=int, default=None,
                   help="training slice axis in (z, y, x) order (default: the axis with the most painted slices)")
    p.add_argument("--slices", default="auto",
                   help="'auto' (slices painted along any axis) or indices along --axis, e.g. 20,40,60")
    p.add_argument("--sparse", action="store_true",
                   help="scribbles: 0 is unknown, not background (default: dense, each painted slice complete)")
    p.add_argument("--background-label", type=int, default=None,
                   help="with --sparse: the label value painted on background (default: none painted)")
    add_budget(p, seconds=60.0, whole_call=True)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default by start model)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 on a CPU, 32 on a GPU")
    p.add_argument("--classes", default=None, metavar="NAMES",
                   help="names of the painted label values 1, 2, ... separated by commas, e.g. 'bone,soft tissue' "
                        "(default: the start model's, or 'class N')")
    p.add_argument("--predict", default=None,
                   help="also write the painting completed by the model (painted slices kept) to this file; this "
                        "comes after the training budget (15-30 s more for a 490x490x324 CT on two CPU cores)")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from ..data.orientation import turn, turn_back, turned, world_order
    from ..io import read_path, write_image
    from ..tasks.finetune import complete_labels, finetune
    from .progress import terminal_job

    out = check_model_output(args.out, args.overwrite)
    if args.predict:
        check_image_output(args.predict, args.overwrite)
    image = read_path(args.image)[0]
    labels = read_path(args.labels)[0]
    if labels.data.shape != image.data.shape or not labels.geometry.same_grid(image.geometry):
        raise UserError(f"{Path(args.labels).name} is not on the voxel grid of {Path(args.image).name} "
                         "(different shape, spacing, origin or direction).")
    slices = "auto" if args.slices == "auto" else int_list(args.slices)
    geometry, painted = image.geometry, labels.data
    how = world_order(geometry.direction) if args.axis is None and slices == "auto" and image.data.ndim == 3 else None
    if how is not None:  # a sagittal-first file is trained on as napari shows it: axial slices first
        image, painted = turned(image, how), np.ascontiguousarray(turn(painted, how))
    with terminal_job("train", quiet=args.quiet) as job:
        model, history = finetune(args.start, image, painted, axis=args.axis, slices=slices,
                                  sparse=args.sparse, background_label=args.background_label,
                                  seconds=args.seconds, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                                  device=args.device, seed=args.seed, keep_prior=bool(args.predict), progress=job,
                                  class_names=None if args.classes is None else args.classes.split(","))
    model.save(out)
    summary = {k: history.get(k) for k in ("planes", "axis", "slices", "best_metric", "returned", "stop_reason",
                                            "seconds")}
    if how is not None:
        summary["axes"] = f"the file's axes {list(how[0])} as (z, y, x)"  # what planes/axis/slices refer to
    print(f"wrote {out}: {json.dumps(summary)}")
    if args.predict:
        with terminal_job("predict", quiet=args.quiet) as job:
            pred = complete_labels(model, image, painted, sparse=args.sparse,
                                   background_label=args.background_label, device=args.device, progress=job)
        write_image(args.predict, pred if how is None else turn_back(pred, how), geometry, overwrite=args.overwrite)
        print(f"wrote {args.predict}")
    return 0

"""``napari-medgen train-cohort DATASET_DIR --out MODEL.medgen.pt``: train a segmenter on a labelled cohort.

Runs in one process, or under ``torchrun --nproc_per_node=N`` with DistributedDataParallel
(each rank reads its share of the cases; only rank 0 writes the model and prints).
"""
from __future__ import annotations

import json

from .options import add_budget, add_common, check_model_output, existing, int_list


def add_parser(sub) -> None:
    p = sub.add_parser("train-cohort", help="train a 2D/3D U-Net on a Decathlon / nnU-Net dataset folder",
                       description="Train a segmenter on DATASET_DIR (imagesTr/ + labelsTr/ with matching "
                                   "names, or a dataset.json datalist) of 3D volumes or of 2D images (grey PNG, "
                                   "2D NIfTI, single DICOM files; masks of 0 and 255 train as class 1). Under "
                                   "torchrun it trains with "
                                   "DistributedDataParallel; only rank 0 writes the model.",
                       epilog="example:\n  napari-medgen train-cohort Dataset001_Brain/ --out brain.medgen.pt "
                              "--dims 2 --seconds 600\n"
                              "several processes (GPUs, or CPU cores with gloo):\n  torchrun --standalone "
                              "--nproc_per_node=N -m napari_medgen.cli train-cohort DATASET --out M.medgen.pt\n"
                              "clusters: docs/cohorts.md")
    p.add_argument("dataset", type=existing, help="dataset folder (Medical Segmentation Decathlon / nnU-Net layout)")
    p.add_argument("--out", required=True, help="model file to write (.medgen.pt)")
    add_budget(p, neither="1000 steps when neither --seconds nor --steps is given")
    p.add_argument("--dims", type=int, choices=(2, 3), default=2,
                   help="2 for a 2D U-Net (slice by slice; the one choice for 2D images) or 3 for a 3D U-Net "
                        "(default 2)")
    p.add_argument("--axis", type=int, default=0, help="2D: slice axis in (z, y, x) order (default 0)")
    p.add_argument("--channels", default="16,32,64,128",
                   help="U-Net feature channels per level, comma separated (default 16,32,64,128)")
    p.add_argument("--patch-size", default=None,
                   help="training patch in voxels, e.g. 128,128 (default: chosen from the data)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="patches per step and process (default 8 in 2D, 2 in 3D)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the schedule (default 0.003)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of cases held out for validation, 0 to 1 (default 0.2)")
    p.add_argument("--no-augment", action="store_true",
                   help="train without augmentation (default: random flips, rotations, scaling and "
                        "intensity changes)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint an interrupted run left next to --out (default: start afresh)")
    p.add_argument("--checkpoint-every", type=float, default=300.0,
                   help="least seconds between checkpoints, each written at the next validation (validations "
                        "come every tenth of --steps and, with --seconds, at least every max(15 s, a tenth of "
                        "--seconds)) (default 300)")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..engine import distributed as dist
    from ..tasks.cohort import checkpoint_path, train_cohort
    from .progress import terminal_job

    out = check_model_output(args.out, args.overwrite)
    ckpt = checkpoint_path(out)
    if ckpt.exists() and not args.resume and not args.overwrite:
        raise FileExistsError(f"{ckpt} is left from an earlier run; use --resume to continue it or "
                              "--overwrite to start afresh.")
    with dist.session(args.device) as device:
        quiet = args.quiet or not dist.is_main_process()
        with terminal_job("train-cohort", quiet=quiet) as job:
            model, history = train_cohort(
                args.dataset, spatial_dims=args.dims, steps=args.steps, seconds=args.seconds, axis=args.axis,
                val_fraction=args.val_fraction, channels=tuple(int_list(args.channels)),
                patch_size=int_list(args.patch_size) if args.patch_size else None, batch_size=args.batch_size,
                lr=args.lr, augment=not args.no_augment, checkpoint=ckpt, resume=args.resume,
                checkpoint_seconds=args.checkpoint_every, device=device, seed=args.seed, progress=job)
        if dist.is_main_process():
            model.save(out)
            ckpt.unlink(missing_ok=True)
            rec = model.config.training
            summary = {k: rec.get(k) for k in ("world_size", "steps", "samples_seen", "val_dice", "seconds")}
            print(f"wrote {out}: {json.dumps(summary)}")
        dist.gather(None)  # the other ranks leave once the model is written
    return 0

"""``napari-medgen gan-*``: train a GAN (or a mask-to-image GAN), synthesize, and report quality."""
from __future__ import annotations

import json
from pathlib import Path

from .options import add_budget, add_common, check_image_output, check_model_output, check_output, existing
from .progress import terminal_job
from ..errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("gan-train", help="train a 2D GAN on the slices of images (with --labels: mask-to-image)",
                       description="Train a GAN on the slices of IMAGES at their own resolution and write it; with "
                                   "--labels, a mask-to-image (SPADE) GAN that turns a label map into an image.",
                       epilog="examples:\n  napari-medgen gan-train t1.nii.gz --out gan.medgen.pt --seconds 600\n"
                              "  napari-medgen gan-train t1.nii.gz --labels tissue.nii.gz --out spade.medgen.pt")
    p.add_argument("images", nargs="+", type=existing, help="image files (same pixel spacing)")
    p.add_argument("--labels", nargs="*", type=existing, default=None,
                   help="label map per image, same order: train mask-to-image synthesis (default: none, an "
                        "unconditional GAN)")
    p.add_argument("--out", required=True, help="model file to write (.medgen.pt)")
    add_budget(p, seconds=600.0)
    p.add_argument("--downsample", type=int, default=1, help="train on slices reduced by this factor (default 1: "
                                                             "native resolution)")
    p.add_argument("--architecture", choices=("cascade", "single-scale"), default="cascade",
                   help="cascade (default): a GAN on 4x reduced slices + a full-resolution refiner; single-scale: one "
                        "GAN at full resolution")
    p.add_argument("--axis", type=int, default=0,
                   help="slice axis as the first image is stored, in napari (z, y, x) order: 0 is its first "
                        "stored axis, axial only when the file stores axial slices (nothing is reoriented); "
                        "the other images are cut like the first")
    add_common(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("gan-synthesize", help="N new slices from a seed, a seed-to-seed walk, or images "
                                              "from a label map",
                       description="Write N new slices from a GAN (the same seed gives the same images), a walk "
                                   "of N steps from --seed to --to-seed, or, for a mask-to-image model, one image "
                                   "per slice of a label map (on the label map's grid).",
                       epilog="examples:\n  napari-medgen gan-synthesize --model gan.medgen.pt -n 16 --out "
                              "samples.nii.gz\n"
                              "  napari-medgen gan-synthesize --model gan.medgen.pt -n 8 --seed 1 --to-seed 2 "
                              "--out walk.nii.gz\n"
                              "  napari-medgen gan-synthesize --model spade.medgen.pt --labels tissue.nii.gz "
                              "--out fake_t1.nii.gz")
    p.add_argument("--model", required=True, help="GAN model file (.medgen.pt) from gan-train")
    p.add_argument("-n", type=int, default=16, help="number of samples (or interpolation steps)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same images (default 0)")
    p.add_argument("--to-seed", type=int, help="interpolate from --seed to this seed instead (default: sample)")
    p.add_argument("--labels", type=existing,
                   help="label map file (mask-to-image model): one image per slice along the axis the model "
                        "was trained on; -n is then unused")
    p.add_argument("--out", required=True, help="image stack file, e.g. samples.nii.gz")
    add_common(p)
    p.set_defaults(func=run_synthesize)

    p = sub.add_parser("gan-report", help="quality report (MMD, MS-SSIM, FD-medgen, memorisation) of samples "
                                          "against the real slices of an image",
                       epilog="example:\n  napari-medgen gan-report samples.nii.gz --model gan.medgen.pt --real "
                              "t1.nii.gz --json report.json")
    p.add_argument("samples", type=existing, help="sample stack file (from gan-synthesize)")
    p.add_argument("--model", required=True, type=existing,
                   help="the GAN that made the samples (grid and intensity units)")
    p.add_argument("--real", required=True, type=existing,
                   help="real image whose slices are the reference and training set")
    p.add_argument("--json", help="also write the full report (all similarities) as JSON (default: none)")
    add_common(p, device=False)  # the report's measures run on the CPU
    p.set_defaults(func=run_report)


def _load(path):
    from ..models.checkpoint import Model, ModelFileError
    from ..models.config import Task

    model = Model.load(path)
    if model.task not in (Task.GAN, Task.CONDITIONAL_GAN):
        raise ModelFileError(f"{Path(path).name} is a {model.task} model, not a GAN.")
    return model


def run_train(args) -> int:
    from ..io import read_image
    from ..tasks.conditional_gan import train_conditional_gan
    from ..tasks.gan import train_gan

    args.out = str(check_model_output(args.out, args.overwrite))
    if args.labels is not None and len(args.labels) != len(args.images):
        raise UserError(f"Got {len(args.labels)} label maps for {len(args.images)} images; give one per image.")
    images = [read_image(p) for p in args.images]
    kw = dict(axis=args.axis, steps=args.steps, seconds=args.seconds, seed=args.seed, downsample=args.downsample,
              device=args.device)
    with terminal_job("gan-train", args.quiet) as job:
        if args.labels:
            model, history = train_conditional_gan(images, [read_image(p) for p in args.labels], progress=job, **kw)
        else:
            model, history = train_gan(images, architecture=args.architecture, progress=job, **kw)
    model.save(args.out)
    note = " (stopped early: EMA weights so far)" if history["stopped"] else ""
    print(f"Trained {history['step'][-1] if history['step'] else 0} steps in {history['seconds']:.0f} s{note}; "
          f"kept {history['returned']}; wrote {args.out}")
    return 0


def run_synthesize(args) -> int:
    from ..data.resample import inplane_spacing
    from ..data.slices import put_slices, take_slices
    from ..io import read_image, write_image
    from ..tasks.conditional_gan import synthesize_from_labels
    from ..tasks.gan import interpolate_seeds, synthesize
    from ..tasks.volume_input import check_count

    if not args.labels:
        check_count(args.n, "samples")  # before anything is loaded
    check_image_output(args.out, args.overwrite)
    model = _load(args.model)
    with terminal_job("gan-synthesize", args.quiet) as job:
        if args.labels:  # cut as training cut its slices, and put back on the label map's own grid
            labels, axis = read_image(args.labels), model.params.axis
            ndim, spacing = labels.data.ndim, labels.geometry.spacing
            item = synthesize_from_labels(model, take_slices(labels.data, axis), device=args.device, progress=job,
                                          spacing=spacing[-2:] if ndim == 2 else inplane_spacing(spacing, axis))
            item.data, item.geometry = put_slices(item.data, axis, ndim), labels.geometry
        elif args.to_seed is not None:
            item = interpolate_seeds(model, args.seed, args.to_seed, steps=args.n, device=args.device, progress=job)
        else:
            item = synthesize(model, args.n, seed=args.seed, device=args.device, progress=job)
    write_image(args.out, item.data, item.geometry, overwrite=args.overwrite)
    print(f"Wrote {item.data.shape} to {args.out}")
    return 0


def run_report(args) -> int:
    from ..io import read_image
    from ..tasks.gan import real_slices
    from ..tasks.synthesis_report import format_report, synthesis_report

    if args.json:
        check_output(args.json, args.overwrite)
    model = _load(args.model)
    if model.task != "gan":
        raise UserError("gan-report compares samples of an unconditional GAN; this is a mask-to-image model.")
    samples = read_image(args.samples).data
    real = real_slices(read_image(args.real), model.params)
    with terminal_job("gan-report", args.quiet) as job:
        report = synthesis_report(samples, real, training=real, progress=job)
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0

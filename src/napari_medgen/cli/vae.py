"""``napari-medgen vae-*``: train a VAE on normal scans, score anomalies, reconstruct, sample."""
from __future__ import annotations

from pathlib import Path

from .options import add_budget, add_common, add_window, check_image_output, check_model_output, existing, window_of
from .progress import terminal_job
from ..errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("vae-train", help="train a VAE on normal scans (2D, slice by slice)",
                       description="Train a VAE on normal scans (2D, slice by slice). --seconds is the whole "
                                   "run's budget: calibrating the anomaly thresholds on the validation slices (timed "
                                   "on one slice first) comes out of it; training keeps at least half of it. "
                                   "Slices longer than 160 pixels (X-ray exports) are resampled to a working grid "
                                   "of at most 160 pixels along their longer side; images are scored back on their "
                                   "own grid.",
                       epilog="examples:\n  napari-medgen vae-train normal1.nii.gz normal2.nii.gz --mask brain1.nii.gz "
                              "brain2.nii.gz --out vae.medgen.pt\n"
                              "  napari-medgen vae-train NormalDataset/ --out vae.medgen.pt --seconds 600")
    p.add_argument("images", nargs="+", type=existing,
                   help="normal image files, or one dataset folder (imagesTr/ of normal "
                        "scans, optional labelsTr/ foreground masks), validated on held-out subjects")
    p.add_argument("--mask", nargs="*", type=existing, default=None,
                   help="foreground mask per image file, same order (default: whole image)")
    p.add_argument("--out", required=True, help="model file to write (.medgen.pt)")
    add_budget(p, seconds=120.0, whole_call=True)
    p.add_argument("--latent", type=int, default=64, help="size of the VAE's latent code")
    p.add_argument("--axis", type=int, default=0,
                   help="slice axis as the first image is stored, in napari (z, y, x) order: 0 is its first "
                        "stored axis, axial only when the file stores axial slices (nothing is resampled); the "
                        "other images, and those scored later, are turned to be stored as it is")
    add_window(p, "by modality: CT with --mask the masked tissue's HU range widened by half, CT without "
                  "-1000..1000 HU, MRI each scan's percentiles")
    p.add_argument("--diffusion", type=float, default=0.0, metavar="SECONDS",
                   help="also train a diffusion model of the same normal scans for this many seconds, its "
                        "calibration included (scoring method 'diffusion'; kept in the same model file; 0: none, "
                        "the default; 300 is a start)")
    add_common(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("vae-anomaly", help="anomaly heatmap, thresholded mask and per-slice scores",
                       description="Score every voxel of IMAGE for how far it departs from the normal anatomy the "
                                   "VAE learned; write the heatmap (and the thresholded mask) on IMAGE's grid and "
                                   "list the slices with the largest anomalous area (of a volume).",
                       epilog="example:\n  napari-medgen vae-anomaly patient.nii.gz --model vae.medgen.pt --mask "
                              "brain.nii.gz --out heat.nii.gz --mask-out anomalies.nii.gz")
    p.add_argument("image", type=existing, help="image file or DICOM folder to score")
    p.add_argument("--model", required=True, type=existing, help="VAE model file (.medgen.pt) from vae-train")
    p.add_argument("--mask", type=existing, help="foreground mask: only voxels inside it are scored "
                                                 "(default: whole image)")
    p.add_argument("--out", required=True,
                   help="heatmap file (e.g. heat.nii.gz). With the default method, combined, a voxel's value is "
                        "-log10 of how rare such a departure (brighter, or darker) was among the voxels of the "
                        "normal scans the model was calibrated on: 0 is ordinary, 2 means 1 normal voxel in 100 "
                        "departs as much, 3 means 1 in 1000. The default threshold, printed at the end, is the 99th "
                        "percentile of normal voxels' scores (e.g. 2.301: 1 in 200 brighter plus 1 in 200 darker), "
                        "so it flags about 1 in 100 voxels of a normal scan, before specks under 10 voxels are "
                        "dropped. Other "
                        "methods give the residual in the model's normalised intensity units (intensity: standard "
                        "deviations)")
    p.add_argument("--mask-out", help="also write the thresholded anomaly mask (0/1) to this file "
                                      "(default: none)")
    p.add_argument("--method", choices=["combined", "restoration", "samples", "residual", "intensity", "diffusion"],
                   help="combined (default: brighter than normal from plain intensity, darker than normal from "
                        "the VAE restoration residual, both calibrated on normal scans), restoration (MAP "
                        "restoration), samples, residual, intensity, diffusion (needs a model trained "
                        "with --diffusion); the default is the model's own scoring method, else combined")
    p.add_argument("--sign", choices=["both", "positive", "negative"],
                   help="positive: brighter than normal, negative: darker, both (default)")
    p.add_argument("--percentile", type=float,
                   help="threshold as a percentile of the scores of normal voxels (default 99)")
    p.add_argument("--threshold", type=float,
                   help="explicit score threshold, in heatmap units; overrides --percentile (default: from "
                        "--percentile)")
    p.add_argument("--top", type=int, default=5, help="list this many most anomalous slices")
    add_common(p)
    p.set_defaults(func=run_anomaly)

    p = sub.add_parser("vae-reconstruct", help="the VAE's reconstruction of an image",
                       description="Write the VAE's reconstruction of IMAGE (what the model of normal anatomy "
                                   "makes of it) on IMAGE's grid, in the model's normalised intensity units.",
                       epilog="example:\n  napari-medgen vae-reconstruct patient.nii.gz --model vae.medgen.pt "
                              "--out recon.nii.gz")
    p.add_argument("image", type=existing, help="image file or DICOM folder to reconstruct")
    p.add_argument("--model", required=True, type=existing, help="VAE model file (.medgen.pt) from vae-train")
    p.add_argument("--mask", type=existing,
                   help="foreground mask file (zero outside it, as in training; default: whole image)")
    p.add_argument("--out", required=True, help="reconstruction file, written on the image's grid and geometry")
    add_common(p)
    p.set_defaults(func=run_reconstruct)

    p = sub.add_parser("vae-sample", help="draw slices from the VAE's prior, or interpolate two slices",
                       description="Draw N new slices from the VAE's prior (seeded: the same seed gives the same "
                                   "slices), or with --between walk in N steps from one slice of an image to "
                                   "another; writes an (n, H, W) stack.",
                       epilog="examples:\n  napari-medgen vae-sample --model vae.medgen.pt -n 8 --out samples.nii.gz\n"
                              "  napari-medgen vae-sample --model vae.medgen.pt -n 8 --between t1.nii.gz 30 60 "
                              "--out walk.nii.gz")
    p.add_argument("--model", required=True, help="VAE model file (.medgen.pt) from vae-train")
    p.add_argument("-n", type=int, default=8, help="number of samples (or interpolation steps, slice A first)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same samples (default 0)")
    p.add_argument("--between", nargs=3, metavar=("IMAGE", "A", "B"),
                   help="interpolate between slices A and B of IMAGE (numbered along its array axis that runs "
                        "across the slices the VAE cuts) instead of sampling (default: sample)")
    p.add_argument("--mask", type=existing,
                   help="with --between: IMAGE's foreground mask (needed if the VAE was trained masked)")
    p.add_argument("--out", required=True, help="stack file (n, H, W)")
    add_common(p)
    p.set_defaults(func=run_sample)


def _read(path):
    from ..io import read_image
    return read_image(path)


def _load(path):
    from ..models.checkpoint import Model
    from ..models.config import Task
    return Model.load(path, expect=Task.VAE)


def _training_data(args):
    """(images, masks) from the image files, or from a dataset folder's imagesTr/ (and labelsTr/)."""
    from ..io.read import is_supported
    from ..tasks.vae_training import normal_cohort

    folder = Path(args.images[0])
    if len(args.images) == 1 and folder.is_dir() and ((folder / "imagesTr").is_dir() or not is_supported(folder)):
        if args.mask:
            raise UserError("A dataset folder takes its masks from labelsTr/; leave out --mask.")
        return normal_cohort(folder)
    if args.mask and len(args.mask) != len(args.images):
        raise UserError(f"Got {len(args.mask)} masks for {len(args.images)} images; give one per image.")
    from .segment import case_names

    names = case_names([Path(p) for p in args.images])  # subjects told apart: a/t1.nii.gz, b/t1.nii.gz
    images = [_read(p) for p in args.images]
    for image, path in zip(images, args.images):
        image.name = names[Path(path)]
    return images, [_read(p) for p in args.mask] if args.mask else None  # with geometry: the grid is checked


def run_train(args) -> int:
    from ..tasks.vae_training import train_vae

    args.out = str(check_model_output(args.out, args.overwrite))
    if args.diffusion < 0:
        raise UserError(f"The diffusion budget must be 0 (none) or more seconds (got {args.diffusion:g}).")
    images, masks = _training_data(args)
    with terminal_job("vae-train", args.quiet) as job:
        model, hist = train_vae(images, masks, steps=args.steps, seconds=args.seconds, seed=args.seed,
                                latent_size=args.latent,
                                axis=args.axis, normalization=window_of(args), device=args.device,
                                name=Path(args.out).name.split(".")[0],
                                progress=job)
    if args.diffusion:
        from ..tasks.diffusion_training import add_diffusion

        with terminal_job("vae-train diffusion", args.quiet) as job:
            model, _ = add_diffusion(model, images, masks, seconds=args.diffusion, device=args.device, progress=job)
    model.save(args.out)
    note = " (stopped early; best weights so far)" if hist["stopped"] else ""
    held = f"; validated on held-out {', '.join(hist['val_subjects'])}" if hist["val_subjects"] else ""
    grid = "x".join(str(n) for n in model.params.size)
    mm = model.params.spacing and not model.config.training.get("pixel_grid")
    at = f" of {' x '.join(f'{s:.3g}' for s in model.params.spacing)} mm" if mm else ""
    print(f"saved {args.out}{note}{held}; working grid {grid} pixels{at}")
    return 0


def run_anomaly(args) -> int:
    from ..io import write_image
    from ..tasks.anomaly import anomaly_map

    for out in (args.out, args.mask_out):
        if out:
            check_image_output(out, args.overwrite)
    img = _read(args.image)
    mask = _read(args.mask) if args.mask else None  # with its geometry: a mask on another grid is refused
    with terminal_job("vae-anomaly", args.quiet) as job:
        res = anomaly_map(_load(args.model), img, mask, method=args.method, sign=args.sign,
                          percentile=args.percentile, threshold=args.threshold, device=args.device, progress=job)
    write_image(args.out, res.score, img.geometry, overwrite=args.overwrite)
    if args.mask_out:
        write_image(args.mask_out, res.mask.astype("uint8"), img.geometry, overwrite=args.overwrite)
    order = [i for i in res.slice_scores.argsort()[::-1][: args.top] if res.slice_scores[i] > 0]
    print(f"method: {res.explanation}")
    unit = "voxels" if res.mask.ndim == 3 else "pixels"
    print(f"threshold {res.threshold:.4g}; {int(res.mask.sum())} anomalous {unit}")
    if res.mask.ndim == 3:  # a 2D image is one slice: nothing to rank
        print(f"most anomalous slices along axis {res.axis}: "
              + (", ".join(f"{i} ({res.slice_scores[i]} voxels)" for i in order) or "none"))
    return 0


def run_reconstruct(args) -> int:
    from ..io import write_image
    from ..tasks.vae import reconstruct

    check_image_output(args.out, args.overwrite)
    img = _read(args.image)
    mask = _read(args.mask) if args.mask else None
    with terminal_job("vae-reconstruct", args.quiet) as job:
        rec = reconstruct(_load(args.model), img, mask, device=args.device, progress=job)
    write_image(args.out, rec, img.geometry, overwrite=args.overwrite)
    print(f"saved {args.out}")
    return 0


def run_sample(args) -> int:
    from ..io import write_image
    from ..tasks.vae import interpolate_slices, synthesize_vae
    from ..tasks.volume_input import check_count, stack_geometry

    check_count(args.n, "interpolation steps" if args.between else "samples")  # before anything is loaded
    check_image_output(args.out, args.overwrite)
    model = _load(args.model)
    with terminal_job("vae-sample", args.quiet) as job:
        if args.between:
            path, a, b = args.between
            if not (a.isdigit() and b.isdigit()):
                raise UserError(f"--between takes an image and two slice numbers (got '{a}' and '{b}').")
            mask = _read(args.mask) if args.mask else None  # with geometry: the grid is checked
            stack = interpolate_slices(model, _read(path), int(a), int(b), steps=args.n, mask=mask,
                                       device=args.device, progress=job)
            write_image(args.out, stack, stack_geometry(model.params.spacing), overwrite=args.overwrite)
        else:
            item = synthesize_vae(model, args.n, seed=args.seed, device=args.device, progress=job)
            stack = item.data
            write_image(args.out, stack, item.geometry, overwrite=args.overwrite)
    print(f"saved {args.out} ({len(stack)} slices)")
    return 0

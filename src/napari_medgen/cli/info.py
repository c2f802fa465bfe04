"""``napari-medgen info [MODEL]``: versions and the compute device that would be used; what a model file is."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show versions and the compute device, or what a model file is",
                       description="Print the versions of napari-medgen, torch, MONAI and SimpleITK and the device "
                                   "that --device would use; with MODEL, what that model file is: its kind, "
                                   "classes, the data and spacing it was trained on, how, and which version saved it.",
                       epilog="examples:\n  napari-medgen info --device cuda\n  napari-medgen info mine.medgen.pt")
    p.add_argument("model", nargs="?", default=None,
                   help="a .medgen.pt model file or a built-in model's name to describe (optional)")
    p.add_argument("--device", default="auto",
                   help="device to describe: auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps "
                        "(default auto)")
    p.set_defaults(func=run)


def run(args) -> int:
    import monai
    import SimpleITK as sitk
    import torch

    from .. import __version__
    from ..engine.device import describe_device

    if args.model:
        from ..models.checkpoint import Model
        from ..models.describe import describe
        from ..models.segmentation import BUILTIN

        path = BUILTIN.get(args.model, Path(args.model))
        if Path(path).is_dir():
            raise UserError(f"{args.model} is a folder; 'info' describes a .medgen.pt model file.")
        print("\n".join(describe(Model.load(path), Path(path).name)))
        return 0
    print(f"napari-medgen {__version__}")
    print(f"torch {torch.__version__}, monai {monai.__version__}, SimpleITK {sitk.Version.VersionString()}")
    print(f"device: {describe_device(args.device)}")
    return 0

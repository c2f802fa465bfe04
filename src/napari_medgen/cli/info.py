"""``napari-medgen info``: versions and the compute device that would be used."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show versions and the compute device",
                       description="Print the versions of napari-medgen, torch, MONAI and SimpleITK and the device "
                                   "that --device would use.",
                       epilog="example:\n  napari-medgen info --device cuda")
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

    print(f"napari-medgen {__version__}")
    print(f"torch {torch.__version__}, monai {monai.__version__}, SimpleITK {sitk.Version.VersionString()}")
    print(f"device: {describe_device(args.device)}")
    return 0

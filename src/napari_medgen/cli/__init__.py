"""The ``napari-medgen`` command line: one sub-command per verb, each over the headless API."""
from __future__ import annotations

import argparse
import importlib
import sys

from ..io.read import ImageReadError
from ..models.checkpoint import ModelFileError

# Each module has ``add_parser(subparsers)`` that registers its verbs with ``func=``.
VERB_MODULES = ["info", "demo", "segment", "vae", "train", "gan"]

USER_ERRORS = (ImageReadError, ModelFileError, ValueError, FileExistsError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-medgen", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    for name in VERB_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        print(f"napari-medgen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-medgen: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

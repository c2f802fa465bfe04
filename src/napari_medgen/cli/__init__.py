"""The ``napari-medgen`` command line: one sub-command per verb, each over the headless API.

Building the parser imports no torch/MONAI (verb modules import them inside their functions),
so ``--help`` and ``--version`` answer at once.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from .. import __version__
from ..errors import UserError

# Each module has ``add_parser(subparsers)`` that registers its verbs with ``func=``.
VERB_MODULES = ["info", "demo", "segment", "vae", "train", "gan", "pacs", "sequence", "cohort", "classify"]

USER_ERRORS = (UserError, ValueError, FileExistsError, FileNotFoundError, PermissionError,
               IsADirectoryError, NotADirectoryError)


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line on stderr and exit status 2, like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help).\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="napari-medgen", description="Deep learning for medical images: the headless verbs of "
                                                       "the napari-medgen plugin. 'napari-medgen VERB --help' "
                                                       "describes each verb.")
    parser.add_argument("--version", action="version", version=f"napari-medgen {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit with status 2."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, usage errors
        return int(done.code or 0)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            if isinstance(getattr(args, "device", None), str):  # a wrong device is said before any work
                from ..engine.device import select_device
                select_device(args.device)
            return int(args.func(args) or 0)
    except USER_ERRORS as err:
        print(f"napari-medgen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-medgen: interrupted.", file=sys.stderr)
        return 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """napari-medgen's own warnings (skipped series, model mismatch) as one line; others as usual."""
    if category.__module__.startswith("napari_medgen"):
        print(f"napari-medgen: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


if __name__ == "__main__":
    sys.exit(main())

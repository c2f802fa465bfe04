"""The ``napari-medgen`` command line: one sub-command per verb, each over the headless API.

Building the parser imports no torch/MONAI (verb modules import them inside their functions),
so ``--help`` and ``--version`` answer at once.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
import warnings

from .. import __version__
from ..engine.jobs import Cancelled
from ..errors import UserError
from .options import budget_defaults

# Each module has ``add_parser(subparsers)`` that registers its verbs with ``func=``.
VERB_MODULES = ["info", "demo", "segment", "vae", "train", "gan", "pacs", "sequence", "cohort", "classify"]

# what a user can cause: one line, status 2; anything else (a plain ValueError too) is a bug and shows its traceback
USER_ERRORS = (UserError, FileExistsError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class HelpFormatter(argparse.HelpFormatter):
    """Every option shows its default unless its help says it; in descriptions and epilogs each line is
    wrapped on its own, and indented lines (examples) are kept as written, ready to copy."""

    def _fill_text(self, text, width, indent):
        return "\n".join(line if not line or line[0].isspace() else
                         textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                         for line in text.splitlines())

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and _shows(action.default) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _shows(default) -> bool:
    """A default worth saying: not None, not a flag's False (but 0 is)."""
    return default is not None and default is not False and default != argparse.SUPPRESS


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line on stderr and exit status 2, like every other user error."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

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
    _describe(sub)
    return parser


def _describe(sub) -> None:
    """A verb without a description of its own gets its one-line summary on top of its --help."""
    for choice in sub._choices_actions:
        verb = sub.choices[choice.dest]
        if not verb.description:
            verb.description = choice.help[:1].upper() + choice.help[1:] + "."
        for action in verb._actions:
            if isinstance(action, argparse._SubParsersAction):
                _describe(action)


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit with status 2, a stop (Ctrl-C) one line and status 130;
    a closed pipe ends quietly."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a reader that left (``| head``) shows here, not as a traceback at exit
        return code
    except BrokenPipeError:
        try:  # nothing more can be written there; keep the interpreter's last flush quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, as other Unix tools end in a pipe


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, usage errors
        return int(done.code or 0)
    budget_defaults(args)
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
    except Cancelled:  # Ctrl-C once, in a verb that cannot stop early and keep what it has
        print("napari-medgen: stopped; nothing more was written.", file=sys.stderr)
        return 130
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

"""Every option of every ``napari-medgen`` verb says what it is; ``--help`` imports no torch."""
from __future__ import annotations

import argparse
import subprocess
import sys

from napari_medgen.cli import build_parser


def _verbs(parser: argparse.ArgumentParser, prefix: str = ""):
    """(name, parser) of every sub-command, nested ones (``pacs find``) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _verbs(sub, f"{prefix}{name} ") if _has_verbs(sub) else [(prefix + name, sub)]


def _has_verbs(parser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def test_every_option_of_every_verb_has_help():
    verbs = dict(_verbs(build_parser()))
    assert {"segment", "classify", "sequence-train", "pacs find", "train-cohort", "info", "demo"} <= set(verbs)
    missing = [f"{verb} {action.option_strings[0] if action.option_strings else action.dest}"
               for verb, parser in verbs.items()
               for action in parser._actions
               if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert not missing, "options without help: " + ", ".join(missing)


def test_help_imports_no_torch_and_prints_every_verb():
    code = ("import sys; from napari_medgen.cli import build_parser; build_parser(); "
            "print([m for m in ('torch', 'monai', 'SimpleITK', 'napari') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "napari_medgen.cli", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "classify" in res.stdout and "train-cohort" in res.stdout, res.stderr

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


def _help_string(parser, action) -> str:
    return parser._get_formatter()._get_help_string(action) % {"default": action.default}


def test_every_verb_says_what_it_does_with_an_example_and_every_default():
    verbs = dict(_verbs(build_parser()))
    for name, parser in verbs.items():
        assert (parser.description or "").strip(), f"{name} has no description"
        if name != "demo":  # cli/demo.py is another helper's file
            assert "example" in (parser.epilog or ""), f"{name} --help shows no example"
        for action in parser._actions:
            if action.option_strings and action.default is not None and action.default is not False \
                    and action.default != argparse.SUPPRESS:
                assert "default" in _help_string(parser, action), f"{name} {action.option_strings[0]}"
    shown = {(verb, opt): next(_help_string(verbs[verb], a) for a in verbs[verb]._actions if opt in a.option_strings)
             for verb, opt in [("vae-train", "--latent"), ("vae-train", "--axis"), ("vae-sample", "-n"),
                               ("gan-synthesize", "-n"), ("vae-anomaly", "--top")]}
    assert [shown[k].endswith(f"(default: {v})") for k, v in zip(shown, (64, 0, 8, 16, 5))] == [True] * 5, shown
    heatmap = next(a.help for a in verbs["vae-anomaly"]._actions if "--out" in a.option_strings)
    assert "-log10" in heatmap and "2.301" in heatmap and "about 1 in 100 voxels of a normal scan" in heatmap
    gan = verbs["gan-train"].format_help()
    assert "4x reduced" in gan and "half-resolution" not in gan


def test_examples_are_kept_as_written_for_copying():
    text = dict(_verbs(build_parser()))["train-cohort"].format_help()
    assert "\n  napari-medgen train-cohort Dataset001_Brain/ --out brain.medgen.pt --dims 2 --seconds 600\n" in text


def test_classify_takes_out_like_every_verb_and_both_csv_spellings(tmp_path):
    parser, csv_file = build_parser(), str(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("file,label\n")
    for argv in (["classify-train", str(tmp_path), csv_file, "-o", "m"],
                 ["classify-train", str(tmp_path), "--csv", csv_file, "--out", "m"]):
        args = parser.parse_args(argv)
        assert args.output == "m" and csv_file in (args.table, args.csv)
    for spelling in ("--out", "--output", "-o"):
        assert parser.parse_args(["classify", csv_file, "-m", csv_file, spelling, "p.csv"]).output == "p.csv"
    args = parser.parse_args(["sequence-train", str(tmp_path), csv_file, "--out", "m.medgen.pt"])
    assert args.table == csv_file and args.csv is None


MISSING_INPUT = [
    ["segment", "nope.nii.gz", "o.nii.gz"],
    ["train", "nope.nii.gz", "p.nii.gz", "--out", "m.medgen.pt"],
    ["vae-anomaly", "nope.nii.gz", "--model", "v.medgen.pt", "--out", "h.nii.gz"],
    ["gan-train", "nope.nii.gz", "--out", "g.medgen.pt"],
    ["classify", "nope.nii.gz", "-m", "c.medgen.pt", "--out", "p.csv"],
    ["sequence-predict", "nope.nii.gz", "--model", "s.medgen.pt"],
    ["train-cohort", "nope", "--out", "m.medgen.pt"],
    ["pacs", "push", "--url", "http://x", "--reference-series", "1.2", "nope.nii.gz"],
    ["classify", sys.executable, "-m", "nope.medgen.pt", "--out", "p.csv"],  # a model file that is not there
]


def test_a_missing_input_is_said_before_torch_is_imported(tmp_path):
    """`segment nope.nii.gz` took 17 s (the torch import) before saying the file does not exist."""
    code = ("import json, sys; from napari_medgen.cli import main; "
            f"codes = [main(argv) for argv in {MISSING_INPUT!r}]; "
            "print(json.dumps([codes, [m for m in ('torch', 'monai') if m in sys.modules]]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.stdout.strip().splitlines()[-1] == f"[{[2] * len(MISSING_INPUT)}, []]".replace("'", '"'), res.stderr
    errors = res.stderr.strip().splitlines()
    assert len(errors) == len(MISSING_INPUT) and all("nope" in e and "does not exist" in e for e in errors), errors


def test_one_missing_label_is_said_in_the_singular(tmp_path, capsys):
    from napari_medgen.cli import main

    (tmp_path / "ds" / "imagesTr").mkdir(parents=True)
    (tmp_path / "ds" / "labelsTr").mkdir()
    (tmp_path / "ds" / "imagesTr" / "x_0000.nii.gz").write_bytes(b"")
    assert main(["train-cohort", str(tmp_path / "ds"), "--out", str(tmp_path / "m.medgen.pt"), "-q"]) == 2
    assert "1 image in imagesTr (x_0000.nii.gz) has no label file of the same name" in capsys.readouterr().err

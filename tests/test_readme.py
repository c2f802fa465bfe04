"""The README's Python examples run as written (training budgets shortened), and the options and functions it
names exist."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import napari_medgen as mg

ROOT = Path(__file__).resolve().parents[1]


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python and the command line", 1)[1]
    return re.search(r"```python\n(.*?)\n```", section, re.S).group(1)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """On a 24-slice slab of the sample brain (so it is quick), with a short training budget."""
    import napari_medgen.sample_data as sample_data

    slabs = {}
    for name, path in (("brain_t1", sample_data.T1_PATH), ("brain_tissue", sample_data.TISSUE_PATH)):
        sitk.WriteImage(sitk.ReadImage(str(path))[:, :, 36:60], str(tmp_path / f"{name}.nii.gz"))
        slabs[name] = mg.read_image(tmp_path / f"{name}.nii.gz")
        monkeypatch.setattr(sample_data, name, lambda item=slabs[name]: item)
    real = mg.finetune
    monkeypatch.setattr(mg, "finetune", lambda *a, **k: real(*a, **{**k, "steps": 20, "seconds": None}))
    monkeypatch.chdir(tmp_path)
    ns: dict = {}  # as written: no variable is given (`painted` was undefined)
    exec(compile(readme_python_example(), "README.md", "exec"), ns)  # noqa: S102 - our own README
    labels = mg.read_image("t1_seg.nii.gz")
    assert labels.data.shape == ns["t1"].data.shape and labels.geometry.same_grid(ns["t1"].geometry)
    assert ns["res"].warnings == [] and ns["res"].volumes_ml()["white matter"] > 10  # mL in a 48 mm slab
    z = [ns["z"] - 10, ns["z"] + 10]
    assert labels.data.shape == (24, *slabs["brain_t1"].data.shape[1:]) and ns["painted"][z].any()
    assert (ns["completed"][z] == ns["painted"][z]).all() and (ns["filled"][z[0] + 1:z[1]] > 0).any()
    assert mg.Model.load("mine.medgen.pt").task == "segmentation"


def test_readme_time_series_example_runs(monkeypatch):
    real = mg.train_sequence_model
    monkeypatch.setattr(mg, "train_sequence_model", lambda *a, **k: real(*a, **{**k, "steps": 3, "seconds": None}))
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Time series", 1)[1]
    ns: dict = {}
    exec(compile(re.search(r"```python\n(.*?)\n```", section, re.S).group(1), "README.md", "exec"), ns)  # noqa: S102
    assert np.isfinite(ns["res"].value) and len(ns["res"].curve) == 16


def _readme_commands() -> list[list[str]]:
    block = (ROOT / "README.md").read_text(encoding="utf-8").split("## Python and the command line", 1)[1]
    block = re.search(r"```text\n(.*?)\n```", block, re.S).group(1)
    return [line.split() for line in block.splitlines() if line.startswith("napari-medgen ")]


def test_every_option_the_readme_names_exists():
    import argparse

    from napari_medgen.cli import build_parser

    def verbs(parser):
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    top, unknown = verbs(build_parser()), []
    for words in _readme_commands():
        if words[1] not in top:
            continue  # --version / --help
        parsers = [top[words[1]]] if words[1] != "pacs" else [verbs(top["pacs"])[v] for v in words[2].split("|")]
        known = {o for p in parsers for a in p._actions for o in a.option_strings}
        unknown += [f"{words[1]} {w}" for w in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", " ".join(words[2:]))
                    if w not in known]
    assert not unknown, unknown
    named = {w for words in _readme_commands() for w in re.findall(r"--[a-z][\w-]*", " ".join(words))}
    assert {"--tta", "--axis", "--sparse", "--method", "--sign", "--percentile", "--threshold", "--labels",
            "--to-seed"} <= named


def test_every_function_of_the_api_list_exists():
    import napari_medgen.sample_data as sample_data

    section = (ROOT / "README.md").read_text(encoding="utf-8").split("### Python API at a glance", 1)[1]
    section = section.split("\n## ", 1)[0]
    names = {n for n in re.findall(r"`(?:napari_medgen\.sample_data\.)?([A-Za-z_]\w*)\(?", section)}
    assert {"train_vae", "anomaly_map", "reconstruct", "train_gan", "synthesize", "interpolate_seeds",
            "train_conditional_gan", "synthesis_report", "rank_slices", "segmentation_metrics", "builtin_models",
            "find_studies", "pull_series", "push_labels", "brain_t1", "Model"} <= names
    missing = [n for n in names if n not in mg.__all__ and not hasattr(sample_data, n)
               and n not in ("NAME", "napari_medgen", "progress", "stop", "cancel", "expect", "model", "import")]
    assert not missing, missing


def test_readme_job_example_runs():
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Long jobs: one mechanism", 1)[1]
    ns: dict = {}
    exec(compile(re.search(r"```python\n(.*?)\n```", section, re.S).group(1), "README.md", "exec"), ns)  # noqa: S102
    ns["cancel"].set()
    assert ns["job"].cancelled() and ns["job"].should_stop()

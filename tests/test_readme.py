"""The README's Python example runs as written (on a slab of the sample brain, with a short training budget)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import napari_medgen as mg
from napari_medgen.sample_data import T1_PATH

ROOT = Path(__file__).resolve().parents[1]


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python and the command line", 1)[1]
    return re.search(r"```python\n(.*?)\n```", section, re.S).group(1)


def test_readme_python_example_runs(tmp_path, monkeypatch, tissue):
    sitk.WriteImage(sitk.ReadImage(str(T1_PATH))[:, :, 40:52], str(tmp_path / "t1.nii.gz"))
    painted = np.zeros((12,) + tissue.data.shape[1:], tissue.data.dtype)
    painted[[3, 8]] = tissue.data[[43, 48]]  # two painted slices of the slab
    real = mg.finetune
    monkeypatch.setattr(mg, "finetune", lambda *a, **k: real(*a, **{**k, "steps": 20, "seconds": None}))
    monkeypatch.chdir(tmp_path)
    ns = {"painted": painted}
    exec(compile(readme_python_example(), "README.md", "exec"), ns)  # noqa: S102 - our own README
    labels = mg.read_image("t1_seg.nii.gz")
    assert labels.data.shape == (12,) + tissue.data.shape[1:] and labels.geometry.same_grid(ns["t1"].geometry)
    assert ns["res"].warnings == [] and ns["res"].volumes_ml()["white matter"] > 10  # mL in a 24 mm slab
    assert mg.Model.load("mine.medgen.pt").task == "segmentation"


def test_readme_job_example_runs():
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Long jobs: one mechanism", 1)[1]
    ns: dict = {}
    exec(compile(re.search(r"```python\n(.*?)\n```", section, re.S).group(1), "README.md", "exec"), ns)  # noqa: S102
    ns["cancel"].set()
    assert ns["job"].cancelled() and ns["job"].should_stop()

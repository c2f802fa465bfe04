"""Both cohort verbs under ``torchrun --standalone --nproc_per_node=2`` on the CPU (gloo)."""
import csv
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from napari_medgen import Model, read_image, write_image
from napari_medgen.cli import main
from napari_medgen.models.config import Task
from napari_medgen.sample_data import T1_PATH
from test_cohort import make_cohort

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is missing")

# the tests' own monkeypatches, applied before the verb runs on each rank
PRELUDE = textwrap.dedent("""
    import os, signal, sys
    import torch
    import napari_medgen.tasks.cohort as cohort
    import importlib
    seg = importlib.import_module("napari_medgen.tasks.segment")
    from napari_medgen.cli import main
    rank, mode, where = os.environ["RANK"], sys.argv[1], sys.argv[2]
    if mode == "train":  # keep each rank's final weights and how many cases it read
        fit = cohort.fit
        def keeping_fit(task, *a, **k):
            history = fit(task, *a, **k)
            torch.save({"state": task.networks["net"].state_dict(), "cases": len(task.sampler.images)},
                       os.path.join(where, f"rank{rank}.pt"))
            return history
        cohort.fit = keeping_fit
    if mode == "crash" and rank == "1":  # rank 1 is killed (e.g. by the OOM killer) on its first scan
        seg.segment = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(main(sys.argv[3:]))
""")


def torchrun(tmp_path, mode: str, args: list, timeout: int = 180) -> subprocess.CompletedProcess:
    script = tmp_path / "launch.py"
    script.write_text(PRELUDE)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), mode, str(tmp_path)] + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_train_cohort_ddp(tmp_path):
    cohort = make_cohort(tmp_path / "Dataset001")
    out = tmp_path / "models" / "brain.medgen.pt"
    run = torchrun(tmp_path, "train", ["train-cohort", cohort, "--out", out, "--steps", 4, "--channels", "8,16,32",
                                       "--batch-size", 2, "--device", "cpu", "--checkpoint-every", 0, "-q"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote") == 1 and '"world_size": 2' in run.stdout  # rank 0 alone reports
    assert [p.name for p in out.parent.iterdir()] == ["brain.medgen.pt"]  # one model file, no checkpoint left
    model = Model.load(out, expect=Task.SEGMENTATION)
    rec = model.config.training
    assert rec["world_size"] == 2 and rec["steps"] == 4 and rec["samples_seen"] == 4 * 2 * 2
    # the ranks read different cases (5 training cases: 3 and 2), yet end with identical weights
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert {r0["cases"], r1["cases"]} == {2, 3}
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    assert all(torch.equal(r0["state"][k], v) for k, v in model.net.state_dict().items())


@pytest.fixture
def scans(tmp_path):
    """Five small scans (and a label file the batch must skip)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    t1 = sitk.ReadImage(str(T1_PATH))
    for i in range(5):
        sitk.WriteImage(t1[10:80, 10:100, 30 + 4 * i:38 + 4 * i], str(folder / f"sub{i}.nii.gz"))
    img = read_image(folder / "sub0.nii.gz")
    write_image(folder / "sub0_label.nii.gz", (img.data > 0).astype(np.uint8), img.geometry)
    return folder


def _summary(folder):
    with open(folder / "segment_summary.csv") as fh:
        return list(csv.DictReader(fh))


def test_segment_batch_sharded_and_crash(scans, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["segment", str(scans), str(one), "-q", "--device", "cpu"]) == 0
    run = torchrun(tmp_path, "segment", ["segment", scans, two, "-q", "--device", "cpu"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "skipping 1 label files" in run.stderr and run.stderr.count("skipping 1 label") == 1
    rows = _summary(two)
    assert [r["status"] for r in rows if r["input"].endswith("_label.nii.gz")] == ["skipped"]  # once, not per rank
    rows = [r for r in rows if r["status"] != "skipped"]
    assert sorted(r["input"] for r in rows) == sorted(str(p) for p in scans.glob("sub?.nii.gz"))  # each once
    assert {r["rank"] for r in rows} == {"0", "1"} and {r["status"] for r in rows} == {"written"}
    outputs = sorted(p.name for p in two.glob("*_seg.nii.gz"))
    assert outputs == sorted(p.name for p in one.glob("*_seg.nii.gz")) and len(outputs) == 5
    for name in outputs:
        assert np.array_equal(read_image(one / name).data, read_image(two / name).data)
    # a rank killed mid-run ends the job with a sentence, and leaves only complete files
    three = tmp_path / "three"
    run = torchrun(tmp_path, "crash", ["segment", scans, three, "-q", "--device", "cpu"])
    assert run.returncode != 0
    assert "another rank of the job failed" in run.stderr
    left = sorted(p.name for p in three.iterdir()) if three.exists() else []
    assert not any("partial" in n or n.endswith(".csv") for n in left)
    for name in left:
        assert np.array_equal(read_image(three / name).data, read_image(one / name).data)

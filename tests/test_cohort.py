"""Cohort training in one process: dataset discovery, spacing-aware preprocessing, checkpoints, the verb."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_medgen import Model, read_image, segment, train_cohort, write_image
from napari_medgen.cli import main
from napari_medgen.data.datasets import DatasetError, discover, fingerprint, read_case, split
from napari_medgen.engine.distributed import shard
from napari_medgen.io import Geometry
from napari_medgen.models.config import Task
from napari_medgen.sample_data import brain_t1, brain_tissue
from napari_medgen.tasks.cohort import checkpoint_path

TINY = {"channels": (8, 16, 32), "batch_size": 4, "device": "cpu"}


def make_cohort(root, n: int = 6, seed: int = 0, depth: int = 16):
    """``n`` small labelled volumes cut from the sample brain (shifted, flipped, rescaled intensities;
    case01 at 3 mm in-plane) in the nnU-Net layout: imagesTr/caseNN_0000.nii.gz + labelsTr/caseNN.nii.gz."""
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    t1, tissue = brain_t1(), brain_tissue()
    rng = np.random.default_rng(seed)
    for i in range(n):
        z0 = 28 + 3 * i
        img = t1.data[z0:z0 + depth, 10:106, 10:90].astype(np.float32)
        lab = tissue.data[z0:z0 + depth, 10:106, 10:90]
        if i % 2:
            img, lab = img[:, :, ::-1], lab[:, :, ::-1]
        img = img * rng.uniform(0.7, 1.4) + rng.uniform(-50, 50)
        spacing = t1.geometry.spacing
        if i == 1:  # a coarser scan of the same anatomy
            img = F.interpolate(torch.from_numpy(img.copy())[None], size=(64, 53), mode="bilinear").numpy()[0]
            lab = F.interpolate(torch.from_numpy(lab.copy()).float()[None], size=(64, 53)).numpy()[0]
            spacing = (2.0, 3.0, 3.0)
        geo = Geometry(spacing, t1.geometry.origin, t1.geometry.direction)
        write_image(root / "imagesTr" / f"case{i:02d}_0000.nii.gz", img.astype(np.int16), geo)
        write_image(root / "labelsTr" / f"case{i:02d}.nii.gz", np.ascontiguousarray(lab, np.uint8), geo)
    return root


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort") / "Dataset001_Brain")


def test_discovery_layouts_and_errors(cohort, tmp_path):
    ds = discover(cohort)
    assert [c.name for c in ds.cases] == [f"case{i:02d}" for i in range(6)] and ds.classes == []
    fp = fingerprint(ds.cases)
    assert fp["spacing"] == [2.0, 2.0]  # the median: the 3 mm case is resampled, not the others
    train, val = split(ds.cases, 0.2, seed=0)
    assert len(val) == 1 and not {c.name for c in train} & {c.name for c in val}
    # a Decathlon dataset.json datalist with class names and modality
    meta = {"name": "Brain", "labels": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"},
            "modality": {"0": "MRI"},
            "training": [{"image": f"./imagesTr/case{i:02d}_0000.nii.gz", "label": f"./labelsTr/case{i:02d}.nii.gz"}
                         for i in (0, 2)]}
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(meta).replace("./", str(cohort) + "/"))
    ds = discover(tmp_path / "ds")
    assert ds.name == "Brain" and ds.classes == ["background", "CSF", "GM", "WM"] and len(ds.cases) == 2
    # user errors are one sentence
    (tmp_path / "bad" / "imagesTr").mkdir(parents=True)
    (tmp_path / "bad" / "labelsTr").mkdir()
    (tmp_path / "bad" / "imagesTr" / "x_0000.nii.gz").write_bytes((cohort / "imagesTr" / "case00_0000.nii.gz").read_bytes())
    with pytest.raises(DatasetError, match="no label file of the same name"):
        discover(tmp_path / "bad")
    with pytest.raises(DatasetError, match="needs imagesTr/ and labelsTr/"):
        discover(tmp_path)


def test_shard_gives_every_item_to_one_part():
    items = list(range(11))
    parts = [shard(items, 3, k) for k in range(3)]
    assert sorted(sum(parts, [])) == items and all(parts)
    with pytest.raises(ValueError, match="--part-id must be between 0 and 2"):
        shard(items, 3, 3)


def test_train_checkpoint_resume_and_segment(cohort, tmp_path):
    ckpt = checkpoint_path(tmp_path / "brain.medgen.pt")
    model, history = train_cohort(cohort, steps=6, checkpoint=ckpt, checkpoint_seconds=0, seed=1, **TINY)
    assert model.task == Task.SEGMENTATION and model.params.spacing == [2.0, 2.0]
    rec = model.config.training
    assert rec["world_size"] == 1 and rec["steps"] == 6 and rec["samples_seen"] == 24
    assert rec["cases"]["validation"] and history["best_metric"] is not None
    saved = Model.load(ckpt, expect=Task.SEGMENTATION)  # the checkpoint is itself a model file
    assert saved.config.training["complete"] is False and 0 < saved.config.training["steps"] <= 6
    # resuming continues from the checkpoint and takes its steps off the budget
    resumed, _ = train_cohort(cohort, steps=9, checkpoint=ckpt, resume=True, checkpoint_seconds=1e9, **TINY)
    done = saved.config.training["steps"]
    assert resumed.config.training["resumed_from_step"] == done and resumed.config.training["steps"] == 9
    # the result segments a scan at another spacing like any segmentation model
    case = read_image(cohort / "imagesTr" / "case01_0000.nii.gz")
    labels = segment(case, resumed, device="cpu")
    assert labels.shape == case.data.shape and set(np.unique(labels)) <= {0, 1, 2, 3}


def test_train_cohort_verb(cohort, tmp_path, capsys):
    out = tmp_path / "m.medgen.pt"
    args = ["train-cohort", str(cohort), "--out", str(out), "--steps", "3", "--channels", "8,16,32",
            "--batch-size", "2", "--device", "cpu", "-q"]
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.medgen.pt"]  # the checkpoint is gone
    assert '"world_size": 1' in capsys.readouterr().out
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    # a name without .medgen.pt gets it, as from every trainer (vae-train and gan-train wrote the bare name)
    assert main([*args[:3], str(tmp_path / "plain"), *args[4:]]) == 0 and (tmp_path / "plain.medgen.pt").is_file()
    capsys.readouterr()
    assert main(["train-cohort", str(tmp_path), "--out", str(tmp_path / "n.medgen.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a dataset folder" in err[0]


def test_3d_model_and_ct_window(cohort):
    model, _ = train_cohort(cohort, spatial_dims=3, steps=2, patch_size=(16, 32, 32), **TINY)
    p = model.params
    assert p.spatial_dims == 3 and p.patch_size == [16, 32, 32] and p.spacing == [2.0, 2.0, 2.0]
    case = read_image(cohort / "imagesTr" / "case01_0000.nii.gz")  # 3 mm in-plane: resampled both ways
    assert segment(case, model, device="cpu").shape == case.data.shape
    # CT: one window from the cohort's foreground intensities, not per image
    from napari_medgen.data.cohort_checks import dataset_normalization

    spec = dataset_normalization("CT", [np.arange(-100, 101, dtype=np.float32), np.full(10, 50, np.float32)])
    assert spec["kind"] == "window" and -100 < spec["low"] < -90 and 90 < spec["high"] < 100


def test_3d_patches_fit_inside_the_cases_and_labels_must_share_the_grid(tmp_path):
    """Thick-slice cohorts (20 slices here): a patch longer than the scans would be padding in every training
    window, and the network then labelled whole edge slices of a longer scan; a label file on another grid
    (same shape, other origin) is refused, not trained on."""
    root = make_cohort(tmp_path / "Dataset002_Thick", n=3, depth=20)
    model, _ = train_cohort(root, spatial_dims=3, steps=1, val_fraction=0.0, **TINY)
    assert model.params.patch_size[0] <= 20
    lab = read_image(root / "labelsTr" / "case02.nii.gz")
    moved = Geometry(lab.geometry.spacing, np.asarray(lab.geometry.origin) + 5.0, lab.geometry.direction)
    write_image(root / "labelsTr" / "case02.nii.gz", lab.data, moved, overwrite=True)
    with pytest.raises(DatasetError, match="not on the voxel grid of case02_0000"):
        train_cohort(root, spatial_dims=3, steps=1, val_fraction=0.0, **TINY)


def test_mixed_modalities_are_refused_and_stray_label_values_warned(tmp_path):
    """A CT case beside MR cases would set one Hounsfield window that flattens every MR case; a label value
    only one case holds (a stray paint stroke) silently became classes of its own."""
    root = make_cohort(tmp_path / "Dataset003_Mixed", n=3)
    lab = read_image(root / "labelsTr" / "case02.nii.gz")
    stray = lab.data.copy()
    stray[:2, :5, :5] = 7
    write_image(root / "labelsTr" / "case02.nii.gz", stray, lab.geometry, overwrite=True)
    with pytest.warns(UserWarning, match=r"7 only in case02; no case holds label values 4, 5, 6"):
        model, _ = train_cohort(root, steps=1, val_fraction=0.0, **TINY)
    img = read_image(root / "imagesTr" / "case00_0000.nii.gz")  # now a head CT: air -1000 HU, tissue 0-80 HU
    hu = np.where(img.data > 100, img.data.astype(np.float32) / 20.0, -1000).astype(np.int16)
    write_image(root / "imagesTr" / "case00_0000.nii.gz", hu, img.geometry, overwrite=True)
    with pytest.raises(DatasetError, match=r"mixes CT scans in Hounsfield units \(case00\) with other scans "
                                           r"\(case01, case02\)"):
        train_cohort(root, steps=1, val_fraction=0.0, **TINY)


def test_a_case_stored_in_another_axis_order_is_cut_like_the_others(tmp_path):
    """A sagittal-first case was cut into sagittal slices among the axial ones, and its spacing mixed with theirs."""
    root = make_cohort(tmp_path / "Dataset004_Orient", n=3)
    before = fingerprint(discover(root).cases)
    order = (2, 0, 1)
    for folder, name in (("imagesTr", "case02_0000.nii.gz"), ("labelsTr", "case02.nii.gz")):
        item = read_image(root / folder / name)
        geo = item.geometry
        stored = Geometry(tuple(geo.spacing[i] for i in order), geo.origin, geo.direction[:, list(order)])
        write_image(root / folder / name, np.ascontiguousarray(np.transpose(item.data, order)), stored, overwrite=True)
    cases = discover(root).cases
    fp = fingerprint(cases)
    assert fp["spacing"] == before["spacing"] and fp["orientation"] == before["orientation"]
    image, labels = read_case(cases[2], fp["orientation"])
    first, _ = read_case(cases[0], fp["orientation"])
    np.testing.assert_allclose(image.geometry.direction, first.geometry.direction)
    assert labels.shape == image.data.shape and image.data.shape[0] < image.data.shape[1]  # axial slices first
    model, _ = train_cohort(root, steps=1, val_fraction=0.0, **TINY)
    assert model.params.orientation == fp["orientation"]

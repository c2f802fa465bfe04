"""Command-line findings of a code reader: slicing of gan-synthesize --labels, Ctrl-C, skipped inputs,
reproducible cohort validation, truthful help, bugs not shown as user errors, pacs push --overwrite."""
from __future__ import annotations

import csv
import os
import signal
import types

import numpy as np
import pydicom
import pytest

import napari_medgen.engine.fit as fit_module
import napari_medgen.pacs.client as pacs_client
import napari_medgen.tasks.conditional_gan as conditional_gan
from napari_medgen.cli import build_parser, main
from napari_medgen.data.slices import take_slices
from napari_medgen.io import Geometry, ImageData, read_image, write_image
from napari_medgen.tasks.classify import train_classifier
from napari_medgen.tasks.cohort import train_cohort

from test_cohort import make_cohort


@pytest.fixture(scope="module")
def spade_axis2(tmp_path_factory, brain, tissue):
    """A 1-step mask-to-image GAN trained along axis 2 of an anisotropic crop (in-plane spacing (1, 2): z, y),
    and its label map as a file."""
    d = tmp_path_factory.mktemp("spade")
    geo = Geometry((1.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    crop = np.s_[30:62, 20:84, 20:76]
    image, labels = ImageData(brain.data[crop], geo), ImageData(tissue.data[crop], geo)
    model, _ = conditional_gan.train_conditional_gan(image, labels, axis=2, steps=1, width=8, seconds=None,
                                                     device="cpu")
    model.save(d / "spade.medgen.pt")
    write_image(d / "tissue.nii.gz", labels.data, geo)
    return d


def test_synthesis_from_labels_cuts_slices_as_training_did(spade_axis2, monkeypatch):
    seen = {}
    real = conditional_gan.synthesize_from_labels

    def spy(model, labels, spacing=None, **kw):
        seen.update(labels=np.asarray(labels), spacing=tuple(spacing))
        return real(model, labels, spacing=spacing, **kw)

    monkeypatch.setattr(conditional_gan, "synthesize_from_labels", spy)
    out = spade_axis2 / "fake.nii.gz"
    assert main(["gan-synthesize", "--model", str(spade_axis2 / "spade.medgen.pt"), "--labels",
                 str(spade_axis2 / "tissue.nii.gz"), "--out", str(out), "-q", "--device", "cpu"]) == 0
    labels = read_image(spade_axis2 / "tissue.nii.gz")
    assert np.array_equal(seen["labels"], take_slices(labels.data, 2))  # (x, z, y): not transposed slices
    assert seen["spacing"] == (1.0, 2.0)  # (z, y), the slices' own order
    made = read_image(out)
    assert made.data.shape == labels.data.shape and made.geometry.same_grid(labels.geometry)


def test_ctrl_c_during_inference_is_one_line_and_writes_nothing(spade_axis2, monkeypatch, capsys):
    real = conditional_gan.synthesize_from_labels

    def interrupted(*args, **kw):  # the user presses Ctrl-C once while the images are made
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kw)

    monkeypatch.setattr(conditional_gan, "synthesize_from_labels", interrupted)
    out = spade_axis2 / "stopped.nii.gz"
    assert main(["gan-synthesize", "--model", str(spade_axis2 / "spade.medgen.pt"), "--labels",
                 str(spade_axis2 / "tissue.nii.gz"), "--out", str(out), "-q", "--device", "cpu"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "napari-medgen: stopped; nothing more was written." and "Traceback" not in "".join(err)
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:Fewer than 2 images")  # a 1-step classifier is enough to list files
def test_classify_says_which_files_it_skipped_as_label_files(tmp_path, brain, capsys):
    geo = Geometry(brain.geometry.spacing[1:], brain.geometry.origin[1:], np.eye(2))
    images = [ImageData(brain.data[z].astype(np.float32) * (1 + i % 2), geo) for i, z in enumerate(range(30, 70, 5))]
    model, _ = train_classifier(images, ["a", "b"] * 4, size=(32, 32), steps=1, device="cpu",
                                body={"channels": [8, 16], "strides": [2], "num_res_units": 0})
    model.save(tmp_path / "cls.medgen.pt")
    scans = tmp_path / "scans"
    names = ("chest_001.nii.gz", "premask_003.nii.gz", "liver_segs.nii.gz")
    for name in names:
        write_image(scans / name, images[0].data, geo)
    out = tmp_path / "probs.csv"
    assert main(["classify", str(scans), "--model", str(tmp_path / "cls.medgen.pt"), "--out", str(out), "-q",
                 "--device", "cpu"]) == 0
    rows = [r["file"] for r in csv.DictReader(out.open())]
    err = capsys.readouterr().err
    assert rows == [str(scans / "chest_001.nii.gz")]
    assert "skipping 2 label files" in err and "premask_003.nii.gz" in err and "liver_segs.nii.gz" in err


def test_cohort_budget_in_steps_validates_by_steps_only(tmp_path, monkeypatch):
    """However slow the machine (here a clock that runs 100 s per reading), validation comes every tenth of
    the steps, so a seeded run returns the same weights."""
    clock = {"t": 0.0}

    def monotonic():
        clock["t"] += 100.0
        return clock["t"]

    monkeypatch.setattr(fit_module, "time", types.SimpleNamespace(monotonic=monotonic))
    root = make_cohort(tmp_path / "ds", n=3, depth=6)
    _, history = train_cohort(root, steps=20, channels=(8, 16), batch_size=2, augment=False, device="cpu")
    assert history["val_step"] == list(range(2, 21, 2))


def test_budget_and_axis_help_say_what_is_true():
    sub = build_parser()._subparsers._group_actions[0].choices

    def help_of(verb, option):
        return next(a.help for a in sub[verb]._actions if option in a.option_strings)

    for verb in ("gan-train", "classify-train", "sequence-train", "train-cohort"):  # fit() starts their clock
        assert "preparing the images do not count" in help_of(verb, "--seconds")
    for verb in ("train", "vae-train"):  # their budget bounds the whole call
        assert "preparing the images counts" in help_of(verb, "--seconds")
    axis = help_of("gan-train", "--axis")
    assert "0 is axial" not in axis and "first stored axis" in axis
    assert "--device" not in sub["gan-report"]._option_string_actions  # it computes on the CPU
    pacs = sub["pacs"]._subparsers._group_actions[0].choices
    assert "--quiet" not in pacs["find"]._option_string_actions  # no progress bar to silence


def test_a_plain_value_error_is_a_bug_not_a_user_error(spade_axis2, tmp_path, monkeypatch):
    def broken(*args, **kw):
        raise ValueError("torch.cat(): expected a non-empty list of Tensors")

    monkeypatch.setattr(conditional_gan, "synthesize_from_labels", broken)
    with pytest.raises(ValueError, match="torch.cat"):  # a traceback, not 'error: torch.cat()...' and status 2
        main(["gan-synthesize", "--model", str(spade_axis2 / "spade.medgen.pt"), "--labels",
              str(spade_axis2 / "tissue.nii.gz"), "--out", str(tmp_path / "s.nii.gz"), "-q", "--device", "cpu"])


def test_sequence_classes_seen_once_train_on_the_training_set(tmp_path, capsys):
    rng = np.random.default_rng(0)
    with open(tmp_path / "t.csv", "w") as fh:
        fh.write("file,target\n")
        for k, c in enumerate("abcde"):
            write_image(tmp_path / f"s{k}.nii.gz", rng.random((4, 16, 16), dtype=np.float32), Geometry.identity(3))
            fh.write(f"s{k}.nii.gz,{c}\n")
    assert main(["sequence-train", str(tmp_path), str(tmp_path / "t.csv"), "--out", str(tmp_path / "s.medgen.pt"),
                 "--steps", "2", "--size", "16", "16", "-q", "--device", "cpu"]) == 0
    assert "(on the training set: too few series per class to hold any out)" in capsys.readouterr().out


def test_pacs_push_overwrites_its_saved_seg_only_when_asked(tmp_path, monkeypatch, capsys):
    seg = pydicom.Dataset()
    seg.file_meta = pydicom.dataset.FileMetaDataset()
    seg.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    seg.SeriesInstanceUID, seg.SOPInstanceUID, seg.SOPClassUID = "1.2.3.4", "1.2.3.4.1", "1.2.840.10008.5.1.4.1.1.66.4"
    monkeypatch.setattr(pacs_client, "push_labels", lambda *a, **k: seg)
    labels, saved = tmp_path / "labels.nii.gz", tmp_path / "seg.dcm"
    write_image(labels, np.zeros((4, 8, 8), np.uint8), Geometry.identity(3))
    saved.write_bytes(b"an earlier SEG")
    args = ["pacs", "push", "--url", "http://pacs:8042/dicom-web", "--reference-series", "1.2.3", str(labels),
            "--save", str(saved), "-q"]
    assert main(args) == 2
    assert "use --overwrite" in capsys.readouterr().err and saved.read_bytes() == b"an earlier SEG"
    assert main([*args, "--overwrite"]) == 0  # the flag the message names exists
    assert pydicom.dcmread(saved).SeriesInstanceUID == "1.2.3.4"

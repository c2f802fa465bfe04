"""2D inputs through the batch verbs and results: a folder of single-file DICOM series (one output and one table
row per file, in file order), output formats refused before training, areas (not volumes) of 2D labels, the
classifier's warnings on an image unlike its training images, and no spacing doubt for a fine-tune whose grid is
its own image shrunk."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_medgen.cli import main
from napari_medgen.errors import UserError
from napari_medgen.io import Geometry, ImageData, read_image, write_image
from napari_medgen.tasks.classify import classify, train_classifier
from napari_medgen.tasks.classify_training import NotValidatedWarning
from napari_medgen.tasks.finetune import finetune
from napari_medgen.tasks.metrics import metrics_to_csv
from napari_medgen.tasks.segment import segment_result
from napari_medgen._widgets.segment_widget import segment_and_score


def write_cr(path, pixels: np.ndarray, series_uid: str, spacing: float = 0.3) -> None:
    """A CR file: series number 1 and description "CR chest", as every single-image X-ray of a folder has."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", series_uid
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = "CR", 1, "CR chest", 1
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def xrays(tmp_path_factory, brain):
    """Two X-rays of one name in two folders (a/IM0001, b/IM0001), of different sizes; the second file's series
    UID sorts first."""
    d = tmp_path_factory.mktemp("xrays")
    write_cr(d / "a" / "IM0001", brain.data[40, :64, :64] * 10, "1.2.3.4.9")
    write_cr(d / "b" / "IM0001", brain.data[44, :48, :56] * 10, "1.2.3.4.1")
    return d


@pytest.fixture(scope="module")
def classifier(brain):
    """A classifier trained on 1 mm crops (64 mm across): 0.3 mm X-rays are far narrower than its images."""
    crops = [ImageData(brain.data[z, :64, :64].astype(np.float32), Geometry.identity(2), f"c{z}")
             for z in range(30, 70, 5)]
    with pytest.warns(NotValidatedWarning):
        model, _ = train_classifier(crops, ["a", "b"] * 4, steps=2, size=(32, 32), device="cpu", val_fraction=0)
    return model


def test_a_folder_of_one_named_xrays_gives_an_output_and_a_row_per_file_in_file_order(xrays, classifier, tmp_path,
                                                                                    capsys):
    files = [xrays / "a" / "IM0001", xrays / "b" / "IM0001"]
    assert main(["segment", str(xrays), str(tmp_path / "segs"), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "segs" / "segment_summary.csv")))
    assert [r["input"] for r in rows] == [str(f) for f in files] and {r["status"] for r in rows} == {"written"}
    assert [read_image(r["output"]).data.shape for r in rows] == [(64, 64), (48, 56)]  # each from its own file
    model = tmp_path / "clf.medgen.pt"
    classifier.save(model)
    capsys.readouterr()
    assert main(["classify", str(xrays), "-m", str(model), "-o", str(tmp_path / "p.csv"), "--heatmaps",
                 str(tmp_path / "hm"), "--quiet"]) == 0
    table = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["file"] for r in table] == [str(f) for f in files]
    heatmaps = sorted((tmp_path / "hm").iterdir())
    assert [read_image(h).data.shape for h in heatmaps] == [(64, 64), (48, 56)]
    err = capsys.readouterr().err  # the mismatch, said of each file
    assert [f"warning: {f}: The image spans" in err for f in files] == [True, True] and "far less than" in err


def test_an_output_format_that_cannot_be_written_is_refused_before_training(brain, tissue, tmp_path, capsys):
    write_image(tmp_path / "x.nii.gz", brain.data[40], Geometry.identity(2))
    write_image(tmp_path / "labels.nii.gz", (tissue.data[40] == 3).astype(np.uint8), Geometry.identity(2))
    assert main(["train", str(tmp_path / "x.nii.gz"), str(tmp_path / "labels.nii.gz"), "--out",
                 str(tmp_path / "m.medgen.pt"), "--predict", str(tmp_path / "pred.png"), "--steps", "2"]) == 2
    assert "Cannot write pred.png" in capsys.readouterr().err
    assert not (tmp_path / "m.medgen.pt").exists()  # nothing trained, nothing written
    assert main(["gan-synthesize", "--model", str(tmp_path / "x.nii.gz"), "--out", str(tmp_path / "s.png")]) == 2
    assert "Cannot write s.png" in capsys.readouterr().err  # said before the model is even read


def test_2d_labels_are_measured_in_square_centimetres(brain, tmp_path):
    image = ImageData(brain.data[40], Geometry((0.3, 0.3), (0.0, 0.0), np.eye(2)), "x-ray")
    scored = segment_and_score(image, "brain-tissue-2d", device="cpu")
    res = scored.result
    assert scored.size_name == "area cm²"
    assert scored.sizes["white matter"] == pytest.approx((res.labels == 3).sum() * 0.09 / 100)
    with pytest.raises(UserError, match="areas in cm²"):
        res.volumes_ml()
    text = metrics_to_csv(areas=scored.sizes)
    assert text.splitlines()[0] == "class,area_cm2"
    volume = segment_and_score(brain, "brain-tissue-2d", device="cpu")  # 3D: unchanged
    assert volume.size_name == "volume mL" and volume.sizes == volume.result.volumes_ml()


def test_the_classifier_warns_when_an_image_spans_another_field_of_view(brain, classifier):
    crop = brain.data[50, :64, :64].astype(np.float32)
    same = classify(classifier, ImageData(crop, Geometry.identity(2), "1 mm"), heatmap=False, device="cpu")
    assert same.warnings == []
    with pytest.warns(UserWarning, match="far less than"):
        fine = classify(classifier, ImageData(crop, Geometry((0.3, 0.3), (0.0, 0.0), np.eye(2)), "0.3 mm"),
                        heatmap=False, device="cpu")
    assert len(fine.warnings) == 1 and "19 mm" in fine.warnings[0]
    big = np.tile(crop, (30, 30))  # 1920 mm across, like a whole radiograph against 64 mm crops
    with pytest.warns(UserWarning, match="sees only the middle 64 mm"):
        wide = classify(classifier, ImageData(big, Geometry.identity(2), "wide"), heatmap=False, device="cpu")
    assert any("1920 mm, far more than" in w for w in wide.warnings)
    with pytest.warns(UserWarning, match="larger"):
        coarse = classify(classifier, ImageData(crop[::8, ::8], Geometry((8.0, 8.0), (0.0, 0.0), np.eye(2)),
                                                "coarse"), heatmap=False, device="cpu")
    assert any("more than 2 times larger" in w for w in coarse.warnings)


def test_a_fine_tune_on_its_own_image_shrunk_to_fit_does_not_doubt_that_image():
    yy, xx = np.mgrid[:400, :400]
    disk = (yy - 200) ** 2 + (xx - 200) ** 2 < 170 ** 2
    image = ImageData((disk * 1000 + np.random.default_rng(0).normal(0, 50, disk.shape)).astype(np.float32),
                      Geometry.identity(2), "x-ray")
    model, _ = finetune("fresh", image, disk.astype(np.uint8), steps=6, seconds=None, batch_size=2,
                        patch_size=(48, 48), device="cpu")
    assert model.params.spacing[0] > 2  # the 400 mm image on a grid of more than 2 mm
    assert segment_result(image, model, device="cpu").warnings == []
    coarse = ImageData(image.data[::8, ::8], Geometry((8.0, 8.0), (0.0, 0.0), np.eye(2)), "coarse")
    assert any("times larger" in w for w in segment_result(coarse, model, device="cpu").warnings)


def test_the_panels_show_areas_of_an_x_ray_and_the_classifier_s_doubt(make_napari_viewer, qtbot, brain, classifier):
    from napari_medgen._widgets.classify_widget import ClassifyWidget
    from napari_medgen._widgets.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(brain.data[40], scale=(0.3, 0.3), name="x-ray")  # as users do: the image, then the panels
    seg, cls = SegmentWidget(viewer), ClassifyWidget(viewer)
    seg.device.setCurrentText("cpu")
    seg.run()
    qtbot.waitUntil(lambda: seg.last is not None, timeout=60_000)
    assert seg.results.horizontalHeaderItem(1).text() == "area cm²"
    cls.model = classifier
    cls.image.value = viewer.layers["x-ray"]
    cls.classify()
    qtbot.waitUntil(lambda: cls.result is not None, timeout=60_000)
    assert cls.warnings_label.isVisibleTo(cls) and "far less than" in cls.warnings_label.text()

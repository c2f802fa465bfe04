"""Cohort training on 2D datasets (X-ray, ultrasound, exported slices): PNG and 2D NIfTI cases, 0/255 masks."""
import numpy as np
import pytest
import SimpleITK as sitk

from napari_medgen import Model, read_image, train_cohort, write_image
from napari_medgen.cli import main
from napari_medgen.data.datasets import DatasetError, discover, fingerprint, read_case
from napari_medgen.io import Geometry
from napari_medgen.models.config import Task
from napari_medgen.sample_data import brain_t1, brain_tissue

TINY = {"channels": (8, 16, 32), "batch_size": 4, "device": "cpu"}
SLICES = list(range(30, 62, 4))  # 8 axial slices of the sample brain; 64 is held out


def _png(path, arr):
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=arr.ndim == 3), str(path))


def _grey8(img):
    return (np.clip(img / np.percentile(brain_t1().data, 99.5), 0, 1) * 255).astype(np.uint8)


def make_png_cohort(root):
    """Grey uint8 slices with 0/255 brain masks, as chest X-ray lung-mask datasets come."""
    for d in ("imagesTr", "labelsTr"):
        (root / d).mkdir(parents=True)
    t1, tissue = brain_t1(), brain_tissue()
    for i, z in enumerate(SLICES):
        _png(root / "imagesTr" / f"xr{i:02d}.png", _grey8(t1.data[z]))
        _png(root / "labelsTr" / f"xr{i:02d}.png", (tissue.data[z] > 0).astype(np.uint8) * 255)
    return root


def make_nifti_cohort(root):
    """2D NIfTI slices (2 mm) with their tissue maps; sl07 is a one-slice 3D NIfTI with 5 mm between slices."""
    for d in ("imagesTr", "labelsTr"):
        (root / d).mkdir(parents=True)
    t1, tissue = brain_t1(), brain_tissue()
    plane = Geometry((2.0, 2.0), (-90.0, -126.0), np.eye(2))
    for i, z in enumerate(SLICES):
        img, lab, geo = t1.data[z], tissue.data[z].astype(np.uint8), plane
        if i == 7:
            img, lab, geo = img[None], lab[None], Geometry((5.0, 2.0, 2.0), (10.0, -90.0, -126.0))
        write_image(root / "imagesTr" / f"sl{i:02d}_0000.nii.gz", img, geo)
        write_image(root / "labelsTr" / f"sl{i:02d}.nii.gz", lab, geo)
    return root


@pytest.fixture(scope="module")
def png_cohort(tmp_path_factory):
    return make_png_cohort(tmp_path_factory.mktemp("c2d") / "Dataset010_Masks")


def test_png_cohort_trains_with_the_verb_and_segments_a_picture(png_cohort, tmp_path, capsys):
    """PNG cases were 'no labelled cases'; a 0/255 mask must train a two-class model, not a 256-class one."""
    ds = discover(png_cohort)
    assert [c.name for c in ds.cases] == [f"xr{i:02d}" for i in range(8)]
    assert fingerprint(ds.cases) == {"spacing": [1.0, 1.0], "shape": [117, 99], "orientation": None}
    out = tmp_path / "masks.medgen.pt"
    assert main(["train-cohort", str(png_cohort), "--out", str(out), "--steps", "20", "--channels", "8,16,32",
                 "--batch-size", "4", "--device", "cpu", "-q"]) == 0
    said = capsys.readouterr().err.strip().splitlines()  # two lines, not one per picture
    assert said == ["napari-medgen: warning: 8 images (xr00.png, ...) give no pixel spacing, so 1 mm per pixel is "
                    "assumed; the model's sizes in mm are sizes in pixels.",
                    "napari-medgen: warning: The label files hold 0 and 255 only: binary masks, so 255 is trained "
                    "as class 1 (the model labels the foreground 1)."]
    model = Model.load(out, expect=Task.SEGMENTATION)
    p = model.params
    assert p.spatial_dims == 2 and [c["name"] for c in p.classes] == ["background", "foreground"]
    assert p.spacing == [1.0, 1.0]
    assert model.config.training["label_map"] == {"255": 1} and model.config.training["steps"] == 20
    held = tmp_path / "held.png"
    _png(held, _grey8(brain_t1().data[64]))
    seg = tmp_path / "held_seg.nii.gz"
    assert main(["segment", str(held), str(seg), "--model", str(out), "--device", "cpu", "-q"]) == 0
    labels = read_image(seg)
    assert labels.data.shape == (117, 99) and set(np.unique(labels.data)) <= {0, 1}
    truth = brain_tissue().data[64] > 0
    dice = 2 * (truth & (labels.data == 1)).sum() / (truth.sum() + (labels.data == 1).sum())
    assert dice > 0.6, dice  # 20 steps of a tiny net already find the head


def test_nifti_2d_cohort_keeps_spacing_and_segments_a_slice_on_its_grid(tmp_path):
    root = make_nifti_cohort(tmp_path / "Dataset011_Slices")
    cases = discover(root).cases
    image, labels = read_case(cases[7])  # the one-slice 3D file: its own spacing across the slice
    assert image.data.shape == labels.shape == (1, 117, 99) and image.geometry.spacing == (5.0, 2.0, 2.0)
    image, _ = read_case(cases[0])
    assert image.geometry.spacing == (1.0, 2.0, 2.0) and image.geometry.origin == (0.0, -90.0, -126.0)
    model, history = train_cohort(root, steps=20, seed=3, **TINY)
    p = model.params
    assert p.spatial_dims == 2 and p.spacing == [2.0, 2.0] and len(p.classes) == 4 and p.orientation is None
    assert history["best_metric"] is not None
    # a held-out slice at 1 mm: resampled to the model's 2 mm and back onto its own grid
    t1 = brain_t1()
    fine = sitk.Resample(sitk.GetImageFromArray(t1.data[64].astype(np.float32)), (198, 234), sitk.Transform(),
                         sitk.sitkLinear, (0.0, 0.0), (0.5, 0.5))
    held = tmp_path / "held.nii.gz"
    write_image(held, sitk.GetArrayFromImage(fine), Geometry.identity(2))
    seg = tmp_path / "held_seg.nii.gz"
    assert main(["segment", str(held), str(seg), "--model", _saved(model, tmp_path), "--device", "cpu", "-q"]) == 0
    out = read_image(seg)
    assert out.data.shape == (234, 198) and out.geometry.spacing == (1.0, 1.0)
    assert set(np.unique(out.data)) <= {0, 1, 2, 3} and (out.data > 0).mean() > 0.2


def _saved(model, folder):
    model.save(folder / "slices.medgen.pt")
    return str(folder / "slices.medgen.pt")


def test_2d_user_errors_are_one_sentence(png_cohort, tmp_path, capsys):
    out = str(tmp_path / "m.medgen.pt")
    assert main(["train-cohort", str(png_cohort), "--out", out, "--dims", "3", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2D images, and a 3D U-Net needs volumes: train them in 2D (--dims 2)" in err[0]
    with pytest.raises(DatasetError, match="leave the slice axis at 0"):
        train_cohort(png_cohort, axis=1, steps=1, **TINY)
    # a volume among the pictures
    mixed = make_png_cohort(tmp_path / "mixed")
    for folder, name in (("imagesTr", "vol_0000.nii.gz"), ("labelsTr", "vol.nii.gz")):
        write_image(mixed / folder / name, brain_tissue().data[30:40].astype(np.uint8), Geometry())
    with pytest.raises(DatasetError, match=r"mixes 2D images \(xr00, xr01, xr02 and 5 more\) with 3D volumes \(vol\)"):
        train_cohort(mixed, steps=1, **TINY)
    (mixed / "dataset.json").write_text('{"file_ending": ".png"}')  # nnU-Net v2: the cases' files end so
    assert len(discover(mixed).cases) == 8
    # colour: grey saved as RGB is grey; real colour is refused, naming the file
    rgb = make_png_cohort(tmp_path / "rgb")
    grey = _grey8(brain_t1().data[SLICES[0]])
    _png(rgb / "imagesTr" / "xr00.png", np.stack([grey] * 3, -1))
    cases = discover(rgb).cases
    image, _ = read_case(cases[0])
    assert image.data.shape == (1, 117, 99)
    _png(rgb / "imagesTr" / "xr01.png", np.stack([grey, grey // 2, grey], -1))
    with pytest.raises(DatasetError, match=r"^xr01.png is a colour image; .* save it in grey values"):
        read_case(cases[1])
    _png(rgb / "labelsTr" / "xr00.png", np.stack([grey > 100, grey > 200, grey > 300], -1).astype(np.uint8))
    with pytest.raises(DatasetError, match=r"^xr00.png is a colour image \(a palette PNG\?\); label files hold class"):
        read_case(cases[0])


def test_dicom_slices_with_png_masks(tmp_path, dicom_writer):
    """X-ray-like datasets: one DICOM file per case (with its pixel size) and a PNG mask of no pixel size, which
    lies on its image's grid."""
    root = tmp_path / "Dataset012_Dicom"
    for d in ("imagesTr", "labelsTr"):
        (root / d).mkdir(parents=True)
    t1, tissue = brain_t1(), brain_tissue()
    vol = sitk.GetImageFromArray(t1.data[SLICES[0]:SLICES[0] + 3])
    vol.SetSpacing((1.5, 1.5, 4.0))
    for i, path in enumerate(sorted(dicom_writer(vol, tmp_path / "series", reverse_names=False))):
        path.rename(root / "imagesTr" / f"cr{i}.dcm")
        _png(root / "labelsTr" / f"cr{i}.png", (tissue.data[SLICES[0] + i] > 0).astype(np.uint8) * 255)
    (root / "dataset.json").write_text('{"channel_names": {"0": "CR"}, "labels": {"background": 0, "lung": 1}}')
    ds = discover(root)
    assert [c.name for c in ds.cases] == ["cr0", "cr1", "cr2"] and ds.classes == ["background", "lung"]
    image, labels = read_case(ds.cases[1])
    assert image.data.shape == labels.shape == (1, 117, 99) and image.geometry.spacing[1:] == (1.5, 1.5)
    assert image.geometry.origin == (4.0, 0.0, 0.0)  # the slice's place in 3D, from its file
    assert fingerprint(ds.cases)["spacing"] == [1.5, 1.5]


def test_the_segment_panel_runs_a_2d_cohort_model_on_a_picture(make_napari_viewer, qtbot, png_cohort, tmp_path):
    from napari_medgen._widgets.segment_widget import SegmentWidget

    model, _ = train_cohort(png_cohort, steps=20, **TINY)
    model.save(tmp_path / "masks.medgen.pt")
    viewer = make_napari_viewer()
    picture = _grey8(brain_t1().data[64])
    layer = viewer.add_image(picture, name="X-ray")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    widget.image.value = layer
    widget.model.setCurrentText(str(tmp_path / "masks.medgen.pt"))
    widget.device.setCurrentText("cpu")
    states = []
    widget.runner.done.connect(states.append)
    widget.run()
    qtbot.waitUntil(lambda: bool(states), timeout=60_000)
    assert states == ["finished"]
    out = widget.output
    assert out.data.shape == picture.shape and set(np.unique(out.data)) <= {0, 1} and (out.data == 1).mean() > 0.2
    assert np.array_equal(layer.data, picture)

"""The bad-input matrix: every bad file, array, model file or CLI argument ends in one clear sentence
(a UserError, or CLI exit status 2 with one line on stderr) or is handled correctly, never a
traceback, a silent wrong result or a model file's code running without consent."""
from __future__ import annotations

import gzip
import importlib
import json
import os
import pickle
import shutil
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from napari_medgen import (ImageData, ImageInputError, Model, ModelFileError, ModelMismatchWarning,
                           finetune, label_volumes_ml, load_segmentation_model, metrics_to_csv, read_path,
                           segment, segment_result, segmentation_config, write_image)
from napari_medgen.cli import main
from napari_medgen.data.annotations import AnnotationError
from napari_medgen.errors import UserError
from napari_medgen.io.read import ImageReadError, ImageReadWarning
from napari_medgen.models.checkpoint import FORMAT
from napari_medgen.models.config import CONFIG_VERSION


def one_sentence(err: BaseException) -> str:
    text = str(err)
    assert isinstance(err, (UserError, FileExistsError)), f"{type(err).__name__}: {text}"
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Model(segmentation_config("tiny", 2, channels=(4, 8), strides=(2,), num_res_units=0))


@pytest.fixture(scope="module")
def vol():
    arr = (np.arange(12 * 20 * 24) % 97).reshape(12, 20, 24).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.0))
    return img


# --- files -------------------------------------------------------------------------------------------
def _truncated(ext):
    def make(tmp, vol):
        sitk.WriteImage(vol, str(tmp / f"full{ext}"), False)
        data = (tmp / f"full{ext}").read_bytes()
        (tmp / f"bad{ext}").write_bytes(data[: len(data) // 2])
        return tmp / f"bad{ext}"
    return make


def _mhd_short_raw(tmp, vol):
    sitk.WriteImage(vol, str(tmp / "bad.mhd"), False)
    raw = tmp / "bad.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    return tmp / "bad.mhd"


def _nii_claiming_1gb(tmp, vol):
    sitk.WriteImage(vol, str(tmp / "full.nii"), False)
    head = bytearray((tmp / "full.nii").read_bytes()[:352])
    struct.pack_into("<4h", head, 40, 3, 1024, 1024, 512)  # int16 voxels: 1 GiB announced
    (tmp / "bad.nii").write_bytes(bytes(head) + bytes(256))  # 608 bytes
    return tmp / "bad.nii"


def _text(name, content):
    def make(tmp, vol):
        (tmp / name).write_bytes(content)
        return tmp / name
    return make


def _dicom_mixed_sizes(tmp, vol):
    from conftest import write_dicom_series

    files = write_dicom_series(vol, tmp / "mixed", reverse_names=False)
    other = write_dicom_series(sitk.GetImageFromArray(np.zeros((1, 8, 8), np.int16)), tmp / "odd")
    pydicom = pytest.importorskip("pydicom")
    ref, odd = pydicom.dcmread(files[0]), pydicom.dcmread(other[0])
    odd.SeriesInstanceUID, odd.SOPInstanceUID = ref.SeriesInstanceUID, ref.SOPInstanceUID + ".99"
    odd.ImagePositionPatient = [0, 0, 100]
    odd.save_as(tmp / "mixed" / "odd.dcm")
    return tmp / "mixed"


def _dicom_conflicting_duplicate(tmp, vol):
    from conftest import write_dicom_series

    files = write_dicom_series(vol, tmp / "dup", reverse_names=False)
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(files[3])
    ds.SOPInstanceUID += ".2"
    ds.PixelData = (ds.pixel_array + 1).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(tmp / "dup" / "echo2.dcm")
    return tmp / "dup"


BAD_FILES = {
    "truncated .nii": (_truncated(".nii"), "truncated"),
    "truncated .mha": (_truncated(".mha"), "truncated"),
    "truncated .nrrd": (_truncated(".nrrd"), "truncated"),
    "truncated .nii.gz": (_truncated(".nii.gz"), "truncated"),
    "short .raw of .mhd": (_mhd_short_raw, "truncated"),
    "608-byte .nii claiming 1 GB": (_nii_claiming_1gb, "truncated"),
    "empty .nii": (_text("empty.nii", b""), "empty.nii"),
    "text as .nii.gz": (_text("notes.nii.gz", b"hello"), "notes.nii.gz"),
    "gzip of garbage": (_text("junk.nii.gz", gzip.compress(b"junk" * 100)), "junk.nii.gz"),
    "missing file": (lambda tmp, vol: tmp / "nowhere.nii.gz", "does not exist"),
    "DICOM of mixed sizes": (_dicom_mixed_sizes, "different sizes"),
    "DICOM slices sharing a position": (_dicom_conflicting_duplicate, "share a position"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_is_one_sentence(case, tmp_path, vol):
    make, match = BAD_FILES[case]
    path = make(tmp_path, vol)
    t0 = time.perf_counter()
    with pytest.raises(ImageReadError) as err:
        read_path(path)
    assert match in one_sentence(err.value)
    assert time.perf_counter() - t0 < 5  # refused from the header, nothing allocated


def test_dicom_missing_slice_keeps_true_positions(tmp_path, vol, dicom_writer):
    files = dicom_writer(vol, tmp_path / "gap", reverse_names=False)
    files[5].unlink()  # a gap of 4 mm where the series steps by 2 mm
    with pytest.warns(ImageReadWarning, match="not evenly spaced"):
        (item,) = read_path(tmp_path / "gap")
    ref = sitk.GetArrayFromImage(vol)
    assert item.data.shape == ref.shape and item.geometry.spacing[0] == pytest.approx(2.0)
    for k in (0, 4, 6, 11):  # true slices stay at their true positions
        np.testing.assert_array_equal(item.data[k], ref[k])
    np.testing.assert_allclose(item.geometry.index_to_world((11, 0, 0)),
                               np.asarray(vol.TransformIndexToPhysicalPoint((0, 0, 11)))[::-1], atol=1e-3)


def test_dicom_duplicated_file_is_left_out(tmp_path, vol, dicom_writer):
    files = dicom_writer(vol, tmp_path / "dup", reverse_names=False)
    shutil.copy(files[3], tmp_path / "dup" / "copy.dcm")
    with pytest.warns(ImageReadWarning, match="duplicated"):
        (item,) = read_path(tmp_path / "dup")
    np.testing.assert_array_equal(item.data, sitk.GetArrayFromImage(vol))
    assert item.geometry.spacing[0] == pytest.approx(2.0)


def test_unwritable_outputs_are_one_sentence(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError) as err:
        write_image(tmp_path / "afile" / "out.nii.gz", np.zeros((4, 4), np.uint8))
    assert "not a folder" in one_sentence(err.value)
    with pytest.raises(UserError) as err:
        write_image(tmp_path / "out.nii.gz", np.zeros((4, 4), complex))
    one_sentence(err.value)


# --- arrays into segment ---------------------------------------------------------------------------------
BAD_ARRAYS = {
    "empty": (np.zeros((0,), np.float32), {}, "empty"),
    "1D": (np.ones(50, np.float32), {}, "1 dimensions"),
    "scalar": (np.float32(3), {}, "0 dimensions"),
    "4D": (np.ones((2, 3, 16, 16), np.float32), {}, "4 dimensions"),
    "complex": (np.ones((16, 16), np.complex64), {}, "complex"),
    "all NaN": (np.full((16, 16), np.nan, np.float32), {}, "no finite values"),
    "all Inf": (np.full((4, 16, 16), np.inf), {}, "no finite values"),
    "strings": (np.array([["a", "b"], ["c", "d"]]), {}, "numeric"),
    "ragged lists": ([[1, 2, 3], [4, 5]], {}, "regular array"),
    "RGB float picture": (np.random.default_rng(0).random((64, 48, 3), np.float32), {}, "RGB"),
    "RGB uint8 picture": (np.zeros((32, 32, 4), np.uint8), {}, "RGB"),
    "negative spacing": (np.ones((16, 16), np.float32), {"spacing": (-1, 1)}, "positive"),
    "spacing too short": (np.ones((4, 16, 16), np.float32), {"spacing": (1, 1)}, "3 positive"),
    "spacing of words": (np.ones((16, 16), np.float32), {"spacing": ("a", "b")}, "not a list of numbers"),
    "axis 5": (np.ones((4, 16, 16), np.float32), {"axis": 5}, "Axis 5"),
}


@pytest.mark.parametrize("case", BAD_ARRAYS)
def test_bad_array_is_one_sentence(case, tiny):
    image, kwargs, match = BAD_ARRAYS[case]
    with pytest.raises(ImageInputError) as err:
        segment(image, tiny, device="cpu", **kwargs)
    assert match in one_sentence(err.value)


def test_vector_and_4d_files_are_one_sentence(tmp_path, tiny):
    rgb = sitk.GetImageFromArray(np.random.default_rng(0).random((20, 24, 3)).astype(np.float32), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "colour.mha"))
    dyn = sitk.JoinSeries([sitk.GetImageFromArray(np.full((4, 16, 16), t, np.float32)) for t in range(3)])
    sitk.WriteImage(dyn, str(tmp_path / "dyn.nii.gz"))
    for name in ("colour.mha", "dyn.nii.gz"):
        (item,) = read_path(tmp_path / name)
        with pytest.raises(ImageInputError, match="channels or time points") as err:
            segment(item, tiny, device="cpu")
        one_sentence(err.value)


@pytest.mark.parametrize("image", [np.ones((1, 1), np.float32), np.zeros((3, 5, 7), bool),
                                   np.arange(20 * 20, dtype=np.uint32).reshape(20, 20)],
                         ids=["1 pixel", "bool", "uint32"])
def test_odd_but_valid_arrays_are_segmented(image, tiny):
    labels = segment(image, tiny, device="cpu")
    assert labels.shape == image.shape and labels.dtype == np.uint8


def test_nan_voxels_become_background(tiny):
    img = np.random.default_rng(1).random((24, 24)).astype(np.float32)
    img[3:6, 3:6] = np.nan
    labels, probs = segment(img, tiny, device="cpu", return_probabilities=True)
    assert (labels[3:6, 3:6] == 0).all() and np.isfinite(probs).all()


def test_ct_into_the_brain_model_warns_but_segments(brain):
    ct = np.full((2, 256, 256), -1000, np.int16)  # air around a 1.4 mm chest-sized body in HU
    ct[:, 40:220, 20:236] = np.random.default_rng(0).integers(-100, 400, (2, 180, 216))
    with pytest.warns(ModelMismatchWarning) as caught:
        labels = segment(ImageData(ct, type(brain.geometry)((5.0, 1.4, 1.4)), metadata={"modality": "CT"}),
                         "brain-tissue-2d", device="cpu")
    assert labels.shape == ct.shape
    text = " ".join(str(w.message) for w in caught)
    assert "CT" in text and "358 mm" in text and all("\n" not in str(w.message) for w in caught)
    res = segment_result(ct, "brain-tissue-2d", spacing=(5.0, 0.7, 0.7), device="cpu")
    assert any("smaller" in w for w in res.warnings)  # the widget shows these sentences


def test_sample_brain_gives_no_mismatch_warning(brain):
    slab = ImageData(brain.data[44:47], brain.geometry, metadata=brain.metadata)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelMismatchWarning)
        res = segment_result(slab, "brain-tissue-2d", device="cpu")
    assert res.warnings == [] and set(res.volumes_ml()) == {"CSF", "grey matter", "white matter"}


def test_volumes_in_ml_and_csv(tmp_path):
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:5] = 1  # 500 voxels of 2 x 1 x 1 mm = 1 mL
    vols = label_volumes_ml(labels, (2.0, 1.0, 1.0), ["background", "lesion", "oedema"])
    assert vols == {"lesion": pytest.approx(1.0), "oedema": 0.0}
    text = metrics_to_csv({"lesion": {"dice": 0.5, "hd95": 2.0}}, vols, tmp_path / "m.csv")
    assert text.splitlines() == ["class,volume_ml,dice,hd95", "lesion,1,0.5,2", "oedema,0,,"]
    assert (tmp_path / "m.csv").read_text() == text
    with pytest.raises(FileExistsError):
        metrics_to_csv({}, vols, tmp_path / "m.csv")
    with pytest.raises(UserError, match="spacing"):
        label_volumes_ml(labels, None)


# --- model files --------------------------------------------------------------------------------------
class _Touch:
    """A pickle whose loading would create ``marker``: model loaders must never unpickle it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _checkpoint(tmp, **changes):
    cfg = segmentation_config("c", 2, channels=(4, 8), strides=(2,)).to_dict()
    payload = {"format": FORMAT, "version": CONFIG_VERSION, "config": json.dumps(cfg),
               "networks": {"net": Model(segmentation_config("c", 2, channels=(4, 8), strides=(2,))).net.state_dict()}}
    for key, value in changes.items():
        if key == "config" and isinstance(value, dict):
            payload["config"] = json.dumps({**cfg, **value})
        elif value is None:
            payload.pop(key)
        else:
            payload[key] = value
    torch.save(payload, tmp / "m.medgen.pt")
    return tmp / "m.medgen.pt"


def _huge_network(tmp):
    args = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [20000, 40000, 80000],
            "strides": [2, 2], "num_res_units": 0}  # about 90 billion parameters: 360 GB
    return _checkpoint(tmp, config={"networks": {"net": {"arch": "UNet", "args": args}}})


def _pickle_file(tmp):
    with open(tmp / "m.medgen.pt", "wb") as fh:
        pickle.dump(_Touch(tmp / "marker"), fh)
    return tmp / "m.medgen.pt"


def _bundle(tmp, weights=None, inference="configs/inference.json", text=None):
    folder = tmp / "bundle"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    net = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
           "channels": [4, 8], "strides": [2]}
    (folder / inference).write_text(text if text is not None else json.dumps({"network_def": net}))
    if weights is None:
        torch.save(Model(segmentation_config("b", 2, channels=(4, 8), strides=(2,))).net.state_dict(),
                   folder / "models" / "model.pt")
    else:
        with open(folder / "models" / "model.pt", "wb") as fh:
            pickle.dump(weights, fh)
    return folder


BAD_MODELS = {
    "future version": (lambda t: _checkpoint(t, version=CONFIG_VERSION + 1,
                                             config={"version": CONFIG_VERSION + 1}), "newer napari-medgen"),
    "no config": (lambda t: _checkpoint(t, config=None), "without its model config"),
    "no weights": (lambda t: _checkpoint(t, networks=None), "without its model config or weights"),
    "config not JSON": (lambda t: _checkpoint(t, config="{oops"), "unreadable model config"),
    "weights of another net": (lambda t: _checkpoint(t, networks={"net": {"w": torch.zeros(3)}}), "do not fit"),
    "unknown architecture": (lambda t: _checkpoint(t, config={"networks": {"net": {"arch": "os.system", "args": {}}}}),
                             "Unknown network architecture"),
    "absurd arguments": (lambda t: _checkpoint(t, config={"networks": {"net": {"arch": "UNet", "args": {"x": 1}}}}),
                         "arguments of the UNet network are invalid"),
    "360 GB network": (_huge_network, "refusing to build"),
    "a VAE, not a segmenter": (lambda t: _checkpoint(t, config={"task": "vae", "params": {}}), "not a segmentation"),
    "pickle with code": (_pickle_file, "not a napari-medgen model file"),
    "plain state dict": (lambda t: (torch.save({"w": torch.zeros(2)}, t / "w.pt"), t / "w.pt")[1], "not a model file"),
    "bundle with pickled code": (lambda t: _bundle(t, weights=_Touch(t / "marker")), "not a plain weights file"),
    "bundle YAML with python tag": (lambda t: _bundle(t, inference="configs/inference.yaml",
                                                      text=f"network_def: !!python/object/apply:os.system "
                                                           f"['touch {t / 'marker'}']\n"), "not a plain JSON/YAML"),
    "bundle JSON broken": (lambda t: _bundle(t, text="{"), "not a plain JSON/YAML"),
    "empty folder": (lambda t: (t / "empty").mkdir() or t / "empty", "not a MONAI bundle"),
}


@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_model_file_is_one_sentence_and_runs_nothing(case, tmp_path):
    make, match = BAD_MODELS[case]
    path = make(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:
        load_segmentation_model(path)
    assert match in one_sentence(err.value)
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "marker").exists()


def test_a_bare_network_given_as_model_is_one_sentence():
    """segment(image, model.net) ended in "OSError: File name too long: 'UNet(...'"."""
    from napari_medgen.tasks.anomaly import anomaly_map

    net = torch.nn.Conv2d(1, 2, 3)
    img = np.zeros((2, 16, 16), np.float32)
    for call in (lambda: segment(img, net), lambda: anomaly_map(net, img), lambda: load_segmentation_model({})):
        with pytest.raises(UserError, match="Give a napari-medgen Model or a model file, not a"):
            call()


# --- TorchScript is code: never run without consent ---------------------------------------------------
@torch.library.custom_op("medgen_test::touch", mutates_args=())
def _touch_op(x: torch.Tensor, path: str) -> torch.Tensor:
    Path(path).write_text("this model's code ran")
    return x.clone()


@_touch_op.register_fake
def _(x, path):
    return torch.empty_like(x)


class Evil(torch.nn.Module):
    """A scripted 'segmenter' whose forward writes a file."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def forward(self, x):
        y = torch.ops.medgen_test.touch(x, self.marker)
        return torch.cat([y, -y], 1)


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "marker"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(Evil(str(marker)))
    cfg = json.dumps(segmentation_config("evil", 2, channels=(4, 8), strides=(2,)).to_dict())
    torch.jit.save(scripted, str(tmp_path / "evil.ts"), _extra_files={"config.json": cfg})
    torch.jit.save(scripted, str(tmp_path / "bare.pt"))
    return tmp_path / "evil.ts", tmp_path / "bare.pt", marker


def test_torchscript_never_runs_without_consent(evil, tmp_path, capsys):
    path, bare, marker = evil
    img = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    attempts = [lambda: load_segmentation_model(path), lambda: segment(img, path, device="cpu"),
                lambda: finetune(path, img, (img > 0.5).astype(np.uint8), steps=1, device="cpu"),
                lambda: load_segmentation_model(bare, allow_code=True)]  # no config: never probed to guess
    for attempt in attempts:
        with pytest.raises(ModelFileError) as err:
            attempt()
        one_sentence(err.value)
    with pytest.raises(ModelFileError, match="cannot be fine-tuned"):  # no advice to allow code it cannot use
        attempts[2]()
    write_image(tmp_path / "in.nii.gz", img)
    assert main(["segment", str(tmp_path / "in.nii.gz"), str(tmp_path / "out.nii.gz"), "-m", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-torchscript" in err[0]
    # where only napari-medgen model files are taken: one sentence, without torch's advice to call torch.jit.load
    assert main(["classify", str(tmp_path / "in.nii.gz"), "-m", str(path), "-o", str(tmp_path / "p.csv")]) == 2
    assert capsys.readouterr().err.strip() == "napari-medgen: error: evil.ts is a TorchScript file (a program, not a " \
                                                "napari-medgen model file)."
    assert not marker.exists() and not (tmp_path / "out.nii.gz").exists()
    # with consent it runs (proof that the test model really is code)
    segment(img, path, device="cpu", allow_code=True)
    assert marker.exists()


# --- fine-tuning labels ---------------------------------------------------------------------------------
def test_label_value_100000_in_finetuning_is_one_sentence():
    img = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    lab = np.zeros(img.shape, np.int32)
    lab[1, 4:8, 4:8] = 100_000
    with pytest.raises(AnnotationError) as err:
        finetune("fresh", img, lab, steps=1, device="cpu")
    one_sentence(err.value)


# --- the command line -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_nifti(tmp_path_factory, vol):
    path = tmp_path_factory.mktemp("cli") / "in.nii.gz"
    sitk.WriteImage(vol, str(path))
    return path


def _blocked(tmp):
    (tmp / "afile").write_text("x")
    return str(tmp / "afile" / "out.nii.gz")


BAD_COMMANDS = {
    "--device gpu": (lambda i, t: ["segment", i, str(t / "o.nii.gz"), "--device", "gpu"], "auto, cpu"),
    "--device cuda:99": (lambda i, t: ["info", "--device", "cuda:99"], "CUDA"),
    "no arguments": (lambda i, t: ["segment"], "required"),
    "unknown verb": (lambda i, t: ["segmnet"], "invalid choice"),
    "unknown option": (lambda i, t: ["segment", i, str(t / "o.nii.gz"), "--fast"], "unrecognized"),
    "--axis not a number": (lambda i, t: ["segment", i, str(t / "o.nii.gz"), "--axis", "x"], "invalid int"),
    "missing input": (lambda i, t: ["segment", str(t / "nope.nii.gz"), str(t / "o.nii.gz")], "does not exist"),
    "output under a file": (lambda i, t: ["segment", i, _blocked(t)], "not a folder"),
    "output exists": (lambda i, t: (Path(t / "o.nii.gz").write_text("x"),
                                    ["segment", i, str(t / "o.nii.gz")])[1], "--overwrite"),
    "unknown model": (lambda i, t: ["segment", i, str(t / "o.nii.gz"), "-m", "nope"], "neither a built-in"),
    "truncated input": (lambda i, t: ((t / "cut.nii").write_bytes(b"\x5c\x01" + bytes(400)),
                                      ["segment", str(t / "cut.nii"), str(t / "o.nii.gz")])[1], "cut.nii"),
}


@pytest.mark.parametrize("case", BAD_COMMANDS)
def test_bad_command_is_exit_2_and_one_line(case, small_nifti, tmp_path, capsys, monkeypatch):
    seg = importlib.import_module("napari_medgen.tasks.segment")

    monkeypatch.setattr(seg, "segment_result", lambda *a, **k: pytest.fail("computed before refusing"))
    argv = BAD_COMMANDS[case][0](str(small_nifti), tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and BAD_COMMANDS[case][1].lower() in err[0].lower(), err


def test_cli_says_model_mismatch_in_one_line_and_still_writes(tmp_path, capsys):
    ct = np.full((2, 128, 128), -1000, np.int16)
    ct[:, 20:110, 10:118] = np.random.default_rng(0).integers(-100, 400, (2, 90, 108))
    img = sitk.GetImageFromArray(ct)
    img.SetSpacing((3.0, 3.0, 5.0))
    sitk.WriteImage(img, str(tmp_path / "chest.nii.gz"))
    assert main(["segment", str(tmp_path / "chest.nii.gz"), str(tmp_path / "seg.nii.gz"), "-q", "--device", "cpu"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err and all(ln.startswith("napari-medgen: warning: ") for ln in err), err
    assert any("Hounsfield" in ln for ln in err) and any("384 mm" in ln for ln in err)
    assert (tmp_path / "seg.nii.gz").is_file()


# --- VAE masks, synthetic lesions, label CSV rows ---------------------------------------------------------
def test_vae_refuses_a_mask_on_another_grid(brain, tissue):
    """A mask of the image's shape but another origin (another scan's brain mask) would score the wrong voxels."""
    from napari_medgen.io import Geometry
    from napari_medgen.tasks.anomaly import anomaly_map
    from napari_medgen.tasks.vae import reconstruct
    from napari_medgen.tasks.vae_training import train_vae

    geo = Geometry((2.0, 4.0, 4.0))
    vol, head = brain.data[30:42, ::4, ::4], (tissue.data[30:42, ::4, ::4] > 0).astype(np.uint8)
    model, _ = train_vae([ImageData(vol, geo)], [head], steps=2, seconds=None, channels=(8, 16), latent_size=8,
                         batch_size=4, device="cpu")
    image, moved = ImageData(vol, geo), ImageData(head, Geometry((2.0, 4.0, 4.0), (0.0, 12.0, 0.0)))
    for run in (anomaly_map, reconstruct):
        with pytest.raises(UserError, match=r"^The mask is not on the image's voxel grid .*first\.$"):
            run(model, image, moved, device="cpu")
    assert anomaly_map(model, image, ImageData(head, geo), method="residual", device="cpu").score.shape == vol.shape


def test_lesions_that_do_not_fit_are_said(tissue):
    from napari_medgen.data.lesions import LesionRoomWarning, inject_lesions

    small = np.zeros((20, 40, 40), bool)
    small[6:14, 15:25, 15:25] = True  # 4 voxels deep at most
    with pytest.warns(LesionRoomWarning, match=r"^Only 0 of 1 lesions fit: .* at most 4\.0 voxels deep"):
        img, les = inject_lesions(np.ones(small.shape, np.float32), small, n=1, radii=(9.0,))
    assert not les.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LesionRoomWarning)
        assert inject_lesions(np.ones(small.shape, np.float32), small, n=1, radii=(2.0,))[1].any()


@pytest.mark.parametrize("text, row", [("file,label\nscan1.nii.gz,T1\n", 2), ("scan1.nii.gz,T1\n", 1),
                                       ("file,label\n\nscan2.nii.gz,T1\nscan1.nii.gz,T2\n", 4)])
def test_label_csv_rows_are_counted_as_a_spreadsheet_does(tmp_path, text, row):
    """Row numbers in CSV errors are the spreadsheet's: the header is row 1, blank lines count."""
    from napari_medgen.tasks.classify_data import read_label_csv

    (tmp_path / "scan2.nii.gz").write_bytes(b"")
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(UserError, match=rf"^Row {row} of labels.csv names scan1.nii.gz, which is not in "):
        read_label_csv(tmp_path / "labels.csv")

"""One rule for writing under a temporary name: every writer leaves the user's old file and no temporary one when
it fails midway, and errors name the user's path."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from napari_medgen.atomic import final_path, partial_path, replacing
from napari_medgen.engine.distributed import merge_summary
from napari_medgen.engine.jobs import Cancelled
from napari_medgen.errors import UserError
from napari_medgen.io import timeseries, write
from napari_medgen.models import checkpoint
from napari_medgen.models.segmentation import load_segmentation_model
from napari_medgen.pacs import servers
from napari_medgen.pacs.seg import write_seg

OLD = b"the user's earlier file"


@pytest.mark.parametrize("name, temp", [("x.nii.gz", ".x.partial.nii.gz"), ("echo.1.nrrd", ".echo.1.partial.nrrd"),
                                        ("seg.dcm", ".seg.partial.dcm"), ("m.medgen.pt", ".m.medgen.partial.pt"),
                                        ("pacs_servers.json", ".pacs_servers.partial.json"), ("notes", ".notes.partial")])
def test_temporary_names_are_hidden_beside_keep_the_extension_and_map_back(tmp_path, name, temp):
    assert partial_path(tmp_path / name) == tmp_path / temp
    assert final_path(tmp_path / temp) == tmp_path / name
    assert final_path(tmp_path / temp / name) == tmp_path / name  # a file in a temporary folder (.mhd + data)
    assert final_path(tmp_path / name) == tmp_path / name


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), Cancelled()])
@pytest.mark.parametrize("folder", [False, True])
def test_a_failed_or_cancelled_write_keeps_the_old_file_and_leaves_nothing(tmp_path, failure, folder):
    out = tmp_path / "x.mhd"
    out.write_bytes(OLD)
    with pytest.raises(type(failure)):
        with replacing(out, folder=folder) as tmp:
            (tmp / "x.zraw" if folder else tmp).write_bytes(b"half")
            raise failure
    assert [f.name for f in tmp_path.iterdir()] == ["x.mhd"] and out.read_bytes() == OLD
    with replacing(out, folder=folder) as tmp:
        (tmp / "x.mhd" if folder else tmp).write_bytes(b"new")
    assert out.read_bytes() == b"new" and [f.name for f in tmp_path.iterdir()] == ["x.mhd"]
    with pytest.raises(FileExistsError, match="already exists; not overwriting it"):
        with replacing(out, overwrite=False):
            pass


def test_what_a_killed_write_left_does_not_block_the_next(tmp_path):
    out = tmp_path / "cine.nii.gz"
    partial_path(out).write_bytes(b"half")  # a time series write killed midway (a file) ...
    write.write_image(out, np.ones((2, 3, 4), np.uint8))  # ... where write_image wants its folder
    partial_path(out).mkdir()
    (partial_path(out) / out.name).write_bytes(b"half")  # and the other way round
    timeseries.write_time_series(out, np.ones((2, 3, 4), np.uint8), overwrite=True)
    assert [f.name for f in tmp_path.iterdir()] == [out.name]
    assert sitk.ReadImage(str(out)).GetDimension() == 4


def _breaks_midway(written):
    """A stand-in writer that writes half a file to the path it is given, then fails."""
    def writer(*args, **kwargs):
        path = next(a for a in args if isinstance(a, str) or hasattr(a, "parent"))
        with open(path, "wb") as fh:
            fh.write(b"half")
        written.append(str(path))
        raise RuntimeError("disk full")
    return writer


def _only_old(tmp_path, out):
    return [f.name for f in tmp_path.iterdir()] == [out.name] and out.read_bytes() == OLD


@pytest.mark.parametrize("module, name", [(write, "x.nii.gz"), (write, "x.mhd"), (timeseries, "cine.nii.gz")])
def test_image_writers_that_fail_midway_keep_the_old_file(tmp_path, monkeypatch, module, name):
    out, written = tmp_path / name, []
    out.write_bytes(OLD)
    monkeypatch.setattr(module.sitk, "WriteImage", _breaks_midway(written))
    data = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(UserError, match=f"Cannot write {out}: disk full"):
        if module is write:
            write.write_image(out, data, overwrite=True)
        else:
            timeseries.write_time_series(out, data, overwrite=True)
    assert final_path(written[0]) == out and _only_old(tmp_path, out)


def test_model_dicom_and_table_writers_that_fail_midway_keep_the_old_file(tmp_path, monkeypatch):
    written = []
    model = tmp_path / "m.medgen.pt"
    model.write_bytes(OLD)
    monkeypatch.setattr(checkpoint.torch, "save", _breaks_midway(written))
    with pytest.raises(RuntimeError):
        load_segmentation_model("brain-tissue-2d").save(model)
    monkeypatch.undo()
    assert _only_old(tmp_path, model)
    model.unlink()

    seg = tmp_path / "seg.dcm"
    seg.write_bytes(OLD)

    class HalfSeg:
        save_as = staticmethod(_breaks_midway(written))

    with pytest.raises(RuntimeError):
        write_seg(seg, HalfSeg(), overwrite=True)
    assert _only_old(tmp_path, seg)
    with pytest.raises(FileExistsError):
        write_seg(seg, HalfSeg())
    seg.unlink()

    table = tmp_path / "summary.csv"
    table.write_bytes(OLD)
    monkeypatch.setattr(type(table), "write_text", lambda self, *a, **k: _breaks_midway(written)(self))
    with pytest.raises(RuntimeError):
        merge_summary([{"file": "a", "label": 1}], table, ["file", "label"])
    assert _only_old(tmp_path, table)
    table.unlink()

    monkeypatch.setenv(servers.CONFIG_ENV, str(tmp_path))
    servers.servers_file().write_bytes(OLD)
    with pytest.raises(RuntimeError):
        servers.remember_server("http://pacs:8042/dicom-web", "alice")
    assert _only_old(tmp_path, servers.servers_file())
    assert [final_path(w).name for w in written] == ["m.medgen.pt", "seg.dcm", "summary.csv", "pacs_servers.json"]


def test_written_files_read_back(tmp_path):
    out = tmp_path / "x.mhd"
    write.write_image(out, np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    assert sorted(f.name for f in tmp_path.iterdir()) == ["x.mhd", "x.zraw"]
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out))).sum() == 276
    model = load_segmentation_model("brain-tissue-2d")
    model.save(tmp_path / "m.medgen.pt")
    back = checkpoint.Model.load(tmp_path / "m.medgen.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.networks["net"].state_dict().values(),
                                                 back.networks["net"].state_dict().values()))


@pytest.mark.parametrize("temp", [".seg.partial.dcm", ".x.partial.mhd/x.zraw", ".seg.dcm.partial"])
def test_the_runner_names_the_users_path_for_an_error_on_a_temporary_file(temp):
    from napari_medgen._widgets._runner import user_message

    user = "/srv/out/" + ("x.zraw" if "/" in temp else "seg.dcm")
    assert user_message(PermissionError(13, "Permission denied", "/srv/out/" + temp)) == f"{user}: Permission denied."


def test_a_library_error_names_the_users_file_not_the_temporary_one(tmp_path, monkeypatch):
    def failing(img, path, *args):
        raise RuntimeError(f"ITK ERROR: ImageFileWriter: cannot write {path}")

    monkeypatch.setattr(write.sitk, "WriteImage", failing)
    out = tmp_path / "seg.nii.gz"
    with pytest.raises(UserError) as err:
        write.write_image(out, np.zeros((4, 5, 6), np.uint8))
    assert str(err.value).endswith(f"cannot write {out}") and "partial" not in str(err.value)
    assert timeseries.sitk is sitk  # the same module: the time-series writer fails alike
    with pytest.raises(UserError) as err:
        timeseries.write_time_series(tmp_path / "cine.nii.gz", np.zeros((3, 4, 5), np.float32))
    assert "partial" not in str(err.value) and str(tmp_path / "cine.nii.gz") in str(err.value)

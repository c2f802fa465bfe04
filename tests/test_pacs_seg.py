"""DICOM SEG files without a PACS: write from Labels, read back into Labels on the source grid, codes, servers."""
import json
import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from napari_medgen.io import read_path
from napari_medgen.pacs import files
from napari_medgen.pacs.codes import KNOWN, segment_codes
from napari_medgen.pacs.seg import SegError, labels_to_seg, read_seg, series_grid, write_seg
from napari_medgen.pacs.servers import load_servers, remember_server
from orthanc import ct_series  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def ct(ct_series):
    image = read_path(ct_series)[0]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(ct_series.glob("*.dcm"))]
    labels = (image.data > 0).astype(np.uint8) + (image.data > 500)
    return ct_series, image, headers, labels


def test_series_grid_agrees_with_the_image_reader(ct):
    _folder, image, headers, _labels = ct
    ordered, shape, geometry = series_grid(headers)
    assert shape == image.data.shape and geometry.same_grid(image.geometry, atol=1e-4)
    assert [float(d.ImagePositionPatient[2]) for d in ordered] == sorted(float(d.ImagePositionPatient[2])
                                                                          for d in headers)


def test_seg_file_reads_back_as_labels_on_the_source_grid(ct, tmp_path):
    folder, image, headers, labels = ct
    seg = labels_to_seg(labels, image.geometry, headers, ["background", "liver", "bone"], "unet", "1.0")
    case = tmp_path / "case"
    shutil.copytree(folder, case)
    write_seg(case / "seg.dcm", seg)
    ds = pydicom.dcmread(case / "seg.dcm")
    hd.seg.Segmentation.from_dataset(ds)  # highdicom accepts what it wrote
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == image.metadata["series_uid"]
    # a folder with series + SEG: the image, then the labels on its grid
    items = read_path(case)
    assert [i.kind for i in items] == ["image", "labels"]
    assert np.array_equal(items[1].data, labels) and items[1].geometry.same_grid(image.geometry)
    data, kwargs, kind = items[1].layer_data()
    assert kind == "labels" and list(kwargs["features"]["class"]) == ["background", "liver", "bone"]
    # the SEG file alone and a SEG-only folder (refused before) read as labels on the same grid
    for path in (case / "seg.dcm", shutil.copytree(case, tmp_path / "only", ignore=shutil.ignore_patterns("CT*"))):
        (alone,) = read_path(path)
        assert alone.kind == "labels" and np.array_equal(alone.data, labels)
        assert alone.geometry.same_grid(image.geometry)
    with pytest.raises(FileExistsError):
        write_seg(case / "seg.dcm", seg)


def test_labels_of_a_series_shown_in_another_axis_order_are_sent_in_its_order(ct):
    """A sagittal-first series opens axial-first in napari (a permuted affine cannot be drawn); its labels
    must still make the SEG of the series as stored."""
    from napari_medgen.data.orientation import turned
    from napari_medgen.io import ImageData

    _folder, image, headers, labels = ct
    shown = turned(ImageData(labels, image.geometry), ((2, 0, 1), (False, True, False)))
    names = ["background", "liver", "bone"]
    sent = labels_to_seg(np.ascontiguousarray(shown.data), shown.geometry, headers, names)
    assert np.array_equal(sent.pixel_array, labels_to_seg(labels, image.geometry, headers, names).pixel_array)


def test_a_sparse_seg_from_another_tool_lands_on_the_source_grid(ct, tmp_path):
    folder, image, headers, labels = ct
    ordered, _shape, _geo = series_grid(headers)
    mask = np.zeros_like(labels)
    mask[5:7, 10:14, 8:12] = 1  # two slices only: highdicom omits the empty frames
    desc = hd.seg.SegmentDescription(1, "lesion", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion,
                                     hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(ordered, mask, hd.seg.SegmentationTypeValues.BINARY, [desc], hd.UID(), 99,
                              hd.UID(), 1, "other", "tool", "1", "0")
    assert seg.NumberOfFrames == 2
    case = tmp_path / "case"
    shutil.copytree(folder, case)
    seg.save_as(case / "sparse.dcm")
    labels_item = read_path(case)[1]
    assert labels_item.data.shape == image.data.shape and np.array_equal(labels_item.data, mask)


@pytest.mark.parametrize("kind", ["FRACTIONAL", "LABELMAP"])
def test_fractional_and_labelmap_segs_read_as_labels(ct, kind):
    _folder, image, headers, _labels = ct
    ordered, shape, geometry = series_grid(headers)
    truth = np.zeros(shape, np.uint8)
    truth[3:6, 5:10, 5:10], truth[8, 2:4, 2:4] = 1, 2
    descs = [hd.seg.SegmentDescription(k, name, codes.SCT.Tissue, codes.SCT.Tissue, "MANUAL")
             for k, name in ((1, "a"), (2, "b"))]
    pixels = truth if kind == "LABELMAP" else np.stack([(truth == k) * 0.8 for k in (1, 2)], -1).astype(np.float32)
    seg = hd.seg.Segmentation(ordered, pixels, kind, descs, hd.UID(), 99, hd.UID(), 1, "other", "tool", "1", "0")
    out = read_seg(seg, (shape, geometry))
    assert np.array_equal(out.data, truth) and out.metadata["class_names"] == ["background", "a", "b"]


def test_a_seg_beside_two_copies_of_its_series_reads_from_the_instances_it_names(ct, tmp_path, monkeypatch):
    folder, image, headers, labels = ct
    case = tmp_path / "case"
    for copy in ("a", "b"):  # the same series twice (a re-export): refused as "duplicated slices" before
        shutil.copytree(folder, case / copy)
    write_seg(case / "seg.dcm", labels_to_seg(labels, image.geometry, headers, ["background", "liver", "bone"]))
    opened = []
    real = files._header
    monkeypatch.setattr(files, "_header", lambda f, tags: opened.append(f.parent.name) or real(f, tags))
    (item,) = read_path(case / "seg.dcm")
    assert item.kind == "labels" and np.array_equal(item.data, labels)
    assert item.geometry.same_grid(image.geometry)
    assert "b" not in opened  # every instance the SEG names was found in a/: the walk stopped there


def test_a_seg_naming_only_some_slices_reads_onto_the_whole_series(ct, tmp_path):
    folder, image, headers, labels = ct
    ordered, _shape, _geo = series_grid(headers)
    case = tmp_path / "case"
    shutil.copytree(folder, case / "ct")
    mask = np.zeros((2,) + labels.shape[1:], np.uint8)
    mask[:, 10:14, 8:12] = 1
    desc = hd.seg.SegmentDescription(1, "lesion", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion,
                                     hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(ordered[3:5], mask, hd.seg.SegmentationTypeValues.BINARY, [desc],
                              hd.UID(), 99, hd.UID(), 1, "other", "tool", "1", "0")
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 2  # not the whole series
    seg.save_as(case / "sparse.dcm")
    (item,) = read_path(case / "sparse.dcm")
    assert item.data.shape == labels.shape and item.geometry.same_grid(image.geometry)
    assert np.array_equal(np.flatnonzero(item.data.any(axis=(1, 2))), [3, 4])


def test_labels_off_the_grid_say_what_differs(ct):
    _folder, image, headers, labels = ct
    geo = image.geometry
    with pytest.raises(SegError, match=r"labels vs series: shape \(12, 27, 24\) vs \(12, 28, 24\)\)"):
        labels_to_seg(labels[:, :-1], geo, headers)
    with pytest.raises(SegError, match="empty"):
        labels_to_seg(np.zeros_like(labels), geo, headers)
    shifted = type(geo)(geo.spacing, np.add(geo.origin, 5.0), geo.direction)
    with pytest.raises(SegError, match="not on the grid") as err:
        labels_to_seg(labels, shifted, headers)
    z, y, x = (round(v, 3) for v in geo.origin)
    assert f"origin (z, y, x) ({z + 5:g}, {y + 5:g}, {x + 5:g}) vs ({z:g}, {y:g}, {x:g}) mm" in str(err.value)
    assert "spacing" not in str(err.value) and "shape" not in str(err.value)
    finer = type(geo)(np.multiply(geo.spacing, 0.5), geo.origin, geo.direction)
    with pytest.raises(SegError, match=r"spacing \(z, y, x\) .* mm\)") as err:
        labels_to_seg(labels, finer, headers)
    assert "origin" not in str(err.value)
    turned = type(geo)(geo.spacing, geo.origin, geo.direction @ np.diag([1.0, -1.0, -1.0]))
    with pytest.raises(SegError, match=r"orientation: axis y by 180.0 deg, x by 180.0 deg"):
        labels_to_seg(labels, turned, headers)


def test_class_names_must_name_every_label_value(ct):
    _folder, image, headers, labels = ct
    assert labels.max() == 2
    with pytest.raises(SegError, match="labels go up to 2 but 2 class names .*background 0 first: bg, CSF.*give 3"):
        labels_to_seg(labels, image.geometry, headers, ["bg", "CSF"])
    with pytest.raises(SegError, match="give 3 names"):  # the names without background: one short
        labels_to_seg(labels, image.geometry, headers, ["CSF", "grey matter"])
    seg = labels_to_seg(labels, image.geometry, headers, ["bg", "CSF", "grey matter", "white matter"])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["CSF", "grey matter"]  # a class absent: fine
    seg = labels_to_seg(labels, image.geometry, headers)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Segment 1", "Segment 2"]  # no names: numbered


def test_segment_codes_are_snomed_where_known():
    for name in ("CSF", "grey matter", "white matter", "Liver", "tumour"):
        assert segment_codes(name)[1] != codes.SCT.Tissue and segment_codes(name)[1].scheme_designator == "SCT"
    assert segment_codes("white matter")[1].value == "389080008"
    assert segment_codes("mystery")[1] == codes.SCT.Tissue
    for category, kind in KNOWN.values():  # every table entry names a real code
        assert getattr(codes.SCT, category) and getattr(codes.SCT, kind)


def test_remembered_servers_never_hold_a_password(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_CONFIG_DIR", str(tmp_path))
    remember_server("http://a:8042/dicom-web", "alice")
    remember_server("http://b:8042/dicom-web", "bob")
    remember_server("http://a:8042/dicom-web", "alice")
    assert [s["url"] for s in load_servers()] == ["http://a:8042/dicom-web", "http://b:8042/dicom-web"]
    stored = json.loads((tmp_path / "pacs_servers.json").read_text())
    assert all(set(s) == {"url", "user"} for s in stored)
    (tmp_path / "pacs_servers.json").write_text("{broken")
    assert load_servers() == []

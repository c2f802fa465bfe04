"""The PACS round trip against a real Orthanc (DICOMweb, basic auth): find, pull, push SEG, failures, CLI."""
import tempfile
import threading
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from napari_medgen import Cancelled
from napari_medgen.cli import main
from napari_medgen.io import read_image, read_path, write_image
from napari_medgen.pacs.client import PacsError, PacsServer, find_series, find_studies, pull_series, push_labels
from orthanc import ct_volume, orthanc, start_orthanc, write_ct_series  # noqa: F401 (fixture)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def pacs(orthanc, tmp_path_factory):
    """Orthanc holding the CT series; returns (server, local folder, series UID)."""
    folder = tmp_path_factory.mktemp("ct")
    files = write_ct_series(folder)
    orthanc.upload(files)
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    return PacsServer(orthanc.url, orthanc.user, orthanc.password), folder, uid


def _leftovers() -> set:
    return set(Path(tempfile.gettempdir()).glob("medgen-pacs-*"))


def test_find_studies_by_patient_id_accession_modality_and_date(pacs):
    server, _folder, uid = pacs
    for query in ({"patient_name": "doe"}, {"patient_id": "MEDGEN-001"}, {"accession": "ACC-0042"},
                  {"modality": "CT"}, {"date_from": "20240101", "date_to": "20240331"}):
        studies = find_studies(server, **query)
        assert [s["PatientID"] for s in studies] == ["MEDGEN-001"], query
    assert find_studies(server, patient_name="Smith") == []
    assert find_studies(server, date_from="20250101", date_to="20251231") == []
    series = find_series(server, studies[0]["StudyInstanceUID"])
    assert [(s["SeriesInstanceUID"], s["Modality"], s["NumberOfSeriesRelatedInstances"]) for s in series] \
        == [(uid, "CT", 12)]


def test_pull_gives_the_same_voxels_and_geometry_as_reading_the_files(pacs):
    server, folder, uid = pacs
    events = []
    image = pull_series(server, uid, progress=events.append)
    local = read_path(folder)[0]
    assert image.kind == "image" and np.array_equal(image.data, local.data)
    assert np.array_equal(image.data, ct_volume())  # Hounsfield units, slices in position order
    assert image.geometry.same_grid(local.geometry, atol=1e-6)
    assert not np.allclose(image.geometry.direction, np.eye(3))  # the oblique orientation survived
    assert image.metadata["series_uid"] == uid and image.name == "CT oblique"
    assert events[-1].step == events[-1].total == 12


def test_push_seg_references_the_series_and_reads_back_voxel_exact(pacs):
    server, folder, uid = pacs
    image = pull_series(server, uid)
    labels = (image.data > 0).astype(np.uint8) + (image.data > 500)
    seg = push_labels(server, labels, image.geometry, uid, ["background", "liver", "strange blob"], "unet-ct", "2.1")
    stored = find_series(server, series_uid=str(seg.SeriesInstanceUID))
    assert [s["Modality"] for s in stored] == ["SEG"]
    study = stored[0]["StudyInstanceUID"]
    assert study == str(pydicom.dcmread(next(folder.iterdir())).StudyInstanceUID)  # same study as the CT
    # what the PACS holds, checked with pydicom
    ds = server.client().retrieve_instance(study, str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID))
    assert ds.SOPClassUID == SEG_SOP_CLASS and ds.Modality == "SEG"
    assert hd.seg.Segmentation.from_dataset(ds).number_of_segments == 2  # highdicom accepts the stored copy
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    sources = {str(pydicom.dcmread(f).SOPInstanceUID): [float(v) for v in pydicom.dcmread(f).ImagePositionPatient]
               for f in folder.iterdir()}
    assert {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        == set(sources)
    assert ds.NumberOfFrames == 2 * 12  # every slice of both segments: OHIF needs no gaps
    for frame in ds.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        pos = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(pos, sources[ref], atol=1e-3)
    liver, blob = ds.SegmentSequence
    assert (liver.SegmentLabel, liver.SegmentedPropertyTypeCodeSequence[0].CodeValue) == ("liver", "10200004")
    assert blob.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Tissue"  # unknown name: generic code
    algo = liver.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("unet-ct", "2.1")
    # and back: a SEG series pulls as labels on its source grid
    back = pull_series(server, str(seg.SeriesInstanceUID))
    assert back.kind == "labels" and np.array_equal(back.data, labels)
    assert back.geometry.same_grid(image.geometry)
    assert back.metadata["class_names"] == ["background", "liver", "strange blob"]


def test_wrong_password_and_unreachable_server_are_one_sentence(pacs, capsys, monkeypatch):
    server, _folder, uid = pacs
    with pytest.raises(PacsError, match="wrong user name or password"):
        find_studies(PacsServer(server.url, server.user, "guess"))
    with pytest.raises(PacsError, match="Cannot reach the PACS"):
        pull_series(PacsServer("http://127.0.0.1:9/dicom-web", "x", "y"), uid)
    with pytest.raises(PacsError, match="not a DICOMweb address"):
        find_studies(PacsServer("pacs.example.org"))
    monkeypatch.setenv("MEDGEN_PACS_PASSWORD", "guess")
    assert main(["pacs", "find", "--url", server.url, "--user", server.user]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "wrong user name or password" in err and "Traceback" not in err


def test_cancel_leaves_nothing(pacs):
    server, _folder, uid = pacs
    cancel = threading.Event()
    before = _leftovers()

    def progress(ev):
        if ev.step >= 3:
            cancel.set()

    with pytest.raises(Cancelled):
        pull_series(server, uid, progress=progress, cancel=cancel)
    assert _leftovers() == before


def test_server_going_away_mid_transfer_leaves_no_file(tmp_path, capsys, monkeypatch):
    server = start_orthanc(tmp_path / "orthanc")
    try:
        files = write_ct_series(tmp_path / "ct", patient="Gone^Soon")
        server.upload(files)
        uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        calls = []
        original = DICOMwebClient.retrieve_instance

        def dying(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 4:
                server.stop()  # the PACS goes down after three instances
            return original(self, *args, **kwargs)

        monkeypatch.setattr(DICOMwebClient, "retrieve_instance", dying)
        monkeypatch.setenv("MEDGEN_PACS_PASSWORD", server.password)
        before = _leftovers()
        out = tmp_path / "ct.nii.gz"
        assert main(["pacs", "pull", "-q", "--url", server.url, "--user", server.user, "--series", uid,
                     str(out)]) == 2
        err = capsys.readouterr().err
        assert "Cannot reach the PACS" in err and "Traceback" not in err
        assert len(calls) == 4 and not out.exists() and not list(tmp_path.glob("*.partial*"))
        assert _leftovers() == before
    finally:
        server.stop()


def test_cli_find_pull_push(pacs, tmp_path, capsys, monkeypatch):
    server, folder, uid = pacs
    monkeypatch.setenv("MEDGEN_PACS_PASSWORD", server.password)
    base = ["--url", server.url, "--user", server.user]
    assert main(["pacs", "find", *base, "--patient", "Doe", "--date", "20240301-20240331"]) == 0
    out = capsys.readouterr().out
    assert "Doe^Jane" in out and f"series {uid}" in out and "CT oblique" in out
    for iso in ("2024-03-01-2024-03-31", "2024-03-01-"):  # ISO dates found nothing before
        assert main(["pacs", "find", *base, "--date", iso]) == 0
        assert "Doe^Jane" in capsys.readouterr().out
    image_file = tmp_path / "ct.nrrd"
    assert main(["pacs", "pull", "-q", *base, "--series", uid, str(image_file)]) == 0
    pulled, local = read_image(image_file), read_path(folder)[0]
    assert np.array_equal(pulled.data, local.data) and pulled.geometry.same_grid(local.geometry)
    labels_file = tmp_path / "ct_seg.nii.gz"
    labels = (local.data > 500).astype(np.uint8)
    write_image(labels_file, labels, local.geometry)
    seg_file = tmp_path / "ct_seg.dcm"
    capsys.readouterr()
    assert main(["pacs", "push", "-q", *base, "--reference-series", uid, str(labels_file), "--classes",
                 "background,bone", "--algorithm", "bone-net", "--save", str(seg_file)]) == 0
    seg_uid = capsys.readouterr().out.split()[-1]
    assert find_series(server, series_uid=seg_uid)[0]["Modality"] == "SEG"
    assert pydicom.dcmread(seg_file).SeriesInstanceUID == seg_uid
    back_file = tmp_path / "back.nii.gz"
    assert main(["pacs", "pull", "-q", *base, "--series", seg_uid, str(back_file)]) == 0
    back = read_image(back_file)
    assert np.array_equal(back.data, labels) and back.geometry.same_grid(local.geometry)
    # labels on another grid are refused in one sentence, and nothing is stored
    write_image(tmp_path / "small.nii.gz", labels[:, :10], local.geometry)
    n = len(find_series(server, find_studies(server)[0]["StudyInstanceUID"]))
    assert main(["pacs", "push", "-q", *base, "--reference-series", uid, str(tmp_path / "small.nii.gz")]) == 2
    assert "not on the grid" in capsys.readouterr().err
    # class names that do not name every label value: one sentence, nothing stored (was "Segment 2" silently)
    write_image(tmp_path / "three.nii.gz", labels * 3, local.geometry)
    assert main(["pacs", "push", "-q", *base, "--reference-series", uid, str(tmp_path / "three.nii.gz"),
                 "--classes", "bg,CSF"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "labels go up to 3 but 2 class names" in err
    assert len(find_series(server, find_studies(server)[0]["StudyInstanceUID"])) == n


def test_password_never_on_the_command_line(pacs, capsys, monkeypatch):
    server, _folder, _uid = pacs
    try:  # no --password option exists
        rc = main(["pacs", "find", "--url", server.url, "--user", server.user, "--password", server.password])
    except SystemExit as stop:
        rc = stop.code
    assert rc == 2 and "unrecognized arguments" in capsys.readouterr().err
    monkeypatch.delenv("MEDGEN_PACS_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    assert main(["pacs", "find", "--url", server.url, "--user", server.user]) == 2
    assert "MEDGEN_PACS_PASSWORD" in capsys.readouterr().err

"""One targets-CSV reader for the Time series panel and `sequence-train` (both column layouts, the same sentence
for a bad table in each), and the panel's region picker as the other panels' pickers (rename, width)."""
import numpy as np
import pytest

from napari_medgen.cli import main
from napari_medgen.errors import UserError
from napari_medgen.io.timeseries import write_time_series
from napari_medgen._reader import read_layers
from napari_medgen.tasks import sequence  # noqa: F401 - torch/monai before the first OpenGL draw

from napari_medgen._widgets._panel import WIDTH
from napari_medgen._widgets.sequence_widget import SequenceWidget

TRAIN = ["--steps", "1", "--size", "16", "16", "-q"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, brain):
    """Four short series s0..s3 (rising, falling, rising, falling)."""
    tmp = tmp_path_factory.mktemp("series")
    sl = brain.data[45, ::6, ::6].astype(np.float32)
    for i in range(4):
        gains = np.linspace(0.5, 1.5, 4)
        write_time_series(tmp / f"s{i}.nii.gz", np.stack([sl * g for g in (gains if i % 2 == 0 else gains[::-1])]),
                          step=1.0)
    return tmp


@pytest.fixture
def panel(make_napari_viewer, folder):
    viewer = make_napari_viewer()
    for i in range(4):
        data, kwargs, _ = read_layers(str(folder / f"s{i}.nii.gz"))[0]
        viewer.add_image(data, **kwargs)
    return viewer, SequenceWidget(viewer)


def _cli_error(capsys, folder, csv_name, *extra) -> str:
    assert main(["sequence-train", str(folder), str(folder / csv_name), "--out", str(folder / "x.medgen.pt"),
                 *extra, *TRAIN]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-medgen: error: ") and "\n" not in err
    return err[len("napari-medgen: error: "):]


@pytest.mark.parametrize("header", ["layer", "sequence", "file"])
def test_both_front_ends_read_each_layout(panel, folder, capsys, header):
    """The panel refused a 'sequence' column, sequence-train a 'layer' column (and names without extension)."""
    viewer, widget = panel
    names = [f"s{i}" if header == "layer" else f"s{i}.nii.gz" for i in range(4)]
    (folder / f"{header}.csv").write_text(f"{header},target\n" + "".join(
        f"{n},{'up' if i % 2 == 0 else 'down'}\n" for i, n in enumerate(names)))
    assert widget.load_targets(str(folder / f"{header}.csv")) == 4
    assert widget.targets() == {"s0": "up", "s1": "down", "s2": "up", "s3": "down"}
    model = folder / f"{header}.medgen.pt"
    assert main(["sequence-train", str(folder), str(folder / f"{header}.csv"), "--out", str(model), *TRAIN]) == 0
    assert model.exists()


BAD = {  # CSV text -> the sentence both front ends say
    "columns.csv": ("name,score\ns0.nii.gz,1\n", "columns.csv needs a 'layer' (or 'file' or 'sequence') column and "
                    "a 'target' column; its header has name, score."),
    "empty.csv": ("file,target\n\n", "empty.csv has a header but no rows; give one row per series: its file and "
                  "target."),
    "row.csv": ("file,target\ns0.nii.gz,up\ns1.nii.gz,\n", "Line 3 of row.csv has no target; give every row a file "
                "and a target."),
    "twice.csv": ("sequence,label\ns0.nii,up\ns0.nii.gz,down\ns1.nii.gz,down\n", "twice.csv gives 's0.nii' and "
                  "'s0.nii.gz' different targets, but both name the image 's0'; keep one row for it."),
}


def test_a_bad_table_is_the_same_sentence_in_both(panel, folder, capsys):
    viewer, widget = panel
    for name, (text, sentence) in BAD.items():
        (folder / name).write_text(text)
        with pytest.raises(UserError) as err:
            widget.load_targets(str(folder / name))
        assert str(err.value) == sentence
        assert _cli_error(capsys, folder, name) == sentence
    assert widget.targets() == {}  # a refused table changes nothing
    (folder / "ef.csv").write_text("file,target\ns0.nii.gz,0.55\ns1.nii.gz,n/a\n")
    sentence = "Line 3 of ef.csv gives 's1.nii.gz' the target 'n/a', which is not a number; regression needs a " \
               "number in every row."
    widget.task.setCurrentText("regression")
    with pytest.raises(UserError, match=sentence.replace("(", r"\(")):
        widget.load_targets(str(folder / "ef.csv"))
    assert _cli_error(capsys, folder, "ef.csv", "--task", "regression") == sentence
    (folder / "binary.csv").write_bytes(b"file,target\n\xff\xfe\x00\x81,up\n")
    with pytest.raises(UserError) as err:
        widget.load_targets(str(folder / "binary.csv"))
    assert str(err.value).startswith("binary.csv is not a CSV table of text (")
    assert _cli_error(capsys, folder, "binary.csv") == str(err.value)


def test_unknown_names_are_said_by_line(panel, folder, capsys):
    viewer, widget = panel
    (folder / "unknown.csv").write_text("file,target\nnope.nii.gz,up\ns1.nii.gz,down\n")
    assert _cli_error(capsys, folder, "unknown.csv") == (
        f"Line 2 of unknown.csv names 'nope.nii.gz', which is not in {folder}.")
    found, unused = widget.match_targets(str(folder / "unknown.csv"))  # the panel loads the layers it has
    assert found == {"s1": "down"} and [r.series for r in unused] == ["nope.nii.gz"]
    (folder / "none.csv").write_text("file,target\nnope.nii.gz,up\n")
    with pytest.raises(UserError, match="^Line 2 of none.csv names 'nope.nii.gz', which is not an open time-series"):
        widget.load_targets(str(folder / "none.csv"))
    with pytest.raises(UserError, match="The targets CSV .*missing.csv does not exist."):
        widget.load_targets(str(folder / "missing.csv"))


def test_region_picker_keeps_a_renamed_layer_and_the_panel_width(panel):
    viewer, widget = panel
    viewer.window.add_dock_widget(widget, name="Time series")
    mask = np.zeros(viewer.layers["s0"].data.shape[1:], np.uint8)
    mask[2:6, 2:6] = 1
    lesion = viewer.add_labels(mask, name="Labels")
    widget.region.value = lesion
    lesion.name = "lesion"  # napari calls the panel's reset_choices
    assert widget.region.value is lesion and widget.region.native.currentText() == "lesion"
    assert widget.region.native.toolTip().startswith("lesion\n")  # the shared picker names the choice
    assert widget.region_mask(viewer.layers["s0"]).sum() == 16
    long = viewer.add_labels(mask, name="L" * 83)
    widget.region.value = long
    assert widget.minimumSizeHint().width() < 420 and widget.sizeHint().width() <= WIDTH  # it was 744 px
    del viewer.layers["lesion"], viewer.layers["L" * 83]
    assert widget.region.value is None and widget.region.native.currentText() == "(whole frame)"

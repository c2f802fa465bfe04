"""segment() on the real sample brain: held-out Dice, geometry, 2D input, resampling, models, bad input."""
import json

import numpy as np
import pytest
import torch

from napari_medgen import (Cancelled, ImageData, ImageInputError, Model, ModelFileError, load_segmentation_model,
                           segment, segmentation_config, segmentation_metrics)
from napari_medgen.data.resample import resize
from napari_medgen.models.config import ModelConfig
from napari_medgen.models.segmentation import BUILTIN
from napari_medgen.sample_data import TISSUE_CLASSES

# Dice the built-in model must reach on the axial slices it never saw in training.
MIN_HELDOUT_DICE = {"CSF": 0.65, "grey matter": 0.8, "white matter": 0.8}


@pytest.fixture(scope="module")
def builtin():
    return load_segmentation_model("brain-tissue-2d")


@pytest.fixture(scope="module")
def brain_seg(brain, builtin):
    return segment(brain, builtin, return_probabilities=True)


def small_3d_model(classes=3, patch=(32, 32, 32)):
    torch.manual_seed(0)
    return Model(segmentation_config("tiny-3d", classes, spatial_dims=3, channels=(4, 8), strides=(2,),
                                     num_res_units=0, patch_size=patch))


def test_builtin_reaches_stated_dice_on_heldout_slices(brain_seg, builtin, tissue, brain):
    labels, _ = brain_seg
    lo, hi = builtin.config.training["holdout"]["slices"]
    m = segmentation_metrics(labels[lo:hi], tissue.data[lo:hi], brain.geometry.spacing, TISSUE_CLASSES)
    for name, floor in MIN_HELDOUT_DICE.items():
        assert m[name]["dice"] >= floor, (name, m[name])
        assert m[name]["dice"] == pytest.approx(builtin.config.training["holdout"]["dice"][name], abs=0.01)  # as stated


def test_builtin_is_small_and_honest(builtin):
    assert BUILTIN["brain-tissue-2d"].stat().st_size < 5 * 2**20
    desc = builtin.config.description
    assert "ONE template brain" in desc and "Dice on held-out" in desc
    assert builtin.params.spacing == [2.0, 2.0] and builtin.params.axis == 0


def test_output_on_the_image_grid_with_probabilities(brain_seg, brain):
    labels, probs = brain_seg
    assert labels.shape == brain.data.shape and labels.dtype == np.uint8
    assert probs.shape == (4,) + brain.data.shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    assert np.array_equal(probs.argmax(0), labels)


def test_2d_image_matches_its_slice_of_the_volume(brain_seg, brain):
    k = 50
    labels2d = segment(brain.data[k], "brain-tissue-2d")
    assert labels2d.shape == brain.data.shape[1:]
    assert (labels2d == brain_seg[0][k]).mean() > 0.99


def test_other_axes_and_input_untouched(brain, tissue):
    before = brain.data.copy()
    labels = segment(brain.data, "brain-tissue-2d", axis=2)  # sagittal slices: not what it was trained on
    assert labels.shape == brain.data.shape
    assert np.array_equal(brain.data, before)
    m = segmentation_metrics(labels, tissue.data, (2, 2, 2), TISSUE_CLASSES)
    assert m["white matter"]["dice"] > 0.3  # it runs and finds tissue, not a quality claim


@pytest.mark.parametrize("order", [(2, 0, 1), (1, 0, 2)])
def test_volume_stored_sagittally_or_coronally_gets_the_labels_of_the_axial_one(brain, brain_seg, order):
    """A 3D T1 stored sagittal-first was sliced sagittally by the axial model (white matter Dice 0.88 -> 0.74)."""
    from napari_medgen.io import Geometry

    geo = brain.geometry
    stored = ImageData(np.transpose(brain.data, order), Geometry(tuple(geo.spacing[i] for i in order), geo.origin,
                                                               geo.direction[:, list(order)]), "sagittal")
    labels = segment(stored, "brain-tissue-2d")
    assert np.array_equal(labels, np.transpose(brain_seg[0], order))
    assert not np.array_equal(segment(stored, "brain-tissue-2d", axis=0), labels)  # an explicit axis is obeyed


def test_resamples_to_training_spacing_and_back(brain):
    # the same slab at 1 mm in-plane: labels come back on the 1 mm grid and agree with the 2 mm result
    slab = brain.data[40:60].astype(np.float32)
    fine = resize(slab[None], (20, 234, 198))[0]
    labels = segment(fine, "brain-tissue-2d", spacing=(2.0, 1.0, 1.0))
    assert labels.shape == fine.shape
    coarse = resize(labels[None], slab.shape, mode="nearest")[0]
    m = segmentation_metrics(coarse, segment(slab, "brain-tissue-2d"), (2, 2, 2), TISSUE_CLASSES)
    assert min(v["dice"] for v in m.values()) > 0.8, m
    naive = segment(fine, "brain-tissue-2d")  # no spacing given: taken as 2 mm, the brain looks twice as big
    assert (naive != labels).mean() > 0.02


def test_progress_and_cancel(brain):
    events = []
    segment(brain.data[40:44], "brain-tissue-2d", progress=events.append)
    assert events and events[-1].fraction == 1.0
    with pytest.raises(Cancelled):
        segment(brain.data, "brain-tissue-2d", stop=lambda: True)


def test_tta_agrees_with_plain(brain):
    labels = segment(brain.data[45:55], "brain-tissue-2d", tta=True)
    assert (labels == segment(brain.data[45:55], "brain-tissue-2d")).mean() > 0.95


def test_3d_sliding_window_pads_small_images(brain):
    model = small_3d_model(patch=(32, 32, 32))
    events = []
    labels, probs = segment(brain.data[:20, :40, :30], model, progress=events.append, return_probabilities=True)
    assert labels.shape == (20, 40, 30) and probs.shape == (3, 20, 40, 30)
    assert any("windows" in e.message for e in events)
    tiny = segment(np.ones((3, 5, 7), np.float32), model, tta=True)
    assert tiny.shape == (3, 5, 7)


def test_tiny_2d_image_is_padded():
    assert segment(np.random.default_rng(0).random((5, 7)), "brain-tissue-2d").shape == (5, 7)


def test_nan_voxels_become_background(brain):
    img = brain.data[45:55].astype(np.float32)
    img[:, 50:60, 40:50] = np.nan
    img[0, 0, 0] = np.inf
    labels = segment(img, "brain-tissue-2d")
    assert (labels[:, 50:60, 40:50] == 0).all()
    outside = np.ones(img.shape, bool)
    outside[:, 45:65, 35:55] = False
    assert (labels[outside] == segment(brain.data[45:55], "brain-tissue-2d")[outside]).mean() > 0.97


@pytest.mark.parametrize("image, message", [
    (np.zeros((117, 99, 3), np.uint8), "RGB"),
    (np.zeros((2, 10, 117, 99), np.float32), "4 dimensions"),
    (np.zeros((0, 117, 99), np.float32), "empty"),
    (np.full((4, 20, 20), np.nan, np.float32), "no finite values"),
    (np.array([["a", "b"]]), "numeric"),
])
def test_bad_images_give_one_sentence(image, message):
    with pytest.raises(ImageInputError, match=message):
        segment(image, "brain-tissue-2d")


def test_2d_image_into_3d_model():
    with pytest.raises(ImageInputError, match="3D model"):
        segment(np.zeros((64, 64), np.float32), small_3d_model())


def test_unknown_models(tmp_path):
    with pytest.raises(ModelFileError, match="neither a built-in model"):
        segment(np.zeros((8, 8)), "no-such-model")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a model" * 100)
    with pytest.raises(ModelFileError, match="not a model file"):
        load_segmentation_model(junk)
    vae = Model(ModelConfig("vae", "v", {}, {}))
    with pytest.raises(ModelFileError, match="not a segmentation model"):
        load_segmentation_model(vae)


@pytest.fixture(scope="module")
def slice50(brain):
    return segment(brain.data[50], "brain-tissue-2d")


def test_medgen_file_round_trip(tmp_path, builtin, slice50, brain):
    path = builtin.copy().save(tmp_path / "mine.medgen.pt")
    assert np.array_equal(segment(brain.data[50], path), slice50)


def test_torchscript_with_and_without_config(tmp_path, builtin, slice50, brain):
    scripted = torch.jit.trace(builtin.net.eval(), torch.zeros(1, 1, 128, 112))
    with_cfg = tmp_path / "seg.ts"
    torch.jit.save(scripted, str(with_cfg), _extra_files={"config.json": json.dumps(builtin.config.to_dict())})
    assert np.array_equal(segment(brain.data[50], with_cfg, allow_code=True), slice50)
    with pytest.raises(ModelFileError, match="allow_code=True"):  # TorchScript is code: only with consent
        segment(brain.data[50], with_cfg)
    bare = tmp_path / "bare.pt"
    torch.jit.save(scripted, str(bare))
    with pytest.raises(ModelFileError, match="without an embedded config.json"):  # never probed to guess
        load_segmentation_model(bare, allow_code=True)


def _bundle(folder, builtin, state):
    args = builtin.config.networks["net"].args
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    inference = {"num_classes": 4, "network_def": {"_target_": "monai.networks.nets.UNet",
                                                   **dict(args, out_channels="@num_classes")},
                 "preprocessing": {"transforms": [{"_target_": "ScaleIntensityRanged", "keys": "image",
                                                   "a_min": 0, "a_max": 900, "b_min": 0, "b_max": 1}]}}
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    meta = {"description": "test bundle", "network_data_format": {"outputs": {"pred": {"channel_def": {
        "0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"}}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    torch.save(state, folder / "models" / "model.pt")


def test_monai_bundle_folder(tmp_path, builtin):
    _bundle(tmp_path / "good", builtin, builtin.net.state_dict())
    model = load_segmentation_model(tmp_path / "good")
    assert [c["name"] for c in model.params.classes] == TISSUE_CLASSES
    assert model.config.normalization == {"kind": "window", "low": 0.0, "high": 900.0}
    other = small_3d_model().net.state_dict()
    _bundle(tmp_path / "bad", builtin, other)
    with pytest.raises(ModelFileError, match="do not fit"):
        load_segmentation_model(tmp_path / "bad")
    code = tmp_path / "good" / "configs" / "inference.json"
    cfg = json.loads(code.read_text())
    cfg["network_def"]["channels"] = "$__import__('os').system('echo owned')"
    code.write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="only loads literal arguments"):
        load_segmentation_model(tmp_path / "good")


def test_model_file_that_would_download_weights_is_refused(tmp_path, monkeypatch):
    """A shared file naming EfficientNetBN (pretrained=True by default) or HoVerNet(pretrained_url=...) made
    Model.load reach the internet; it is refused before anything is fetched."""
    import urllib.request
    from napari_medgen.models.checkpoint import build_network
    from napari_medgen.models.config import NetSpec

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail(f"network reached: {a[0]}"))
    args = {"model_name": "efficientnet-b0", "spatial_dims": 2, "in_channels": 1, "num_classes": 2}
    cfg = ModelConfig("classification", "x", {"net": NetSpec("EfficientNetBN", args)}, {})
    with pytest.raises(ModelFileError, match=r"would download weights .*pretrained=True"):
        Model(cfg)
    with pytest.raises(ModelFileError, match="pretrained_url='http://example.org/w.pt'"):
        build_network(NetSpec("HoVerNet", {"pretrained_url": "http://example.org/w.pt"}))
    assert build_network(NetSpec("EfficientNetBN", dict(args, pretrained=False))) is not None  # off: allowed


def test_out_of_memory_retries_smaller(brain, builtin):
    class Picky(torch.nn.Module):  # runs out of memory above 4 slices per batch
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            if x.shape[0] > 4:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.net(x)

    model = Model(builtin.config, {"net": Picky(builtin.net)})
    events = []
    labels = segment(brain.data[40:56], model, batch_size=16, progress=events.append)
    assert np.array_equal(labels, segment(brain.data[40:56], builtin, batch_size=16))
    assert any("out of memory" in e.message and "batch size 8" in e.message for e in events)


def test_imagedata_brings_spacing(brain):
    slab = brain.data[50:52]
    at_1mm = ImageData(slab, type(brain.geometry)((2.0, 1.0, 1.0)), "x", metadata={"modality": "MR"})
    assert np.array_equal(segment(at_1mm, "brain-tissue-2d"), segment(slab, "brain-tissue-2d", spacing=(2, 1, 1)))
    assert not np.array_equal(segment(at_1mm, "brain-tissue-2d"), segment(slab, "brain-tissue-2d"))


def test_builtin_copes_with_scanner_like_changes(brain, tissue, builtin):
    # held-out slices after gamma, a smooth bias field, noise, a mirrored x axis and 1 mm in-plane voxels
    img = brain.data.astype(np.float32)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in img.shape], indexing="ij")
    bias = np.exp(0.3 * (0.6 * x + 0.4 * y - 0.3 * z + 0.5 * x * y))
    other = (img / img.max()) ** 1.4 * bias * 3000 + np.random.default_rng(0).normal(0, 40, img.shape)
    fine = resize(np.flip(other, 2)[None].copy(), (95, 234, 198))[0]
    ref = resize(np.flip(tissue.data, 2)[None].copy(), fine.shape, mode="nearest")[0]
    labels = segment(fine, builtin, spacing=(2.0, 1.0, 1.0))
    lo, hi = builtin.config.training["holdout"]["slices"]
    m = segmentation_metrics(labels[lo:hi], ref[lo:hi], (2, 1, 1), TISSUE_CLASSES)
    assert m["CSF"]["dice"] > 0.5 and m["grey matter"]["dice"] > 0.75 and m["white matter"]["dice"] > 0.75, m


def test_long_volumes_are_labelled_slab_by_slab_exactly(brain):
    """A 2D model labels a volume a slab at a time (memory of one slab's probabilities, not the whole CT's); a 2.5D
    model's neighbouring slices come along at the slab edges, so the labels are those of the whole volume at once
    (which ``return_probabilities`` still computes), on a resampled grid too."""
    torch.manual_seed(0)
    config = segmentation_config("2.5d", 3, channels=(4, 8), strides=(2,), num_res_units=0, spacing=[3.0, 3.0])
    config.networks["net"].args.update(in_channels=3)  # the slice and one neighbour on each side, as finetune()
    config.params.context = 1
    model = Model(config)
    assert brain.data.shape[0] > 2 * 32  # several slabs
    whole, _ = segment(brain, model, device="cpu", return_probabilities=True)
    events = []
    np.testing.assert_array_equal(segment(brain, model, device="cpu", progress=events.append), whole)
    steps = [ev.step for ev in events if ev.message.startswith("slices")]
    assert steps == sorted(steps) and steps[-1] == brain.data.shape[0]

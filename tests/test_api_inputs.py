"""Every headless function takes an image as an array, an ImageData or its file, and a model as a Model or its
file (a path used to end in "The image has <U9 values", "0 dimension(s)" or "not a numeric array (got object)")."""
from __future__ import annotations

import numpy as np
import pytest

from napari_medgen import (anomaly_map, predict_sequence, reconstruct, segment, synthesize, train_gan,
                           train_sequence_model, train_vae)
from napari_medgen.errors import UserError
from napari_medgen.io import Geometry, ImageData, read_image, write_image
from napari_medgen.tasks.finetune import complete_labels, finetune


@pytest.fixture(scope="module")
def files(tmp_path_factory, brain, tissue):
    folder = tmp_path_factory.mktemp("api")
    slab = ImageData(brain.data[36:48], brain.geometry)  # 12 axial slices, the sample's own geometry
    painted = np.zeros(slab.data.shape, np.uint8)
    painted[[2, 9]] = tissue.data[36:48][[2, 9]] > 0
    write_image(folder / "t1.nii.gz", slab.data, brain.geometry)
    write_image(folder / "paint.nii.gz", painted, brain.geometry)
    write_image(folder / "mask.nii.gz", (tissue.data[36:48] > 0).astype(np.uint8), brain.geometry)
    return folder, slab, painted


def test_segment_and_finetune_take_files(files):
    folder, slab, painted = files
    assert np.array_equal(segment(str(folder / "t1.nii.gz"), "brain-tissue-2d"), segment(slab, "brain-tissue-2d"))
    model, history = finetune(None, folder / "t1.nii.gz", str(folder / "paint.nii.gz"), steps=2, seconds=None,
                              batch_size=2, patch_size=(32, 32), device="cpu")
    assert history["slices"] == [2, 9]
    out = complete_labels(model, folder / "t1.nii.gz", folder / "paint.nii.gz", device="cpu")
    assert np.array_equal(out, complete_labels(model, slab, painted, device="cpu"))


def test_vae_and_gan_take_image_and_model_files(files, tmp_path):
    folder, slab, painted = files
    mask = read_image(folder / "mask.nii.gz").data
    vae, _ = train_vae(str(folder / "t1.nii.gz"), str(folder / "mask.nii.gz"), steps=2, seconds=None,
                       channels=(8, 16), latent_size=8, batch_size=4, device="cpu")
    vae.save(tmp_path / "vae.medgen.pt")
    on_file = anomaly_map(str(tmp_path / "vae.medgen.pt"), folder / "t1.nii.gz", folder / "mask.nii.gz", device="cpu")
    assert np.allclose(on_file.score, anomaly_map(vae, slab, mask, device="cpu").score)
    assert reconstruct(tmp_path / "vae.medgen.pt", str(folder / "t1.nii.gz"), device="cpu").shape == slab.data.shape
    gan, _ = train_gan(ImageData(slab.data[:, ::4, ::4], Geometry((2.0, 8.0, 8.0))), steps=1, width=8,
                       seconds=None, device="cpu", architecture="single-scale")
    gan.save(tmp_path / "gan.medgen.pt")
    assert synthesize(str(tmp_path / "gan.medgen.pt"), 2).data.shape[0] == 2


def test_sequences_take_image_data_and_files(brain, tmp_path):
    rng = np.random.default_rng(0)
    seqs = [np.stack([brain.data[40, ::4, ::4] * g for g in np.linspace(1, 2 if i % 2 else 0.5, 5)])
            .astype(np.float32) + rng.normal(0, 5, (5, 30, 25)).astype(np.float32) for i in range(6)]
    model, _ = train_sequence_model([ImageData(s, Geometry((1.0, 8.0, 8.0))) for s in seqs], ["up", "down"] * 3,
                                    steps=2, size=[16, 16], features=8, hidden=8, channels=(8, 8), device="cpu")
    model.save(tmp_path / "seq.medgen.pt")
    write_image(tmp_path / "loop.nii.gz", seqs[0], Geometry((1.0, 8.0, 8.0)))
    on_file = predict_sequence(str(tmp_path / "seq.medgen.pt"), tmp_path / "loop.nii.gz", device="cpu")
    assert on_file.label == predict_sequence(model, read_image(tmp_path / "loop.nii.gz"), device="cpu").label


def test_a_missing_file_and_a_bad_budget_are_said_plainly(tmp_path, brain):
    with pytest.raises(UserError, match="does not exist"):
        read_image(tmp_path / "nope.nii.gz")
    with pytest.raises(UserError, match="does not exist"):
        segment(str(tmp_path / "nope.nii.gz"), "brain-tissue-2d")
    with pytest.raises(UserError, match=r"got -5\b"):
        train_vae(brain.data[30:40], seconds=-5)


def test_gans_and_slice_ranking_take_files(files, tissue, tmp_path):
    from napari_medgen import rank_slices, synthesize_from_labels, train_conditional_gan

    folder, slab, painted = files
    gan, _ = train_gan(str(folder / "t1.nii.gz"), steps=1, width=8, seconds=None, device="cpu",
                       architecture="single-scale", downsample=4)
    assert gan.params.latent_size > 0
    write_image(tmp_path / "tissue.nii.gz", tissue.data[36:48], slab.geometry)
    spade, _ = train_conditional_gan(folder / "t1.nii.gz", tmp_path / "tissue.nii.gz", steps=1, width=8,
                                     seconds=None, device="cpu", downsample=4)
    spade.save(tmp_path / "spade.medgen.pt")
    fake = synthesize_from_labels(str(tmp_path / "spade.medgen.pt"), tmp_path / "tissue.nii.gz", device="cpu")
    assert fake.data.shape[0] == 12
    ranked = rank_slices("brain-tissue-2d", folder / "t1.nii.gz", folder / "paint.nii.gz", device="cpu")
    assert ranked and all(i not in (2, 9) for i, _ in ranked)


def test_metrics_take_files_and_their_spacing(files, brain, tissue, tmp_path):
    from napari_medgen import segmentation_metrics
    from napari_medgen.tasks.metrics import label_volumes_ml

    write_image(tmp_path / "ref.nii.gz", tissue.data, tissue.geometry)
    on_files = segmentation_metrics(tmp_path / "ref.nii.gz", str(tmp_path / "ref.nii.gz"))
    assert all(v["dice"] == 1.0 for v in on_files.values())
    ml = label_volumes_ml(tmp_path / "ref.nii.gz", None)  # the file's 2 mm voxels: 0.008 mL each
    assert sum(ml.values()) == pytest.approx((tissue.data > 0).sum() * 0.008)

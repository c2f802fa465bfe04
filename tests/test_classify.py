"""Classification: training from images and labels, probabilities, heatmaps on the image's grid, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medgen.errors import UserError
from napari_medgen.io import Geometry, ImageData
from napari_medgen.models.encoders import pretrained_source
from napari_medgen.tasks.classify import classify, load_classifier, train_classifier
from napari_medgen.tasks.classify_data import Placement, encode_labels, prepare, read_label_csv, to_image_grid

TINY = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}


def t2_like(img: np.ndarray, head: np.ndarray) -> np.ndarray:
    """A T2-looking contrast from a T1 slice: intensities inverted inside the head."""
    out = np.where(head, img.max() - img, 0)
    return out.astype(np.float32)


@pytest.fixture(scope="module")
def contrasts(brain, tissue):
    """Axial T1 slices and T2-like slices of other levels (2D ImageData with the sample's spacing)."""
    vol, head = brain.data.astype(np.float32), tissue.data > 0
    geo = Geometry(brain.geometry.spacing[1:], brain.geometry.origin[1:], np.eye(2))
    zs = [z for z in range(vol.shape[0]) if head[z].sum() > 1500]
    imgs, labels = [], []
    for i, z in enumerate(zs[::3]):
        t2 = i % 2 == 1
        data = t2_like(vol[z], head[z]) if t2 else vol[z]
        imgs.append(ImageData(data, geo, f"z{z}", metadata={"modality": "MR"}))
        labels.append("T2" if t2 else "T1")
    return imgs, labels


@pytest.fixture(scope="module")
def contrast_model(contrasts):
    imgs, labels = contrasts
    return train_classifier(imgs, labels, size=(48, 48), body=TINY, steps=40, val_every=10, seed=0)


def test_learns_contrast_and_reports_metrics(contrast_model, contrasts, tmp_path):
    model, history = contrast_model
    m = history["metrics"]
    assert model.params.classes == ["T1", "T2"]
    assert m["balanced_accuracy"] >= 0.75 and set(m["auroc"]) == {"T1", "T2"}
    assert np.asarray(m["confusion_matrix"]).sum() == m["n"] == history["n_val"] > 0
    assert history["best_step"] is not None and len(history["loss"]) == 40
    path = model.save(tmp_path / "c.medgen.pt")
    again = load_classifier(path)
    img = contrasts[0][1]
    a, b = classify(model, img, heatmap=False), classify(again, img, heatmap=False)
    assert a.label == b.label and a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
    assert sum(a.probabilities.values()) == pytest.approx(1.0, abs=1e-4)


def test_mean_pooling_learns_a_whole_image_property(contrasts, tmp_path):
    """pooling="mean": the class score is the image's average evidence (kept in the model file)."""
    imgs, labels = contrasts
    model, history = train_classifier(imgs, labels, size=(48, 48), body=TINY, steps=80, val_every=10,
                                      pooling="mean")
    assert history["metrics"]["balanced_accuracy"] >= 0.75
    again = load_classifier(model.save(tmp_path / "mean.medgen.pt"))
    assert again.params.pooling == "mean"
    net = __import__("napari_medgen.tasks.classify", fromlist=["x"]).network(again)
    x = torch.as_tensor(prepare(imgs[0], again.config.normalization, again.params.spacing, again.params.size)[0])
    with torch.no_grad():
        e = net.evidence(x[None, None])
        assert torch.allclose(net(x[None, None]), e.flatten(2).mean(2), atol=1e-5)
    with pytest.raises(UserError, match="Pooling must be one of lse, mean"):
        train_classifier(imgs, labels, size=(48, 48), body=TINY, steps=1, pooling="max")


def test_heatmap_on_the_images_own_grid(contrast_model, brain):
    model, _ = contrast_model
    geo = Geometry((1.0, 3.0), (5.0, -7.0), np.eye(2))
    img = ImageData(brain.data[45, :, 10:90].astype(np.float32), geo, "odd grid", metadata={"modality": "MR"})
    r = classify(model, img)
    assert r.heatmap.shape == img.data.shape and r.geometry is geo
    assert r.target == r.label and 0 <= r.heatmap.min() and r.heatmap.max() <= 1 + 1e-6
    assert r.slice_scores is None
    net = __import__("napari_medgen.tasks.classify", fromlist=["x"]).network(model)
    x, placement = prepare(img, model.config.normalization, model.params.spacing, model.params.size)
    with torch.no_grad():
        e = net.evidence(torch.as_tensor(x)[None, None])[0, model.params.classes.index(r.target)].numpy()
    evidence = to_image_grid(e, placement, img.data.shape)
    assert np.corrcoef(evidence.ravel(), r.heatmap.ravel())[0, 1] > 0.5  # high where the class evidence is


def test_matrix_size_carries_no_information(brain):
    """Two matrices of the same field of view land on the same network grid."""
    img = brain.data[45].astype(np.float32)
    fine = ImageData(np.kron(img, np.ones((2, 2), np.float32)), Geometry((1.0, 1.0), (0, 0), np.eye(2)))
    coarse = ImageData(img, Geometry((2.0, 2.0), (0, 0), np.eye(2)))
    a, pa = prepare(fine, {"kind": "auto"}, [2.0, 2.0], (128, 128))
    b, pb = prepare(coarse, {"kind": "auto"}, [2.0, 2.0], (128, 128))
    assert pa == pb and np.abs(a - b).mean() < 0.02


def test_a_finer_image_is_low_passed_not_aliased():
    """Noise of 0.5 mm pixels on a 2 mm grid averages out as a 2 mm acquisition would (anti-aliasing)."""
    noise = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    img = ImageData(noise, Geometry((0.5, 0.5), (0, 0), np.eye(2)))
    x, placement = prepare(img, {"kind": "window", "low": 0.0, "high": 1.0}, [2.0, 2.0], (64, 64))
    assert placement.shape == (64, 64)
    # a 4x4 box average would leave std(noise) / 4; plain bilinear resampling leaves about half of it
    assert x[4:-4, 4:-4].std() < 0.35 * noise.std()
    assert abs(x.mean() - noise.mean()) < 0.02


def test_grid_spacing_is_the_users_choice(contrasts):
    """One number = isotropic grid spacing in mm; the heatmap still lands on the image's own grid."""
    imgs, labels = contrasts
    model, _ = train_classifier(imgs[:4], labels[:4], size=(48, 48), spacing=4.0, body=TINY, steps=1,
                                val_fraction=0)
    assert model.params.spacing == [4.0, 4.0]
    x, placement = prepare(imgs[0], model.config.normalization, model.params.spacing, model.params.size)
    assert placement.shape == tuple(round(n * s / 4.0) for n, s in zip(imgs[0].data.shape, imgs[0].geometry.spacing))
    assert classify(model, imgs[0]).heatmap.shape == imgs[0].data.shape
    with pytest.raises(UserError, match="grid spacing must be 2 positive numbers"):
        train_classifier(imgs[:4], labels[:4], size=(48, 48), spacing=0, body=TINY, steps=1)


def test_to_image_grid_inverts_crop_and_pad():
    values = np.arange(64, dtype=np.float32).reshape(8, 8)
    placement = Placement(shape=(12, 4), offset=(-2, 2))  # rows cropped, columns padded
    back = to_image_grid(values, placement, (12, 4))
    assert back.shape == (12, 4)
    assert np.allclose(back[2:10], values[:, 2:6]) and np.all(back[:2] == 0)


def test_volume_scores_rank_slices(brain):
    """3D: per-slice scores along axis 0, heatmap on the volume's grid."""
    vol = brain.data[20:52, 30:62, 30:62].astype(np.float32)
    img = ImageData(vol, brain.geometry, "crop", metadata={"modality": "MR"})
    flipped = ImageData(vol[:, ::-1].copy(), brain.geometry, "flip", metadata={"modality": "MR"})
    model, h = train_classifier([img, flipped, img, flipped], ["a", "b", "a", "b"], size=(16, 16, 16),
                                body={"channels": [4, 8], "strides": [2]}, steps=3, val_fraction=0, augment=False)
    r = classify(model, img, target="b")
    assert r.heatmap.shape == vol.shape and r.target == "b"
    assert len(r.slice_scores) == vol.shape[0] and sorted(r.top_slices) == list(range(vol.shape[0]))
    assert r.slice_scores[r.top_slices[0]] == r.slice_scores.max()
    # the same volume stored x-first (sagittal slices first) is classified as the training volumes were stored
    geo, order = brain.geometry, (2, 0, 1)
    sag = ImageData(np.transpose(vol, order), type(geo)(tuple(geo.spacing[i] for i in order), geo.origin,
                                                         geo.direction[:, list(order)]), "sagittal")
    s = classify(model, sag, target="b")
    assert model.params.orientation == geo.direction.tolist()
    assert s.probabilities == pytest.approx(r.probabilities, abs=1e-5)
    np.testing.assert_allclose(s.heatmap, np.transpose(r.heatmap, order), atol=1e-5)
    assert len(s.slice_scores) == vol.shape[2] and s.geometry is sag.geometry


def test_transfer_from_builtin_freezes_then_unfreezes(contrasts):
    imgs, labels = contrasts
    model, h = train_classifier(imgs[:6], labels[:6], pretrained="brain-tissue-2d", size=(32, 32), steps=4,
                                freeze=0.5, val_fraction=0)
    builtin = __import__("napari_medgen").load_segmentation_model("brain-tissue-2d").net.state_dict()
    own = model.networks["net"].state_dict()
    assert h["frozen_layers"] > 10 and "U-Net of brain-tissue-2d" in model.params.pretrained
    enc = "model.0.conv.unit0.conv.weight"
    assert own[enc].shape == builtin[enc].shape and not torch.equal(own[enc], builtin[enc])  # unfrozen later


def test_transfer_from_a_unet_state_dict(tmp_path, contrasts):
    from monai.networks.nets import UNet

    net = UNet(2, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    torch.save(net.state_dict(), tmp_path / "mine.pt")
    imgs, labels = contrasts
    model, h = train_classifier(imgs[:4], labels[:4], pretrained=str(tmp_path / "mine.pt"), size=(32, 32),
                                steps=2, freeze=1.0, val_fraction=0, augment=False)
    enc = "model.0.conv.unit0.conv.weight"
    assert torch.equal(model.networks["net"].state_dict()[enc], net.state_dict()[enc])  # frozen all along
    with pytest.raises(UserError, match="holds a 2D network; these images need a 3D one"):
        pretrained_source(str(tmp_path / "mine.pt"), 3)


def test_transfer_from_a_torchvision_resnet(tmp_path, contrasts, brain):
    from torchvision.models import resnet18

    src = resnet18(weights=None).state_dict()  # the user's own weights file (random here; nothing downloaded)
    torch.save(src, tmp_path / "r18.pth")
    imgs, labels = contrasts
    model, h = train_classifier(imgs[:4], labels[:4], pretrained=str(tmp_path / "r18.pth"), size=(64, 64),
                                steps=2, batch_size=2, freeze=1.0, val_fraction=0, augment=False)
    own = model.networks["net"].state_dict()
    assert model.config.networks["net"].arch == "FlexibleUNet" and "resnet18" in model.params.pretrained
    assert torch.equal(own["encoder.layer3.1.conv2.weight"], src["layer3.1.conv2.weight"])  # frozen all along
    assert torch.allclose(own["encoder.conv1.weight"], src["conv1.weight"].sum(1, keepdim=True))  # RGB -> grey
    r = classify(model.save(tmp_path / "r18cls"), imgs[0])
    assert r.heatmap.shape == imgs[0].data.shape and 0 <= r.heatmap.min() < r.heatmap.max() <= 1
    assert r.probabilities == pytest.approx(classify(model, imgs[0], heatmap=False).probabilities)
    with pytest.raises(UserError, match="holds 2D ResNet weights; these images need a 3D network"):
        pretrained_source(str(tmp_path / "r18.pth"), 3)
    torch.save({k: v for k, v in src.items() if not k.startswith("layer4.1.")}, tmp_path / "odd.pth")
    with pytest.raises(UserError, match=r"ResNet with \[2, 2, 2, 1\] blocks per stage"):
        pretrained_source(str(tmp_path / "odd.pth"), 2)


def test_bad_inputs_are_one_sentence(tmp_path, contrasts):
    imgs, labels = contrasts
    with pytest.raises(UserError, match="not one of the classes"):
        encode_labels(["T1", "T3"], classes=["T1", "T2"])
    with pytest.raises(UserError, match="at least two classes"):
        train_classifier(imgs[:3], ["T1"] * 3, steps=1)
    with pytest.raises(UserError, match="3 images but 2 labels"):
        train_classifier(imgs[:3], ["T1", "T2"], steps=1)
    with pytest.raises(UserError, match="mix 2D slices and 3D volumes"):
        train_classifier([np.zeros((8, 8)), np.zeros((8, 8, 8))], ["a", "b"], steps=1)
    bad = tmp_path / "labels.csv"
    bad.write_text("file,label\nscan1.nii.gz,T1\n")
    with pytest.raises(UserError, match=r"^Row 2 of labels.csv names scan1.nii.gz, which is not in .*\.$"):
        read_label_csv(bad)
    (tmp_path / "scan1.nii.gz").write_bytes(b"")
    bad.write_text("file,label\nscan1.nii.gz\n")
    with pytest.raises(UserError, match=r"^Row 2 of labels.csv is not 'file,label'"):
        read_label_csv(bad)
    bad.write_text("name,class\nscan1.nii.gz,T1\n")  # a header of other names is a header too
    assert read_label_csv(bad)[1] == ["T1"]


def test_wrong_model_kind_is_refused(tmp_path):
    from napari_medgen.models.segmentation import load_segmentation_model

    with pytest.raises(UserError, match="not a classification model"):
        load_classifier(load_segmentation_model("brain-tissue-2d"))


def test_transfer_from_a_vae_encoder(tmp_path, contrasts):
    from napari_medgen.models.checkpoint import Model
    from napari_medgen.models.config import ModelConfig, NetSpec, Task, VAEParams

    args = {"spatial_dims": 2, "in_shape": [1, 32, 32], "out_channels": 1, "latent_size": 8,
            "channels": [8, 16, 32], "strides": [2, 2, 2], "num_res_units": 1}
    vae = Model(ModelConfig(Task.VAE, "my vae", {"net": NetSpec("VarAutoEncoder", args)}, VAEParams()))
    path = vae.save(tmp_path / "vae.medgen.pt")
    imgs, labels = contrasts
    model, h = train_classifier(imgs[:4], labels[:4], pretrained=path, size=(32, 32), steps=1, freeze=1.0,
                                val_fraction=0, augment=False)
    own, src = model.networks["net"].state_dict(), vae.net.state_dict()
    assert model.params.pretrained == "VAE encoder of my vae" and h["frozen_layers"] >= 6
    assert torch.equal(own["model.1.submodule.0.conv.unit0.conv.weight"], src["encode.encode_1.conv.unit0.conv.weight"])


def _lesion_crops(brain, tissue, n, seed):
    """32^3 crops of the sample brain; every other one with one bright lesion (and its mask)."""
    from napari_medgen.data.lesions import inject_lesions

    rng = np.random.default_rng(seed)
    vol, head = brain.data.astype(np.float32), tissue.data > 0
    out = []
    for i in range(n):
        z, y, x = (int(rng.integers(a, b)) for a, b in ((25, 45), (30, 55), (30, 45)))
        sl = np.s_[z:z + 32, y:y + 32, x:x + 32]
        crop, mask = vol[sl], np.zeros((32, 32, 32), bool)
        if i % 2:
            crop, mask = inject_lesions(crop, head[sl], n=1, radii=(3.0,), polarity="bright", contrast=1.0,
                                        seed=seed * 100 + i)
        out.append((ImageData(crop, brain.geometry, f"crop {i}", metadata={"modality": "MR"}),
                    "lesion" if i % 2 else "healthy", mask))
    return out


def test_lesion_slice_ranks_first_in_a_volume(brain, tissue):
    train = _lesion_crops(brain, tissue, 16, seed=1)
    window = {"kind": "window", "low": 0.0, "high": 2.0 * float(np.percentile(brain.data, 99.5))}
    model, h = train_classifier([t[0] for t in train], [t[1] for t in train], size=(32, 32, 32),
                                normalization=window,  # fixed: a lesion cannot shift the intensity scale
                                spacing=[2.0, 2.0, 2.0], body={"channels": [8, 16, 32], "strides": [2, 2]},
                                steps=60, val_fraction=0, augment=False, seed=0)
    hits = []
    for img, label, mask in _lesion_crops(brain, tissue, 6, seed=2):
        if label == "lesion":
            r = classify(model, img, target="lesion")
            zs = np.flatnonzero(mask.any((1, 2)))
            hits.append(zs.min() - 1 <= r.top_slices[0] <= zs.max() + 1)
    assert np.mean(hits) >= 2 / 3, hits


def test_one_class_for_every_validation_image_is_not_handed_back(brain):
    """Balanced accuracy at chance with a ranking above it (AUROC 0.75 on 4 images) used to pass as learned: a CT
    classifier that called every slice 'normal' was saved without a word."""
    from napari_medgen.errors import NothingLearnedError

    rng = np.random.default_rng(0)
    slice_ = brain.data[45].astype(np.float32)
    imgs = [slice_ * (0.7 if i % 2 else 1.0) + rng.normal(0, 1, slice_.shape).astype(np.float32) for i in range(20)]
    labels = ["a" if i % 2 else "b" for i in range(20)]
    with pytest.raises(NothingLearnedError, match="at chance .* AUROC 0.75"):
        train_classifier(imgs, labels, body=TINY, steps=2, lr=1e-9, size=(64, 64), augment=False,
                         normalization={"kind": "window", "low": 0, "high": 200})
    with pytest.warns(UserWarning, match="Fewer than 2 images of each class were held out"):
        train_classifier(imgs[:2], labels[:2], body=TINY, steps=1, size=(64, 64))

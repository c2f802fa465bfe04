"""The default two-scale GAN (half-resolution GAN + refiner): both stages learn, samples keep the data's
grid and intensity units, seeds reproduce through a saved file, the memorisation check runs on its samples."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_medgen.io import Geometry
from napari_medgen.io.read import ImageData
from napari_medgen.models.checkpoint import Model
from napari_medgen.models.config import Task
from napari_medgen.engine.fit import Budget, fit
from napari_medgen.models.checkpoint import build_network
from napari_medgen.tasks.cascade_gan import FACTOR, RefineTask, refined, refiner_config, upsample, zero_output
from napari_medgen.tasks.gan_training import spectral_discriminator
from napari_medgen.tasks.gan import interpolate_seeds, synthesize, train_gan, training_slices
from napari_medgen.tasks.synthesis_report import pyramid_swd, synthesis_report
from gan_slices import interleaved

DS = 2  # 4 mm slices (59 x 50 px, padded to 64 x 64): the coarse GAN trains at 16 x 16, the refiner at 64 x 64
KW = {"width": 8, "batch_size": 8, "seed": 0, "device": "cpu", "seconds": None}


@pytest.fixture(scope="module")
def split(brain):
    return interleaved(brain, DS)


STEPS = 250


@pytest.fixture(scope="module")
def trained(split):
    events = []
    model, history = train_gan(ImageData(split[0], Geometry((1.0, 4.0, 4.0))), steps=STEPS,
                               progress=events.append, **KW)
    return model, history, events


def unit(stack, window):
    lo, hi = window
    return np.clip((stack - lo) / (hi - lo), 0, 1)


def test_both_stages_learn(trained, split):
    model, history, events = trained
    train, held, window = split
    assert model.params.architecture == "cascade" and set(model.networks) == {"net", "refine"}
    stages = ["l1" in e.metrics for e in events if e.message == "training"]
    coarse_steps = stages.index(True)
    assert coarse_steps == int(0.7 * STEPS) and all(stages[coarse_steps:])  # coarse GAN first, then the refiner
    assert history["best_step"] > 1
    samples = unit(synthesize(model, 32, seed=1).data, window)
    ref = unit(held, window)
    untrained, _ = train_gan(ImageData(train, Geometry((1.0, 4.0, 4.0))), steps=1, **KW)
    noise = unit(synthesize(untrained, 32, seed=1).data, window)
    trained_swd, noise_swd = pyramid_swd(samples, ref), pyramid_swd(noise, ref)
    print("\ntrained", np.round(trained_swd, 3), "untrained", np.round(noise_swd, 3))
    assert trained_swd[-1] < noise_swd[-1] - 0.05  # coarse anatomy learned
    report = synthesis_report(synthesize(model, 16, seed=1).data, held, training=train)
    assert report["memorisation"]["max"] < 0.99  # samples are not copies of training slices


def test_refiner_restores_full_resolution_detail(brain):
    """The refiner alone, through the one training loop, on native 2 mm slices: from their 4x pooled
    copies it restores held-out slices with full-resolution detail closer to real than bicubic upsampling."""
    imgs = training_slices(brain, multiple=8 * FACTOR)["images"]
    train, held = imgs[0::2], imgs[1::2]
    torch.manual_seed(0)
    task = RefineTask(zero_output(build_network(refiner_config(8))), spectral_discriminator(2, 16), train,
                      l1_weight=10.0, lr=5e-4, ema_decay=0.99, batch_size=8, seed=0)
    fit(task, Budget(steps=150), device="cpu")
    real = torch.from_numpy(held)[:, None] * 2 - 1
    low = F.avg_pool2d(real, FACTOR)
    with torch.no_grad():  # the refiner itself (its moving average, which is shipped, lags it by ~100 steps)
        restored = refined(task.networks["gen"].eval(), low, real.shape[-2:])
    bicubic = upsample(low, real.shape[-2:]).clamp(-1, 1)
    fine = [pyramid_swd((x[:, 0].numpy() + 1) / 2, held)[0] for x in (restored, bicubic)]
    print(f"\nfull-resolution patch SWD: refined {fine[0]:.3f}, bicubic {fine[1]:.3f}")
    assert fine[0] < 0.9 * fine[1]


def test_samples_keep_grid_units_and_seeds(trained, split, tmp_path):
    model, _, _ = trained
    train, _, (lo, hi) = split
    a = synthesize(model, 4, seed=7)
    assert a.data.shape == (4, *train.shape[1:]) and a.geometry.spacing == (1.0, 4.0, 4.0)
    assert lo - 1 <= a.data.min() and a.data.max() <= hi + 1 and a.data.max() > 0.25 * hi  # scanner units
    assert np.array_equal(a.data, synthesize(model, 8, seed=7).data[:4])
    again = synthesize(Model.load(model.save(tmp_path / "gan.medgen.pt"), expect=Task.GAN), 4, seed=7)
    assert np.array_equal(a.data, again.data)
    walk = interpolate_seeds(model, 7, 9, steps=3)
    assert np.allclose(walk.data[0], a.data[0], atol=1e-3)


def test_unknown_architecture_is_refused(split):
    with pytest.raises(ValueError, match="Unknown GAN architecture 'progressive'"):
        train_gan(split[0], steps=1, architecture="progressive", **KW)


def test_patch_swd_samples_patches_without_unfolding_every_position(monkeypatch):
    """The GAN's validation unfolded every 7x7 patch of every slice (1.5 GB for 64 slices of 256x256) to keep
    2048 of them; sampling the positions first gives the same patches, so the same distance."""
    from napari_medgen.tasks.synthesis_report import sliced_wasserstein

    a, b = torch.rand(5, 1, 40, 33, generator=torch.Generator().manual_seed(1)), torch.rand(4, 1, 40, 33)
    every = F.unfold(a, 7).transpose(1, 2).reshape(-1, 49)
    wanted = every[torch.randint(len(every), (300,), generator=torch.Generator().manual_seed(0))]
    seen, cat = [], torch.cat
    monkeypatch.setattr(torch, "cat", lambda parts, *args, **kw: (seen.append(parts[0]), cat(parts, *args, **kw))[1])
    sliced_wasserstein(a, b, n_patches=300, n_proj=8)
    assert torch.equal(seen[0], wanted)  # the patches of the first set, as unfolding all of them would pick


def test_patch_swd_of_many_large_slices_needs_little_memory():
    """64 slices of 256x256 (a GAN validation on a head CT) took 1.5 GB more at its peak."""
    import subprocess
    import sys

    code = ("import resource, torch; from napari_medgen.tasks.synthesis_report import sliced_wasserstein as s; "
            "a, b = torch.rand(64, 1, 256, 256), torch.rand(64, 1, 256, 256); "
            "m = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; s(a, b, n_patches=2048, n_proj=64); "
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - m) / 1024)")
    extra_mib = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                     timeout=120).stdout)
    assert extra_mib < 200

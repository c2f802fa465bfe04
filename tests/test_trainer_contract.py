"""Every trainer keeps the same contract, because every trainer is :func:`napari_medgen.engine.fit.fit`:
budgets in steps and seconds, Stop keeps the best weights, Cancel changes nothing, one history, no GPU path on CPU."""
from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import torch

from napari_medgen.engine.fit import HISTORY_KEYS
from napari_medgen.engine.jobs import Cancelled
from napari_medgen.io import Geometry, ImageData
from napari_medgen.models.checkpoint import Model
from napari_medgen.tasks.conditional_gan import train_conditional_gan
from napari_medgen.tasks.finetune import finetune
from napari_medgen.tasks.gan import train_gan
from napari_medgen.tasks.vae_training import train_vae

TRAINERS = ("segmentation", "vae", "gan", "gan-single-scale", "conditional-gan")
CUDA_CALLS = ("synchronize", "empty_cache", "mem_get_info", "get_device_properties", "current_device",
              "set_device", "device_count")


@pytest.fixture(scope="module")
def inputs(brain, tissue):
    """Small real inputs (the sample brain at 8 mm in-plane), as a user would pass them."""
    geo = Geometry((2.0, 8.0, 8.0))
    t1 = ImageData(brain.data[::2, ::4, ::4].astype(np.float32), geo)
    labels = ImageData(tissue.data[::2, ::4, ::4].astype(np.int64), geo)
    painted = np.zeros_like(labels.data)
    painted[[15, 24]] = labels.data[[15, 24]]
    return {"t1": t1, "labels": labels, "painted": painted, "mask": labels.data > 0}


def train(name: str, x: dict, **kw):
    """Run trainer ``name`` with tiny networks; returns (model, history)."""
    if name == "segmentation":  # continues the built-in model: a fresh one learns nothing in three steps
        return finetune("brain-tissue-2d", x["t1"], x["painted"], batch_size=2, patch_size=(32, 32), patience=None,
                        **kw)
    if name == "vae":
        return train_vae(x["t1"], x["mask"], channels=(4, 8, 8), latent_size=4, batch_size=4, augment=False, **kw)
    if name.startswith("gan"):  # the default two-scale cascade, or one GAN at full resolution
        return train_gan(x["t1"], width=4, batch_size=4, architecture=name[4:] or "cascade", **kw)
    return train_conditional_gan(x["t1"], x["labels"], width=4, batch_size=4, **kw)


def digest(x: dict) -> dict:
    arrays = {k: (v.data if isinstance(v, ImageData) else v) for k, v in x.items()}
    return {k: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for k, a in arrays.items()}


def after(n: int):
    """A progress callback and a flag that turns true after ``n`` training steps were reported."""
    seen = []
    return (lambda ev: seen.append(ev.message)), (lambda: seen.count("training") >= n)


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_contract(name, inputs, monkeypatch):
    def forbidden(*_a, **_k):
        raise AssertionError("a CUDA call on a CPU run")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for fn in CUDA_CALLS:
        monkeypatch.setattr(torch.cuda, fn, forbidden)
    monkeypatch.setattr(torch.Tensor, "cuda", forbidden)
    before = digest(inputs)

    # a budget in steps: exactly that many, the best validated weights (never the untrained start)
    model, hist = train(name, inputs, steps=3, seconds=None, device="auto")
    assert set(HISTORY_KEYS) <= set(hist)
    assert hist["step"] == [1, 2, 3] and hist["stop_reason"] == "budget" and not hist["stopped"]
    assert hist["device"] == "cpu" and hist["returned"]
    if name != "segmentation":  # trained from scratch: the untrained start is never handed back
        assert hist["best_step"] in (1, 2, 3) and hist["returned"].startswith("the best")
    assert isinstance(model, Model)

    # a budget in seconds: the loop ends within one step and a validation of it
    t0 = time.monotonic()
    _, hist = train(name, inputs, steps=None, seconds=1.0, device="cpu")
    assert hist["stop_reason"] in ("budget",) and hist["seconds"] < 1.0 + 5.0
    assert time.monotonic() - t0 < 60

    # Stop: the best weights so far come back, marked as stopped
    progress, flag = after(2)
    model, hist = train(name, inputs, steps=1000, seconds=None, device="cpu", progress=progress, stop=flag)
    assert hist["stopped"] and hist["stop_reason"] == "stopped by the user" and 2 <= hist["step"][-1] < 1000
    assert isinstance(model, Model)

    # Cancel: an exception, nothing returned, the inputs byte-identical
    progress, flag = after(2)
    with pytest.raises(Cancelled):
        train(name, inputs, steps=1000, seconds=None, device="cpu", progress=progress, cancel=flag)
    assert digest(inputs) == before

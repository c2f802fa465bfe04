"""CNN + LSTM on image time series: frame order is learned, lengths vary, results carry a per-frame curve."""
import threading

import numpy as np
import pytest

from napari_medgen.engine.jobs import Cancelled
from napari_medgen.errors import UserError
from napari_medgen.models.checkpoint import Model
from napari_medgen.tasks.sequence import predict_sequence, train_sequence_model

TINY = {"size": [16, 16], "features": 16, "hidden": 16, "channels": (8, 16), "batch_size": 8}


def _order_task(brain, n, seed):
    """Real slices whose brightness rises ("up") or falls ("down") after a common first frame: the same
    frames, only their order differs."""
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for i in range(n):
        sl = brain.data[30 + rng.integers(30), ::4, ::4].astype(np.float32)
        t = int(rng.integers(5, 10))
        gains = np.linspace(0.6, 1.4, t)
        up = i % 2 == 0
        frames = np.stack([sl] + [sl * g for g in (gains if up else gains[::-1])])  # same first frame
        seqs.append(frames + rng.normal(0, 20, frames.shape).astype(np.float32))
        labels.append("up" if up else "down")
    return seqs, labels


@pytest.fixture(scope="module")
def order_model(brain):
    seqs, labels = _order_task(brain, 40, 0)
    model, hist = train_sequence_model(seqs, labels, steps=60, seed=0, **TINY)
    return model, hist


def test_frame_order_is_learned_and_beats_shuffled_control(order_model, brain):
    model, hist = order_model
    assert set(hist) >= {"step", "loss", "val_metric", "best_metric", "returned"}
    test, labels = _order_task(brain, 24, 1)
    rng = np.random.default_rng(2)
    acc = np.mean([predict_sequence(model, s).label == y for s, y in zip(test, labels)])
    shuffled = np.mean([predict_sequence(model, s[rng.permutation(len(s))]).label == y
                        for s, y in zip(test, labels)])
    assert acc >= 0.9
    assert shuffled <= 0.75 and acc - shuffled >= 0.25


def test_order_blind_baseline_cannot_learn_order(brain):
    seqs, labels = _order_task(brain, 40, 0)
    model, _ = train_sequence_model(seqs, labels, steps=40, recurrent=False, seed=0, **TINY)
    assert "rnn" not in model.networks
    test, truth = _order_task(brain, 24, 1)
    acc = np.mean([predict_sequence(model, s).label == y for s, y in zip(test, truth)])
    assert acc <= 0.75


def test_per_frame_curve_variable_length_and_save_load(order_model, brain, tmp_path):
    model, _ = order_model
    seq = _order_task(brain, 1, 5)[0][0]
    long = np.concatenate([seq, seq, seq])  # longer than any training sequence
    res = predict_sequence(model, long)
    assert len(res.curve) == len(long) == len(res.signal)
    assert res.label in ("up", "down") and sum(res.probabilities.values()) == pytest.approx(1.0)
    path = model.save(tmp_path / "order.medgen.pt")
    again = predict_sequence(Model.load(path, expect="sequence"), long)
    assert again.label == res.label and np.allclose(again.curve, res.curve, atol=1e-5)
    # a series far shorter than any it was trained on is answered, with a warning saying so
    assert not predict_sequence(model, seq).warnings
    (warning,) = predict_sequence(model, seq[:2]).warnings
    assert "has 2 frames; the model was trained on series of 6-10 frames" in warning


def test_regression_on_3d_frames_with_region(brain):
    rng = np.random.default_rng(0)
    vol = brain.data[30:46:2, ::8, ::8].astype(np.float32)  # (8, 15, 13)
    seqs, values, regions = [], [], []
    for i in range(8):
        t = int(rng.integers(3, 6))
        seqs.append(np.stack([vol * (1 + 0.1 * i * k) for k in range(t)]))
        values.append(float(i))
        regions.append(vol > vol.mean())
    model, hist = train_sequence_model(seqs, values, "regression", regions=regions, size=[8, 8, 8], steps=3,
                                       features=8, hidden=8, channels=(4, 8), batch_size=4)
    res = predict_sequence(model, seqs[0], regions[0])
    assert res.label is None and np.isfinite(res.value) and len(res.curve) == len(seqs[0])
    inside = seqs[0][:, regions[0]].mean(1)
    np.testing.assert_allclose(res.signal, inside, rtol=1e-5)


def _contracting_disks(n, seed):
    """Dark disks that shrink and grow back over a bright background; the target is 1 - min area / max area."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16] - 7.5
    seqs, ef = [], []
    for _ in range(n):
        big = rng.uniform(4.5, 7.0)
        small = big * rng.uniform(0.45, 0.95)
        radii = small + (big - small) * (0.5 + 0.5 * np.cos(np.linspace(0, 2 * np.pi, int(rng.integers(8, 13)))))
        seqs.append(np.stack([np.where(np.hypot(yy, xx) < r, 10.0, 100.0) for r in radii]).astype(np.float32)
                    + rng.normal(0, 3, (len(radii), 16, 16)).astype(np.float32))
        ef.append(1 - (small / big) ** 2)
    return seqs, np.array(ef)


def test_fraction_readout_learns_an_ejection_fraction_and_reads_it_from_its_curve(tmp_path):
    seqs, ef = _contracting_disks(48, 0)
    model, _ = train_sequence_model(seqs, ef, "regression", readout="fraction", steps=150, lr=3e-3, seed=0,
                                    **TINY)
    test, truth = _contracting_disks(16, 1)
    results = [predict_sequence(model, s) for s in test]
    pred = np.array([r.value for r in results])
    assert np.corrcoef(pred, truth)[0, 1] > 0.7  # it tracks the pool, not a constant
    for r in results:  # the answer is read from the curve (soft extremes lie a little inside the hard ones)
        assert r.curve.max() == pytest.approx(1.0) and 0 <= (1 - r.curve.min()) - r.value < 0.2
    again = predict_sequence(Model.load(model.save(tmp_path / "ef.medgen.pt"), expect="sequence"), test[0])
    assert again.value == pytest.approx(results[0].value, abs=1e-5) and again.curve_name == results[0].curve_name


def test_pretrained_encoder_is_transferred(order_model, brain):
    model, _ = order_model
    seqs, labels = _order_task(brain, 6, 3)
    new, _ = train_sequence_model(seqs, labels, steps=1, pretrained=model, lr=1e-9, **TINY)
    w_old = model.net.state_dict()
    w_new = new.net.state_dict()
    key = next(k for k, v in w_old.items() if v.ndim == 4)
    assert np.allclose(w_new[key].numpy(), w_old[key].numpy(), atol=1e-4)
    assert "tensors" in new.params.pretrained


def test_cancel_discards_and_stop_before_start(brain):
    seqs, labels = _order_task(brain, 6, 3)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        train_sequence_model(seqs, labels, steps=5, cancel=cancel, **TINY)


@pytest.mark.parametrize("seqs, targets, kw, match", [
    ([np.zeros((8, 8))], ["a"], {}, "a time series is"),
    ([np.zeros((1, 8, 8))], ["a"], {}, "at least 2"),
    ([np.zeros((3, 8, 8)), np.zeros((3, 8, 8))], ["a"], {}, "one target per sequence"),
    ([np.zeros((3, 8, 8)), np.zeros((3, 8, 8))], ["a", "a"], {}, "at least two classes"),
    ([np.full((3, 8, 8), np.nan), np.zeros((3, 8, 8))], ["a", "b"], {}, "NaN"),
    ([np.zeros((3, 8, 8)), np.zeros((3, 4, 8, 8))], ["a", "b"], {}, "mix 2D and 3D"),
    ([np.zeros((3, 8, 8)), np.zeros((3, 8, 8))], ["x", "2"], {"task": "regression"}, "must be numbers"),
    ([np.zeros((3, 8, 8)), np.zeros((3, 8, 8))], ["a", "b"], {"task": "segmentation"}, "Unknown task"),
    ([np.zeros((3, 8, 8)), np.zeros((3, 8, 8))], [55, 60], {"task": "regression", "readout": "fraction"},
     "between 0 and 1"),
    ([np.zeros((3, 8, 8)), np.zeros((3, 8, 8))], ["a", "b"], {"readout": "fraction"}, "for regression"),
    ([np.zeros((3, 8, 8)), np.zeros((3, 8, 8))], [1, 2], {"task": "regression", "readout": "mean"},
     "Unknown readout"),
    ([np.zeros((3, 8, 8)), np.zeros((3, 8, 8))], ["a", "b"], {"regions": [np.ones((4, 4)), None]}, "frames are"),
    ([np.zeros((3, 8, 8)), np.zeros((3, 8, 8))], ["a", "b"], {"regions": [np.zeros((8, 8)), None]}, "empty"),
    ([np.zeros((3, 8, 8)), np.zeros((1, 8, 8))], ["a", "b"], {"names": ["cine_a", "cine_b"]}, "^'cine_b' has 1 frame"),
])
def test_bad_inputs_are_one_sentence(seqs, targets, kw, match):
    with pytest.raises(UserError, match=match) as err:
        train_sequence_model(seqs, targets, steps=1, **{**TINY, **kw})
    assert "\n" not in str(err.value)


def test_prediction_refuses_wrong_frames_and_models(order_model):
    model, _ = order_model
    with pytest.raises(UserError, match="3D frames but the model was trained on 2D"):
        predict_sequence(model, np.zeros((3, 4, 16, 16)))
    other = model.copy()
    other.config.task = "vae"
    with pytest.raises(UserError, match="not a time series model"):
        predict_sequence(other, np.zeros((3, 16, 16)))

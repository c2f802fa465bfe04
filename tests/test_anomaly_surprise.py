"""The combined anomaly score: tail probabilities calibrated on normal scores; the threshold's order kept."""
import numpy as np

from napari_medgen.tasks.anomaly import GATE, TAILS, combine, surprise


def test_surprise_is_minus_log10_of_the_normal_tail_probability():
    normal = np.random.default_rng(0).exponential(size=200_000).astype(np.float32)
    table = np.quantile(normal, 1 - np.asarray(TAILS))
    fresh = np.random.default_rng(1).exponential(size=200_000).astype(np.float32)
    s = surprise(fresh, table)
    for p in (0.1, 0.01, 0.001):  # a share p of new normal scores is at least as surprising as p
        assert abs((s >= -np.log10(p)).mean() - p) < 0.3 * p
    x = np.array([12.0, 16.0, 20.0], np.float32)  # beyond the table (p < 1e-4): the exponential tail goes on
    far = surprise(x, table)
    assert far[0] < far[1] < far[2]
    np.testing.assert_allclose(far, x / np.log(10), rtol=0.25)
    assert surprise(np.zeros(3, np.float32), table).max() < 0.01


def test_combined_keeps_the_thresholds_order_unless_another_part_is_extreme():
    bright = np.array([0.5, 1.0, 1.5, 2.0, 3.0], np.float32)  # the lead: plain intensity, -log10 p
    quiet = np.array([1.9, 0.1, 1.0, 0.0, 0.5], np.float32)  # restoration evidence within its normal 1%
    score, which = combine({"brightness/positive": bright, "restoration/positive": quiet})
    np.testing.assert_array_equal(score, bright)  # exactly the threshold's ranking
    loud = quiet.copy()
    loud[0] = GATE + 4  # the model is sure about the first voxel
    score, which = combine({"brightness/positive": bright, "restoration/positive": loud})
    assert score.argmax() == 0 and which[0] == 2 and (which[1:] == 0).all()
    dark = np.array([0.2, 5.0, 0.1, 0.0, 0.0], np.float32)  # darker than normal: the restoration leads
    score, _ = combine({"brightness/positive": bright, "restoration/negative": dark})
    np.testing.assert_allclose(score, bright + dark)

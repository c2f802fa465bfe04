"""The combined anomaly score: tail probabilities calibrated on normal scores; the threshold's order kept."""
import numpy as np

from napari_medgen.tasks.anomaly_scores import GATE, TAILS, combine, rescaled, surprise, tissue_centred


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


def test_combined_keeps_the_thresholds_order_and_darkness_never_outweighs_the_model():
    bright = np.array([0.5, 1.0, 1.5, 2.0, 3.0], np.float32)  # the lead of brighter than normal: plain intensity
    score, which = combine({"brightness/positive": bright})
    np.testing.assert_array_equal(score, bright)  # exactly the threshold's ranking
    assert (which == 0).all()
    model = np.array([0.2, 5.0, 0.1, 0.0, 1.0], np.float32)  # darker than normal: the restoration leads
    dark = np.array([9.0, 0.0, 1.0, 0.0, 3.0], np.float32)  # plain darkness: normal CSF is this dark too
    score, which = combine({"restoration/negative": model, "brightness/negative": dark})
    np.testing.assert_allclose(score, model + np.minimum(dark, GATE))  # darkness counts up to its 1% normal tail
    assert score.argmax() == 1 and which[1] == 1  # the model's extreme voxel stays first, CSF does not pass it


def test_restoration_residual_is_centred_per_tissue_on_the_scan_itself():
    """A restoration that shifts each tissue by its own amount flags no tissue; a lesion stays flagged."""
    rng = np.random.default_rng(0)
    normal = rng.choice([0.2, 0.5, 0.8], size=(4, 40, 40)).astype(np.float32)  # CSF, grey, white matter
    residual = np.where(normal > 0.7, -0.15, np.where(normal < 0.3, 0.1, 0.0)).astype(np.float32)  # systematic
    residual += rng.normal(0, 0.01, normal.shape).astype(np.float32)
    residual[1, 10:14, 10:14] -= 0.3  # a dark lesion
    mask = np.ones(normal.shape, bool)
    centred = tissue_centred(residual, normal, mask, bins=6)
    assert np.abs(np.median(centred[normal > 0.7])) < 0.01 and np.abs(np.median(centred[normal < 0.3])) < 0.01
    lesion = np.zeros(normal.shape, bool)
    lesion[1, 10:14, 10:14] = True
    assert centred[lesion].max() < -0.2 and np.abs(centred[~lesion]).max() < 0.1


def test_a_wider_residual_on_a_new_scan_is_rescaled_to_the_normal_tail():
    """A scan whose residuals are twice as wide (another scanner, another resolution) is not flagged all over."""
    normal = np.abs(np.random.default_rng(0).normal(size=100_000)).astype(np.float32)
    table = np.quantile(normal, 1 - np.asarray(TAILS))
    wide = 2 * np.abs(np.random.default_rng(1).normal(size=100_000)).astype(np.float32)
    assert (surprise(wide, table) >= 2).mean() > 0.1  # uncorrected: a tenth of a normal scan beyond the 1% tail
    fixed = surprise(rescaled(wide, table, None), table)
    assert abs((fixed >= 2).mean() - 0.01) < 0.005

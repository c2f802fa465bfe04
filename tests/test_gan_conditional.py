"""Mask-to-image GAN: images generated from a tissue map are segmented back into that map by the
project's own brain segmenter; unseen classes are refused; saved models reproduce."""
import numpy as np
import pytest

from napari_medgen.tasks.conditional_gan import (UnknownLabelsError, load_conditional, synthesize_from_labels,
                                                 train_conditional_gan)
from napari_medgen.tasks.segment import segment

SLICES = [30, 45, 60]
MIN_DICE = 0.55  # mean grey/white-matter Dice; measured 0.68 after 300 steps, real T1 slices give ~0.86


@pytest.fixture(scope="module")
def model(brain, tissue):
    m, history = train_conditional_gan(brain, tissue, steps=300, seconds=None, downsample=2, width=8, seed=0,
                                       device="cpu")
    assert np.mean(history["l1"][-20:]) < np.mean(history["l1"][:20])
    return m


def tissue_dice(pred, target):
    return float(np.mean([2 * ((pred == c) & (target == c)).sum() / ((pred == c).sum() + (target == c).sum())
                          for c in (2, 3)]))


def test_samples_follow_the_label_map(model, tissue, tmp_path):
    masks = tissue.data[SLICES]
    out = synthesize_from_labels(model, masks, spacing=(2.0, 2.0))
    assert out.data.shape == masks.shape and out.geometry.spacing == (1.0, 2.0, 2.0)
    seg = segment(out.data, "brain-tissue-2d", spacing=out.geometry.spacing, axis=0)
    dice = tissue_dice(seg, masks)
    shuffled = tissue_dice(seg, tissue.data[[60, 30, 45]])  # the same images against other slices' maps
    print(f"\nDice with the given maps {dice:.3f}, with other slices' maps {shuffled:.3f}")
    assert dice > MIN_DICE
    assert dice > shuffled + 0.15
    path = model.save(tmp_path / "cond.medgen.pt")
    again = synthesize_from_labels(load_conditional(path), masks, spacing=(2.0, 2.0))
    assert np.array_equal(again.data, out.data)
    single = synthesize_from_labels(model, masks[1], spacing=(2.0, 2.0))
    assert single.data.shape == masks.shape[1:] and single.geometry.ndim == 2


def test_unseen_classes_and_bad_maps_are_refused(model, tissue):
    painted = tissue.data[45].copy()
    painted[40:50, 40:50] = 7
    with pytest.raises(UnknownLabelsError, match=r"classes \[7\].*never saw"):
        synthesize_from_labels(model, painted)
    with pytest.raises(ValueError, match="integer"):
        synthesize_from_labels(model, tissue.data[45] + 0.5)
    with pytest.raises(ValueError, match="between 1 and"):
        synthesize_from_labels(model, np.zeros((0, 64, 64), np.int64))

"""Interleaved training / held-out axial slices of the sample brain, for the GAN tests."""
from napari_medgen.data.slices import fit_to_size
from napari_medgen.tasks.gan import training_slices


def interleaved(brain, downsample: int):
    """(training slices, held-out slices, (lo, hi) intensity window), in scanner units."""
    data = training_slices(brain, downsample=downsample)
    lo, hi = data["intensity"]
    stack = fit_to_size(data["images"], data["native_shape"]) * (hi - lo) + lo
    return stack[0::2], stack[1::2], (lo, hi)

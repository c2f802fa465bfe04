"""Synthetic lesions with exact masks: soft-edged ellipsoids, brighter or darker than tissue.

The anomaly-detection protocol of the field on data without real lesions: paint
ellipsoids of several sizes inside a foreground mask and keep their exact extent.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage, special
from ..errors import UserError


class LesionRoomWarning(UserWarning):
    """Fewer lesions than asked for fit inside the mask."""


def inject_lesions(volume: np.ndarray, mask: np.ndarray, n: int = 6, radii=(2.0, 3.5, 5.0),
                   polarity: str = "both", contrast: float = 0.5, softness: float = 0.15,
                   slices=None, axis: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, lesion_mask)``: a float32 copy of ``volume`` with ``n`` lesions and their mask.

    Each lesion is an ellipsoid with semi-axes drawn around one of ``radii`` (voxels), centred
    deep enough inside ``mask`` to stay within it, and blended into the image with a soft edge
    of relative width ``softness``. ``polarity`` "bright", "dark" or "both" (alternating) sets
    the sign; ``contrast`` is the change as a fraction of the foreground's 1-99 percentile range
    (dark lesions are floored at the foreground's 1st percentile).
    ``slices`` (indices along ``axis``) restricts the centres, e.g. to held-out slices.
    The mask is where the blend weight exceeds 0.5; lesions never leave ``mask``.  A lesion with no room
    left (no centre deep enough inside ``mask`` and clear of the others) is skipped with a
    :class:`LesionRoomWarning`.
    """
    if polarity not in ("bright", "dark", "both"):
        raise UserError(f"Lesion polarity must be 'bright', 'dark' or 'both', not '{polarity}'.")
    img = np.asarray(volume, dtype=np.float32).copy()
    fg = np.asarray(mask, bool)
    if fg.shape != img.shape:
        raise UserError(f"The mask shape {fg.shape} differs from the image shape {img.shape}.")
    rng = np.random.default_rng(seed)
    lo, hi = np.percentile(img[fg], [1, 99])
    span = float(hi - lo)
    depth = ndimage.distance_transform_edt(fg)
    allowed = np.zeros_like(fg)
    if slices is None:
        allowed[:] = True
    else:
        idx = [slice(None)] * img.ndim
        idx[axis] = np.asarray(slices)
        allowed[tuple(idx)] = True
    lesions = np.zeros(img.shape, bool)
    grid = np.indices(img.shape, dtype=np.float32)
    skipped = []
    for i in range(n):
        r = float(radii[i % len(radii)])
        semi = r * rng.uniform(0.7, 1.3, size=img.ndim)
        ok = allowed & (depth > semi.max() + 1) & ~ndimage.binary_dilation(lesions, iterations=int(r) + 2)
        cands = np.argwhere(ok)
        if len(cands) == 0:
            skipped.append(semi.max() + 1)
            continue
        centre = cands[rng.integers(len(cands))]
        dist = np.sqrt(sum(((grid[k] - centre[k]) / semi[k]) ** 2 for k in range(img.ndim)))
        w = special.expit((1.0 - dist) / softness)
        w[(w < 0.01) | ~fg] = 0.0  # a soft edge of finite reach
        bright = polarity == "bright" or (polarity == "both" and i % 2 == 0)
        new = img + contrast * span if bright else np.minimum(img, np.maximum(img - contrast * span, lo))
        img = img * (1 - w) + new * w
        lesions |= w > 0.5
    if skipped:
        room = float(depth[allowed].max()) if allowed.any() else 0.0
        warnings.warn(LesionRoomWarning(
            f"Only {n - len(skipped)} of {n} lesions fit: a lesion needs its centre more than {min(skipped):.1f} "
            f"voxels inside the mask and clear of the others, and the mask is at most {room:.1f} voxels deep "
            "where centres may go; give smaller radii or a larger mask."), stacklevel=2)
    return img.astype(np.float32), lesions

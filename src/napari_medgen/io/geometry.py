"""Physical geometry (spacing, origin, direction) and its napari layer form.

Arrays are in napari order (z, y, x); SimpleITK speaks (x, y, z).  A voxel
index ``i`` (napari order) sits at world point ``origin + D @ (spacing * i)``.
napari computes ``affine @ (scale * i + translate)``, so we set
``scale = spacing``, ``affine = D`` and ``translate = D.T @ origin``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ..errors import UserError


@dataclass
class Geometry:
    """Spacing, origin and direction of the spatial axes, in napari (z, y, x) order."""

    spacing: tuple = (1.0, 1.0, 1.0)
    origin: tuple = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self):
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=float).reshape(self.ndim, self.ndim)
        if len(self.origin) != self.ndim:
            raise UserError("Geometry origin and spacing must have the same number of axes.")

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    @classmethod
    def identity(cls, ndim: int) -> "Geometry":
        return cls((1.0,) * ndim, (0.0,) * ndim, np.eye(ndim))

    # --- SimpleITK ---------------------------------------------------------------
    @classmethod
    def from_sitk(cls, img) -> "Geometry":
        n = img.GetDimension()
        d = np.asarray(img.GetDirection(), dtype=float).reshape(n, n)
        return cls(img.GetSpacing()[::-1], img.GetOrigin()[::-1], d[::-1, ::-1])

    def apply_to_sitk(self, img) -> None:
        img.SetSpacing(self.spacing[::-1])
        img.SetOrigin(self.origin[::-1])
        img.SetDirection(tuple(self.direction[::-1, ::-1].ravel()))

    # --- napari --------------------------------------------------------------
    def layer_kwargs(self, data_ndim: int | None = None) -> dict:
        """``scale``/``translate``/``affine`` for a layer; leading extra axes (time, channel) get identity."""
        n = self.ndim
        extra = max(0, (data_ndim or n) - n)
        scale = (1.0,) * extra + self.spacing
        translate = (0.0,) * extra + tuple(self.direction.T @ np.asarray(self.origin))
        affine = np.eye(n + extra + 1)
        affine[extra:n + extra, extra:n + extra] = self.direction
        return {"scale": scale, "translate": translate, "affine": affine}

    @classmethod
    def from_layer(cls, layer) -> "Geometry":
        """Geometry from a napari layer's scale, translate and affine (spatial axes only)."""
        return cls.from_transform(layer.scale, layer.translate, layer.affine.affine_matrix,
                                  ndim=min(layer.ndim, 3))

    @classmethod
    def from_transform(cls, scale, translate, affine_matrix=None, ndim: int | None = None) -> "Geometry":
        """Geometry from napari's scale, translate and affine of the last ``ndim`` axes."""
        n = ndim or len(scale)
        scale = np.asarray(scale, dtype=float)[-n:]
        translate = np.asarray(translate, dtype=float)[-n:]
        a = np.eye(len(np.asarray(scale)) + 1) if affine_matrix is None else np.asarray(affine_matrix, dtype=float)
        lin, shift = a[-n - 1:-1, -n - 1:-1], a[-n - 1:-1, -1]
        # world = lin @ (scale*i + translate) + shift; split lin into rotation * stretch
        norms = np.linalg.norm(lin, axis=0)
        return cls(tuple(scale * norms), tuple(lin @ translate + shift), lin / norms)

    def index_to_world(self, index) -> np.ndarray:
        """World coordinates (napari order) of voxel indices, shape (..., ndim)."""
        idx = np.asarray(index, dtype=float)
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.direction.T

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin),
                "direction": self.direction.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(d["spacing"], d["origin"], np.asarray(d["direction"]))

    def same_grid(self, other: "Geometry", atol: float = 1e-3) -> bool:
        """True when both describe the same voxel grid in space."""
        return (self.ndim == other.ndim
                and np.allclose(self.spacing, other.spacing, atol=atol)
                and np.allclose(self.origin, other.origin, atol=atol)
                and np.allclose(self.direction, other.direction, atol=atol))

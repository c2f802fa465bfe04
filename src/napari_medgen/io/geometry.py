"""Physical geometry (spacing, origin, direction) and its napari layer form.

Arrays are in napari order (z, y, x); SimpleITK speaks (x, y, z).  A voxel
index ``i`` (napari order) sits at world point ``origin + D @ (spacing * i)``.
napari computes ``affine @ (scale * i + translate)``, so we set
``scale = spacing``, ``affine = D`` and ``translate = D.T @ origin``.

A one-slice volume (a single DICOM slice, a NIfTI slice of one voxel along any axis) is 2D
data; its 2D geometry keeps the volume's place as a :class:`Plane`, so that what is written
on its grid goes back to a one-slice 3D file where the slice was.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
from ..errors import UserError

ALIGNED = 1e-4  # largest direction cosine error of an axis that runs along a world axis


@dataclass
class Plane:
    """Where a 2D grid lies in space: the geometry of the one-slice volume it was read from, and that
    volume's ``axis`` of one voxel (the one the 2D data leaves out)."""

    volume: "Geometry"
    axis: int

    def in_plane(self) -> tuple:
        """(spacing, origin, direction) of the 2D grid: the in-plane spacing, and the in-plane origin and
        direction when the left-out axis runs along a world axis (zero origin, identity otherwise)."""
        v, keep = self.volume, [a for a in range(3) if a != self.axis]
        normal = np.abs(v.direction[:, self.axis])
        world = int(np.argmax(normal))
        spacing = tuple(v.spacing[a] for a in keep)
        if not np.allclose(normal, np.eye(3)[world], atol=ALIGNED):
            return spacing, (0.0, 0.0), np.eye(2)
        rows = [w for w in range(3) if w != world]
        return spacing, tuple(v.origin[w] for w in rows), v.direction[np.ix_(rows, keep)]

    def to_dict(self) -> dict:
        return {"volume": self.volume.to_dict(), "axis": self.axis}


@dataclass
class Geometry:
    """Spacing, origin and direction of the spatial axes, in napari (z, y, x) order; a 2D geometry may
    have the :class:`Plane` it lies in (kept only while its in-plane part describes that plane's grid)."""

    spacing: tuple = (1.0, 1.0, 1.0)
    origin: tuple = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    plane: Optional[Plane] = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=float).reshape(self.ndim, self.ndim)
        if len(self.origin) != self.ndim:
            raise UserError("Geometry origin and spacing must have the same number of axes.")
        if self.plane is not None and (self.ndim != 2 or self.plane.volume.ndim != 3
                                       or not self.same_grid(Geometry(*self.plane.in_plane()))):
            self.plane = None  # a changed grid (another spacing, a crop) is no longer that slice

    @classmethod
    def of_slice(cls, volume: "Geometry", axis: int) -> "Geometry":
        """The 2D geometry of a one-slice ``volume`` without its one-voxel ``axis``, keeping its place."""
        plane = Plane(volume, int(axis))
        return cls(*plane.in_plane(), plane=plane)

    def as_volume(self, data, rgb: bool = False) -> tuple:
        """``(data, geometry)`` of a 2D array (``rgb``: with a last axis of colour channels) on this grid as the
        one-slice volume it lies in; as given when this geometry has no plane."""
        if self.plane is None or np.ndim(data) - rgb != 2:
            return data, self
        return np.expand_dims(data, self.plane.axis), self.plane.volume

    def placed(self, stored) -> "Geometry":
        """This geometry with the plane of ``stored`` (a layer's ``metadata["geometry"]``) when that describes
        the same grid: napari's scale/translate/affine of a 2D layer say nothing of its place in 3D."""
        try:
            other = Geometry.from_dict(stored)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return self
        if self.ndim != 2 or other.plane is None or not self.same_grid(other):
            return self
        return replace(self, plane=other.plane)

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
        geo = cls.from_transform(layer.scale, layer.translate, layer.affine.affine_matrix, ndim=min(layer.ndim, 3))
        return geo.placed(layer.metadata.get("geometry"))

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
        d = {"spacing": list(self.spacing), "origin": list(self.origin), "direction": self.direction.tolist()}
        if self.plane is not None:
            d["plane"] = self.plane.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        p = d.get("plane")
        plane = Plane(cls.from_dict(p["volume"]), int(p["axis"])) if p else None
        return cls(d["spacing"], d["origin"], np.asarray(d["direction"]), plane=plane)

    def same_grid(self, other: "Geometry", atol: float = 1e-3) -> bool:
        """True when both describe the same voxel grid in space."""
        return (self.ndim == other.ndim
                and np.allclose(self.spacing, other.spacing, atol=atol)
                and np.allclose(self.origin, other.origin, atol=atol)
                and np.allclose(self.direction, other.direction, atol=atol))

"""Reorienting a volume to the storage of a model's training data: exact round trips, world positions kept,
unknown geometry left alone."""
import numpy as np

from napari_medgen.data.orientation import as_stored_like, reorientation, turn, turn_back, turned
from napari_medgen.io import Geometry, ImageData


def test_turn_keeps_every_voxel_at_its_world_position_and_turns_back_exactly():
    rng = np.random.default_rng(0)
    data = rng.random((4, 5, 6)).astype(np.float32)
    direction = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # a sagittal-first storage
    image = ImageData(data, Geometry((1.0, 2.0, 3.0), (10.0, -5.0, 7.0), direction), "x")
    how = reorientation(direction, np.eye(3))
    out = turned(image, how)
    np.testing.assert_allclose(out.geometry.direction, np.eye(3), atol=1e-12)
    for index in [(0, 0, 0), (3, 1, 5), (2, 4, 0)]:
        world = image.geometry.index_to_world(index)
        back = np.linalg.solve(out.geometry.direction * np.asarray(out.geometry.spacing),
                               world - np.asarray(out.geometry.origin))
        k = tuple(int(round(v)) for v in back)
        assert out.data[k] == data[index]
    assert np.array_equal(turn_back(np.asarray(out.data), how), data)
    assert np.array_equal(turn_back(turn(data[None], how, lead=1), how, lead=1), data[None])


def test_same_storage_and_unknown_geometry_are_left_alone():
    assert reorientation(np.eye(3), np.eye(3)) is None
    bare = ImageData(np.zeros((3, 4, 5)), Geometry((1.0, 1.0, 1.0)), "layer from an array")
    assert as_stored_like(bare, np.diag([1.0, -1.0, -1.0]).tolist()) is None
    assert as_stored_like(np.zeros((3, 4, 5)), np.eye(3).tolist()) is None

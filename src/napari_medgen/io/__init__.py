"""Reading and writing medical images with their physical geometry."""
from .geometry import Geometry
from .read import ImageData, opened, read_image, read_path
from .write import write_image

__all__ = ["Geometry", "ImageData", "opened", "read_image", "read_path", "write_image"]

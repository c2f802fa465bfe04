"""napari dock widgets: one per file, all running tasks through :class:`JobRunner`."""

"""The Fine-tune panel's slice tools: the slice the viewer shows (in any view), Accept slice, Suggest next
slice and going to a slice."""
from __future__ import annotations

from typing import Optional

import numpy as np
from napari.utils.notifications import show_error, show_info

from ..tasks.uncertainty import rank_slices
from ._navigate import go_to_slice


class SliceTools:
    """Mixed into the Fine-tune panel: uses its viewer, annotation and prediction layers, model, the axis it
    trained along (``slice_axis``, the user's), runner, painting style, background label, device and ranking list."""

    def view_axis(self) -> Optional[int]:
        """The axis (of the annotation layer) of the slices the viewer shows: paint and accept in any 2D view;
        None in the 3D view, which shows no single slice."""
        lab = self.labels.value
        if lab is None or lab.ndim < 3:
            return 0
        hidden = [d - (self.viewer.dims.ndim - lab.ndim) for d in self.viewer.dims.not_displayed]
        hidden = [d for d in hidden if d >= 0]
        return hidden[-1] if hidden else None

    def current_slice(self, axis: Optional[int] = None) -> int:
        """Index along ``axis`` (default: the viewed slice axis) of the slice the viewer shows."""
        lab = self.labels.value
        if lab.ndim == 2:
            return 0
        axis = (self.view_axis() or 0) if axis is None else axis
        point = np.asarray(lab.world_to_data(self.viewer.dims.point[-lab.ndim:]))
        return int(np.clip(np.round(point[axis]), 0, lab.data.shape[axis] - 1))

    def accept_slice(self) -> int:
        """Copy the prediction of the current slice into its unpainted voxels; returns the count written.

        Voxels already painted are never overwritten; the change is one undo step of the layer.
        In sparse mode predicted background is written as the background label.
        """
        lab = self.labels.value
        if self.runner.running:
            show_error("Wait for the round to finish (or cancel it): the prediction shows an unfinished network.")
            return 0
        if self.prediction is None or lab is None or self.prediction.data.shape != lab.data.shape:
            show_error("Train first: there is no prediction on the annotation layer's grid.")
            return 0
        axis = self.view_axis()
        if axis is None:  # the 3D view: the slice along the round's axis where the viewer stands, shown to check
            k = self.current_slice(self.slice_axis)
            self.go_to(k)
            show_info(f"The 3D view shows no single slice: this is slice {k} along axis {self.slice_axis}, the "
                      "axis the round trained along; check it and press Accept slice again.")
            return 0
        k = self.current_slice(axis)
        index = [slice(None)] * lab.ndim
        if lab.ndim == 3:
            index[axis] = k
        pred = np.asarray(self.prediction.data[tuple(index)]).astype(np.int64)
        if self.painting.currentIndex() == 1:
            pred = np.where(pred == 0, self.background.value(), pred)
        free = (np.asarray(lab.data[tuple(index)]) == 0) & (pred != 0)
        coords = list(np.nonzero(free))
        if lab.ndim == 3:
            coords.insert(axis, np.full(coords[0].shape, k))
        lab.data_setitem(tuple(coords), pred[free].astype(lab.data.dtype))
        show_info(f"Accepted the prediction on slice {k}: {int(free.sum())} voxels filled, painted voxels kept "
                  "(Ctrl-Z on the layer undoes it).")
        return int(free.sum())

    def suggest(self) -> None:
        """Rank the unannotated slices by the model's uncertainty and go to the most uncertain."""
        inputs = self._inputs()
        if inputs is None or self.model is None:
            return
        image, annotations = inputs
        if np.ndim(image.data) != 3:
            show_error("Suggest next slice ranks the slices of a 3D volume; a 2D image is one slice.")
            return
        self.runner.start(rank_slices, self.model, image, annotations, axis=self.slice_axis,
                          device=self.device.currentText(), on_result=self._ranked, what="Suggest next slice")

    def _ranked(self, ranking: list) -> None:
        self.ranking = ranking
        self.ranking_list.clear()
        for k, score in ranking[:20]:
            self.ranking_list.addItem(f"slice {k}: uncertainty {score:.3f}")
            self.ranking_list.item(self.ranking_list.count() - 1).setData(256, k)
        if ranking:
            self.go_to(ranking[0][0])
            self.ranking_list.setCurrentRow(0)
        else:
            show_info("Every informative slice is annotated already.")

    def go_to(self, k: int, axis: Optional[int] = None) -> None:
        """Show slice ``k`` along ``axis`` (default: the axis the last round trained along, else the viewed one),
        in a 2D view of the slices along it (from the 3D view or a view of another plane)."""
        lab = self.labels.value
        if lab is None or lab.ndim != 3:
            return
        if axis is None:
            axis = self.slice_axis if self.model is not None else (self.view_axis() or 0)
        if self.view_axis() != axis:
            dims, first = self.viewer.dims, self.viewer.dims.ndim - lab.ndim
            ours = [first + a for a in range(3)]
            dims.ndisplay = 2
            dims.order = (*[d for d in dims.order if d not in ours], first + axis,
                          *[d for d in ours if d != first + axis])
        go_to_slice(self.viewer, lab, axis, k)

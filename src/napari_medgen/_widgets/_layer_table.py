"""A table of layers with a value the user types for each (a class label, a training target).

Rows follow the layers themselves (their unique ids), not their names: renaming a layer keeps what was
typed for it, and the row shows the new name.
"""
from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QTableWidget, QTableWidgetItem


class LayerTable(QTableWidget):
    """Two columns: a layer's name (read-only) and the value typed for it."""

    def __init__(self, header: str):
        super().__init__(0, 2)
        self.setHorizontalHeaderLabels(["layer", header])
        self.horizontalHeader().setStretchLastSection(True)

    def show_layers(self, layers: list) -> None:
        """One row per layer, in order, keeping what was typed for each."""
        typed = {self.item(i, 0).data(Qt.UserRole): self.item(i, 1).text() for i in range(self.rowCount())
                 if self.item(i, 0) is not None and self.item(i, 1) is not None}
        self.setRowCount(len(layers))
        for i, layer in enumerate(layers):
            item = QTableWidgetItem(layer.name)
            item.setFlags(item.flags() & ~Qt.ItemIsEditable)
            item.setData(Qt.UserRole, layer.unique_id)
            self.setItem(i, 0, item)
            self.setItem(i, 1, QTableWidgetItem(typed.get(layer.unique_id, "")))
            layer.events.name.connect(self._renamed)

    def values(self, layers: list, all_rows: bool = False) -> dict:
        """``{layer name: typed value}`` for ``layers`` (those with a value unless ``all_rows``)."""
        rows = {self.item(i, 0).data(Qt.UserRole): self.item(i, 1) for i in range(self.rowCount())
                if self.item(i, 0) is not None}
        out = {}
        for layer in layers:
            cell = rows.get(layer.unique_id)
            text = cell.text().strip() if cell is not None else ""
            if text or (all_rows and cell is not None):
                out[layer.name] = text
        return out

    def set_value(self, layer, value) -> None:
        """Type ``value`` for ``layer`` (KeyError if it has no row)."""
        for i in range(self.rowCount()):
            if self.item(i, 0).data(Qt.UserRole) == layer.unique_id:
                self.setItem(i, 1, QTableWidgetItem(str(value)))
                return
        raise KeyError(layer.name)

    def _renamed(self, event) -> None:
        layer = event.source
        for i in range(self.rowCount()):
            if self.item(i, 0) is not None and self.item(i, 0).data(Qt.UserRole) == layer.unique_id:
                self.item(i, 0).setText(layer.name)

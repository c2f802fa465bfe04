"""The base of every napari-medgen dock widget: controls in a scroll area, rarely used ones folded away.

A panel lays its controls into ``self.body`` (a vertical layout inside a scroll area), so it
fits a 1366x768 laptop screen however tall it grows, and puts expert settings into
``self.advanced()``, a collapsible "Advanced" section that starts folded; :meth:`Panel.footer`
pins a widget (a job's progress and Cancel) below the scroll area.  Layer drop-downs
come from :meth:`Panel.layer_picker`; napari calls :meth:`Panel.reset_choices` whenever layers
are added, removed, renamed or reordered, so widgets never wire layer events by hand.
"""
from __future__ import annotations

from typing import Optional

from magicgui.widgets import create_widget
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QComboBox, QFormLayout, QFrame, QLabel, QScrollArea, QSizePolicy, QStyle, QVBoxLayout,
                            QWidget)
from superqt import QCollapsible

PICKER_CHARS = 16  # a layer drop-down is this many characters wide; longer names show in full in its list
WIDTH = 440  # preferred panel width (px): the viewer keeps most of a 1366 px screen


class Panel(QWidget):
    """A dock widget whose controls scroll vertically and whose expert settings fold away."""

    def __init__(self, napari_viewer, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._pickers: list = []
        self.sections: dict[str, QCollapsible] = {}  # title -> collapsible section
        self.content = QWidget()
        self.body = QVBoxLayout(self.content)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(self.content)
        self._footer = QVBoxLayout()  # below the scroll area, aligned with the body's controls
        margins = self.body.contentsMargins()
        self._footer.setContentsMargins(margins.left(), 0, margins.right(), margins.bottom())
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll, 1)
        outer.addLayout(self._footer)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)

    # --- building ------------------------------------------------------------------------------
    def form(self) -> QFormLayout:
        """A new form (label: control rows) appended to the body."""
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.body.addLayout(form)
        return form

    def advanced(self, title: str = "Advanced", expanded: bool = False) -> QFormLayout:
        """A collapsible section appended to the body (folded unless ``expanded``); returns its form."""
        section = QCollapsible(title)
        section.setDuration(0)
        inner = QWidget()
        form = QFormLayout(inner)
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        section.addWidget(inner)
        section.toggled.connect(lambda *_: self.updateGeometry())
        if expanded:
            section.expand(animate=False)
        else:
            section.collapse(animate=False)
        self.body.addWidget(section)
        self.sections[title] = section
        return form

    def footer(self, widget: QWidget) -> QWidget:
        """Pin ``widget`` below the scroll area, visible however far the body is scrolled."""
        self._footer.addWidget(widget)
        return widget

    def layer_picker(self, annotation, *, nullable: bool = False, tooltip: str = "", choices=None):
        """A magicgui drop-down of the viewer's layers of type ``annotation`` (kept current by napari);
        ``choices(widget)`` lists ``(name, layer or None)`` pairs instead (e.g. layers of two types)."""
        options = {"nullable": True} if nullable else {}
        if choices is not None:
            options["choices"] = choices
        widget = create_widget(annotation=Optional[annotation] if nullable else annotation, options=options)
        combo: QComboBox = widget.native
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(PICKER_CHARS)
        combo.setProperty("base_tooltip", tooltip)
        widget.changed.connect(lambda *_: _fit_popup(combo))
        self._pickers.append(widget)
        _fit_popup(combo)
        return widget

    # --- napari hooks --------------------------------------------------------------------------
    def reset_choices(self, *_args) -> None:
        """Refresh every layer drop-down (napari calls this on layer list changes), keeping each chosen layer even
        when it was renamed (magicgui finds the choice again by its name)."""
        for picker in self._pickers:
            chosen = picker.value
            with picker.changed.blocked():  # a rename is no change of choice for the panel
                picker.reset_choices()
                if chosen is not None and picker.value is not chosen and any(c is chosen for c in picker.choices):
                    picker.value = chosen
            if picker.value is not chosen:  # the chosen layer was removed
                picker.changed.emit(picker.value)
            _fit_popup(picker.native)

    def minimumSizeHint(self):
        hint = super().minimumSizeHint()
        bar = self.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
        hint.setWidth(max(self.content.minimumSizeHint().width() + bar + 2, self._footer.minimumSize().width()))
        return hint

    def sizeHint(self):
        hint = self.content.sizeHint()
        if self._footer.count():
            hint.setHeight(hint.height() + self._footer.sizeHint().height() + self.layout().spacing())
        hint.setWidth(max(self.minimumSizeHint().width(), WIDTH))
        return hint


class Note(QLabel):
    """A word-wrapped line of text that keeps room for all its lines, and no more: a scroll area sizes its panel
    only when it is resized, so a status text that grows a line after the panel was laid out would be cut off.
    With ``max_lines`` a longer text is cut to that many lines, the whole of it in the tooltip."""

    def __init__(self, text: str = "", max_lines: Optional[int] = None):
        super().__init__()
        self.setWordWrap(True)
        self._max_lines, self._full = max_lines, ""
        self.setText(text)

    def setText(self, text: str) -> None:
        self._full = text
        self._show()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._show()

    def _show(self) -> None:
        text = self._full
        if self._max_lines and text and self.width() > 1:
            metrics = self.fontMetrics()  # a wrapped line holds a little less than the width: a word's worth
            room = (self.width() - 6 * metrics.averageCharWidth()) * self._max_lines
            shown = metrics.elidedText(text, Qt.TextElideMode.ElideRight, max(room, 1))
            if shown != text:
                self.setToolTip(text)
            text = shown
        if text != super().text():
            super().setText(text)
        self.setMinimumHeight(0)  # heightForWidth never answers less than the minimum: let it shrink
        self.setMinimumHeight(self.heightForWidth(max(self.width(), 1)) if text else 0)


def _fit_popup(combo: QComboBox) -> None:
    """Let the list show whole layer names and the tooltip name the chosen one."""
    tooltip = combo.property("base_tooltip") or ""
    view = combo.view()
    view.setMinimumWidth(max((view.sizeHintForColumn(0) if combo.count() else 0) + 24, combo.width()))
    current = combo.currentText()
    combo.setToolTip(f"{current}\n{tooltip}".strip() if current else tooltip)

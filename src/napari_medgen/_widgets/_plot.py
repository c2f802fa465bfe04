"""A small live line plot for loss curves and validation metrics, painted with QPainter.

Points are appended cheaply; the plot repaints at most every :data:`REDRAW_MS` (longer where
painting is slow, see :class:`~._runner.PaintBudget`), however many points arrive.  A paint is
a few polylines and labels (about a millisecond), so a plot never stalls the viewer the way a
matplotlib redraw (hundreds of ms of text layout on a busy CPU) did.
"""
from __future__ import annotations

import math
import time

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QFont, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

from ._runner import PAINT

REDRAW_MS = 500
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
BACKGROUND, AXES, TEXT = "#262930", "#888888", "#ffffff"
MAX_POINTS = 2000  # more points than pixels are thinned when painting


class LivePlot(QWidget):
    """Named series of (x, y) points on shared axes; ``add`` appends and schedules a (throttled) repaint."""

    def __init__(self, title: str = "", xlabel: str = "step", height: float = 2.2):
        super().__init__()
        self.title, self.xlabel = title, xlabel
        self.series: dict[str, tuple[list, list]] = {}
        self.setMinimumHeight(int(height * 70))
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self._redraw = QTimer(self)
        self._redraw.setSingleShot(True)
        self._redraw.setInterval(REDRAW_MS)
        self._redraw.timeout.connect(self.refresh)

    def sizeHint(self):
        hint = super().sizeHint()
        hint.setHeight(self.minimumHeight())
        return hint

    def add(self, name: str, x: float, y: float, draw: bool = True) -> None:
        """Append a point to series ``name``; ``draw`` asks for a repaint soon (coalesced)."""
        xs, ys = self.series.setdefault(name, ([], []))
        xs.append(float(x))
        ys.append(float(y))
        if draw and not self._redraw.isActive():
            self._redraw.start()

    def refresh(self) -> None:
        """Repaint now and learn what a paint costs."""
        t0 = time.perf_counter()
        self.repaint()
        PAINT.record(time.perf_counter() - t0)
        self._redraw.setInterval(int(1000 * PAINT.interval(REDRAW_MS / 1000)))

    def drop_after(self, x: float) -> None:
        """Forget the points beyond ``x`` (a discarded run's), keeping what came before."""
        for name, (xs, ys) in list(self.series.items()):
            keep = sum(1 for v in xs if v <= x)
            self.series[name] = (xs[:keep], ys[:keep])
        self.update()

    def clear(self) -> None:
        self._redraw.stop()
        self.series.clear()
        self.update()

    # --- painting --------------------------------------------------------------------------------
    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor(BACKGROUND))
        font = QFont(self.font())
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
        p.setFont(font)
        h = p.fontMetrics().height()
        area = QRectF(46, h + 6, self.width() - 56, self.height() - 3 * h - 10)
        p.setPen(QColor(TEXT))
        p.drawText(QRectF(0, 2, self.width(), h), Qt.AlignmentFlag.AlignHCenter, self.title)
        p.drawText(QRectF(0, self.height() - h - 2, self.width(), h), Qt.AlignmentFlag.AlignHCenter, self.xlabel)
        p.setPen(QPen(QColor(AXES)))
        p.drawRect(area)
        pts = [(np.asarray(xs), np.asarray(ys)) for xs, ys in self.series.values()]
        finite = [(x[np.isfinite(y)], y[np.isfinite(y)]) for x, y in pts]
        if not any(len(x) for x, _ in finite) or area.width() < 10 or area.height() < 10:
            return
        x0, x1 = _span(np.concatenate([x for x, _ in finite]))
        y0, y1 = _span(np.concatenate([y for _, y in finite]))

        def to_px(x, y):
            return (area.left() + (x - x0) / (x1 - x0) * area.width(),
                    area.bottom() - (y - y0) / (y1 - y0) * area.height())

        for v in _ticks(y0, y1):
            _, py = to_px(x0, v)
            p.drawText(QRectF(0, py - h / 2, area.left() - 4, h), Qt.AlignmentFlag.AlignRight, f"{v:.3g}")
        for v in _ticks(x0, x1):
            px, _ = to_px(v, y0)
            p.drawText(QRectF(px - 30, area.bottom() + 2, 60, h), Qt.AlignmentFlag.AlignHCenter, f"{v:.4g}")
        text_w = max(p.fontMetrics().horizontalAdvance(name) for name in self.series) + 4  # whole legend names
        for i, (name, (x, y)) in enumerate(zip(self.series, finite)):
            color = QColor(COLORS[i % len(COLORS)])
            p.setPen(QPen(color, 1.4))
            step = max(1, len(x) // MAX_POINTS)
            px, py = to_px(x[::step], y[::step])
            if len(px) == 1:
                p.drawEllipse(QPointF(px[0], py[0]), 2, 2)
            else:
                p.drawPolyline(QPolygonF([QPointF(a, b) for a, b in zip(px, py)]))
            ly = area.top() + 4 + i * h
            left = area.right() - 2 - text_w
            p.drawLine(QPointF(left - 18, ly + h / 2), QPointF(left - 4, ly + h / 2))
            p.setPen(QColor(TEXT))
            p.drawText(QRectF(left, ly, text_w, h), Qt.AlignmentFlag.AlignLeft, name)


def _span(v: np.ndarray) -> tuple[float, float]:
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round values inside [lo, hi]."""
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]

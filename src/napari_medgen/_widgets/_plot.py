"""A small live line plot (matplotlib in Qt) for loss curves and validation metrics.

Points are appended cheaply; the figure is redrawn at most every :data:`REDRAW_MS` (longer
where painting is slow, see :class:`~._runner.PaintBudget`), however many points arrive, so a
plot never stalls the viewer.
"""
from __future__ import annotations

import time

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer

from ._runner import PAINT

REDRAW_MS = 500


class LivePlot(FigureCanvasQTAgg):
    """Named series of (x, y) points; ``add`` appends and schedules a (throttled) redraw."""

    def __init__(self, title: str = "", xlabel: str = "step", height: float = 2.2):
        fig = Figure(figsize=(4, height))
        fig.subplots_adjust(left=0.16, right=0.97, top=0.86, bottom=0.2)  # fixed: no layout pass per draw
        fig.patch.set_facecolor("#262930")
        super().__init__(fig)
        self.ax = fig.add_subplot(111)
        self._style(title, xlabel)
        self.series: dict[str, tuple[list, list]] = {}
        self._lines = {}
        self.setMinimumHeight(int(height * 70))
        self._redraw = QTimer(self)
        self._redraw.setSingleShot(True)
        self._redraw.setInterval(REDRAW_MS)
        self._redraw.timeout.connect(self.refresh)

    def _style(self, title: str, xlabel: str) -> None:
        ax = self.ax
        ax.set_facecolor("#262930")
        ax.set_title(title, color="w", fontsize=9)
        ax.set_xlabel(xlabel, color="w", fontsize=8)
        ax.tick_params(colors="w", labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#888")

    def add(self, name: str, x: float, y: float, draw: bool = True) -> None:
        """Append a point to series ``name``; ``draw`` asks for a redraw soon (coalesced)."""
        xs, ys = self.series.setdefault(name, ([], []))
        xs.append(x)
        ys.append(y)
        if name not in self._lines:
            (self._lines[name],) = self.ax.plot([], [], label=name, lw=1.2)
            self.ax.legend(fontsize=7, facecolor="#262930", labelcolor="w", edgecolor="#888")
        if draw and not self._redraw.isActive():
            self._redraw.start()

    def refresh(self) -> None:
        """Push the series into the lines and redraw now (one render and one paint)."""
        t0 = time.perf_counter()
        for name, line in self._lines.items():
            line.set_data(*self.series[name])
        self.ax.relim()
        self.ax.autoscale_view()
        self.draw()
        self.repaint()
        PAINT.record(time.perf_counter() - t0)
        self._redraw.setInterval(int(1000 * PAINT.interval(REDRAW_MS / 1000)))

    def clear(self) -> None:
        self._redraw.stop()
        for line in self._lines.values():
            line.remove()
        self._lines.clear()
        self.series.clear()
        legend = self.ax.get_legend()
        if legend is not None:
            legend.remove()
        self.draw_idle()

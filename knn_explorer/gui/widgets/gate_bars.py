"""One bar per attention head (its gate g_h, or its memory share), each labelled with its value.

Gates start at σ(−16) ≈ 1e-7 and stay invisible as bars for the first hundred updates of a
training; the labels (in scientific notation when small) show them moving all the same.
"""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg

from .. import colours
from ..plot_style import style_plot


def gate_label(value: float) -> str:
    return f"{value:.2f}" if value >= 0.01 else f"{value:.0e}"


class GateBars(pg.PlotWidget):
    def __init__(self, title: str, tooltip: str, parent=None):
        super().__init__(parent)
        style_plot(self, title, bottom="head")
        self.setYRange(0, 1.12, padding=0)
        self.bars = pg.BarGraphItem(x=np.zeros(0), height=np.zeros(0), width=0.7, brush=colours.LAMBDA,
                                    pen=pg.mkPen(None))
        self.addItem(self.bars)
        self.labels: list[pg.TextItem] = []
        self.setToolTip(tooltip)
        self.setMinimumSize(180, 140)

    def set_values(self, values: list[float], title: str | None = None) -> None:
        if title is not None:
            self.setTitle(title, color=colours.TEXT, size="10pt")
        self.bars.setOpts(x=np.arange(len(values), dtype=float), height=np.array(values, dtype=float), width=0.7)
        while len(self.labels) < len(values):  # one label per head, made once
            label = pg.TextItem("", color=colours.TEXT, anchor=(0.5, 1.0))
            self.addItem(label, ignoreBounds=True)
            self.labels.append(label)
        for i, label in enumerate(self.labels):
            label.setVisible(i < len(values))
            if i < len(values):
                label.setText(gate_label(values[i]))
                label.setPos(i, min(values[i], 1.0) + 0.01)
        self.setXRange(-0.6, max(len(values), 1) - 0.4, padding=0)

    def values(self) -> list[float]:
        h = self.bars.opts["height"]
        return [] if h is None else [float(v) for v in h]

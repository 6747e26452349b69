"""The inspector's plots: top-k bars of p_LM, p_kNN and p_final, and λ/gate and gain over the run."""
from __future__ import annotations

import html
import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QFontMetrics
from PySide6.QtWidgets import QGraphicsItem

from ...core.records import TokenProb, TokenRecord
from .. import colours
from .token_strip import format_prob, record_gain, record_weight, visible_token

TICK_CHARS = 8  # token labels under the bars are elided to at most this many characters


def _elide(text: str, limit: int = TICK_CHARS) -> str:
    return text if len(text) <= limit else text[: max(1, limit - 1)] + "…"


def tick_chars(plot_width: float, bars: int, char_width: float) -> int:
    """How many characters of a token fit under its bar: pyqtgraph drops a tick label that would
    overlap its neighbour, so a long token would lose its label altogether."""
    if bars <= 0 or char_width <= 0:
        return TICK_CHARS
    return max(2, min(TICK_CHARS, int(plot_width / bars / char_width) - 1))


def gain_span(gains: np.ndarray) -> float:
    """Half the height of the gain axis: the largest |gain| rounded up to 1, 2 or 5 × a power of ten,
    at least 0.1 nats, so the ticks read 0.05, 0.1, 0.5, 1, 2… in plain nats."""
    finite = np.abs(gains[np.isfinite(gains)])
    largest = float(finite.max()) if finite.size else 1.0
    if largest <= 0.1:
        return 0.1
    power = 10.0 ** np.floor(np.log10(largest))
    return float(next(m * power for m in (1, 2, 5, 10) if largest <= m * power * (1 + 1e-9)))


def _style_plot(plot: pg.PlotWidget) -> None:
    plot.setBackground("w")
    plot.setMenuEnabled(False)
    plot.setMouseEnabled(x=False, y=False)
    plot.hideButtons()
    item = plot.getPlotItem()
    item.layout.setContentsMargins(4, 4, 8, 4)
    tick_font = QFont(plot.font())
    tick_font.setPointSizeF(max(7.5, tick_font.pointSizeF() - 1))
    for name in ("left", "bottom", "right"):
        axis = item.getAxis(name)
        axis.setPen(pg.mkPen("#adb5bd"))
        axis.setTextPen(pg.mkPen("#495057"))
        axis.setStyle(tickFont=tick_font, tickLength=-4)
        # An axis replays its tick text (~2 ms per axis) on every repaint of its view, e.g. when only
        # the bars changed. Cached as a pixmap, it is redrawn only when its own ticks change.
        axis.setCacheMode(QGraphicsItem.DeviceCoordinateCache)


class DistributionPlot(pg.PlotWidget):
    """The top-k of one distribution as bars; the chosen token's bar in orange."""

    def __init__(self, title: str, colour: str, tooltip: str, parent=None):
        super().__init__(parent)
        _style_plot(self)
        self.title, self.colour, self.base_tooltip = title, colour, tooltip
        self.setTitle(title, color=colours.TEXT, size="10pt")
        self.showGrid(x=False, y=True, alpha=0.25)
        self.getPlotItem().getAxis("bottom").setStyle(tickTextOffset=4, autoExpandTextSpace=True)
        self.bars = pg.BarGraphItem(x=np.zeros(0), height=np.zeros(0), width=0.72, pen=pg.mkPen(None),
                                    brushes=[])
        self.addItem(self.bars)
        self.empty_text = pg.TextItem("", color=colours.MUTED, anchor=(0.5, 0.5))
        self.addItem(self.empty_text, ignoreBounds=True)
        self.empty_text.setPos(0, 0.5)
        self.probs: list[TokenProb] = []
        self.setToolTip(tooltip)
        self.setMinimumSize(170, 150)

    def set_distribution(self, probs: list[TokenProb] | None, chosen_id: int | None, empty_reason: str = "") -> None:
        self.probs = list(probs or [])
        n = len(self.probs)
        heights = np.array([p.prob for p in self.probs], dtype=float)
        brushes = [pg.mkBrush(colours.CHOSEN if p.token_id == chosen_id else self.colour) for p in self.probs]
        self.bars.setOpts(x=np.arange(n, dtype=float), height=heights, width=0.72, brushes=brushes)
        self._set_ticks()
        self.setXRange(-0.6, max(n, 1) - 0.4, padding=0)
        if n:
            self.empty_text.setText("")
            rows = "".join(
                f"<tr><td>{i + 1}</td><td><b>“{html.escape(visible_token(p.token))}”</b></td>"
                f"<td align='right'>{format_prob(p.prob)}</td>"
                f"<td style='color:{colours.CHOSEN}'>{'chosen' if p.token_id == chosen_id else ''}</td></tr>"
                for i, p in enumerate(self.probs))
            self.setToolTip(f"<b>{self.title}</b> — {html.escape(self.base_tooltip)}"
                            f"<table cellspacing='0' cellpadding='2'>{rows}</table>")
        else:
            self.empty_text.setText(empty_reason)
            self.empty_text.setPos((max(n, 1) - 1) / 2, 0.5 * (self.viewRange()[1][1] or 1))
            self.setToolTip(f"<b>{self.title}</b> — {html.escape(empty_reason or self.base_tooltip)}")

    def _set_ticks(self) -> None:
        axis = self.getPlotItem().getAxis("bottom")
        view_width = self.getPlotItem().vb.width() or self.width()
        font = axis.style.get("tickFont") or self.font()
        chars = tick_chars(view_width, len(self.probs), QFontMetrics(font).averageCharWidth())
        self.tick_labels = [_elide(visible_token(p.token), chars) for p in self.probs]
        axis.setTicks([list(enumerate(self.tick_labels)), []])

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if getattr(self, "probs", None):
            self._set_ticks()

    def heights(self) -> list[float]:
        h = self.bars.opts["height"]
        return [] if h is None else [float(v) for v in h]


class HistoryPlot(pg.PlotWidget):
    """λ/gate (left axis, 0..1) and gain in nats (right axis) over the steps; the shown step marked.
    For SPALM also the retrieval's usefulness per step (dashed, right axis), so whether g_t falls
    where the memory helps can be read off the plot."""

    step_clicked = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        _style_plot(self)
        item = self.getPlotItem()
        self.setTitle("λ and gain", color=colours.TEXT, size="10pt")  # a longer title widens the plot past its column
        item.showGrid(x=True, y=True, alpha=0.2)
        item.setLabel("left", "λ / gate", color=colours.LAMBDA)
        item.setLabel("bottom", "step")
        item.setYRange(0, 1, padding=0.05)
        item.showAxis("right")
        item.setLabel("right", "gain (nats)", color=colours.GAIN)
        for name in ("left", "bottom", "right"):  # plain units: no "(x0.001)" and ±200 ticks for a small gain
            item.getAxis(name).enableAutoSIPrefix(False)
        self.gain_view = pg.ViewBox(enableMenu=False)
        self.gain_view.setMouseEnabled(x=False, y=False)
        item.scene().addItem(self.gain_view)
        item.getAxis("right").linkToView(self.gain_view)
        self.gain_view.setXLink(item)
        item.vb.sigResized.connect(self._sync_views)

        self.weight_curve = pg.PlotDataItem(pen=pg.mkPen(colours.LAMBDA, width=2), connect="finite", name="λ / gate")
        self.gain_curve = pg.PlotDataItem(pen=pg.mkPen(colours.GAIN, width=2), connect="finite", name="gain")
        self.usefulness_curve = pg.PlotDataItem(pen=pg.mkPen(colours.P_KNN, width=1.5, style=Qt.DashLine),
                                                connect="finite", name="memory's usefulness")
        item.addItem(self.weight_curve)
        self.gain_view.addItem(self.gain_curve)
        self.gain_view.addItem(self.usefulness_curve)
        self.zero_line = pg.InfiniteLine(pos=0, angle=0, pen=pg.mkPen("#ced4da", style=Qt.DashLine))
        self.gain_view.addItem(self.zero_line, ignoreBounds=True)
        self.marker = pg.InfiniteLine(pos=0, angle=90, pen=pg.mkPen(colours.TEXT, width=1.5, style=Qt.DashLine))
        item.addItem(self.marker, ignoreBounds=True)
        self.weight_point = pg.ScatterPlotItem(size=9, pen=pg.mkPen("w", width=1.5), brush=colours.LAMBDA)
        self.gain_point = pg.ScatterPlotItem(size=9, pen=pg.mkPen("w", width=1.5), brush=colours.GAIN)
        item.addItem(self.weight_point)
        self.gain_view.addItem(self.gain_point)
        self.marker.setVisible(False)
        self.steps = np.zeros(0)
        self.setToolTip("λ (or the gate) and the gain log p_final − log p_LM of each step's chosen token.\n"
                        "SPALM: the dashed green line is the retrieval's usefulness, log p_mem − log p_h of the "
                        "chosen token\n(the memory alone against h_t alone); the memory's weight is 1 − gate, so a "
                        "gate that tracks it dips where it rises.\n"
                        "The dashed line marks the token shown above; click the plot to show another step.")
        self.setMinimumSize(220, 150)
        self.scene().sigMouseClicked.connect(self._clicked)

    def _sync_views(self) -> None:
        self.gain_view.setGeometry(self.getPlotItem().vb.sceneBoundingRect())
        self.gain_view.linkedViewChanged(self.getPlotItem().vb, self.gain_view.XAxis)

    def set_history(self, history: list[TokenRecord], step: int | None) -> None:
        self.steps = np.array([r.step for r in history], dtype=float)
        weights = np.array([np.nan if record_weight(r) is None else record_weight(r) for r in history], dtype=float)
        gains = np.array([record_gain(r) for r in history], dtype=float)
        gains[~np.isfinite(gains)] = np.nan
        usefulness = np.array([np.nan if r.memory_usefulness is None else r.memory_usefulness for r in history],
                              dtype=float)
        gated = bool(history) and all(r.gate is not None for r in history)
        self.setTitle("gate and gain" if gated else "λ and gain", color=colours.TEXT, size="10pt")
        self.weight_curve.setData(self.steps, weights)
        self.gain_curve.setData(self.steps, gains)
        # A trained gate stays near 1: on 0..1 its movement would be a flat line, so it gets the range it uses.
        low = float(np.nanmin(weights)) if gated and np.isfinite(weights).any() else 0.0
        self.getPlotItem().setYRange(max(0.0, math.floor((low - 0.01) * 20) / 20) if gated else 0.0, 1, padding=0.05)
        shown = np.isfinite(usefulness).any()
        self.usefulness_curve.setData(self.steps if shown else [], usefulness if shown else [])
        span = gain_span(np.concatenate([gains, usefulness]) if shown else gains)
        self.gain_view.setYRange(-span, span, padding=0.05)
        lo, hi = (float(self.steps.min()), float(self.steps.max())) if self.steps.size else (0.0, 10.0)
        self.getPlotItem().setXRange(lo - 0.5, max(hi, lo + 1) + 0.5, padding=0)
        if step is None or step not in set(self.steps.tolist()):
            self.marker.setVisible(False)
            self.weight_point.setData([], [])
            self.gain_point.setData([], [])
            return
        i = int(np.flatnonzero(self.steps == step)[-1])
        self.marker.setValue(step)
        self.marker.setVisible(True)
        self.weight_point.setData([step] if np.isfinite(weights[i]) else [], [weights[i]] if np.isfinite(weights[i]) else [])
        self.gain_point.setData([step] if np.isfinite(gains[i]) else [], [gains[i]] if np.isfinite(gains[i]) else [])

    def _clicked(self, event) -> None:
        vb = self.getPlotItem().vb
        if not self.steps.size or not vb.sceneBoundingRect().contains(event.scenePos()):
            return
        x = vb.mapSceneToView(event.scenePos()).x()
        self.step_clicked.emit(int(self.steps[int(np.argmin(np.abs(self.steps - x)))]))


# ----------------------------------------------------------------------------- alternatives

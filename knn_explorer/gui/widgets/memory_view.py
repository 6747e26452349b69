"""The Memorizing Transformer's memory layer, per head: gates, memory share over the run, and hits.

`MemoryView.set_run(records, step)` shows, for a run generated with method ``memtrf``:

- a bar per head: its gate g_h (gated mode) or its memory share at the shown step (joint mode);
- a heatmap of tokens × heads of the share of each head's output that came from memory (gated:
  ‖g·mem‖ / (‖g·mem‖ + ‖(1 − g)·local‖), so it moves with the token even though g does not; joint:
  the softmax mass on memory keys), with a colour bar; steps whose memory was still empty are grey;
- for a clicked cell (or the shown step and the strongest head), the earlier passages that head
  drew on: their weights (share of the head's output) and the cosine similarity of the head's
  query and each entry's key, which is what the lookup ranks by.

It renders record fields only; items are created once and updated in place.
"""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPen
from PySide6.QtWidgets import QHeaderView, QLabel, QSplitter, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from ...core.records import MemoryHit, TokenRecord
from .. import colours
from .gate_bars import GateBars
from ..plot_style import style_plot
from .token_strip import visible_token


def _inline(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "↵").replace("\t", "⇥")


def share_ceiling(largest: float) -> float:
    """The colour scale's top: the largest share rounded up to a tenth (at least 0.1, at most 1), so
    shares of a few tenths (the demo's gates) use the whole scale and the bar says where it ends."""
    return min(1.0, max(0.1, float(np.ceil(round(largest * 10, 6)) / 10)))


def memory_was_empty(record: TokenRecord) -> bool:
    """No entry was retrieved at this step: nothing had left the local window yet."""
    return not record.memory_hits or not any(record.memory_hits)


class MemoryView(QWidget):
    """Gates, a tokens × heads heatmap of memory share, and the hits of one (step, head)."""

    cell_selected = Signal(int, int)  # step, head
    HIT_COLUMNS = ("Position", "Token", "Weight", "Similarity", "Passage")
    HEATMAP_TIP = ("Share of each head's output that came from memory, per generated token (light → dark; the bar on\n"
                   "the right gives the scale). Gated: ‖g·memory‖ / (‖g·memory‖ + ‖(1−g)·local‖); joint: the\n"
                   "attention mass on memory entries. Grey: the memory was still empty (the text had not yet\n"
                   "left the local window). Click a cell to list the passages that head drew on for that token.")

    def __init__(self, parent=None):
        super().__init__(parent)
        self.records: list[TokenRecord] = []
        self.step: int | None = None
        self.head: int | None = None

        self.gate_plot = GateBars("Gates g<sub>h</sub>",
                                  "g_h = σ(b_h): how much each head of the memory layer mixes in its memory result.\n"
                                  "In joint mode (no gates): the head's attention mass on memory at the shown step.")

        self.heatmap_plot = pg.PlotWidget()
        style_plot(self.heatmap_plot, "Share of each head's output from memory")
        item = self.heatmap_plot.getPlotItem()
        item.setLabel("bottom", "token (step)")
        item.setLabel("left", "head")
        for name in ("left", "bottom"):
            item.getAxis(name).enableAutoSIPrefix(False)
        # Behind the image: steps whose memory was empty are NaN, drawn transparent, so this shows.
        self.empty_area = pg.QtWidgets.QGraphicsRectItem(QRectF(0, 0, 1, 1))
        self.empty_area.setBrush(QBrush(QColor(colours.MISSING)))
        self.empty_area.setPen(QPen(Qt.NoPen))
        self.empty_area.setZValue(-1)
        self.heatmap_plot.addItem(self.empty_area)
        self.image = pg.ImageItem(np.zeros((1, 1)))
        self.heatmap_plot.addItem(self.image)
        colour_map = pg.ColorMap([p for p, _c in colours.LAMBDA_MAP.stops],
                                 [QColor(c) for _p, c in colours.LAMBDA_MAP.stops])
        self.colour_bar = pg.ColorBarItem(values=(0.0, 1.0), colorMap=colour_map, interactive=False, width=12,
                                          colorMapMenu=False)
        self.colour_bar.setImageItem(self.image, insert_in=item)
        self.colour_bar.axis.enableAutoSIPrefix(False)
        self.colour_bar.axis.setTextPen(pg.mkPen("#495057"))
        self.colour_bar.axis.setLabel("share from memory", color="#495057")
        self.marker = pg.InfiniteLine(angle=90, pen=pg.mkPen(colours.CHOSEN, width=1.5, style=Qt.DashLine))
        self.heatmap_plot.addItem(self.marker, ignoreBounds=True)
        self.marker.setVisible(False)
        self.heatmap_plot.setToolTip(self.HEATMAP_TIP)
        self.heatmap_plot.scene().sigMouseClicked.connect(self._clicked)
        self.heatmap_plot.scene().sigMouseMoved.connect(self._hovered)
        self.heatmap_plot.setMinimumSize(260, 150)

        self.hits_caption = QLabel("Memory hits")
        self.hits_caption.setObjectName("InspectorCaption")
        self.hits = QTreeWidget()
        self.hits.setRootIsDecorated(False)
        self.hits.setColumnCount(len(self.HIT_COLUMNS))
        self.hits.setHeaderLabels(list(self.HIT_COLUMNS))
        self.hits.header().setStretchLastSection(True)
        self.hits.header().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.hits.setToolTip("Earlier tokens of this text that the head retrieved from memory, strongest first;\n"
                             "weight = the token's share of the head's output; similarity = the cosine of the\n"
                             "head's query and the token's key (the lookup keeps the k most similar)")

        plots = QSplitter(Qt.Horizontal)
        plots.addWidget(self.gate_plot)
        plots.addWidget(self.heatmap_plot)
        plots.setStretchFactor(0, 1)
        plots.setStretchFactor(1, 3)
        lower = QWidget()
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        lower_layout.addWidget(self.hits_caption)
        lower_layout.addWidget(self.hits)
        body = QSplitter(Qt.Vertical)
        body.addWidget(plots)
        body.addWidget(lower)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(body)

    # ---- public API ----------------------------------------------------------------------------
    def set_run(self, records: list[TokenRecord], step: int | None) -> None:
        self.records = [r for r in records if r.memory_attention is not None]
        self.step = step
        shown = self._record(step)
        shares = np.array([r.memory_attention for r in self.records], dtype=float) if self.records else np.zeros((0, 0))
        if shares.size:
            shown_shares = shares.copy()
            shown_shares[[memory_was_empty(r) for r in self.records]] = np.nan  # grey: nothing to retrieve yet
            top = share_ceiling(float(np.nanmax(shown_shares))) if np.isfinite(shown_shares).any() else 1.0
            self.image.setImage(shown_shares, autoLevels=False)
            self.colour_bar.setLevels((0.0, top))
            first = self.records[0].step
            rect = QRectF(first - 0.5, -0.5, shares.shape[0], shares.shape[1])
            self.image.setRect(rect)
            self.empty_area.setRect(rect)
            self.heatmap_plot.setXRange(first - 0.5, first + shares.shape[0] - 0.5, padding=0)
            self.heatmap_plot.setYRange(-0.5, shares.shape[1] - 0.5, padding=0)
            heads = shares.shape[1]
            self.heatmap_plot.getPlotItem().getAxis("left").setTicks(
                [[(h, str(h)) for h in range(0, heads, max(1, heads // 8))], []])
        else:
            self.image.setImage(np.full((1, 1), np.nan), autoLevels=False)
            self.colour_bar.setLevels((0.0, 1.0))
        self.marker.setVisible(shown is not None)
        if shown is not None:
            self.marker.setValue(shown.step)
        self._show_gates(shown)
        head = None if shown is None else int(np.argmax(shown.memory_attention))
        self.select(step, head)

    def select(self, step: int | None, head: int | None) -> None:
        """List the hits of `head` at `step`."""
        self.head = head
        record = self._record(step)
        self.hits.clear()
        if record is None or head is None or not record.memory_hits or head >= len(record.memory_hits):
            self.hits_caption.setText("Memory hits <span style='font-weight:400; color:#868e96'>"
                                      "none: the memory was empty or unused at this step</span>")
            return
        self.hits_caption.setText(f"Memory hits · head {head} · step {record.step} "
                                  f"<span style='font-weight:400; color:#868e96'>share "
                                  f"{record.memory_attention[head]:.3g}</span>")
        for hit in record.memory_hits[head]:
            self.hits.addTopLevelItem(self._hit_item(hit))

    def gates(self) -> list[float]:
        return self.gate_plot.values()

    def share_levels(self) -> tuple[float, float]:
        """The colour bar's range."""
        low, high = self.colour_bar.levels()
        return float(low), float(high)

    # ---- internals -----------------------------------------------------------------------------
    def _record(self, step: int | None) -> TokenRecord | None:
        return next((r for r in self.records if r.step == step), None)

    def _show_gates(self, record: TokenRecord | None) -> None:
        values = [] if record is None else (record.head_gates or record.memory_attention)
        gated = record is not None and record.head_gates is not None
        self.gate_plot.set_values(values, "Gates g<sub>h</sub>" if gated or record is None else "Memory share")

    @staticmethod
    def _hit_item(hit: MemoryHit) -> QTreeWidgetItem:
        start, end = hit.highlight
        passage = f"{_inline(hit.context[:start])}«{_inline(hit.context[start:end])}»{_inline(hit.context[end:])}"
        similarity = "" if hit.similarity is None else f"{hit.similarity:.3f}"  # runs saved before it was recorded
        item = QTreeWidgetItem([f"{hit.position:,}", visible_token(hit.token), f"{hit.weight:.3g}", similarity, passage])
        item.setToolTip(4, hit.context)
        for column in (0, 2, 3):
            item.setTextAlignment(column, Qt.AlignRight | Qt.AlignVCenter)
        return item

    def _cell(self, scene_pos) -> tuple[TokenRecord, int] | None:
        """The record and head under a scene position of the heatmap, if any."""
        if not self.records:
            return None
        vb = self.heatmap_plot.getPlotItem().vb
        if not vb.sceneBoundingRect().contains(scene_pos):
            return None
        point = vb.mapSceneToView(scene_pos)
        step, head = round(point.x()), round(point.y())
        record = self._record(step)
        if record is None or not 0 <= head < len(record.memory_attention):
            return None
        return record, head

    def _clicked(self, event) -> None:
        cell = self._cell(event.scenePos())
        if cell is None:
            return
        record, head = cell
        self.select(record.step, head)
        self.cell_selected.emit(record.step, head)

    def _hovered(self, scene_pos) -> None:
        cell = self._cell(scene_pos)
        if cell is None:
            self.heatmap_plot.setToolTip(self.HEATMAP_TIP)
            return
        record, head = cell
        where = f"step {record.step} “{visible_token(record.token)}” · head {head}"
        if memory_was_empty(record):
            self.heatmap_plot.setToolTip(f"{where}\nthe memory was still empty")
        else:
            hits = record.memory_hits[head] if head < len(record.memory_hits) else []
            strongest = ""
            if hits:
                top = hits[0]
                similar = "" if top.similarity is None else f", similarity {top.similarity:.3f}"
                strongest = f"\nstrongest hit: “{visible_token(top.token)}” at {top.position:,}{similar}"
            self.heatmap_plot.setToolTip(f"{where}\n{record.memory_attention[head]:.3f} of the head's output came "
                                         f"from memory{strongest}\n(click to list what it retrieved)")

"""Everything about one generated token: why it was chosen, and where retrieval found it.

`TokenInspector.show_record(record, history)` fills, top to bottom:

- a header with the token, its probabilities and gain, and the retrieval settings that produced it
  (λ or gate, k, temperature, exact/approximate distances, datastore), always visible;
- three bar plots of the top-k of p_LM, p_kNN and p_final (the chosen token in orange);
- the `NeighbourTable`: each retrieved neighbour's token, distance, weight in p_kNN, source document
  and the passage around it with its next token highlighted (double-click: `open_document`);
- the alternatives (p_final top-k; click: `branch_requested(step, token_id)`);
- λ/gate and gain over all steps, with the shown step marked.

Plot items are created once in `__init__` and updated with `setOpts`/`setData`.
The inspector renders record fields; it computes no probabilities.
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QSizePolicy, QSplitter, QTabWidget, QTreeWidgetItem, QVBoxLayout,
                               QWidget)

from ...core.records import TokenProb, TokenRecord
from .. import colours
from .alternatives_list import AlternativesList
from .distribution_plots import DistributionPlot, HistoryPlot
from .memory_view import MemoryView
from .neighbour_summary import NeighbourSummary
from .neighbour_table import NeighbourTable
from ..plot_style import export_png
from .token_strip import format_gain, format_prob, record_gain, visible_token


def _caption(text: str, tooltip: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName("InspectorCaption")
    label.setToolTip(tooltip)
    return label


class TokenInspector(QWidget):
    """One record in detail. See the module docstring for the parts."""

    open_document = Signal(str, int, int)  # path, character offset, token length (double-click in the table)
    branch_requested = Signal(int, int)  # step, token id (click on an alternative)
    step_clicked = Signal(int)  # a step picked in the history plot

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("TokenInspector")
        self.record: TokenRecord | None = None

        self.token_label = QLabel()
        self.token_label.setObjectName("InspectorToken")
        self.token_label.setToolTip("The token shown and its step")
        self.token_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.summary_label = QLabel()
        self.summary_label.setObjectName("InspectorSummary")
        self.summary_label.setToolTip("The chosen token's probability under the LM alone and after retrieval, "
                                      "and the gain log p_final − log p_LM")
        self.settings_label = QLabel()
        self.settings_label.setObjectName("InspectorSettings")
        self.settings_label.setToolTip("λ (or gate) used at this step and the retrieval settings that produced it. "
                                       "Results differ with k, the temperature T and the distance mode.")
        self.settings_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        header = QHBoxLayout()
        header.setSpacing(14)
        header.addWidget(self.token_label)
        header.addWidget(self.summary_label)
        header.addStretch(1)
        header.addWidget(self.settings_label)
        # On a narrow window the settings pill is cut rather than widening the inspector (its tooltip
        # and the record keep every value).
        self.settings_label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.settings_label.setMinimumWidth(120)

        self.p_lm_plot = DistributionPlot("p<sub>LM</sub>", colours.P_LM, "top-k of the language model's distribution")
        self.p_knn_plot = DistributionPlot("p<sub>kNN</sub>", colours.P_KNN,
                                           "top-k of the distribution of the retrieved neighbours' next tokens")
        self.p_final_plot = DistributionPlot("p<sub>final</sub>", colours.P_FINAL,
                                             "top-k of the final distribution the token was drawn from")
        bars = QWidget()
        bars_layout = QHBoxLayout(bars)
        bars_layout.setContentsMargins(0, 0, 0, 0)
        bars_layout.setSpacing(8)
        for plot in self.distribution_plots():
            bars_layout.addWidget(plot)

        self.neighbour_table = NeighbourTable()
        self.neighbour_table.open_document.connect(self.open_document)
        self.neighbour_caption = _caption("Neighbours", "The datastore entries retrieved for this token")
        neighbours = QWidget()
        neighbours_layout = QVBoxLayout(neighbours)
        neighbours_layout.setContentsMargins(0, 4, 0, 0)
        neighbours_layout.setSpacing(4)
        neighbours_layout.addWidget(self.neighbour_caption)
        neighbours_layout.addWidget(self.neighbour_table, 1)
        self.memory_view = MemoryView()
        # Neighbours (kNN-LM, SPALM) and the memory layer (Memorizing Transformer) share this place.
        left = QTabWidget()
        left.setDocumentMode(True)
        left.addTab(neighbours, "Neighbours")
        self.neighbour_summary = NeighbourSummary()
        left.addTab(self.neighbour_summary, "Sources and distances")
        left.addTab(self.memory_view, "Memory layer")
        left.setTabToolTip(0, "The datastore entries retrieved for this token")
        left.setTabToolTip(1, "How many neighbours each document gave, and the histogram of their distances")
        left.setTabToolTip(2, "Memorizing Transformer: per-head gates, memory share per token, and what each head retrieved")
        self.lower_tabs = left

        self.alternatives = AlternativesList()
        self.alternatives.itemClicked.connect(self._alternative_clicked)
        self.history_plot = HistoryPlot()
        self.history_plot.step_clicked.connect(self.step_clicked)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.setSpacing(4)
        right_layout.addWidget(_caption("Alternatives", "Click one to continue generation from it"))
        right_layout.addWidget(self.alternatives, 1)
        right_layout.addWidget(self.history_plot, 1)

        bottom = QSplitter(Qt.Horizontal)
        bottom.addWidget(left)
        bottom.addWidget(right)
        bottom.setStretchFactor(0, 5)
        bottom.setStretchFactor(1, 2)
        bottom.setChildrenCollapsible(False)
        body = QSplitter(Qt.Vertical)
        body.addWidget(bars)
        body.addWidget(bottom)
        body.setStretchFactor(0, 2)
        body.setStretchFactor(1, 3)
        body.setChildrenCollapsible(False)
        body.setHandleWidth(8)
        bottom.setHandleWidth(8)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(8)
        layout.addLayout(header)
        layout.addWidget(body, 1)
        self.setStyleSheet(
            f"#InspectorToken {{ font-size: 15pt; font-weight: 600; color: {colours.TEXT}; }}"
            f"#InspectorSummary {{ color: #495057; }}"
            f"#InspectorSettings {{ background: #f1f3f5; border: 1px solid #dee2e6; border-radius: 10px;"
            f" padding: 3px 10px; color: {colours.TEXT}; }}"
            f"#InspectorCaption {{ font-weight: 600; color: #495057; }}"
        )
        self._staged: list[Callable[[], None]] = []  # plot updates still to apply, one per event-loop turn (see _stage_plots)
        self._stage_timer = QTimer(self, singleShot=True, interval=15)
        self._stage_timer.timeout.connect(self._apply_next_stage)
        self.clear()

    def sizeHint(self) -> QSize:
        return QSize(1100, 600)

    # ---- public API ----------------------------------------------------------------------------
    def distribution_plots(self) -> list[DistributionPlot]:
        return [self.p_lm_plot, self.p_knn_plot, self.p_final_plot]

    def plots(self) -> dict[str, pg.PlotWidget]:
        return {"p_lm": self.p_lm_plot, "p_knn": self.p_knn_plot, "p_final": self.p_final_plot,
                "history": self.history_plot}

    def show_record(self, record: TokenRecord, history: list[TokenRecord] | None = None) -> None:
        self.record = record
        history = list(history) if history is not None else [record]
        token = html.escape(visible_token(record.token))
        self.token_label.setText(f"“{token}” <span style='font-size:10pt; font-weight:400; "
                                 f"color:{colours.MUTED}'>step {record.step} · id {record.token_id}</span>")
        gain = record_gain(record)
        gain_colour = colours.GAIN_MAP.colour(gain if math.isfinite(gain) else math.copysign(9, gain)).darker(115)
        self.summary_label.setText(
            f"p<sub>LM</sub> <b>{format_prob(record.chosen_prob_lm)}</b> → p<sub>final</sub> "
            f"<b>{format_prob(record.chosen_prob_final)}</b> &nbsp; gain "
            f"<b style='color:{gain_colour.name()}'>{format_gain(gain)}</b> nats")
        self.settings_label.setText(self._settings_text(record))

        self.neighbour_table.set_neighbours(record.neighbours)
        k = record.retrieval.k if record.retrieval else None
        self.neighbour_summary.set_neighbours(record.neighbours, record.token_id, k)
        shown = len(record.neighbours)
        self.neighbour_caption.setText(
            f"Neighbours <span style='font-weight:400; color:{colours.MUTED}'>"
            + (("all k = {k}" if shown >= k else f"the nearest {shown} of k = {k}").format(k=k) if k is not None
               else "none: this step used no retrieval")
            + (" · distance: squared L2 between keys" if k is not None else "") + "</span>")
        self.alternatives.set_alternatives(record)
        no_knn = "no retrieval at this step" if record.p_knn is None else "empty"
        self._stage_plots(
            [partial(self._show_distribution, plot, probs, record.token_id, reason) for plot, probs, reason in
             ((self.p_lm_plot, record.p_lm, ""), (self.p_knn_plot, record.p_knn, no_knn),
              (self.p_final_plot, record.p_final, ""))]
            + [partial(self.history_plot.set_history, history, record.step),
               partial(self.memory_view.set_run, history, record.step)])
        if record.head_gates is not None or record.memory_attention is not None:  # a memory layer's record
            self.lower_tabs.setCurrentWidget(self.memory_view)
        elif record.neighbours:
            self.lower_tabs.setCurrentIndex(0)

    def settle(self) -> None:
        """Apply plot updates still waiting for their turn (before reading or exporting the plots)."""
        self._stage_timer.stop()
        while self._staged:
            self._staged.pop(0)()

    def is_settled(self) -> bool:
        return not self._staged

    def _stage_plots(self, updates: list[Callable[[], None]]) -> None:
        # Painting all four plots at once takes 40–200 ms on a slow machine; one plot per event-loop
        # turn keeps every repaint short, so the window stays responsive while a run streams in.
        self._staged = list(updates)
        self._stage_timer.start()

    def _apply_next_stage(self) -> None:
        if self._staged:
            self._staged.pop(0)()
        if self._staged:
            self._stage_timer.start()

    @staticmethod
    def _show_distribution(plot: DistributionPlot, probs: list[TokenProb] | None, chosen: int,
                           empty_reason: str) -> None:
        # Each plot to its own scale: on a shared one a flat distribution (SPALM with a low gate: a
        # top p of 7e-4) is bars too low to see, and flat is exactly what there is to see.
        top = max([p.prob for p in probs or []] or [1.0])
        plot.setYRange(0, min(1.0, top * 1.12) if top > 0 else 1.0, padding=0)
        plot.set_distribution(probs, chosen, empty_reason)

    def clear(self) -> None:
        self.record = None
        self._staged = []
        self._stage_timer.stop()
        self.token_label.setText("No token selected")
        self.summary_label.setText(f"<span style='color:{colours.MUTED}'>Click a token in the text to inspect it"
                                   f"</span>")
        self.settings_label.setText("λ — · k — · T — · distances — · datastore —")
        for plot in self.distribution_plots():
            plot.setYRange(0, 1, padding=0)
            plot.set_distribution([], None)
        self.neighbour_table.set_neighbours([])
        self.neighbour_summary.set_neighbours([], None, None)
        self.neighbour_caption.setText("Neighbours")
        self.alternatives.clear()
        self.history_plot.set_history([], None)
        self.memory_view.set_run([], None)

    def export_plots(self, folder: Path) -> list[Path]:
        """Write each plot as a PNG into `folder`; returns the paths written."""
        self.settle()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        step = f"-step{self.record.step}" if self.record is not None else ""
        written = []
        for name, plot in self.plots().items():
            if not plot.isVisible():  # a hidden plot was never laid out: lay it out at a sensible size
                plot.resize(max(plot.width(), 480), max(plot.height(), 280))
                plot.resizeEvent(None)  # pyqtgraph's handler only reads the widget's size
                plot.getPlotItem().layout.activate()
                if plot is self.history_plot:
                    self.history_plot._sync_views()
            written.append(export_png(plot, folder / f"{name}{step}.png", min_width=420))
        return written

    # ---- internals -----------------------------------------------------------------------------
    @staticmethod
    def _settings_text(record: TokenRecord) -> str:
        parts = []
        if record.lambda_ is not None:
            parts.append(f"<b>λ</b> {record.lambda_:.3g}")
        elif record.gate is not None:
            parts.append(f"<b>gate</b> {record.gate:.3g}")
            if record.memory_usefulness is not None:  # SPALM: log p_mem − log p_h of the chosen token
                parts.append(f"<b>memory's usefulness</b> {format_gain(record.memory_usefulness)} nats")
        else:
            parts.append("<b>λ</b> —")
        r = record.retrieval
        if r is None:
            parts.append(f"no retrieval (method {html.escape(record.method)})")
        else:
            parts += [f"<b>k</b> {r.k}", f"<b>T</b> {r.temperature:g}",
                      f"<b>distances</b> {html.escape(r.distance)} L2²",
                      f"<b>datastore</b> {html.escape(r.datastore or '—')}"]
        return " &nbsp;·&nbsp; ".join(parts)

    def _alternative_clicked(self, item: QTreeWidgetItem, _column: int) -> None:
        token_id = item.data(0, AlternativesList.TOKEN_ID_ROLE)
        if self.record is None or token_id is None or token_id == self.record.token_id:
            return
        self.branch_requested.emit(self.record.step, int(token_id))

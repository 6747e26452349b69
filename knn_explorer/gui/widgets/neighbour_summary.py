"""The retrieved neighbours of one token in aggregate: which documents they came from, and how their
distances spread.

A researcher asks two questions the row-by-row table cannot answer at a glance: does one document
dominate the retrieval (and with how much of p_kNN), and is the nearest neighbour far ahead of the
rest or one of a crowd (the distance histogram; the neighbours that predict the chosen token in
orange). Both are read from the record's neighbours; nothing is recomputed.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from ...core.records import Neighbour
from .. import colours
from ..plot_style import style_plot
from .token_strip import visible_token


@dataclass(frozen=True)
class DocumentShare:
    document: str
    neighbours: int
    weight: float  # summed share of p_kNN (or of SPALM's attention)
    tokens: list[str]  # its neighbours' next tokens, most frequent first


def document_shares(neighbours: list[Neighbour]) -> list[DocumentShare]:
    """One row per source document, most neighbours first (ties: more weight first)."""
    counts: Counter[str] = Counter()
    weights: dict[str, float] = defaultdict(float)
    tokens: dict[str, Counter[str]] = defaultdict(Counter)
    for n in neighbours:
        counts[n.document] += 1
        weights[n.document] += n.weight
        tokens[n.document][visible_token(n.token)] += 1
    rows = [DocumentShare(doc, count, weights[doc], [t for t, _ in tokens[doc].most_common()])
            for doc, count in counts.items()]
    return sorted(rows, key=lambda r: (-r.neighbours, -r.weight, r.document))


def distance_bins(distances: np.ndarray, bins: int = 16) -> np.ndarray:
    """Bin edges over the distances' range (one bin of width 1 when they are all equal)."""
    low, high = float(distances.min()), float(distances.max())
    if high <= low:
        return np.array([low - 0.5, low + 0.5])
    return np.linspace(low, high, min(bins, max(4, len(distances) // 2)) + 1)


class NeighbourSummary(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.documents = QTableWidget(0, 4)
        self.documents.setHorizontalHeaderLabels(["Document", "Neighbours", "Weight", "Next tokens"])
        self.documents.verticalHeader().hide()
        self.documents.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.documents.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        header = self.documents.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(0, 170)
        for column in (1, 2):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.documents.setToolTip("How many of the retrieved neighbours each source document gave, and their "
                                  "summed weight in p_kNN")
        self.documents_caption = QLabel("Neighbours per document")
        self.documents_caption.setObjectName("InspectorCaption")

        self.histogram = style_plot(pg.PlotWidget(), "Distances of the neighbours", left="neighbours",
                                    bottom="squared L2 distance")
        self.histogram.setMinimumSize(220, 140)
        self.histogram.setToolTip("Squared L2 distance between this token's key and each neighbour's key. "
                                  "Orange: neighbours whose next token is the chosen token.")
        self.other_bars = pg.BarGraphItem(x=[], height=[], width=1, brush=colours.P_KNN, pen=pg.mkPen("w"))
        self.chosen_bars = pg.BarGraphItem(x=[], height=[], width=1, brush=colours.CHOSEN, pen=pg.mkPen("w"))
        self.histogram.addItem(self.other_bars)
        self.histogram.addItem(self.chosen_bars)

        left = QVBoxLayout()
        left.setContentsMargins(0, 4, 0, 0)
        left.addWidget(self.documents_caption)
        left.addWidget(self.documents, 1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(left, 3)
        layout.addWidget(self.histogram, 2)
        self.shares: list[DocumentShare] = []

    def set_neighbours(self, neighbours: list[Neighbour], chosen_token_id: int | None, k: int | None) -> None:
        self.shares = document_shares(neighbours)
        self.documents.setRowCount(len(self.shares))
        for row, share in enumerate(self.shares):
            name = QTableWidgetItem(PurePath(share.document).name)
            name.setToolTip(share.document)
            count = QTableWidgetItem(f"{share.neighbours}")
            weight = QTableWidgetItem(f"{share.weight:.1%}")
            for item in (count, weight):
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            tokens = QTableWidgetItem(" ".join(f"“{t}”" for t in share.tokens[:8]))
            for column, item in enumerate((name, count, weight, tokens)):
                self.documents.setItem(row, column, item)
        of_k = f" of k = {k}" if k is not None and k > len(neighbours) else ""
        self.documents_caption.setText(f"Neighbours per document: {len(neighbours)}{of_k} from "
                                       f"{len(self.shares)} document{'s' if len(self.shares) != 1 else ''}")
        self._set_histogram(neighbours, chosen_token_id)

    def _set_histogram(self, neighbours: list[Neighbour], chosen_token_id: int | None) -> None:
        if not neighbours:
            for bars in (self.other_bars, self.chosen_bars):
                bars.setOpts(x=[], height=[], y0=[])
            return
        distances = np.array([n.distance for n in neighbours], dtype=float)
        chosen = np.array([n.token_id == chosen_token_id for n in neighbours])
        edges = distance_bins(distances)
        all_counts, _ = np.histogram(distances, edges)
        chosen_counts, _ = np.histogram(distances[chosen], edges)
        centres, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])
        # Stacked: the chosen token's neighbours at the bottom of each bin, the others above them.
        self.chosen_bars.setOpts(x=centres, height=chosen_counts, y0=np.zeros_like(centres), width=width)
        self.other_bars.setOpts(x=centres, height=all_counts - chosen_counts, y0=chosen_counts, width=width)
        self.histogram.setXRange(float(edges[0]), float(edges[-1]), padding=0.02)
        self.histogram.setYRange(0, max(1, int(all_counts.max())), padding=0.05)

    def bin_counts(self) -> tuple[list[int], list[int]]:
        """(chosen, others) per bin, as drawn."""
        chosen = self.chosen_bars.opts["height"]
        others = self.other_bars.opts["height"]
        return [int(v) for v in chosen], [int(v) for v in others]

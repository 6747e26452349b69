"""The held-out tokens a method helped most or hurt most, each a click away from the token inspector."""
from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from ...core.evaluation.comparison import TokenChange
from .. import colours
from .token_strip import format_prob, visible_token

CONTEXT_TOKENS = 10  # shown before the token


class TokenChangesTable(QTableWidget):
    token_chosen = Signal(int)  # index of the target in the comparison

    COLUMNS = ("token", "context", "p_LM", "p", "gain")

    def __init__(self, title: str, parent=None):
        super().__init__(0, len(self.COLUMNS), parent)
        self.setHorizontalHeaderLabels(self.COLUMNS)
        self.setToolTip(f"{title}: click a row to open that token in the token inspector")
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.verticalHeader().hide()
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.setWordWrap(False)
        self.cellClicked.connect(lambda row, _column: self.token_chosen.emit(self.item(row, 0).data(Qt.UserRole)))
        self.changes: list[TokenChange] = []

    def set_changes(self, changes: list[TokenChange], token_ids, decode: Callable[[list[int]], str]) -> None:
        self.changes = changes
        self.setRowCount(len(changes))
        for row, change in enumerate(changes):
            before = decode([int(t) for t in token_ids[max(0, change.position - CONTEXT_TOKENS):change.position]])
            token = decode([change.token_id])
            cells = (visible_token(token), "…" + before[-60:].replace("\n", "↵").replace("\t", "⇥"), format_prob(change.p_lm),
                     format_prob(change.p), f"{change.gain:+.2f}")
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(f"target #{change.index} (token {change.position} of the text): "
                                f"p_LM {change.p_lm:.4g} → p {change.p:.4g}, gain {change.gain:+.3f} nats")
                if column == 0:
                    item.setData(Qt.UserRole, change.index)
                if column == 4:
                    item.setForeground(QColor("#1864ab" if change.gain > 0 else "#c92a2a"))
                if column == 1:
                    item.setForeground(QColor(colours.MUTED))
                self.setItem(row, column, item)

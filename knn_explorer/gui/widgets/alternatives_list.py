"""The chosen step's alternatives (p_final top-k); clicking one asks to branch from it."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QHeaderView, QTreeWidget, QTreeWidgetItem

from ...core.records import TokenRecord
from .. import colours
from .token_strip import format_prob, visible_token


class AlternativesList(QTreeWidget):
    """The p_final top-k of one step. The chosen token is shown but not clickable."""

    TOKEN_ID_ROLE = Qt.UserRole + 1

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setColumnCount(3)
        self.setHeaderLabels(["Alternative", "p_final", "p_LM"])
        header = self.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeToContents)
        self.headerItem().setToolTip(0, "The most likely next tokens after combining the LM with retrieval")
        self.headerItem().setToolTip(1, "Final probability (after retrieval)")
        self.headerItem().setToolTip(2, "Probability under the language model alone (— if outside its top-k)")
        self.setRootIsDecorated(False)
        self.setUniformRowHeights(True)
        self.setAlternatingRowColors(True)
        self.setToolTip("Click an alternative to continue generation from it instead of the chosen token")
        self.setMinimumWidth(170)
        self.setStyleSheet("QTreeWidget::item { padding: 2px 0px; }")

    def set_alternatives(self, record: TokenRecord) -> None:
        self.clear()
        lm = {p.token_id: p.prob for p in record.p_lm}
        for p in record.p_final:
            chosen = p.token_id == record.token_id
            label = f"“{visible_token(p.token)}”" + ("  (chosen)" if chosen else "")
            item = QTreeWidgetItem([label, format_prob(p.prob), format_prob(lm.get(p.token_id))])
            item.setData(0, self.TOKEN_ID_ROLE, p.token_id)
            item.setTextAlignment(1, Qt.AlignRight | Qt.AlignVCenter)
            item.setTextAlignment(2, Qt.AlignRight | Qt.AlignVCenter)
            if chosen:
                item.setFlags(Qt.ItemIsEnabled)
                item.setForeground(0, QBrush(QColor(colours.CHOSEN)))
                item.setToolTip(0, "The token that was generated at this step")
            else:
                item.setToolTip(0, f"Continue generation from “{visible_token(p.token)}” (id {p.token_id}) "
                                   f"instead of “{visible_token(record.token)}”")
            self.addTopLevelItem(item)


# ----------------------------------------------------------------------------- the inspector

"""The neighbour table: each retrieved entry's token, distance, weight and source passage, drawn
for speed (text formatted once per record, roles compared as ints)."""
from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetrics, QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QDialog,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableView,
)

from ...core.records import Neighbour
from .. import colours
from .token_strip import format_distance, visible_token


def _inline(text: str) -> str:
    """Passage text on one line: newlines and tabs shown as ↵ and ⇥, spaces kept."""
    return text.replace("\r\n", "\n").replace("\n", "↵").replace("\t", "⇥")


def passage_html(n: Neighbour) -> str:
    start, end = n.highlight
    ctx = n.context
    before, token, after = (html.escape(_inline(s)) for s in (ctx[:start], ctx[start:end], ctx[end:]))
    return (f"<span>{before}<span style='background:{colours.ACCENT_LIGHT}; color:{colours.ACCENT}; "
            f"font-weight:bold'>{token}</span>{after}</span>")


# ----------------------------------------------------------------------------- neighbour table

# Roles as plain ints: views pass ints, and comparing one with a PySide enum costs microseconds,
# which adds up to tens of milliseconds per paint (a view asks ~44 roles per visible row).
_DISPLAY, _TOOLTIP, _ALIGNMENT = int(Qt.DisplayRole.value), int(Qt.ToolTipRole.value), int(Qt.TextAlignmentRole.value)
_FOREGROUND, _FONT = int(Qt.ForegroundRole.value), int(Qt.FontRole.value)

class NeighbourTableModel(QAbstractTableModel):
    RANK, TOKEN, DISTANCE, WEIGHT, KNN_WEIGHT, SHARD, DOCUMENT, PASSAGE = range(8)
    COLUMNS = ("#", "Token", "Distance (L2²)", "Weight", "kNN-LM", "Shard", "Document", "Passage")
    HEADER_TIPS = (
        "Rank of the neighbour (1 = nearest)",
        "The token that followed the neighbour's context in the document",
        "Squared Euclidean (L2²) distance between the current context's key and the neighbour's key "
        "(smaller = closer); p_kNN weighs each neighbour by exp(−distance / T)",
        "kNN-LM: the neighbour's share of p_kNN (softmax of −distance / T over the k neighbours).\n"
        "SPALM: its attention weight in m_t (softmax of e(y)·h over the k retrieved tokens).",
        "SPALM: the same neighbour's kNN-LM weight (softmax of −distance / T), to see where the two disagree",
        "Which shard of the datastore (on its Ray cluster) answered with this neighbour",
        "Source document (hover for the full path)",
        "The passage around the neighbour; its next token is highlighted. Double-click to open the document.",
    )
    NEIGHBOUR_ROLE = int(Qt.UserRole.value) + 1

    # Numbers right-aligned: rank, distance, the weights.
    ALIGNMENTS = tuple(int((Qt.AlignRight if right else Qt.AlignLeft) | Qt.AlignVCenter)
                       for right in (True, False, True, True, True, True, False, False))

    def __init__(self, parent=None):
        super().__init__(parent)
        self._rows: list[Neighbour] = []
        self._display: list[tuple[str, ...]] = []
        self._muted = QBrush(QColor(colours.MUTED))
        self._bold = QFont()
        self._bold.setBold(True)

    def set_neighbours(self, neighbours: list[Neighbour]) -> None:
        self.beginResetModel()
        self._rows = list(neighbours)
        # A view asks for every role of every visible cell on each paint: format the text once here.
        self._display = [(str(n.rank), visible_token(n.token), format_distance(n.distance), f"{n.weight * 100:.1f}%",
                          "" if n.knn_weight is None else f"{n.knn_weight * 100:.1f}%",
                          "" if n.shard is None else str(n.shard), Path(n.document).name,
                          _inline(n.context)) for n in self._rows]
        self.endResetModel()

    def neighbour(self, row: int) -> Neighbour:
        return self._rows[row]

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section, orientation, role=_DISPLAY):
        if orientation != Qt.Horizontal:
            return None
        if role == _DISPLAY:
            return self.COLUMNS[section]
        if role == _TOOLTIP:
            return self.HEADER_TIPS[section]
        if role == _ALIGNMENT:
            return self.ALIGNMENTS[section]
        return None

    def data(self, index, role=_DISPLAY):
        row, col = index.row(), index.column()
        if not 0 <= row < len(self._rows):
            return None
        if role == _DISPLAY:
            return self._display[row][col]
        if role == self.NEIGHBOUR_ROLE:
            return self._rows[row]
        if role == _ALIGNMENT:
            return self.ALIGNMENTS[col]
        if role == _FOREGROUND:
            return self._muted if col == self.RANK else None
        if role == _FONT:
            return self._bold if col == self.TOKEN else None
        if role == _TOOLTIP:
            n = self._rows[row]
            if col == self.DOCUMENT:
                return f"{n.document}\ncharacter offset {n.offset:,}\nDouble-click to open it at this passage"
            if col == self.PASSAGE:
                return (f"<p style='white-space:pre-wrap'>{passage_html(n)}</p>"
                        f"<p style='color:{colours.MUTED}'>{html.escape(Path(n.document).name)} · offset "
                        f"{n.offset:,} · double-click to open</p>")
            if col == self.TOKEN:
                return f"“{html.escape(n.token)}” (id {n.token_id})"
            if col == self.DISTANCE:
                return f"distance {n.distance!r}"
            if col == self.WEIGHT:
                return f"weight: {n.weight:.6f}"
            if col == self.KNN_WEIGHT and n.knn_weight is not None:
                return f"kNN-LM weight: {n.knn_weight:.6f}"
            return self.HEADER_TIPS[col]
        return None


class PassageDelegate(QStyledItemDelegate):
    """Paints a passage on one line, keeping the highlighted token in view (about a third in)."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index) -> None:
        n: Neighbour = index.data(NeighbourTableModel.NEIGHBOUR_ROLE)
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        opt.text = ""
        style = opt.widget.style() if opt.widget else QApplication.style()
        style.drawControl(QStyle.CE_ItemViewItem, opt, painter, opt.widget)
        if n is None:
            return
        start, end = n.highlight
        before, token, after = _inline(n.context[:start]), n.context[start:end], _inline(n.context[end:])
        token = visible_token(token) if not token.strip() else _inline(token)
        rect = opt.rect.adjusted(6, 0, -6, 0)
        fm = QFontMetrics(opt.font)
        bold = QFont(opt.font)
        bold.setBold(True)
        bfm = QFontMetrics(bold)
        token_w = bfm.horizontalAdvance(token) + 6
        before = fm.elidedText(before, Qt.ElideLeft, max(0, int(rect.width() * 0.35)))
        selected = bool(opt.state & QStyle.State_Selected)
        text_colour = opt.palette.highlightedText().color() if selected else QColor(colours.TEXT)
        painter.save()
        painter.setClipRect(opt.rect)
        x = rect.left()
        painter.setFont(opt.font)
        painter.setPen(text_colour)
        w = fm.horizontalAdvance(before)
        painter.drawText(QRect(x, rect.top(), w + 1, rect.height()), Qt.AlignVCenter | Qt.AlignLeft, before)
        x += w
        box = QRectF(x, rect.center().y() - bfm.height() / 2 - 1, token_w, bfm.height() + 2)
        painter.setRenderHint(QPainter.Antialiasing)
        painter.setPen(Qt.NoPen)
        painter.setBrush(QColor(colours.CHOSEN if selected else colours.ACCENT_LIGHT))
        painter.drawRoundedRect(box, 3, 3)
        painter.setFont(bold)
        painter.setPen(QColor("#ffffff") if selected else QColor(colours.ACCENT))
        painter.drawText(box, Qt.AlignCenter, token)
        x += token_w
        painter.setFont(opt.font)
        painter.setPen(text_colour)
        after = fm.elidedText(after, Qt.ElideRight, max(0, rect.right() - x))
        painter.drawText(QRect(x, rect.top(), rect.right() - x, rect.height()), Qt.AlignVCenter | Qt.AlignLeft, after)
        painter.restore()

    def sizeHint(self, option, index) -> QSize:
        size = super().sizeHint(option, index)
        return QSize(320, size.height())


class WeightDelegate(QStyledItemDelegate):
    """A weight (the neighbour's `field`) as text over a bar proportional to it."""

    def __init__(self, field: str = "weight", colour: str = colours.P_KNN_LIGHT, parent=None):
        super().__init__(parent)
        self.field, self.colour = field, colour

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index) -> None:
        n: Neighbour = index.data(NeighbourTableModel.NEIGHBOUR_ROLE)
        value = None if n is None else getattr(n, self.field)
        if value is not None and not option.state & QStyle.State_Selected:
            bar = QRectF(option.rect.adjusted(3, 4, -3, -4))
            bar.setWidth(max(0.0, bar.width() * min(1.0, value)))
            painter.save()
            painter.setRenderHint(QPainter.Antialiasing)
            painter.setPen(Qt.NoPen)
            painter.setBrush(QColor(self.colour))
            painter.drawRoundedRect(bar, 2, 2)
            painter.restore()
        super().paint(painter, option, index)


class NeighbourTable(QTableView):
    """The retrieved neighbours of one step. Double-click a row: `open_document(path, offset, length)`,
    length being the characters of the neighbour's next token (what the viewer selects)."""

    open_document = Signal(str, int, int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.table_model = NeighbourTableModel(self)
        self.setModel(self.table_model)
        self.setItemDelegateForColumn(NeighbourTableModel.PASSAGE, PassageDelegate(self))
        self.setItemDelegateForColumn(NeighbourTableModel.WEIGHT, WeightDelegate(parent=self))
        self.setItemDelegateForColumn(NeighbourTableModel.KNN_WEIGHT,
                                      WeightDelegate("knn_weight", colours.ACCENT_LIGHT, parent=self))
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.setAlternatingRowColors(True)
        self.setShowGrid(False)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.ElideMiddle)
        self.verticalHeader().hide()
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 10)
        header = self.horizontalHeader()
        header.setHighlightSections(False)
        header.setStretchLastSection(True)
        header.setDefaultAlignment(Qt.AlignLeft | Qt.AlignVCenter)
        widths = {NeighbourTableModel.RANK: 34, NeighbourTableModel.TOKEN: 90, NeighbourTableModel.DISTANCE: 76,
                  NeighbourTableModel.WEIGHT: 74, NeighbourTableModel.KNN_WEIGHT: 74, NeighbourTableModel.SHARD: 44,
                  NeighbourTableModel.DOCUMENT: 130}
        for column, width in widths.items():  # at least as wide as the column's title
            title = NeighbourTableModel.COLUMNS[column]
            header.resizeSection(column, max(width, header.fontMetrics().horizontalAdvance(title) + 18))
        self.setToolTip("Neighbours retrieved for this token. Double-click a row to open its document.")
        self.doubleClicked.connect(self._activated)

    def set_neighbours(self, neighbours: list[Neighbour]) -> None:
        self.table_model.set_neighbours(neighbours)
        # The kNN-LM comparison column only for SPALM's records, which carry it.
        self.setColumnHidden(NeighbourTableModel.KNN_WEIGHT, all(n.knn_weight is None for n in neighbours))
        # The shard column only for a datastore sharded on a Ray cluster.
        self.setColumnHidden(NeighbourTableModel.SHARD, all(n.shard is None for n in neighbours))

    def neighbour(self, row: int) -> Neighbour:
        return self.table_model.neighbour(row)

    def _activated(self, index) -> None:
        if index.isValid():
            n = self.table_model.neighbour(index.row())
            self.open_document.emit(n.document, n.offset, n.highlight[1] - n.highlight[0])


# ----------------------------------------------------------------------------- opening a document

_open_dialogs: set[QDialog] = set()

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

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QRect, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetrics, QPainter, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QDialog, QDialogButtonBox, QGraphicsItem, QHBoxLayout,
                               QHeaderView, QLabel, QPlainTextEdit, QSplitter, QStyle, QStyledItemDelegate,
                               QStyleOptionViewItem, QTableView, QTabWidget, QTextEdit, QTreeWidget, QTreeWidgetItem,
                               QVBoxLayout, QWidget)

from ..core.records import Neighbour, TokenProb, TokenRecord
from . import colours
from .memory_view import MemoryView
from .plot_style import export_png
from .token_strip import (format_distance, format_gain, format_prob, record_gain, record_weight, visible_token)

TICK_CHARS = 8  # token labels under the bars are elided to this many characters


def _elide(text: str, limit: int = TICK_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    RANK, TOKEN, DISTANCE, WEIGHT, KNN_WEIGHT, DOCUMENT, PASSAGE = range(7)
    COLUMNS = ("#", "Token", "Distance", "Weight", "kNN-LM", "Document", "Passage")
    HEADER_TIPS = (
        "Rank of the neighbour (1 = nearest)",
        "The token that followed the neighbour's context in the document",
        "Distance between the current context's key and the neighbour's key (smaller = closer)",
        "kNN-LM: the neighbour's share of p_kNN (softmax of −distance / T over the k neighbours).\n"
        "SPALM: its attention weight in m_t (softmax of e(y)·h over the k retrieved tokens).",
        "SPALM: the same neighbour's kNN-LM weight (softmax of −distance / T), to see where the two disagree",
        "Source document (hover for the full path)",
        "The passage around the neighbour; its next token is highlighted. Double-click to open the document.",
    )
    NEIGHBOUR_ROLE = int(Qt.UserRole.value) + 1

    # Numbers right-aligned: rank, distance, the weights.
    ALIGNMENTS = tuple(int((Qt.AlignRight if right else Qt.AlignLeft) | Qt.AlignVCenter)
                       for right in (True, False, True, True, True, False, False))

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
                          "" if n.knn_weight is None else f"{n.knn_weight * 100:.1f}%", Path(n.document).name,
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
    """The retrieved neighbours of one step. Double-click a row: `open_document(path, offset)`."""

    open_document = Signal(str, int)

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
                  NeighbourTableModel.WEIGHT: 74, NeighbourTableModel.KNN_WEIGHT: 74,
                  NeighbourTableModel.DOCUMENT: 130}
        for column, width in widths.items():
            header.resizeSection(column, width)
        self.setToolTip("Neighbours retrieved for this token. Double-click a row to open its document.")
        self.doubleClicked.connect(self._activated)

    def set_neighbours(self, neighbours: list[Neighbour]) -> None:
        self.table_model.set_neighbours(neighbours)
        # The kNN-LM comparison column only for SPALM's records, which carry it.
        self.setColumnHidden(NeighbourTableModel.KNN_WEIGHT, all(n.knn_weight is None for n in neighbours))

    def neighbour(self, row: int) -> Neighbour:
        return self.table_model.neighbour(row)

    def _activated(self, index) -> None:
        if index.isValid():
            n = self.table_model.neighbour(index.row())
            self.open_document.emit(n.document, n.offset)


# ----------------------------------------------------------------------------- opening a document

_open_dialogs: set[QDialog] = set()


def _document_text(path: str) -> str:
    """The text the datastore indexed (extracted from PDF/DOCX/HTML, newlines normalised)."""
    from ..core.datastore.documents import DocumentError, read_document

    try:
        return read_document(Path(path)).text
    except DocumentError:
        return Path(path).read_text(encoding="utf-8", errors="replace")


def _qt_position(text: str, offset: int) -> int:
    """A Python character offset as a QTextDocument position (UTF-16 code units)."""
    return len(text[:offset].encode("utf-16-le")) // 2


def open_document_at(path: str, offset: int, length: int | None = None, parent: QWidget | None = None) -> QDialog:
    """Show `path` read-only, scrolled to character `offset` with the text there selected.

    `length` characters are selected (default: up to the next whitespace). The dialog is non-modal
    and deletes itself when closed; it is returned for callers that want to keep or test it.
    """
    dialog = QDialog(parent)
    dialog.setAttribute(Qt.WA_DeleteOnClose)
    dialog.setWindowTitle(f"{Path(path).name} — offset {offset:,}")
    dialog.resize(760, 520)
    layout = QVBoxLayout(dialog)
    caption = QLabel(f"<b>{html.escape(Path(path).name)}</b> <span style='color:{colours.MUTED}'>"
                     f"{html.escape(str(path))} · character {offset:,}</span>")
    caption.setToolTip(str(path))
    caption.setTextInteractionFlags(Qt.TextSelectableByMouse)
    layout.addWidget(caption)
    editor = QPlainTextEdit()
    editor.setObjectName("document_text")
    editor.setReadOnly(True)
    editor.setToolTip("The document's text as the datastore indexed it (read-only)")
    editor.setLineWrapMode(QPlainTextEdit.WidgetWidth)
    layout.addWidget(editor, 1)
    try:
        text = _document_text(path)
    except OSError as exc:
        editor.setPlainText(f"Cannot open {path}: {exc.strerror or exc}")
        text = None
    if text is not None:
        editor.setPlainText(text)
        offset = max(0, min(offset, len(text)))
        if length is None:
            end = offset + 1
            while end < len(text) and not text[end].isspace():
                end += 1
        else:
            end = min(len(text), offset + max(length, 0))
        start_q, end_q = _qt_position(text, offset), _qt_position(text, end)
        cursor = editor.textCursor()
        cursor.setPosition(start_q)
        cursor.setPosition(end_q, QTextCursor.KeepAnchor)
        editor.setTextCursor(cursor)
        # The passage around it gets a soft background, so it stays visible after the selection moves.
        passage = QTextEdit.ExtraSelection()
        fmt = QTextCharFormat()
        fmt.setBackground(QColor(colours.ACCENT_LIGHT))
        passage.format = fmt
        around = QTextCursor(editor.document())
        around.setPosition(_qt_position(text, max(0, offset - 80)))
        around.setPosition(_qt_position(text, min(len(text), end + 80)), QTextCursor.KeepAnchor)
        passage.cursor = around
        editor.setExtraSelections([passage])
        editor.centerCursor()
    buttons = QDialogButtonBox(QDialogButtonBox.Close)
    buttons.rejected.connect(dialog.close)
    buttons.button(QDialogButtonBox.Close).setToolTip("Close this document")
    layout.addWidget(buttons)
    _open_dialogs.add(dialog)
    dialog.destroyed.connect(lambda *_: _open_dialogs.discard(dialog))
    dialog.finished.connect(lambda *_: _open_dialogs.discard(dialog))
    dialog.show()
    return dialog


# ----------------------------------------------------------------------------- plots

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
        self.setMinimumSize(200, 150)

    def set_distribution(self, probs: list[TokenProb] | None, chosen_id: int | None, empty_reason: str = "") -> None:
        self.probs = list(probs or [])
        n = len(self.probs)
        heights = np.array([p.prob for p in self.probs], dtype=float)
        brushes = [pg.mkBrush(colours.CHOSEN if p.token_id == chosen_id else self.colour) for p in self.probs]
        self.bars.setOpts(x=np.arange(n, dtype=float), height=heights, width=0.72, brushes=brushes)
        axis = self.getPlotItem().getAxis("bottom")
        axis.setTicks([[(i, _elide(visible_token(p.token))) for i, p in enumerate(self.probs)], []])
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

    def heights(self) -> list[float]:
        h = self.bars.opts["height"]
        return [] if h is None else [float(v) for v in h]


class HistoryPlot(pg.PlotWidget):
    """λ/gate (left axis, 0..1) and gain in nats (right axis) over the steps; the shown step marked."""

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
        self.gain_view = pg.ViewBox(enableMenu=False)
        self.gain_view.setMouseEnabled(x=False, y=False)
        item.scene().addItem(self.gain_view)
        item.getAxis("right").linkToView(self.gain_view)
        self.gain_view.setXLink(item)
        item.vb.sigResized.connect(self._sync_views)

        self.weight_curve = pg.PlotDataItem(pen=pg.mkPen(colours.LAMBDA, width=2), connect="finite", name="λ / gate")
        self.gain_curve = pg.PlotDataItem(pen=pg.mkPen(colours.GAIN, width=2), connect="finite", name="gain")
        item.addItem(self.weight_curve)
        self.gain_view.addItem(self.gain_curve)
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
        self.weight_curve.setData(self.steps, weights)
        self.gain_curve.setData(self.steps, gains)
        finite = gains[np.isfinite(gains)]
        span = max(0.1, float(np.abs(finite).max())) if finite.size else 1.0
        self.gain_view.setYRange(-span, span, padding=0.1)
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
        self.setMinimumWidth(200)
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

def _caption(text: str, tooltip: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName("InspectorCaption")
    label.setToolTip(tooltip)
    return label


class TokenInspector(QWidget):
    """One record in detail. See the module docstring for the parts."""

    open_document = Signal(str, int)  # path, character offset (double-click in the neighbour table)
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
        left.addTab(self.memory_view, "Memory layer")
        left.setTabToolTip(0, "The datastore entries retrieved for this token")
        left.setTabToolTip(1, "Memorizing Transformer: per-head gates, memory share per token, and what each head retrieved")
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
        shown = len(record.neighbours)
        self.neighbour_caption.setText(
            f"Neighbours <span style='font-weight:400; color:{colours.MUTED}'>"
            + (f"{shown} shown of k = {k}" if k is not None else "none: this step used no retrieval") + "</span>")
        self.alternatives.set_alternatives(record)
        top = max([p.prob for dist in (record.p_lm, record.p_knn or [], record.p_final) for p in dist] or [1.0])
        y_top = min(1.0, top * 1.12) if top > 0 else 1.0  # one y scale, so the three read against each other
        no_knn = "no retrieval at this step" if record.p_knn is None else "empty"
        self._stage_plots(
            [partial(self._show_distribution, plot, probs, record.token_id, y_top, reason) for plot, probs, reason in
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
    def _show_distribution(plot: DistributionPlot, probs: list[TokenProb] | None, chosen: int, y_top: float,
                           empty_reason: str) -> None:
        plot.setYRange(0, y_top, padding=0)
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
        else:
            parts.append("<b>λ</b> —")
        r = record.retrieval
        if r is None:
            parts.append(f"no retrieval (method {html.escape(record.method)})")
        else:
            parts += [f"<b>k</b> {r.k}", f"<b>T</b> {r.temperature:g}", f"<b>distances</b> {html.escape(r.distance)}",
                      f"<b>datastore</b> {html.escape(r.datastore or '—')}"]
        return " &nbsp;·&nbsp; ".join(parts)

    def _alternative_clicked(self, item: QTreeWidgetItem, _column: int) -> None:
        token_id = item.data(0, AlternativesList.TOKEN_ID_ROLE)
        if self.record is None or token_id is None or token_id == self.record.token_id:
            return
        self.branch_requested.emit(self.record.step, int(token_id))

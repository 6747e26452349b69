"""The generated text as a wrapping strip of coloured token chips.

`TokenStrip` shows the prompt (plain, muted) followed by one chip per `TokenRecord`, coloured by a
quantity read off the record (λ/gate, gain of the chosen token, or its final probability). The
chips are painted by one widget (`TokenCanvas`), not built from child widgets: each chip is a
laid-out rectangle, and `append` places only the new chip and repaints only its rectangle, so a
token costs the same with 5 or 5,000 chips before it. A width change lays everything out again.

The strip renders record fields only; the one derived quantity, the gain
log p_final(chosen) − log p_LM(chosen), is a difference of two fields.
"""
from __future__ import annotations

import bisect
import html
import math
import re
from dataclasses import dataclass, field

from PySide6.QtCore import QEvent, QPoint, QPointF, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import (QComboBox, QFrame, QHBoxLayout, QLabel, QScrollArea, QSizePolicy, QToolTip,
                               QVBoxLayout, QWidget)

from ...core.records import TokenRecord
from .. import colours

COLOUR_QUANTITIES: dict[str, str] = {  # name -> label for a combo box
    "gain": "Gain",
    "lambda": "λ / gate",
    "p_final": "p_final",
}

_LEGENDS = {  # quantity -> (title, min label, max label, colour map, tooltip)
    "lambda": ("λ / gate", "0", "1", colours.LAMBDA_MAP,
               "The interpolation weight λ (kNN-LM) or gate (SPALM) used at each step: 0 = the language model "
               "alone, 1 = retrieval alone. Grey chips had no retrieval."),
    "gain": ("gain (nats)", f"−{colours.GAIN_LIMIT:g}", f"+{colours.GAIN_LIMIT:g}", colours.GAIN_MAP,
             "log p_final − log p_LM of the chosen token, clipped to ±3 nats.\n"
             "Blue: retrieval raised the token's probability; red: it lowered it; white: no change."),
    "p_final": ("p_final", "0", "1", colours.PROB_MAP,
                "Final probability of the chosen token (after combining the LM with retrieval)."),
}


# ----------------------------------------------------------------------------- record -> numbers / text

def record_weight(record: TokenRecord) -> float | None:
    """λ (kNN-LM), the gate (SPALM) or the mean memory share over heads (Memorizing Transformer) of
    a record; None when the step used no retrieval weight — or skipped retrieval altogether (adaptive
    retrieval's λ 0 with nothing retrieved), which the strip then greys like the LM alone."""
    if skipped_retrieval(record):
        return None
    if record.lambda_ is not None:
        return record.lambda_
    if record.gate is not None:
        return record.gate
    if record.memory_attention:
        return sum(record.memory_attention) / len(record.memory_attention)
    return None


def skipped_retrieval(record: TokenRecord) -> bool:
    """A step whose method could have retrieved but chose not to (λ 0, no search)."""
    return record.lambda_ == 0 and record.retrieval is None and not record.neighbours


def record_gain(record: TokenRecord) -> float:
    """log p_final − log p_LM of the chosen token, in nats (see TokenRecord.gain)."""
    return record.gain


def quantity_value(record: TokenRecord, quantity: str) -> float | None:
    if quantity == "lambda":
        return record_weight(record)
    if quantity == "gain":
        return record_gain(record)
    if quantity == "p_final":
        return record.chosen_prob_final
    raise ValueError(f"unknown colour quantity {quantity!r}: use one of {', '.join(COLOUR_QUANTITIES)}")


def colour_for(record: TokenRecord, quantity: str) -> QColor:
    return _LEGENDS[quantity][3].colour(quantity_value(record, quantity))


def visible_token(token: str) -> str:
    """A token with its whitespace made visible: ↵ newline, ⇥ tab, · space, ∅ empty."""
    if token == "":
        return "∅"
    return token.replace("\r\n", "\n").replace("\n", "↵").replace("\t", "⇥").replace(" ", "·")


def format_prob(p: float | None) -> str:
    if p is None:
        return "—"
    if p >= 0.0995:
        return f"{p * 100:.0f}%"
    if p >= 0.001:
        return f"{p * 100:.1f}%"
    return f"{p:.1e}" if p > 0 else "0"


def format_distance(d: float) -> str:
    return f"{d:.4g}"


def format_gain(g: float) -> str:
    if math.isinf(g):
        return "+∞" if g > 0 else "−∞"
    return f"{g:+.2f}".replace("-", "−")


def record_tooltip(record: TokenRecord) -> str:
    weight = record_weight(record)
    weight_name = "λ" if record.lambda_ is not None else "gate"
    rows = [
        ("step", str(record.step)),
        ("p_LM", format_prob(record.chosen_prob_lm)),
        ("p_final", format_prob(record.chosen_prob_final)),
        (weight_name, "skipped (no retrieval)" if skipped_retrieval(record) else
         "—" if weight is None else f"{weight:.3g}"),
        ("gain", f"{format_gain(record_gain(record))} nats"),
    ]
    if record.memory_usefulness is not None:  # SPALM: the memory alone against h_t alone, for this token
        rows.append(("memory's usefulness", f"{format_gain(record.memory_usefulness)} nats"))
    if record.neighbours:
        nearest = min(record.neighbours, key=lambda n: n.distance)
        rows.append(("nearest", f"{format_distance(nearest.distance)} "
                                f"(“{html.escape(visible_token(nearest.token))}”)"))
    else:
        rows.append(("nearest", "no neighbours"))
    body = "".join(f"<tr><td style='color:{colours.MUTED}; padding-right:10px'>{k}</td><td>{v}</td></tr>"
                   for k, v in rows)
    return (f"<div style='font-size:11pt'><b>“{html.escape(visible_token(record.token))}”</b>"
            f"<span style='color:{colours.MUTED}'> &nbsp;id {record.token_id}</span></div>"
            f"<table cellspacing='0' cellpadding='1'>{body}</table>")


# ----------------------------------------------------------------------------- layout pieces

@dataclass(eq=False)
class _Piece:
    """One laid-out unit: a chip (record is set) or a run of prompt text (record is None)."""

    text: str
    record: TokenRecord | None
    width: int
    gap_before: int
    newline_after: bool
    rect: QRect = field(default_factory=QRect)
    fill: QColor = field(default_factory=QColor)
    ink: QColor = field(default_factory=QColor)


_PROMPT_RUN = re.compile(r"\n|[^\S\n]*[^\s]+|[^\S\n]+")


class TokenCanvas(QWidget):
    """Paints the prompt and the chips; the scrollable body of `TokenStrip`."""

    chip_clicked = Signal(int)  # step
    content_height_changed = Signal()

    MARGIN = 10
    PAD_X = 4
    PAD_Y = 3
    CHIP_GAP = 2  # between sub-word chips
    WORD_GAP = 7  # before a chip whose token starts with a space
    LINE_GAP = 5
    MAX_CHIP_CHARS = 40

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.StrongFocus)
        self.setAttribute(Qt.WA_OpaquePaintEvent)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        font = QFont(self.font())
        font.setPointSizeF(max(font.pointSizeF(), 9.0) + 1.5)
        self.setFont(font)
        self._fm = QFontMetrics(font)
        self.chip_height = self._fm.height() + 2 * self.PAD_Y
        self.line_height = self.chip_height + self.LINE_GAP
        self.pieces: list[_Piece] = []
        self._bottoms: list[int] = []  # rect.bottom() of each piece, non-decreasing (for bisect)
        self._by_step: dict[int, _Piece] = {}
        self._x = self.MARGIN
        self._y = self.MARGIN
        self._laid_width = 0
        self._content_height = 2 * self.MARGIN + self.chip_height
        self.quantity = "gain"
        self.selected: _Piece | None = None
        self.hovered: _Piece | None = None
        self._prompt_pieces_count = 0
        self.branch_step: int | None = None  # a branch's first token (chosen by hand): marked

    # ---- pieces --------------------------------------------------------------------------------
    def _chip(self, record: TokenRecord) -> _Piece:
        token = record.token.replace("\r\n", "\n")
        gap = self.CHIP_GAP
        if token.startswith(" ") and token.strip(" "):
            token, gap = token[1:], self.WORD_GAP  # a word boundary: shown as a wider gap
        text = visible_token(token)
        if len(text) > self.MAX_CHIP_CHARS:
            text = text[: self.MAX_CHIP_CHARS - 1] + "…"
        piece = _Piece(text, record, self._fm.horizontalAdvance(text) + 2 * self.PAD_X, gap, "\n" in token)
        self._colour(piece)
        return piece

    def _prompt_pieces(self, prompt: str) -> list[_Piece]:
        out = []
        for run in _PROMPT_RUN.findall(prompt.replace("\r\n", "\n")):
            if run == "\n":
                if out:
                    out[-1].newline_after = True
                else:
                    out.append(_Piece("", None, 0, 0, True))
                continue
            word = run.lstrip(" \t")
            gap = self._fm.horizontalAdvance(" ") if len(word) < len(run) else 0
            if not word:
                continue
            out.append(_Piece(word, None, self._fm.horizontalAdvance(word), gap, False))
        if out:  # a little air between the prompt and the first chip
            out[-1].width += 2
        return out

    def _colour(self, piece: _Piece) -> None:
        if piece.record is not None:
            piece.fill = colour_for(piece.record, self.quantity)
            piece.ink = colours.text_colour_on(piece.fill)

    # ---- layout --------------------------------------------------------------------------------
    def _newline(self) -> None:
        self._x = self.MARGIN
        self._y += self.line_height

    def _place(self, piece: _Piece) -> None:
        right_edge = max(self.width(), 120) - self.MARGIN
        at_line_start = self._x == self.MARGIN
        x = self._x if at_line_start else self._x + piece.gap_before
        width = min(piece.width, right_edge - self.MARGIN)
        if not at_line_start and x + width > right_edge:
            self._newline()
            x = self._x
        piece.rect = QRect(x, self._y, width, self.chip_height)
        self._x = x + width
        if piece.newline_after:
            self._newline()
        self._bottoms.append(piece.rect.bottom())

    def _relayout(self) -> None:
        self._x, self._y = self.MARGIN, self.MARGIN
        self._bottoms = []
        for piece in self.pieces:
            self._place(piece)
        self._laid_width = self.width()
        self._update_content_height()
        self.update()

    def _update_content_height(self) -> None:
        last = self._y + self.chip_height if self._x > self.MARGIN or not self.pieces else self._y
        height = max(last, self.MARGIN + self.chip_height) + self.MARGIN
        if height != self._content_height:
            self._content_height = height
            self.updateGeometry()
            self.content_height_changed.emit()

    def sizeHint(self) -> QSize:
        return QSize(600, self._content_height)

    def minimumSizeHint(self) -> QSize:
        return QSize(120, self._content_height)

    def resizeEvent(self, event) -> None:
        if self.width() != self._laid_width:
            self._relayout()
        super().resizeEvent(event)

    # ---- content -------------------------------------------------------------------------------
    def set_prompt(self, prompt: str) -> None:
        prompt_pieces = self._prompt_pieces(prompt)
        self._prompt_pieces_count = len(prompt_pieces)
        self.pieces = prompt_pieces + [p for p in self.pieces if p.record is not None]
        self._relayout()

    def append(self, record: TokenRecord) -> QRect:
        piece = self._chip(record)
        self.pieces.append(piece)
        old = self._by_step.get(record.step)
        if old is self.selected and old is not None:
            self.selected = None
        self._by_step[record.step] = piece
        self._place(piece)
        self._update_content_height()
        self.update(piece.rect.adjusted(-3, -3, 3, 3))
        return piece.rect

    def clear(self, keep_prompt: bool = False) -> None:
        self.pieces = [p for p in self.pieces if p.record is None] if keep_prompt else []
        self._prompt_pieces_count = len(self.pieces)
        self._by_step.clear()
        self.selected = self.hovered = None
        self._relayout()

    def truncate_from(self, step: int) -> None:
        self.pieces = [p for p in self.pieces if p.record is None or p.record.step < step]
        self._by_step = {s: p for s, p in self._by_step.items() if s < step}
        if self.selected is not None and self.selected.record.step >= step:
            self.selected = None
        self.hovered = None
        self._relayout()

    def set_quantity(self, quantity: str) -> None:
        self.quantity = quantity
        for piece in self.pieces:
            self._colour(piece)
        self.update()

    @property
    def chip_count(self) -> int:
        return len(self.pieces) - self._prompt_pieces_count

    def piece(self, step: int) -> _Piece | None:
        return self._by_step.get(step)

    def piece_at(self, pos: QPoint) -> _Piece | None:
        i = bisect.bisect_left(self._bottoms, pos.y())
        while i < len(self.pieces) and self.pieces[i].rect.top() <= pos.y():
            piece = self.pieces[i]
            if piece.record is not None and piece.rect.adjusted(-1, 0, 1, 0).contains(pos):
                return piece
            i += 1
        return None

    def set_selected(self, piece: _Piece | None) -> None:
        old, self.selected = self.selected, piece
        for p in (old, piece):
            if p is not None:
                self.update(p.rect.adjusted(-4, -4, 4, 4))

    # ---- painting ------------------------------------------------------------------------------
    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        area = event.rect()
        painter.fillRect(area, QColor("#ffffff"))
        painter.setFont(self.font())
        muted = QColor(colours.MUTED)
        i = bisect.bisect_left(self._bottoms, area.top() - 4)
        while i < len(self.pieces):
            piece = self.pieces[i]
            i += 1
            if piece.rect.top() > area.bottom() + 4:
                break
            if not piece.rect.adjusted(-4, -4, 4, 4).intersects(area):
                continue
            if piece.record is None:
                painter.setPen(muted)
                painter.drawText(piece.rect, Qt.AlignVCenter | Qt.AlignLeft, piece.text)
                continue
            rect = QRectF(piece.rect)
            path = QPainterPath()
            path.addRoundedRect(rect, 4, 4)
            painter.fillPath(path, piece.fill)
            if piece is self.selected:  # a dark ring outside a white one: visible on light and dark chips
                painter.setBrush(Qt.NoBrush)
                painter.setPen(QPen(QColor(colours.TEXT), 2))
                painter.drawRoundedRect(rect.adjusted(-2, -2, 2, 2), 5, 5)
                painter.setPen(QPen(QColor("#ffffff"), 1.2))
                painter.drawRoundedRect(rect.adjusted(-0.6, -0.6, 0.6, 0.6), 4, 4)
            elif piece is self.hovered:
                painter.setPen(QPen(QColor(colours.ACCENT), 1.2))
                painter.drawRoundedRect(rect.adjusted(-0.5, -0.5, 0.5, 0.5), 4, 4)
            elif piece.fill.lightnessF() > 0.93:  # near-white chips get a hairline so they read as chips
                painter.setPen(QPen(QColor(colours.MISSING), 1))
                painter.drawRoundedRect(rect.adjusted(0.5, 0.5, -0.5, -0.5), 4, 4)
            painter.setPen(piece.ink)
            painter.drawText(piece.rect, Qt.AlignCenter, piece.text)
            if piece.record.step == self.branch_step:
                self._paint_branch_mark(painter, piece.rect)
        painter.end()

    @staticmethod
    def _paint_branch_mark(painter: QPainter, rect: QRect) -> None:
        """An orange post with a flag before the chip: the branch continues from a hand-chosen token."""
        colour = QColor(colours.CHOSEN)
        x = rect.left() - 3
        painter.setPen(QPen(colour, 2))
        painter.drawLine(x, rect.top() - 3, x, rect.bottom() + 3)
        flag = QPainterPath()
        flag.moveTo(x, rect.top() - 3)
        flag.lineTo(x + 7, rect.top())
        flag.lineTo(x, rect.top() + 3)
        flag.closeSubpath()
        painter.fillPath(flag, colour)

    # ---- interaction ---------------------------------------------------------------------------
    def event(self, event) -> bool:
        if event.type() == QEvent.ToolTip:
            piece = self.piece_at(event.pos())
            if piece is not None:
                text = record_tooltip(piece.record)
                if piece.record.step == self.branch_step:
                    text += (f"<div style='color:{colours.CHOSEN}'>Branch point: this token was chosen by hand; "
                             f"the run continues from it</div>")
                QToolTip.showText(event.globalPos(), text, self, piece.rect)
            else:
                QToolTip.showText(event.globalPos(), self.toolTip(), self)
            return True
        return super().event(event)

    def mouseMoveEvent(self, event) -> None:
        piece = self.piece_at(event.position().toPoint())
        if piece is not self.hovered:
            for p in (self.hovered, piece):
                if p is not None:
                    self.update(p.rect.adjusted(-3, -3, 3, 3))
            self.hovered = piece
            self.setCursor(Qt.PointingHandCursor if piece is not None else Qt.ArrowCursor)
        super().mouseMoveEvent(event)

    def leaveEvent(self, event) -> None:
        if self.hovered is not None:
            self.update(self.hovered.rect.adjusted(-3, -3, 3, 3))
            self.hovered = None
        super().leaveEvent(event)

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.LeftButton:
            piece = self.piece_at(event.position().toPoint())
            if piece is not None:
                self.chip_clicked.emit(piece.record.step)
                return
        super().mousePressEvent(event)

    def keyPressEvent(self, event) -> None:
        steps = [p.record.step for p in self.pieces if p.record is not None]
        if steps and event.key() in (Qt.Key_Left, Qt.Key_Right, Qt.Key_Home, Qt.Key_End):
            current = steps.index(self.selected.record.step) if self.selected in self.pieces else None
            if event.key() == Qt.Key_Home:
                target = 0
            elif event.key() == Qt.Key_End:
                target = len(steps) - 1
            elif current is None:
                target = len(steps) - 1
            else:
                target = max(0, min(len(steps) - 1, current + (1 if event.key() == Qt.Key_Right else -1)))
            self.chip_clicked.emit(steps[target])
            return
        super().keyPressEvent(event)


# ----------------------------------------------------------------------------- legend

class ColourLegend(QWidget):
    """A gradient bar with the quantity's name and its min/max labels."""

    BAR_WIDTH = 140
    MIN_BAR_WIDTH = 48
    BAR_HEIGHT = 10

    def __init__(self, quantity: str = "gain", parent: QWidget | None = None):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Maximum, QSizePolicy.Fixed)
        self.quantity = ""
        self.set_quantity(quantity)

    def set_quantity(self, quantity: str) -> None:
        self.quantity = quantity
        self.title, self.min_label, self.max_label, self.colour_map, tip = _LEGENDS[quantity]
        self.setToolTip(tip)
        self.updateGeometry()
        self.update()

    def _bold(self) -> QFont:
        font = QFont(self.font())
        font.setBold(True)
        return font

    def _width(self, bar: int) -> int:
        fm, bold = self.fontMetrics(), QFontMetrics(self._bold())
        return (bold.horizontalAdvance(self.title) + 10 + fm.horizontalAdvance(self.min_label) + 6
                + bar + 6 + fm.horizontalAdvance(self.max_label) + 4)

    def sizeHint(self) -> QSize:
        return QSize(self._width(self.BAR_WIDTH), max(self.fontMetrics().height(), self.BAR_HEIGHT) + 8)

    def minimumSizeHint(self) -> QSize:
        return QSize(self._width(self.MIN_BAR_WIDTH), self.sizeHint().height())

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        fm, bold = self.fontMetrics(), QFontMetrics(self._bold())
        h = self.height()
        x = 0
        painter.setFont(self._bold())
        painter.setPen(QColor(colours.TEXT))
        w = bold.horizontalAdvance(self.title)
        painter.drawText(QRect(x, 0, w, h), Qt.AlignVCenter | Qt.AlignLeft, self.title)
        x += w + 10
        painter.setFont(self.font())
        painter.setPen(QColor(colours.MUTED))
        w = fm.horizontalAdvance(self.min_label)
        painter.drawText(QRect(x, 0, w, h), Qt.AlignVCenter | Qt.AlignLeft, self.min_label)
        x += w + 6
        bar_width = max(self.MIN_BAR_WIDTH, min(self.BAR_WIDTH, self.width() - self._width(0)))
        bar = QRectF(x, (h - self.BAR_HEIGHT) / 2, bar_width, self.BAR_HEIGHT)
        painter.setPen(QPen(QColor("#ced4da"), 1))
        painter.setBrush(self.colour_map.gradient(QPointF(bar.left(), 0), QPointF(bar.right(), 0)))
        painter.drawRoundedRect(bar, 3, 3)
        if self.colour_map.vmin < 0 < self.colour_map.vmax:  # mark the centre of a diverging map
            cx = bar.center().x()
            painter.setPen(QPen(QColor(colours.MUTED), 1))
            painter.drawLine(QPointF(cx, bar.top() - 2), QPointF(cx, bar.bottom() + 2))
        x += bar_width + 6
        painter.setPen(QColor(colours.MUTED))
        painter.drawText(QRect(x, 0, fm.horizontalAdvance(self.max_label) + 2, h),
                         Qt.AlignVCenter | Qt.AlignLeft, self.max_label)
        painter.end()


# ----------------------------------------------------------------------------- the strip

class TokenStrip(QWidget):
    """Prompt + generated tokens as coloured chips. Click (or ←/→) selects a token."""

    token_selected = Signal(int)  # the step of the selected token

    def __init__(self, parent: QWidget | None = None, quantity: str = "gain"):
        super().__init__(parent)
        self.setObjectName("TokenStrip")
        self._prompt = ""
        self.canvas = TokenCanvas()
        self.canvas.setToolTip("Generated tokens. Hover a token for its numbers; click it to inspect it.")
        self.canvas.chip_clicked.connect(self.select)

        self.scroll = QScrollArea()
        self.scroll.setWidget(self.canvas)
        self.scroll.setWidgetResizable(True)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setObjectName("TokenStripScroll")
        self._follow = True
        bar = self.scroll.verticalScrollBar()
        bar.rangeChanged.connect(self._range_changed)
        bar.valueChanged.connect(lambda v: setattr(self, "_follow", v >= bar.maximum()))

        self.colour_label = QLabel("Colour by")
        self.colour_label.setToolTip("Which number of each token sets its chip's colour")
        self.colour_combo = QComboBox()
        for key, label in COLOUR_QUANTITIES.items():
            self.colour_combo.addItem(label, key)
            self.colour_combo.setItemData(self.colour_combo.count() - 1, _LEGENDS[key][4], Qt.ToolTipRole)
        self.colour_combo.setSizeAdjustPolicy(QComboBox.AdjustToContents)
        self.colour_combo.setToolTip("Colour the tokens by λ/gate, by the gain retrieval gave the chosen token, "
                                     "or by its final probability")
        self.colour_combo.currentIndexChanged.connect(
            lambda i: self.set_colour_by(self.colour_combo.itemData(i)))
        self.legend = ColourLegend(quantity)
        self.count_label = QLabel()
        self.count_label.setToolTip("Number of generated tokens")
        self.count_label.setStyleSheet(f"color: {colours.MUTED};")
        self.count_label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.count_label.setAlignment(Qt.AlignRight | Qt.AlignVCenter)

        header = QHBoxLayout()
        header.setContentsMargins(10, 6, 10, 6)
        header.setSpacing(8)
        header.addWidget(self.colour_label)
        header.addWidget(self.colour_combo)
        header.addSpacing(12)
        header.addWidget(self.legend)
        header.addWidget(self.count_label, 1)
        head = QWidget()
        head.setObjectName("TokenStripHeader")
        head.setLayout(header)

        frame = QFrame()
        frame.setObjectName("TokenStripFrame")
        inner = QVBoxLayout(frame)
        inner.setContentsMargins(1, 1, 1, 1)
        inner.setSpacing(0)
        inner.addWidget(head)
        rule = QFrame()
        rule.setFixedHeight(1)
        rule.setStyleSheet(f"background: {colours.GRID};")
        inner.addWidget(rule)
        inner.addWidget(self.scroll, 1)
        frame.setStyleSheet(
            "#TokenStripFrame { background: white; border: 1px solid #dee2e6; border-radius: 6px; }"
            "#TokenStripHeader { background: #f8f9fa; border-top-left-radius: 6px; border-top-right-radius: 6px; }"
            "#TokenStripScroll, #TokenStripScroll > QWidget { background: white; }")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(frame)
        self.set_colour_by(quantity)
        self._update_count()

    # ---- public API ----------------------------------------------------------------------------
    def set_prompt(self, text: str) -> None:
        self._prompt = text
        self.canvas.set_prompt(text)

    def prompt(self) -> str:
        return self._prompt

    def append(self, record: TokenRecord) -> None:
        bar = self.scroll.verticalScrollBar()
        self._follow = bar.value() >= bar.maximum()
        self.canvas.append(record)
        self._update_count()

    def extend(self, records) -> None:
        for record in records:
            self.append(record)

    def clear(self) -> None:
        """Remove the prompt and every token."""
        self._prompt = ""
        self.canvas.clear()
        self._update_count()

    def truncate_from(self, step: int) -> None:
        """Drop the tokens of `step` and later (before continuing from an alternative)."""
        self.canvas.truncate_from(step)
        self._update_count()

    def records(self) -> list[TokenRecord]:
        return [p.record for p in self.canvas.pieces if p.record is not None]

    def colour_by(self) -> str:
        return self.canvas.quantity

    def set_colour_by(self, quantity: str) -> None:
        if quantity not in COLOUR_QUANTITIES:
            raise ValueError(f"unknown colour quantity {quantity!r}: use one of {', '.join(COLOUR_QUANTITIES)}")
        self.canvas.set_quantity(quantity)
        self.legend.set_quantity(quantity)
        index = self.colour_combo.findData(quantity)
        if index != self.colour_combo.currentIndex():
            self.colour_combo.blockSignals(True)
            self.colour_combo.setCurrentIndex(index)
            self.colour_combo.blockSignals(False)

    def legend_widget(self) -> ColourLegend:
        return self.legend

    def select(self, step: int) -> bool:
        """Select the chip of `step`, scroll to it and emit `token_selected(step)`; False if no such chip."""
        piece = self.canvas.piece(step)
        if piece is None:
            return False
        self.canvas.set_selected(piece)
        self.scroll.ensureVisible(piece.rect.center().x(), piece.rect.center().y(), 20, self.canvas.line_height)
        self.token_selected.emit(step)
        return True

    def set_branch_point(self, step: int | None) -> None:
        """Mark the chip of `step` as a branch's hand-chosen first token (None: no mark)."""
        self.canvas.branch_step = step
        self.canvas.update()

    def branch_point(self) -> int | None:
        return self.canvas.branch_step

    def selected_step(self) -> int | None:
        return None if self.canvas.selected is None else self.canvas.selected.record.step

    # Read-back helpers (tests, and the main window's "scroll to token").
    def chip_count(self) -> int:
        return self.canvas.chip_count

    def chip_rect(self, step: int) -> QRect:
        """The chip's rectangle in `canvas` coordinates."""
        piece = self.canvas.piece(step)
        return QRect() if piece is None else QRect(piece.rect)

    def chip_colour(self, step: int) -> QColor:
        piece = self.canvas.piece(step)
        return QColor() if piece is None else QColor(piece.fill)

    def chip_text(self, step: int) -> str:
        piece = self.canvas.piece(step)
        return "" if piece is None else piece.text

    # ---- internals -----------------------------------------------------------------------------
    def _range_changed(self, _minimum: int, maximum: int) -> None:
        if self._follow:
            self.scroll.verticalScrollBar().setValue(maximum)

    def _update_count(self) -> None:
        n = self.chip_count()
        self.count_label.setText(f"{n} token{'s' if n != 1 else ''}")

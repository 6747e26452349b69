"""A source document opened at a neighbour's passage, its next token selected."""
from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QTextEdit, QVBoxLayout, QWidget

from .. import colours

_open_dialogs: set[QDialog] = set()  # viewers stay alive while open (they have no parent)


def _document_text(path: str) -> str:
    """The text the datastore indexed (extracted from PDF/DOCX/HTML, newlines normalised)."""
    from ...core.datastore.documents import DocumentError, read_document

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

"""A path typed or picked: a line edit with a Browse… button (a folder, or files of one filter)."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget


class PathField(QWidget):
    picked = Signal(str)  # a path chosen with Browse…

    def __init__(self, title: str, placeholder: str, tooltip: str, file_filter: str | None = None, parent=None):
        """`file_filter` (e.g. "Adapters (*.safetensors)") picks a file; None picks a folder."""
        super().__init__(parent)
        self.title, self.file_filter = title, file_filter
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.setToolTip(tooltip)
        self.textEdited = self.edit.textEdited
        browse = QPushButton("Browse…")
        browse.setToolTip(f"Choose {title.lower()}")
        browse.clicked.connect(self.browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(browse)

    def text(self) -> str:
        return self.edit.text()

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's naming, so it stands in for a QLineEdit)
        self.edit.setText(text)

    def browse(self) -> None:
        start = self.edit.text() or str(Path.home())
        if self.file_filter is None:
            path = QFileDialog.getExistingDirectory(self, self.title, start)
        else:
            path, _ = QFileDialog.getOpenFileName(self, self.title, start, self.file_filter)
        if path:
            self.edit.setText(path)
            self.picked.emit(path)

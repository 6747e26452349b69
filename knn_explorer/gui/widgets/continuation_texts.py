"""Side by side, as text: each method's continuation of the prompt as one readable paragraph.

The table above it aligns the methods token by token; this is where a reader sees what each one
actually wrote. The prompt is grey, the continuation black, and the texts grow as the run streams.
"""
from __future__ import annotations

import html

from PySide6.QtWidgets import QGroupBox, QHBoxLayout, QTextBrowser, QVBoxLayout, QWidget

from .. import colours


class ContinuationTexts(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._row = QHBoxLayout(self)
        self._row.setContentsMargins(0, 0, 0, 0)
        self._views: dict[str, QTextBrowser] = {}
        self._texts: dict[str, str] = {}
        self._prompt = ""
        self.setToolTip("Each method's continuation as text: the prompt in grey, what the method wrote after it")

    def start(self, columns: list[tuple[str, str]], prompt: str) -> None:
        """One text per (method, label), each starting from `prompt`."""
        while self._row.count():
            widget = self._row.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        self._views, self._texts, self._prompt = {}, {}, prompt
        for method, label in columns:
            box = QGroupBox(label)
            view = QTextBrowser()
            view.setOpenLinks(False)
            view.setMinimumHeight(60)
            QVBoxLayout(box).addWidget(view)
            self._row.addWidget(box, 1)
            self._views[method], self._texts[method] = view, ""
            self._render(method)

    def append(self, method: str, token: str) -> None:
        if method not in self._views:
            return
        self._texts[method] += token
        self._render(method)

    def text(self, method: str) -> str:
        """What `method` wrote after the prompt so far."""
        return self._texts.get(method, "")

    def _render(self, method: str) -> None:
        def paragraphs(text: str) -> str:
            return html.escape(text).replace("\n", "<br>")
        self._views[method].setHtml(f"<span style='color:{colours.MUTED}'>{paragraphs(self._prompt)}</span>"
                                    f"<span style='color:{colours.TEXT}'>{paragraphs(self._texts[method])}</span>")

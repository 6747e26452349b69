"""Application entry point: QApplication, main window, event loop."""
from __future__ import annotations

import sys

from PySide6.QtWidgets import QApplication

from .main_window import MainWindow


def run(argv: list[str] | None = None) -> int:
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    app.setApplicationName("kNN Explorer")
    app.setOrganizationName("knn-explorer")
    window = MainWindow()
    window.show()
    return app.exec()

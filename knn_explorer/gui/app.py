"""Application entry point: QApplication, a splash while the libraries load, main window, event loop."""
from __future__ import annotations

import sys

from PySide6.QtGui import QColor, QFont, QPainter, QPixmap
from PySide6.QtWidgets import QApplication, QSplashScreen

from .. import __version__
from ..core.desktop_integration import APP_ID
from .about import app_icon


def _splash() -> QSplashScreen:
    pixmap = QPixmap(460, 150)
    pixmap.fill(QColor("#ffffff"))
    painter = QPainter(pixmap)
    painter.setPen(QColor("#dee2e6"))
    painter.drawRect(0, 0, pixmap.width() - 1, pixmap.height() - 1)
    title = QFont()
    title.setPointSize(18)
    title.setBold(True)
    painter.setFont(title)
    painter.setPen(QColor("#212529"))
    painter.drawText(24, 58, "kNN Explorer")
    painter.setFont(QFont())
    painter.setPen(QColor("#495057"))
    painter.drawText(24, 84, "Retrieval inside language models, token by token")
    painter.setPen(QColor("#868e96"))
    painter.drawText(24, 126, "Loading PyTorch and transformers…")
    painter.end()
    return QSplashScreen(pixmap)


def run(argv: list[str] | None = None) -> int:
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    app.setApplicationName("kNN Explorer")
    app.setOrganizationName("knn-explorer")
    app.setApplicationVersion(__version__)
    app.setWindowIcon(app_icon())
    # Wayland matches the window to its launcher entry (and so its icon) by this name.
    app.setDesktopFileName(APP_ID)
    from .dialogs.catalog_repair import open_catalog  # before the splash, which would hide its questions

    catalog = open_catalog()
    if catalog is None:
        return 1
    splash = _splash()
    splash.show()
    app.processEvents()
    # torch and transformers take seconds to import; the splash says why nothing else shows yet.
    from .main_window import MainWindow

    window = MainWindow(catalog=catalog)
    window.show()
    splash.finish(window)
    return app.exec()

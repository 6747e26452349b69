"""The app's identity in the window: its icon and the About box (Help ▸ About kNN Explorer)."""
from __future__ import annotations

import html
import platform

from PySide6.QtCore import QSize, Qt, qVersion
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QMessageBox, QWidget

from .. import __version__
from ..core.desktop_integration import ICON_NAME, ICON_SIZES, ICONS_DIR


def app_icon() -> QIcon:
    """The application icon at every shipped size (packaging/make_icon.py draws them); an empty icon
    if this installation lacks them."""
    icon = QIcon()
    for size in ICON_SIZES:
        path = ICONS_DIR / f"{ICON_NAME}-{size}.png"
        if path.is_file():
            icon.addFile(str(path), QSize(size, size))
    return icon


def about_html() -> str:
    import PySide6
    import torch
    import transformers

    from ..core.home import data_home

    return (
        f"<h3>kNN Explorer {__version__}</h3>"
        "<p>See inside kNN-augmented language models — kNN-LM, SPALM, adaptive retrieval and the "
        "Memorizing Transformer — token by token.</p>"
        f"<p>Python {platform.python_version()} · PyTorch {torch.__version__} · "
        f"Transformers {transformers.__version__} · Qt {qVersion()} (PySide6 {PySide6.__version__})</p>"
        f"<p>Data folder: {html.escape(str(data_home()))}</p>"
        "<p>MIT licence. The demo model was trained on the Python documentation (PSF licence); the "
        "demo documents are Flask's documentation (BSD-3-Clause).</p>"
    )


def show_about(parent: QWidget) -> QMessageBox:
    """Open the About box (window-modal, not blocking) and return it."""
    box = QMessageBox(parent)
    box.setWindowTitle("About kNN Explorer")
    box.setIconPixmap(app_icon().pixmap(96, 96))
    box.setTextFormat(Qt.TextFormat.RichText)
    box.setText(about_html())
    box.setStandardButtons(QMessageBox.StandardButton.Close)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box

"""Making the window fit the screen it is on, from a 1024×700 laptop to 4K.

Two tools: `scrolling(widget)` puts a page (or a pane) in a scroll area, so that below its natural
size the page scrolls instead of squeezing its controls to empty bars; `clamp_to_screen(window)`
keeps a restored geometry (saved on a bigger monitor, perhaps) inside the screen's available area.
"""
from __future__ import annotations

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtWidgets import QFrame, QScrollArea, QWidget


def scrolling(widget: QWidget) -> QScrollArea:
    """`widget` in a frameless scroll area that hands it all the room there is and scrolls only
    when that is less than the widget's minimum size."""
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    area.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    return area


def clamped(geometry: QRect, available: QRect) -> QRect:
    """`geometry` moved, then shrunk if it must be, to lie inside `available`."""
    width = min(geometry.width(), available.width())
    height = min(geometry.height(), available.height())
    left = min(max(geometry.left(), available.left()), available.right() + 1 - width)
    top = min(max(geometry.top(), available.top()), available.bottom() + 1 - height)
    return QRect(left, top, width, height)


def clamp_to_screen(window: QWidget) -> None:
    """Move and shrink `window` (its frame included) into the available area of its screen."""
    screen = window.screen()
    if screen is None:
        return
    available = screen.availableGeometry()
    frame = window.frameGeometry()
    target = clamped(frame, available)
    if target == frame:
        return
    # The frame's decorations are outside geometry(): keep them on screen too.
    extra_width = frame.width() - window.width()
    extra_height = frame.height() - window.height()
    window.resize(max(1, target.width() - extra_width), max(1, target.height() - extra_height))
    window.move(target.topLeft())


def first_launch_size(screen) -> QSize:
    """1440×960, or nine tenths of a smaller screen's available area."""
    if screen is None:
        return QSize(1440, 960)
    available = screen.availableGeometry()
    return QSize(min(1440, int(available.width() * 0.9)), min(960, int(available.height() * 0.9)))

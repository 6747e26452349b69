"""The window on a laptop: at 1024×700 every input of every page and panel can be reached (by
scrolling, at worst) at a usable size; at 1366×768 the Explore page's controls need no scrolling; a
geometry saved on a bigger screen is brought back inside this one."""
import pytest
from PySide6.QtCore import QPoint, QRect
from PySide6.QtWidgets import (QAbstractButton, QAbstractSlider, QAbstractSpinBox, QApplication, QComboBox, QLineEdit,
                               QPlainTextEdit, QScrollArea, QScrollBar, QTextEdit, QWidget)

from knn_explorer.gui.main_window import MainWindow
from window_helpers import loaded_window
from knn_explorer.gui.screen_fit import clamped

INPUTS = (QAbstractSpinBox, QComboBox, QLineEdit, QPlainTextEdit, QTextEdit, QAbstractButton, QAbstractSlider)


@pytest.fixture
def window(qtbot):
    window = loaded_window(qtbot)
    return window


def user_inputs(window: MainWindow, page: QWidget) -> list[QWidget]:
    """The page's inputs a user can see (not Qt's own parts: scroll bars, dock and table corner buttons)."""
    found = []
    for widget in page.findChildren(QWidget):
        if not isinstance(widget, INPUTS) or isinstance(widget, QScrollBar) or widget.objectName().startswith("qt_"):
            continue
        if isinstance(widget.parent(), (QAbstractSpinBox, QComboBox, QScrollBar)):
            continue
        if widget.isVisibleTo(window):
            found.append(widget)
    return found


def visible_rect(window: MainWindow, widget: QWidget) -> QRect:
    """The part of `widget` on screen, after every scroll area around it has scrolled to it."""
    parent = widget.parent()
    while parent is not None:
        if isinstance(parent, QScrollArea):
            parent.ensureWidgetVisible(widget, 0, 0)
        parent = parent.parent()
    QApplication.processEvents()
    rect = QRect(widget.mapTo(window, QPoint(0, 0)), QWidget.size(widget))
    # Clip by every ancestor: a widget scrolled out of its scroll area's viewport is not visible.
    parent = widget.parentWidget()
    while parent is not None and parent is not window:
        rect = rect.intersected(QRect(parent.mapTo(window, QPoint(0, 0)), QWidget.size(parent)))
        parent = parent.parentWidget()
    return rect.intersected(window.rect())


def degenerate(window: MainWindow, widget: QWidget) -> str | None:
    rect = visible_rect(window, widget)
    hint = widget.minimumSizeHint()
    need_width, need_height = min(hint.width(), 40) or 12, min(hint.height(), 16) or 10
    if rect.width() < need_width or rect.height() < need_height:
        label = widget.toolTip() or getattr(widget, "text", lambda: "")() or widget.objectName()
        return f"{type(widget).__name__} '{label[:50]}' shows {rect.width()}×{rect.height()}"
    return None


def test_every_input_is_reachable_at_1024_by_700(qtbot, window):
    window.resize(1024, 700)
    assert window.size().width() == 1024 and window.size().height() == 700
    problems = []
    for index in range(window.pages.count()):
        window.pages.setCurrentIndex(index)
        page = window.pages.widget(index)
        for method in range(window.controls.method.count()) if index == 0 else [None]:
            if method is not None:  # every method's panel in turn
                window.controls.method.setCurrentIndex(method)
            qtbot.wait(10)
            problems += [f"{window.pages.tabText(index)}: {p}"
                         for w in user_inputs(window, page) if (p := degenerate(window, w))]
    library = [p for w in user_inputs(window, window.catalog_view) if (p := degenerate(window, w))]
    assert not problems + library, "\n".join(problems + library)


def test_the_explore_controls_need_no_scrolling_at_1366_by_768(qtbot, window):
    window.resize(1366, 768)
    window.pages.setCurrentIndex(0)
    qtbot.wait(10)
    controls = user_inputs(window, window.explore_controls)
    assert window.controls.knnlm.temperature in controls and window.controls.generate in controls
    for widget in controls:  # on screen where they are, nothing scrolled
        rect = QRect(widget.mapTo(window, QPoint(0, 0)), QWidget.size(widget))
        assert window.rect().contains(rect), f"{widget.toolTip()[:40]} at {rect}"
        assert widget.width() >= min(widget.minimumSizeHint().width(), 40)
    area = window.explore_controls.parentWidget().parentWidget()
    assert isinstance(area, QScrollArea) and not area.verticalScrollBar().isVisible()


def test_the_window_can_be_smaller_than_a_laptop_screen(window):
    minimum = window.minimumSizeHint().expandedTo(window.minimumSize())
    assert minimum.width() <= 1024 and minimum.height() <= 700


@pytest.mark.parametrize("saved, expected", [
    (QRect(100, 100, 1400, 1000), QRect(0, 0, 1366, 768)),  # bigger than the screen: shrunk
    (QRect(2000, 50, 800, 600), QRect(566, 50, 800, 600)),  # off its right edge: moved back
    (QRect(-300, -40, 500, 400), QRect(0, 0, 500, 400)),
    (QRect(10, 20, 800, 600), QRect(10, 20, 800, 600)),  # inside: left alone
])
def test_a_saved_geometry_is_clamped_to_the_screen(saved, expected):
    assert clamped(saved, QRect(0, 0, 1366, 768)) == expected

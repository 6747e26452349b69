"""Keyboard shortcuts that must win over the widget that has focus."""
from knn_explorer.gui.widgets.generation_controls import GenerationControls


def test_ctrl_right_in_the_prompt_steps_instead_of_moving_the_cursor(qtbot):
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QTextCursor

    controls = GenerationControls()
    qtbot.addWidget(controls)
    controls.show()
    controls.activateWindow()
    controls.prompt.setFocus()
    qtbot.waitUntil(controls.prompt.hasFocus, timeout=2000)
    controls.prompt.moveCursor(QTextCursor.MoveOperation.Start)
    with qtbot.waitSignal(controls.step_requested, timeout=2000):
        qtbot.keyClick(controls.prompt, Qt.Key.Key_Right, Qt.KeyboardModifier.ControlModifier)
    assert controls.prompt.textCursor().position() == 0  # the cursor stayed: the key stepped instead

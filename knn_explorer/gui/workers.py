"""Run core work off the UI thread and deliver its result (or its error) back on the UI thread.

A `Task` wraps one call; its signals are emitted from the pool thread and, because the receiving
widgets live on the UI thread, Qt queues them there.
"""
from __future__ import annotations

from typing import Any, Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal


class TaskSignals(QObject):
    finished = Signal(object)
    failed = Signal(str)  # one-line reason


class Task(QRunnable):
    def __init__(self, function: Callable[[], Any]):
        super().__init__()
        self.function = function
        self.signals = TaskSignals()

    def run(self) -> None:
        try:
            result = self.function()
        except Exception as exc:  # every failure becomes a message in the app, never a crash
            self.signals.failed.emit(" ".join(str(exc).split()) or type(exc).__name__)
        else:
            self.signals.finished.emit(result)


def start(function: Callable[[], Any], on_finished: Callable[[Any], None], on_failed: Callable[[str], None]) -> Task:
    task = Task(function)
    task.signals.finished.connect(on_finished)
    task.signals.failed.connect(on_failed)
    QThreadPool.globalInstance().start(task)
    return task

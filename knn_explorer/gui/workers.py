"""Run core work off the UI thread; deliver items, progress, results and errors back on it.

A `Job` runs `function(control)` on its own QThread. The function talks to the UI only through
its `JobControl`: `emit(item)` for each result (a generated token's record), `report(progress)`
for long work, `checkpoint()` between units of work — which blocks while the job is paused and
raises `Cancelled` once it is stopped. Signals are emitted from the worker thread and queued to
the receivers on the UI thread, so the UI never waits on the work.

Pause / resume / step follow superqt's GeneratorWorker: `step()` lets exactly one more item
through and pauses again.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from PySide6.QtCore import QObject, QThread, Signal

from ..core.progress import Cancelled, Progress


class JobControl:
    """The worker side of a job: emit, report, and honour pause/step/stop at checkpoints."""

    def __init__(self, job: "Job"):
        self._job = job
        self._stop = threading.Event()
        self._condition = threading.Condition()
        self._paused = False
        self._allowance: int | None = None  # items allowed before pausing again (step mode)

    # worker side
    def emit(self, item: Any) -> None:
        self._job.item.emit(item)
        with self._condition:
            if self._allowance is not None:
                self._allowance -= 1
                if self._allowance <= 0:
                    self._paused, self._allowance = True, None
                    self._job.paused_changed.emit(True)

    def report(self, progress: Progress) -> None:
        self._job.progress.emit(progress)

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def checkpoint(self) -> None:
        with self._condition:
            while self._paused and not self._stop.is_set():
                self._condition.wait(0.1)
        if self._stop.is_set():
            raise Cancelled("stopped")

    # UI side
    def pause(self) -> None:
        with self._condition:
            self._paused, self._allowance = True, None
        self._job.paused_changed.emit(True)

    def resume(self) -> None:
        with self._condition:
            self._paused, self._allowance = False, None
            self._condition.notify_all()
        self._job.paused_changed.emit(False)

    def step(self, items: int = 1) -> None:
        with self._condition:
            self._paused, self._allowance = False, items
            self._condition.notify_all()
        self._job.paused_changed.emit(False)

    def stop(self) -> None:
        self._stop.set()
        with self._condition:
            self._condition.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused


class _JobThread(QThread):
    def __init__(self, body: Callable[[], None]):
        super().__init__()
        self._body = body

    def run(self) -> None:
        self._body()


class Job(QObject):
    item = Signal(object)
    progress = Signal(object)  # core.progress.Progress
    finished = Signal(object)  # the function's return value
    failed = Signal(str)  # one-line reason
    cancelled = Signal()
    paused_changed = Signal(bool)
    done = Signal()  # after finished, failed or cancelled

    def __init__(self, function: Callable[[JobControl], Any], start_paused: bool = False, parent: QObject | None = None):
        super().__init__(parent)
        self.function = function
        self.control = JobControl(self)
        if start_paused:
            self.control._paused = True
        self._thread = _JobThread(self._run)
        self._thread.finished.connect(self.done)

    def start(self) -> "Job":
        self._thread.start()
        return self

    def is_running(self) -> bool:
        return self._thread.isRunning()

    def wait(self, ms: int = 30_000) -> bool:
        return self._thread.wait(ms)

    def _run(self) -> None:
        try:
            result = self.function(self.control)
        except Cancelled:
            self.cancelled.emit()
        except Exception as exc:  # every failure becomes a message in the app, never a crash
            self.failed.emit(" ".join(str(exc).split()) or type(exc).__name__)
        else:
            self.finished.emit(result)

    # conveniences for the UI
    def pause(self) -> None:
        self.control.pause()

    def resume(self) -> None:
        self.control.resume()

    def step(self) -> None:
        self.control.step()

    def stop(self) -> None:
        self.control.stop()


_running: set[Job] = set()  # keeps parentless jobs alive until their thread ends


def run_job(function: Callable[[JobControl], Any], parent: QObject | None = None, **connections) -> Job:
    """Create, connect (`item=`, `progress=`, `finished=`, `failed=`, `cancelled=`, `done=`) and start a job."""
    job = Job(function, parent=parent)
    for signal_name, slot in connections.items():
        getattr(job, signal_name).connect(slot)
    _running.add(job)
    job.done.connect(lambda: _running.discard(job))
    return job.start()

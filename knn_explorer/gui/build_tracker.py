"""A datastore build running on a worker thread, as a QObject that outlives whoever started it.

Its parent is the main window, or nothing, in which case a module-level set keeps it alive until
the build ends: closing the build dialog never stops a build, and the Library and the status bar
can follow any build that runs in this process (`running_builds`).
"""
from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from ..core.datastore.catalog import Catalog
from ..core.datastore.builder import BuildParameters, BuildReport
from ..core.datastore.library import build_datastore
from ..core.models import LoadedModel
from ..core.progress import Interrupted, Progress
from . import workers

_alive: set["BuildTracker"] = set()  # running trackers, kept alive whoever (if anyone) owns them


def running_builds() -> dict[str, "BuildTracker"]:
    """Builds running in this process right now, by datastore name."""
    # A copy first (atomic under the GIL): a job's thread may ask while the UI thread adds or drops one.
    return {tracker.name: tracker for tracker in list(_alive) if tracker.is_running()}


def describe_progress(tracker: "BuildTracker") -> str:
    """"encoding 40%": the phase a build is in and how far through it; "starting" before its first report."""
    progress = tracker.last_progress
    if progress is None:
        return "starting"
    return f"{progress.phase} {progress.fraction:.0%}"


def waiting_for_build(subject: str, alternatives: bool = False) -> str | None:
    """What `subject` ("kNN-LM", "kNN-LM and SPALM": methods that need a datastore, none chosen) is
    waiting for while this app builds one: "'demo-docs' is being built (encoding 40%); kNN-LM can
    run when it finishes" (and "or double-click another datastore in the library" when there are
    `alternatives`, usable ones). None when no build runs: the caller says how to choose or build one."""
    trackers = sorted(running_builds().values(), key=lambda tracker: tracker.started_at or 0.0)
    if not trackers:
        return None
    if len(trackers) == 1:
        what = f"'{trackers[0].name}' is being built ({describe_progress(trackers[0])}); {subject} can run when it finishes"
    else:
        named = [f"'{tracker.name}' ({describe_progress(tracker)})" for tracker in trackers]
        what = f"{', '.join(named[:-1])} and {named[-1]} are being built; {subject} can run when one finishes"
    if alternatives:
        what += ", or double-click another datastore in the library"
    return what


class BuildTracker(QObject):
    """One datastore build on a worker thread. Outlives the dialog that started it.

    Signals arrive on the UI thread: `progress(Progress)` while it runs, then exactly one of
    `finished(BuildReport)`, `failed(str)` (a one-line reason) or `cancelled()`, then `done()`.
    """

    progress = Signal(object)  # core.progress.Progress
    finished = Signal(object)  # core.datastore.builder.BuildReport
    failed = Signal(str)
    cancelled = Signal()
    done = Signal()

    def __init__(self, catalog: Catalog, model: LoadedModel, name: str, sources: list[str | Path],
                 params: BuildParameters = BuildParameters(), parent: QObject | None = None):
        super().__init__(parent)
        self.catalog, self.name, self.model = catalog, name, model
        self.sources = [str(s) for s in sources]
        self.params = params
        self.state = "idle"  # idle | running | finished | failed | cancelled
        self.last_progress: Progress | None = None
        self.phases: list[str] = []  # in the order they were first reported
        self.report: BuildReport | None = None
        self.error: str | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.job: workers.Job | None = None
        self.keep_when_stopped = False

    def start(self) -> "BuildTracker":
        if self.state == "running":
            return self
        catalog, name, model, sources, params = self.catalog, self.name, self.model, self.sources, self.params

        def build(control) -> BuildReport:
            def should_stop() -> bool:
                if control.should_stop() and self.keep_when_stopped:
                    raise Interrupted("the app closed during the build; it resumes from here next time")
                return control.should_stop()

            return build_datastore(catalog, name, model, sources, params, on_progress=control.report,
                                   should_stop=should_stop)

        self.state, self.started_at, self.ended_at = "running", time.monotonic(), None
        _alive.add(self)
        self.job = workers.run_job(build, parent=self, progress=self._progress, finished=self._finished,
                                   failed=self._failed, cancelled=self._cancelled, done=self._done)
        return self

    def stop(self, keep: bool = False) -> None:
        """Ask the build to stop. It discards its partial folder (`cancelled` follows), or with
        `keep` (the app is quitting) leaves it for the next build of this name to resume."""
        self.keep_when_stopped = keep
        if self.job is not None:
            self.job.stop()

    def is_running(self) -> bool:
        return self.state == "running"

    def stopping(self) -> bool:
        return self.job is not None and self.job.control.should_stop() and self.is_running()

    def wait(self, ms: int = 30_000) -> bool:
        """Block until the worker thread ends (for tests and shutdown)."""
        return self.job.wait(ms) if self.job is not None else True

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.ended_at or time.monotonic()) - self.started_at

    def _progress(self, progress: Progress) -> None:
        if self.state != "running":
            return
        self.last_progress = progress
        if progress.phase not in self.phases:
            self.phases.append(progress.phase)
        self.progress.emit(progress)

    def _finished(self, report: BuildReport) -> None:
        self.state, self.report, self.ended_at = "finished", report, time.monotonic()
        self.finished.emit(report)

    def _failed(self, reason: str) -> None:
        self.state, self.error, self.ended_at = "failed", reason, time.monotonic()
        self.failed.emit(reason)

    def _cancelled(self) -> None:
        self.state, self.ended_at = "cancelled", time.monotonic()
        self.cancelled.emit()

    def _done(self) -> None:
        _alive.discard(self)
        self.done.emit()

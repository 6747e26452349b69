"""Progress reports for long work (builds, evaluation): phase, done/total, rate, ETA, cancel.

Modelled on Orange3's TaskState: the worker reports, the caller decides how to show it, and a
`should_stop` callable is polled between units of work.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable


class Cancelled(Exception):
    """Raised inside long work when its `should_stop` says so."""


class Interrupted(Exception):
    """Raised by a `should_stop` that wants the work kept for later (the app is quitting), not
    discarded as a cancel is: a build stopped this way resumes where it stopped."""


@dataclass(frozen=True)
class Progress:
    phase: str
    done: int
    total: int
    unit: str
    rate: float  # units per second in this phase
    eta_seconds: float | None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def describe(self) -> str:
        eta = f", ETA {format_seconds(self.eta_seconds)}" if self.eta_seconds is not None else ""
        return f"{self.phase}: {self.done:,}/{self.total:,} {self.unit} ({self.rate:,.0f}/s{eta})"


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


ProgressCallback = Callable[[Progress], None]


class PhaseMeter:
    """Turns (done, total) updates of one phase into throttled `Progress` reports."""

    def __init__(self, phase: str, total: int, unit: str, callback: ProgressCallback | None,
                 start_done: int = 0, interval: float = 0.2):
        self.phase, self.total, self.unit, self.callback = phase, total, unit, callback
        self.start_done = start_done
        self.started = time.monotonic()
        self.interval = interval
        self._last = 0.0

    def start(self) -> None:
        """Report 0 done at once, so whoever shows progress switches to this phase before its first
        unit of work ends (the bar never sits at the previous phase's 100% meanwhile)."""
        self.update(self.start_done, force=True)

    def update(self, done: int, force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval and done < self.total:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        rate = (done - self.start_done) / elapsed
        eta = (self.total - done) / rate if rate > 0 else None
        self.callback(Progress(self.phase, done, self.total, self.unit, rate, eta))


def relabelled(callback: ProgressCallback | None, label: str) -> ProgressCallback | None:
    """`callback` with `label` put before each report's phase ("memory 4,096 (3/5) · forward pass"):
    for work that runs the same phases several times."""
    if callback is None:
        return None

    def report(progress: Progress) -> None:
        callback(replace(progress, phase=f"{label} · {progress.phase}"))
    return report

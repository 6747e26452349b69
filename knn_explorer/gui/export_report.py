"""What every export in the app says: where the file went, or one line on why it could not be written.

A folder given where a file is wanted, a read-only place, a full disk: the user sees the reason in
the app (never a traceback on stderr) and can pick another place.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def failure_reason(exc: Exception) -> str:
    """The system's words for an OSError ("Is a directory", "No space left on device"), else the message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


def report_export(what: str, path: Path | str, write: Callable[[], T], say: Callable[[str], None],
                  fail: Callable[[str], None]) -> T | None:
    """`write()`, then `say("Exported WHAT to PATH")`; if it raises, `fail` gets one line and None is returned."""
    try:
        written = write()
    except Exception as exc:  # any failure is a message in the app: the export is the user's, not a crash
        fail(f"Could not export {what} to {path}: {failure_reason(exc)}")
        return None
    say(f"Exported {what} to {path}")
    return written

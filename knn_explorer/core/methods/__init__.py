"""Methods are plug-ins: one protocol (`base.Method`), one registry (`registry`).

`METHOD_LABELS` (name -> label) and `METHODS` (names) are read from the registry on first use.
"""
from __future__ import annotations

from .base import (Method, MethodError, MethodSettings, MethodStep, PassOutputs, RecordContext, Resources, Sweepable,
                   Trained, Trainer, TrainingSettings)
from .registry import UnknownMethod, all_methods, get, labels, names

__all__ = ["Method", "MethodError", "MethodSettings", "MethodStep", "PassOutputs", "RecordContext", "Resources",
           "Sweepable", "Trained", "Trainer", "TrainingSettings", "UnknownMethod", "all_methods", "get", "labels", "names"]


def __getattr__(attribute: str):
    if attribute == "METHOD_LABELS":
        return labels()
    if attribute == "METHODS":
        return tuple(names())
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")

"""What a method's sweep is called in kept runs, on the Evaluate page and after `sweep --param`.

A method's own sweep is kept as "<method>.<setting>" ("adaptive.retrieve_fraction"). kNN-LM's and
the Memorizing Transformer's sweeps were there before methods swept themselves, so users' catalogs
hold them under bare names ("lambda", "k", "temperature", "size", "distance", "memory"): their
`Sweepable`s are `KeptAs`, which keeps that name. `find_sweep` reads either back through the registry.
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Sweepable


@dataclass(frozen=True)
class KeptAs(Sweepable):
    """A sweep whose runs are kept (and whose CLI `--param` is) its setting's bare name."""


def sweep_param(method, setting: str) -> str:
    """The name runs of `method`'s sweep of `setting` are kept under."""
    return setting if isinstance(method.sweeps[setting], KeptAs) else f"{method.name}.{setting}"


def registered_sweeps() -> dict[str, tuple[str, str]]:
    """Every registered method's sweeps: kept name → (method name, setting), in the registry's order."""
    from .registry import UnknownMethod, get, names

    found: dict[str, tuple[str, str]] = {}
    for name in names():
        try:
            method = get(name)
        except UnknownMethod:  # a broken plug-in offers nothing
            continue
        for setting in method.sweeps:
            found.setdefault(sweep_param(method, setting), (name, setting))
    return found


def find_sweep(param: str) -> tuple[str, str] | None:
    """(method name, setting) of the registered sweep kept as `param`; for a "<method>.<setting>"
    of a method not installed here, that pair (its `get` says so); None for an unknown bare name."""
    found = registered_sweeps().get(param)
    if found is not None:
        return found
    method, dot, setting = param.partition(".")
    return (method, setting) if dot and method and setting else None

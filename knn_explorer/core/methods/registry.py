"""Every method the app knows, found through the entry-point group `knn_explorer.methods` — the
built-in four the same way as a third party's (see pyproject.toml and examples/)."""
from __future__ import annotations

import warnings
from functools import lru_cache
from importlib import import_module
from importlib.metadata import entry_points

GROUP = "knn_explorer.methods"
# Used only where the package's metadata is missing (a frozen app bundle, a bare checkout on sys.path).
BUILT_IN = {
    "none": "knn_explorer.core.methods.lm_alone:LmAlone",
    "knnlm": "knn_explorer.core.methods.knnlm:KnnLmMethod",
    "spalm": "knn_explorer.core.methods.spalm:SpalmMethod",
    "memtrf": "knn_explorer.core.methods.memorizing:MemorizingTransformerMethod",
    "adaptive": "knn_explorer.core.methods.adaptive:AdaptiveRetrievalMethod",
}


class UnknownMethod(ValueError):
    """str() is a one-line reason naming the methods there are."""


@lru_cache(maxsize=1)
def _targets() -> dict[str, str]:
    """name -> "module:Class"; built-in ones first, in their fixed order, then the others by name."""
    found = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    ordered = {name: found.pop(name, target) for name, target in BUILT_IN.items()}
    return {**ordered, **dict(sorted(found.items()))}


def names() -> list[str]:
    """Every registered method's name, without importing any of them (the CLI's --help stays light)."""
    return list(_targets())


@lru_cache(maxsize=None)
def get(name: str):
    """The `Method` subclass registered as `name`."""
    target = _targets().get(name)
    if target is None:
        raise UnknownMethod(f"unknown method {name!r}: use one of {', '.join(names())}")
    module, _, attribute = target.partition(":")
    try:
        method = getattr(import_module(module), attribute)
    except Exception as exc:  # a broken plug-in must not take the app or the CLI down with it
        raise UnknownMethod(f"method {name!r} ({target}) could not be loaded: {type(exc).__name__}: {exc}") from exc
    if getattr(method, "name", None) != name:
        raise UnknownMethod(f"method {name!r} is registered to {target}, whose name is {getattr(method, 'name', None)!r}")
    return method


def all_methods() -> list:
    """Every method that loads; one that does not is left out with a warning (`get` says why)."""
    found = []
    for name in names():
        try:
            found.append(get(name))
        except UnknownMethod as exc:
            warnings.warn(str(exc), RuntimeWarning, stacklevel=2)
    return found


def trainable() -> list:
    """Every method that loads and has an adapter to train (`Method.trainer`), in the registry's order."""
    return [method for method in all_methods() if getattr(method, "trainer", None) is not None]


def labels() -> dict[str, str]:
    return {method.name: method.label for method in all_methods()}


def refresh() -> None:
    """Look for entry points again (a package was installed while running: tests)."""
    _targets.cache_clear()
    get.cache_clear()

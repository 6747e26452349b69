"""A throwaway method plug-in for tests: one module and a dist-info with its entry point, on sys.path."""
from __future__ import annotations

import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

from knn_explorer.core.methods import registry


@contextmanager
def installed_plugin(folder: Path, module: str, source: str, entry_points: dict[str, str], monkeypatch):
    """Write `module` (its `source`) and a distribution registering `entry_points` (name -> "module:Class")
    under `folder`, put it on sys.path for the block, and leave nothing behind."""
    info = folder / f"{module}-0.1.dist-info"
    info.mkdir(parents=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n", encoding="utf-8")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[knn_explorer.methods]\n{lines}", encoding="utf-8")
    try:
        with monkeypatch.context() as mp:
            mp.syspath_prepend(str(folder))
            registry.refresh()
            yield folder
    finally:
        sys.modules.pop(module, None)
        registry.refresh()

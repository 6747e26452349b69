"""The layer rule of DESIGN.md: the core never imports Qt."""
import subprocess
import sys
from pathlib import Path

import knn_explorer.core as core

QT_MODULES = ("PySide6", "pyqtgraph", "PyQt5", "PyQt6", "shiboken6")


def test_core_imports_no_qt():
    root = Path(core.__file__).parent
    modules = sorted(".".join(p.relative_to(root).with_suffix("").parts) for p in root.rglob("*.py")
                     if p.stem != "__init__")
    assert {"models", "datastore.folder", "mechanisms.knnlm", "generation.step_generator", "datastore.catalog",
            "methods.base", "evaluation.comparison"} <= set(modules)
    code = (
        "import sys\n"
        + "".join(f"import knn_explorer.core.{m}\n" for m in modules)
        + f"print(','.join(m for m in {QT_MODULES!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"knn_explorer.core pulled in {out.stdout.strip()}"


def test_cli_help_does_not_load_qt_or_torch():
    code = "import sys, knn_explorer.cli as c; c.build_parser(); print([m for m in ('PySide6', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

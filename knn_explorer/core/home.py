"""Where the app keeps everything it writes (`$KNN_EXPLORER_HOME`, else the user data dir) and
where it finds what it ships (`RESOURCES`: the demo, icons, the desktop entry)."""
from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import platformdirs


def _resources() -> Path:
    """The top-level resources/ folder, installed as the package `knn_explorer.resources` (the wheel
    holds it; an editable install maps it to the clone's folder; a PyInstaller bundle unpacks it
    beside the code). A clone on sys.path with nothing installed falls back to the folder itself."""
    try:
        root = importlib.resources.files("knn_explorer.resources")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "resources"
    # On a file system (every way the app is installed) this is a real folder; a zipped install is
    # not supported: the demo model is memory-mapped and the documents are read as files.
    return root if isinstance(root, Path) else Path(str(root))


RESOURCES = _resources()
DEMO_MODEL_DIR = RESOURCES / "demo" / "model"
DEMO_DOCS_DIR = RESOURCES / "demo" / "docs"
DEMO_MEMTRF_ADAPTER = RESOURCES / "demo" / "memtrf.safetensors"  # gates + fine-tuned layers; made by tools/train_demo_memorizing.py
DEMO_SPALM_ADAPTER = RESOURCES / "demo" / "spalm.safetensors"  # gate + W; made by tools/train_demo_spalm.py


def data_home() -> Path:
    override = os.environ.get("KNN_EXPLORER_HOME")
    home = Path(override).expanduser() if override else Path(platformdirs.user_data_dir("knn-explorer"))
    home.mkdir(parents=True, exist_ok=True)
    return home


def datastores_dir() -> Path:
    folder = data_home() / "datastores"
    folder.mkdir(parents=True, exist_ok=True)
    return folder

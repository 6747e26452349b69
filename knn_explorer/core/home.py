"""Where the app keeps everything it writes: `$KNN_EXPLORER_HOME`, else the user data dir."""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RESOURCES = PROJECT_ROOT / "resources"
DEMO_MODEL_DIR = RESOURCES / "demo" / "model"
DEMO_DOCS_DIR = RESOURCES / "demo" / "docs"
DEMO_MEMTRF_ADAPTER = RESOURCES / "demo" / "memtrf-gates.safetensors"  # made by packaging/train_demo_gates.py
DEMO_SPALM_GATE = RESOURCES / "demo" / "spalm-gate.safetensors"  # made by packaging/train_demo_spalm_gate.py


def data_home() -> Path:
    override = os.environ.get("KNN_EXPLORER_HOME")
    home = Path(override).expanduser() if override else Path(platformdirs.user_data_dir("knn-explorer"))
    home.mkdir(parents=True, exist_ok=True)
    return home


def datastores_dir() -> Path:
    folder = data_home() / "datastores"
    folder.mkdir(parents=True, exist_ok=True)
    return folder

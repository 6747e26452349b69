"""Fetch openly licensed text from Debian packages (the only registry we can reach offline).

`apt-get download` needs no root and installs nothing: the .deb is unpacked into a cache folder.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

CACHE = Path.home() / ".cache" / "knn-explorer-packaging"


def unpack_debian_package(name: str, cache: Path = CACHE) -> Path:
    """Download package `name` with apt-get and unpack it; return the unpacked root."""
    root = cache / name
    if root.is_dir() and any(root.iterdir()):
        return root
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", name], cwd=cache, check=True)
    debs = sorted(cache.glob(f"{name}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {name} produced no .deb in {cache}")
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
    return root


def rst_sources(root: Path) -> list[Path]:
    """The reStructuredText sources Sphinx ships beside its HTML, in a stable order."""
    return sorted(root.rglob("_sources/**/*.rst.txt"))

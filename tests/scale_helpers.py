"""Large datastores for tests, made from a real small one without running the model again."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import faiss
import numpy as np

from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.folder import KeyFile, read_documents, read_manifest, write_json_atomic
from knn_explorer.core.datastore.index import build_index, choose_index

TILE_NOISE = 0.1  # tiles after the first: the real keys plus this much of each dimension's spread


def tile_datastore(catalog: Catalog, source: Path, folder: Path, name: str, entries: int, index: str = "auto") -> dict:
    """Register datastore `name`: `entries` entries tiled from `source`'s (tile 0 exact, later
    tiles with Gaussian noise), sharing its documents, with its own index."""
    manifest = read_manifest(source)
    dim, size = manifest["dim"], manifest["entries"]
    folder.mkdir(parents=True)
    for item in ("documents.jsonl", "skipped.json", "tokens.i32"):
        shutil.copy2(source / item, folder / item)
    shutil.copytree(source / "texts", folder / "texts")
    real = np.fromfile(source / "keys.f16", dtype=np.float16).reshape(size, dim).astype(np.float32)
    spread = real.std(axis=0)
    keys = KeyFile.create(folder / "keys.f16", entries, dim)
    values = np.fromfile(source / "values.i32", dtype=np.int32)
    positions = np.fromfile(source / "positions.i64", dtype=np.int64).reshape(-1, 2)
    with open(folder / "values.i32", "wb") as v, open(folder / "positions.i64", "wb") as p:
        for tile, start in enumerate(range(0, entries, size)):
            n = min(size, entries - start)
            noise = np.random.default_rng(tile).normal(size=(n, dim)).astype(np.float32) * spread * TILE_NOISE
            keys.write(start, real[:n] + (noise if tile else 0))
            v.write(values[:n].tobytes())
            p.write(positions[:n].tobytes())
    spec = choose_index(index, entries, dim)
    if spec.kind != "flat":
        faiss.write_index(build_index(keys, spec), str(folder / "index.faiss"))
    manifest.update(name=name, entries=entries, index=spec.to_json(), index_description=spec.describe())
    write_json_atomic(folder / "manifest.json", manifest)
    documents = [vars(d) for d in read_documents(folder)]
    skipped = json.loads((folder / "skipped.json").read_text(encoding="utf-8"))
    size_bytes = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    catalog.register_datastore(manifest, folder, documents, skipped, size_bytes)
    return manifest


def drop_page_cache_hint(path: Path) -> None:
    """Ask the kernel to forget a file's cached pages, so an open reads it from disk (Linux)."""
    if hasattr(os, "posix_fadvise"):
        with open(path, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

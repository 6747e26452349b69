"""Compress a complete datastore into a new one (PCA, pruning, or both), leaving the original as it is.

The new folder starts as hard links to the original's files (copies where the filesystem has no
links); the compressing phase only ever writes new files and renames them over its own links, so
the original is never touched. A failed or cancelled run removes the new folder; the catalog lists
the new datastore only once it is complete, with what was applied.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable

from .build_lock import datastore_lock
from .builder import index_folder
from .catalog import Catalog
from .compress_phase import compress_folder
from .compression import Compression, CompressionError
from .folder import read_documents, read_manifest, write_json_atomic
from .library import LibraryError, _check_new, _slug, folder_bytes
from ..home import datastores_dir
from ..progress import Cancelled, ProgressCallback

SHARED = ("documents.jsonl", "skipped.json", "tokens.i32", "keys.f16", "values.i32", "positions.i64", "texts")


def compress_datastore(catalog: Catalog, source: str, name: str, compression: Compression, index: str = "auto",
                       device: str = "cpu", on_progress: ProgressCallback | None = None,
                       should_stop: Callable[[], bool] | None = None) -> dict:
    """Make datastore `name` from `source` with `compression` applied; returns its manifest."""
    row = catalog.datastore(source.strip())
    if row is None:
        raise LibraryError(f"no datastore named '{source.strip()}'")
    if not compression:
        raise LibraryError("nothing to do: give a PCA dimension, pruning neighbours, or both")
    if row.compression:
        raise LibraryError(f"datastore '{row.name}' is compressed already; compress the datastore it came from")
    try:
        compression.check(row.dim, row.entries)
    except CompressionError as exc:
        raise LibraryError(str(exc)) from None
    name = _check_new(catalog, name, [])
    with datastore_lock(name, "build"):
        _check_new(catalog, name, [])
        folder = datastores_dir() / f"{_slug(name)}-{secrets.token_hex(3)}"
        build_id = catalog.start_build(name, folder, row.model_name,
                                       {"compress_from": row.name, **compression.to_json(), "index": index})
        try:
            manifest = _start_folder(Path(row.folder), folder, name, compression, index)
            manifest = compress_folder(folder, manifest, compression, on_progress, should_stop)
            index_folder(folder, manifest, index, device, on_progress, should_stop)
            manifest = read_manifest(folder)
        except BaseException as exc:
            shutil.rmtree(folder, ignore_errors=True)  # the original is intact: nothing to resume
            catalog.finish_build(build_id, "cancelled" if isinstance(exc, (Cancelled, InterruptedError)) else "failed",
                                 error=str(exc) or type(exc).__name__)
            raise
        documents = [vars(d) for d in read_documents(folder)]
        skipped_file = folder / "skipped.json"
        skipped = json.loads(skipped_file.read_text(encoding="utf-8")) if skipped_file.exists() else []
        catalog.register_datastore(manifest, folder, documents, skipped, folder_bytes(folder))
        catalog.finish_build(build_id, "complete")
        return manifest


def _start_folder(original: Path, folder: Path, name: str, compression: Compression, index: str) -> dict:
    folder.mkdir(parents=True)
    for item in SHARED:
        source = original / item
        if source.is_dir():
            shutil.copytree(source, folder / item, copy_function=_link_or_copy)
        elif source.exists():
            _link_or_copy(source, folder / item)
    manifest = read_manifest(original)
    parameters = {**manifest.get("parameters", {}), **compression.to_json(), "index": index}
    manifest.update(name=name, state="compressing", parameters=parameters, compressed_from=manifest["name"])
    for stale in ("index", "index_description"):
        manifest.pop(stale, None)
    write_json_atomic(folder / "manifest.json", manifest)
    return manifest


def _link_or_copy(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(source, target)


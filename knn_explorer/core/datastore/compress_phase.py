"""The build's compressing phase: PCA and pruning applied to a datastore folder whose keys are
encoded, before it is indexed — in a fresh build, or in a copy of a complete datastore.

Crash-safe in two steps. `compressing`: the results are written beside the inputs as *.tmp files
(the inputs are untouched, so a killed run starts the step again). `committing`: the manifest
already describes the compressed datastore; each *.tmp replaces its input (repeatable: a killed
run renames what is left). Then the state is `indexing`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from .compression import COUNTS_FILE, PCA_FILE, Compression, Projection, fit_pca, greedy_merge
from .folder import KeyFile, write_json_atomic
from .index import FLAT_SCAN_MAX_BYTES, FaissSearch, build_index, choose_index
from ..progress import Cancelled, PhaseMeter, ProgressCallback

COMMITTED = ("keys.f16", "values.i32", "positions.i64", COUNTS_FILE, PCA_FILE)
GATHER = 65_536  # kept rows copied per step


def compress_folder(folder: Path, manifest: dict, compression: Compression,
                    on_progress: ProgressCallback | None = None,
                    should_stop: Callable[[], bool] | None = None) -> dict:
    """Run (or finish) the compressing phase; returns the manifest, now in state `indexing`."""
    should_stop = should_stop or (lambda: False)
    if manifest["state"] == "compressing":
        manifest = _write_compressed(folder, manifest, compression, on_progress, should_stop)
    if manifest["state"] == "committing":
        for name in COMMITTED:
            tmp = folder / f"{name}.tmp"
            if tmp.exists():
                os.replace(tmp, folder / name)
        manifest["state"] = "indexing"
        write_json_atomic(folder / "manifest.json", manifest)
    return manifest


def _write_compressed(folder: Path, manifest: dict, compression: Compression, on_progress,
                      should_stop: Callable[[], bool]) -> dict:
    entries, dim = manifest["entries"], manifest["dim"]
    compression.check(dim, entries)
    keys = KeyFile(folder / "keys.f16", entries, dim)
    out_dim = compression.pca_dim or dim
    record = {**compression.to_json(), "input_dim": dim, "entries_before": entries}

    projection = None
    if compression.pca_dim:
        PhaseMeter("fitting PCA", 1, "steps", on_progress).update(0, force=True)
        projection = fit_pca(keys, compression.pca_dim)
        projection.save(folder / f"{PCA_FILE}.tmp")
        record["explained"] = round(projection.explained, 6)
        reduced = KeyFile.create(folder / "keys.f16.pca.tmp", entries, out_dim)
        _copy_rows(keys, np.arange(entries), reduced, projection, "projecting keys", on_progress, should_stop)
        keys = reduced  # pruning merges by distances in the space that will be searched

    values = np.fromfile(folder / "values.i32", dtype=np.int32)
    kept = np.arange(entries)
    if compression.prune_k:
        meter = PhaseMeter("pruning", entries, "entries", on_progress)
        try:
            counts = greedy_merge(keys, values, compression.prune_k, search=_neighbour_search(keys),
                                  on_progress=meter.update, should_stop=should_stop)
        except InterruptedError:
            raise Cancelled("build cancelled") from None
        kept = np.flatnonzero(counts)
        counts[kept].astype(np.int32).tofile(folder / f"{COUNTS_FILE}.tmp")
        record["entries_after"] = int(len(kept))

    if compression.prune_k or projection is None:  # gather the kept rows into the final key file
        out = KeyFile.create(folder / "keys.f16.tmp", len(kept), out_dim)
        _copy_rows(keys, kept, out, None, "copying kept keys", on_progress, should_stop)
        if projection is not None:  # the projected keys were an intermediate
            os.remove(keys.path)
    else:
        os.replace(keys.path, folder / "keys.f16.tmp")
    values[kept].tofile(folder / "values.i32.tmp")
    positions = np.fromfile(folder / "positions.i64", dtype=np.int64).reshape(-1, 2)
    positions[kept].tofile(folder / "positions.i64.tmp")

    manifest.update(state="committing", entries=int(len(kept)), dim=out_dim, compression=record)
    write_json_atomic(folder / "manifest.json", manifest)
    return manifest


def _copy_rows(source: KeyFile, rows: np.ndarray, out: KeyFile, projection: Projection | None, phase: str,
               on_progress, should_stop) -> None:
    """out[i] = projection(source[rows[i]]), in blocks of contiguous reads."""
    meter = PhaseMeter(phase, len(rows), "keys", on_progress)
    for start in range(0, len(rows), GATHER):
        _stop(should_stop)
        wanted = rows[start : start + GATHER]
        block = source[int(wanted[0]) : int(wanted[-1]) + 1][wanted - wanted[0]]
        out.write(start, projection(block) if projection is not None else block)
        meter.update(start + len(wanted))


def _neighbour_search(keys: KeyFile):
    """Exact neighbours while one scan of the keys is cheap; beyond that, a temporary IVF-PQ
    index (merging needs near neighbours with the same token, not the exact k)."""
    if len(keys) * keys.shape[1] * 2 <= 4 * FLAT_SCAN_MAX_BYTES:
        return None
    index = FaissSearch(build_index(keys, choose_index("ivfpq", len(keys), keys.shape[1])))
    return lambda queries, k: index.search(queries, k)[1]


def _stop(should_stop) -> None:
    if should_stop():
        raise Cancelled("build cancelled")

"""Comparisons kept for later: numbers in the catalog, per-token details in a file beside it.

The catalog row holds what a list of runs shows (perplexities, settings); the per-target arrays
(token ids, log p per method) would make it megabytes, so they go to
`<catalog folder>/evaluations/<uuid>.npz`, written before the row, so a row never points at a
missing file. A row whose file was deleted still lists and plots its perplexities.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from ..datastore.catalog import Catalog, EvaluationRow
from .comparison import Comparison


def details_folder(catalog: Catalog) -> Path:
    return catalog.path.parent / "evaluations"


def keep_comparison(catalog: Catalog, comparison: Comparison, model_name: str, datastore: str | None,
                    parameters: dict) -> int:
    """Record the comparison (kind "compare") with its per-token details; returns the row's id."""
    folder = details_folder(catalog)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.npz"
    partial = path.with_name(path.stem + ".partial.npz")
    np.savez_compressed(partial, token_ids=comparison.token_ids.astype(np.int32), positions=comparison.positions,
                        log_p_lm=comparison.log_p_lm, **{f"log_p_{m}": v for m, v in comparison.log_p.items()},
                        windows=np.array([comparison.context_length, comparison.stride]),
                        document_starts=comparison.document_starts)
    partial.replace(path)  # whole or absent
    try:
        return catalog.record_evaluation("compare", model_name, datastore, {**parameters, "details": path.name},
                                         comparison.to_json())
    except Exception:
        path.unlink(missing_ok=True)
        raise


def load_comparison(catalog: Catalog, row: EvaluationRow) -> Comparison | None:
    """The kept comparison's per-token details, or None if it has none (a sweep, an older run, a deleted file)."""
    name = (row.parameters or {}).get("details")
    path = details_folder(catalog) / name if name else None
    if path is None or not path.is_file():
        return None
    with np.load(path) as saved:
        methods = {key.removeprefix("log_p_"): saved[key] for key in saved.files if key.startswith("log_p_")
                   and key != "log_p_lm"}
        context, stride = (int(v) for v in saved["windows"])
        return Comparison(token_ids=saved["token_ids"].astype(np.int64), positions=saved["positions"],
                          log_p_lm=saved["log_p_lm"], log_p=methods, context_length=context, stride=stride,
                          document_starts=saved["document_starts"] if "document_starts" in saved.files
                          else np.zeros(1, dtype=np.int64))


def forget(catalog: Catalog, row: EvaluationRow) -> None:
    """Delete a kept run and its details file."""
    catalog.remove_evaluation(row.id)
    name = (row.parameters or {}).get("details")
    if name:
        (details_folder(catalog) / name).unlink(missing_ok=True)

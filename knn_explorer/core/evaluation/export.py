"""Kept evaluations as files for other tools: CSV (one row per point, or per target token) and JSON.

A sweep's CSV has one row per swept value; a comparison's has one row per held-out target token
with its log-probability under each method, so a spreadsheet or pandas can redo any statistic.
Both are written whole or not at all (`write_atomically`).
"""
from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from ..atomic_file import write_atomically
from ..datastore.catalog import EvaluationRow
from .comparison import Comparison


def run_json(row: EvaluationRow) -> dict:
    """What was run and what came out, as strict JSON (no NaN or infinity)."""
    return {"id": row.id, "kind": row.kind, "created": row.created.isoformat(timespec="seconds"),
            "model": row.model_name, "datastore": row.datastore, "parameters": row.parameters,
            "results": json.loads(json.dumps(row.results, default=str), parse_constant=lambda _c: None)}


def write_json(row: EvaluationRow, path: Path) -> Path:
    text = json.dumps(run_json(row), indent=2, ensure_ascii=False)
    return write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def write_csv(row: EvaluationRow, path: Path, comparison: Comparison | None = None,
              decode: Callable[[int], str] | None = None) -> Path:
    """A sweep: value, ppl (and what else its points carry); a comparison: per target token, or per method if its
    per-token details are gone."""
    return write_atomically(path, lambda partial: _write_csv(row, partial, comparison, decode))


def _write_csv(row: EvaluationRow, path: Path, comparison: Comparison | None,
               decode: Callable[[int], str] | None) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        results = row.results
        if row.kind == "sweep":
            # whatever else its points carry: a size sweep's entries, a method's own sweep's tokens/s, ...
            extra = list(dict.fromkeys(k for p in results["results"] for k in p if k not in ("value", "ppl")))
            # and what the run held fixed (k, T, λ, distances, ...), so two sweeps' files never look alike
            fixed = {k: v for k, v in results.items()
                     if k not in ("param", "ppl_lm", "results", "references") and not isinstance(v, (dict, list))}
            context = {"model": row.model_name, "datastore": row.datastore, **fixed}
            writer.writerow(["param", "value", "ppl", "ppl_lm", *extra, *context])
            for point in results["results"]:
                writer.writerow([results["param"], point["value"], point["ppl"], results["ppl_lm"],
                                 *[point.get(e) for e in extra], *context.values()])
        elif comparison is not None:
            methods = comparison.methods
            writer.writerow(["index", "position", "token_id", "token", *[f"log_p_{m}" for m in methods]])
            columns = [comparison.log_probs(m) for m in methods]
            for i, position in enumerate(comparison.positions):
                token_id = int(comparison.token_ids[position])
                writer.writerow([i, int(position), token_id, decode(token_id) if decode else "",
                                 *[repr(float(c[i])) for c in columns]])
        elif row.kind == "compare":
            writer.writerow(["method", "ppl", "relative_change"])
            for method, numbers in results["methods"].items():
                writer.writerow([method, numbers["ppl"], numbers["relative_change"]])
        else:  # a single evaluation
            writer.writerow(["method", "tokens", "ppl_lm", "ppl"])
            writer.writerow([results.get("method"), results.get("tokens"), results.get("ppl_lm"), results.get("ppl")])

"""Kept evaluations as files for other tools: CSV (one row per point, or per target token) and JSON.

A sweep's CSV has one row per swept value; a comparison's has one row per held-out target token
with its log-probability under each method, so a spreadsheet or pandas can redo any statistic.
Every row also carries its run's number and what the run was run with (`run_context`: the model,
the datastore, the held-out text, the windows and every setting), so two files, or two runs in one
file, never look alike. Several runs go into one file: the CSV's `run` column tells their rows
apart, the JSON holds one object per run. Files are written whole or not at all (`write_atomically`).
"""
from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from ..atomic_file import write_atomically
from ..datastore.catalog import EvaluationRow
from .comparison import Comparison

FORMAT = "knn-explorer-evaluations/1"  # a file of several runs; one run's file is that run's object
Decode = Callable[[int], str]
# what a run's results hold that is a result, not a setting
_RESULTS = {"param", "ppl", "ppl_lm", "results", "references", "tokens", "methods", "relative_change", "model",
            "text", "context", "stride", "settings", "tokens_per_s_lm"}


def run_json(row: EvaluationRow) -> dict:
    """What was run and what came out, as strict JSON (no NaN or infinity)."""
    return {"id": row.id, "kind": row.kind, "created": row.created.isoformat(timespec="seconds"),
            "model": row.model_name, "datastore": row.datastore, "parameters": row.parameters,
            "results": json.loads(json.dumps(row.results, default=str), parse_constant=lambda _c: None)}


def run_context(row: EvaluationRow) -> dict:
    """What a kept run was run with, flat and in a stable order: its number and kind, the model, the
    datastore, the held-out text, its tokens and windows (length and stride), then every setting — a method's own as
    "METHOD.SETTING" where the run kept them per method (the app's comparisons), else as kept (a
    sweep's fixed settings, the CLI's comparisons and evaluations). None where the run did not say."""
    p, r = row.parameters or {}, row.results or {}
    out = {"run": row.id, "kind": row.kind, "model": row.model_name, "datastore": row.datastore,
           "text": p.get("text", r.get("text")), "tokens": r.get("tokens"),
           "window": p.get("context", r.get("context")), "stride": p.get("stride", r.get("stride"))}
    if row.kind == "sweep":
        out["param"] = r.get("param")
        out.update({k: v for k, v in r.items() if k not in _RESULTS and k not in out})
    elif isinstance(p.get("settings"), dict) and p["settings"]:  # a comparison kept by the app: per method
        for method, described in p["settings"].items():
            out.update({f"{method}.{k}": v for k, v in (described or {}).items() if k != "method"})
    else:  # settings kept flat (the CLI's comparisons, single evaluations)
        skip = {"details", "values", "methods", "context", *out}
        out.update({k: v for k, v in p.items() if k not in skip})
        out.update({k: v for k, v in r.items() if k not in _RESULTS and k not in out})
    if row.kind == "compare" and "methods" not in out:
        out["methods"] = ",".join(r.get("methods", {}) or p.get("methods", []))
    return out


def write_json(rows: EvaluationRow | Sequence[EvaluationRow], path: Path) -> Path:
    """One run's object, or for several `{"format": FORMAT, "runs": [one object per run]}`."""
    if isinstance(rows, EvaluationRow):
        data = run_json(rows)
    else:
        data = run_json(rows[0]) if len(rows) == 1 else {"format": FORMAT, "runs": [run_json(r) for r in rows]}
    text = json.dumps(data, indent=2, ensure_ascii=False)
    return write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def write_csv(row: EvaluationRow, path: Path, comparison: Comparison | None = None,
              decode: Decode | None = None) -> Path:
    """A sweep: value, ppl (and what else its points carry); a comparison: per target token, or per method if its
    per-token details are gone. Every row ends with the run's context (`run_context`)."""
    return write_runs_csv([(row, comparison, decode)], path)


def write_runs_csv(runs: Sequence[tuple[EvaluationRow, Comparison | None, Decode | None]], path: Path) -> Path:
    """Several runs in one CSV: each run's rows as `write_csv` writes them, the columns the union of
    theirs (empty where a run has no such column), the `run` column first."""
    tables = [_table(row, comparison, decode) for row, comparison, decode in runs]
    contexts = [run_context(row) for row, _comparison, _decode in runs]
    columns = list(dict.fromkeys(["run", *(c for columns, _rows in tables for c in columns),
                                  *(k for context in contexts for k in context)]))

    def write(partial: Path) -> None:
        with open(partial, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            for (_columns, rows), context in zip(tables, contexts):
                shown = {k: _cell(v) for k, v in context.items()}
                for values in rows:
                    writer.writerow({**shown, **values})
    return write_atomically(path, write)


def _cell(value):
    """A setting as one CSV cell: lists and dicts (per-head gates, ...) as JSON, None as empty."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


def _table(row: EvaluationRow, comparison: Comparison | None, decode: Decode | None) -> tuple[list[str], list[dict]]:
    """A run's own columns and rows (without its context)."""
    results = row.results
    if row.kind == "sweep":
        # whatever else its points carry: a size sweep's entries, a method's own sweep's tokens/s, ...
        extra = list(dict.fromkeys(k for p in results["results"] for k in p if k not in ("value", "ppl")))
        columns = ["param", "value", "ppl", "ppl_lm", *extra]
        return columns, [{"param": results["param"], "value": point["value"], "ppl": _cell(point["ppl"]),
                          "ppl_lm": results["ppl_lm"], **{e: _cell(point.get(e)) for e in extra}}
                         for point in results["results"]]
    if comparison is not None:
        methods = comparison.methods
        columns = ["index", "position", "token_id", "token", *[f"log_p_{m}" for m in methods]]
        logs = [comparison.log_probs(m) for m in methods]
        rows = []
        for i, position in enumerate(comparison.positions):
            token_id = int(comparison.token_ids[position])
            rows.append({"index": i, "position": int(position), "token_id": token_id,
                         "token": decode(token_id) if decode else "",
                         **{f"log_p_{m}": repr(float(c[i])) for m, c in zip(methods, logs)}})
        return columns, rows
    if row.kind == "compare":
        return ["method", "ppl", "relative_change"], [
            {"method": method, "ppl": _cell(numbers["ppl"]), "relative_change": _cell(numbers["relative_change"])}
            for method, numbers in results["methods"].items()]
    # a single evaluation
    return ["method", "tokens", "ppl_lm", "ppl"], [
        {"method": results.get("method"), "tokens": results.get("tokens"), "ppl_lm": results.get("ppl_lm"),
         "ppl": _cell(results.get("ppl"))}]

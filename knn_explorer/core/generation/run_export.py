"""Save a generation run (its per-token records) as JSON or CSV, and read the JSON back.

JSON keeps everything (`{"format": ..., "model", "datastore", "prompt", "settings", "records":
[TokenRecord.to_json()]}`); CSV keeps one row per token with the numbers people plot (no neighbour
passages), each row ending with what the run was made with (the model, the datastore and every
setting: `context`), so an exported file says what produced it. Both are written whole or not at
all (`write_atomically`).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ..atomic_file import write_atomically
from ..records import MemoryHit, Neighbour, RetrievalSettings, TokenProb, TokenRecord

FORMAT = "knn-explorer-run/1"
CSV_COLUMNS = ["step", "token_id", "token", "method", "chosen_prob_lm", "chosen_prob_final", "gain", "lambda",
               "gate", "nearest_distance", "nearest_document", "k", "temperature", "distance"]


def write_json(path: Path, records: list[TokenRecord], prompt: str = "", settings: dict | None = None,
               model: str | None = None, datastore: str | None = None) -> Path:
    data = {"format": FORMAT, "model": model, "datastore": datastore, "prompt": prompt, "settings": settings or {},
            "records": [r.to_json() for r in records]}
    text = json.dumps(data, ensure_ascii=False, indent=1)
    return write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def read_json(path: Path) -> tuple[str, dict, list[TokenRecord]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a kNN Explorer run (format {data.get('format')!r})")
    return data["prompt"], data["settings"], [record_from_json(r) for r in data["records"]]


def record_from_json(data: dict) -> TokenRecord:
    probs = lambda rows: None if rows is None else [TokenProb(**row) for row in rows]  # noqa: E731
    neighbours = [Neighbour(**{**n, "highlight": tuple(n["highlight"])}) for n in data["neighbours"]]
    retrieval = RetrievalSettings(**data["retrieval"]) if data.get("retrieval") else None
    hits = data.get("memory_hits")
    memory_hits = None if hits is None else [[MemoryHit(**{**h, "highlight": tuple(h["highlight"])}) for h in head]
                                             for head in hits]
    fields = {k: v for k, v in data.items()
              if k not in ("lambda", "p_lm", "p_knn", "p_final", "neighbours", "retrieval", "memory_hits")}
    return TokenRecord(**fields, lambda_=data.get("lambda"), p_lm=probs(data["p_lm"]), p_knn=probs(data["p_knn"]),
                       p_final=probs(data["p_final"]), neighbours=neighbours, retrieval=retrieval,
                       memory_hits=memory_hits)


def write_csv(path: Path, records: list[TokenRecord], context: dict | None = None) -> Path:
    """One row per token; `context` (the model, the datastore, the settings: name → value) adds a
    column each, the same on every row (a token's own k, T and distances keep their columns)."""
    return write_atomically(path, lambda partial: _write_csv(partial, records, context or {}))


def _write_csv(path: Path, records: list[TokenRecord], context: dict) -> None:
    shown = {key: json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value
             for key, value in context.items() if key not in CSV_COLUMNS}
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*CSV_COLUMNS, *shown])
        writer.writeheader()
        for r in records:
            nearest = r.neighbours[0] if r.neighbours else None
            writer.writerow({**shown,
                "step": r.step, "token_id": r.token_id, "token": r.token, "method": r.method,
                "chosen_prob_lm": r.chosen_prob_lm, "chosen_prob_final": r.chosen_prob_final, "gain": r.gain,
                "lambda": r.lambda_, "gate": r.gate,
                "nearest_distance": nearest.distance if nearest else None,
                "nearest_document": nearest.document if nearest else None,
                "k": r.retrieval.k if r.retrieval else None,
                "temperature": r.retrieval.temperature if r.retrieval else None,
                "distance": r.retrieval.distance if r.retrieval else None,
            })

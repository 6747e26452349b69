"""Side-by-side generation: one prompt, up to four methods, stepped in lockstep and aligned by step.

`run_side_by_side` takes one `StepGenerator` per method and steps them row by row (step 0 of every
method, then step 1, ...), so a view can fill its columns as rows. `aligned_rows`, `to_csv`,
`to_json` and `format_table` turn the finished columns into rows, files and a plain-text table.

A method that lives inside the shared model (the Memorizing Transformer's memory) intercepts every
forward pass, the other lanes' included. Those run inside its `set_aside()`, which switches it off
and undoes whatever it noted, so each column equals the same method generated alone.

No torch import at module level: the CLI imports this for `format_table` without loading a model.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..records import TokenRecord

if TYPE_CHECKING:
    from .step_generator import StepGenerator

MAX_METHODS = 4  # columns a screen shows side by side


@dataclass
class SideBySideColumn:
    """One method's records, in step order."""

    method: str
    label: str
    records: list[TokenRecord] = field(default_factory=list)

    @classmethod
    def for_method(cls, method: str, records: list[TokenRecord] | None = None) -> SideBySideColumn:
        from ..methods import labels

        return cls(method, labels().get(method, method), list(records or []))


# ----------------------------------------------------------------------------- running

def check_generators(generators: dict[str, StepGenerator]) -> None:
    """Raise ValueError, with a one-line reason, for a set of lanes that cannot run side by side."""
    if not generators:
        raise ValueError("choose at least one method")
    if len(generators) > MAX_METHODS:
        raise ValueError(f"at most {MAX_METHODS} methods run side by side")
    from ..methods import names

    for name, generator in generators.items():
        if name not in names():
            raise ValueError(f"unknown method {name!r}: use one of {', '.join(names())}")
        if generator.method.name != name:
            raise ValueError(f"the {name!r} lane was given a {generator.method.name!r} generator")


def run_side_by_side(generators: dict[str, StepGenerator],
                     should_stop: Callable[[], bool] | None = None) -> Iterator[tuple[str, TokenRecord]]:
    """Step every lane once per row, in the dict's order, yielding (method, record).

    A lane that reached its `max_new_tokens` or end-of-text stops contributing; the run ends when
    all have, or as soon as `should_stop()` is true (checked before each lane's step). Each lane
    steps with every other lane's method set aside (`Method.set_aside`: a memory inside the shared
    model neither sees nor keeps the other lanes' passes). Raises ValueError at once (not on the
    first step) for lanes that cannot run side by side.
    """
    check_generators(generators)
    return _lockstep(generators, should_stop)


def _lockstep(generators: dict[str, StepGenerator],
              should_stop: Callable[[], bool] | None) -> Iterator[tuple[str, TokenRecord]]:
    lanes = {name: iter(generator) for name, generator in generators.items()}
    while lanes:
        for name in list(lanes):
            if should_stop is not None and should_stop():
                return
            with ExitStack() as others:
                for other, generator in generators.items():
                    if other != name:
                        others.enter_context(generator.method.set_aside())
                record = next(lanes[name], None)
            if record is None:
                del lanes[name]
                continue
            yield name, record  # outside the set-aside: a consumer that stops here leaves the methods intact


def generate_side_by_side(generators: dict[str, StepGenerator],
                          should_stop: Callable[[], bool] | None = None) -> list[SideBySideColumn]:
    """`run_side_by_side` collected into columns (the CLI's and the tests' way in)."""
    columns = {name: SideBySideColumn.for_method(name) for name in generators}
    for name, record in run_side_by_side(generators, should_stop):
        columns[name].records.append(record)
    return list(columns.values())


# ----------------------------------------------------------------------------- rows and export

def _finite(value: float | None) -> float | None:
    """Strict JSON has no NaN or infinity: such a number becomes null."""
    return value if value is None or math.isfinite(value) else None


def aligned_rows(columns: list[SideBySideColumn]) -> list[dict]:
    """One row per step: {"step", and per method "<m>_token", "<m>_token_id", "<m>_p", "<m>_p_lm"};
    a method's fields are None on the rows after its column ended."""
    by_step = [{record.step: record for record in column.records} for column in columns]
    steps = sorted(set().union(*by_step)) if by_step else []
    rows = []
    for step in steps:
        row: dict = {"step": step}
        for column, records in zip(columns, by_step):
            record = records.get(step)
            m = column.method
            row[f"{m}_token"] = record.token if record else None
            row[f"{m}_token_id"] = record.token_id if record else None
            row[f"{m}_p"] = _finite(record.chosen_prob_final) if record else None
            row[f"{m}_p_lm"] = _finite(record.chosen_prob_lm) if record else None
        rows.append(row)
    return rows


def csv_header(columns: list[SideBySideColumn]) -> list[str]:
    return ["step"] + [f"{c.method}_{name}" for c in columns for name in ("token", "p", "p_lm")]


def to_csv(columns: list[SideBySideColumn], path: Path | str) -> Path:
    """One line per step; an ended column's cells are empty. Probabilities are written in full
    (repr), so reading them back with float() gives the records' numbers exactly."""
    header = csv_header(columns)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        for row in aligned_rows(columns):
            writer.writerow(row)
    return Path(path)


def to_json(columns: list[SideBySideColumn], prompt: str = "") -> dict:
    """{"prompt", "methods": [...], "labels": [...], "rows": aligned_rows} — json.dumps-able, strict."""
    return {"prompt": prompt, "methods": [c.method for c in columns], "labels": [c.label for c in columns],
            "rows": aligned_rows(columns)}


def format_table(columns: list[SideBySideColumn]) -> str:
    """A plain-text table: a header of method labels, then one line per step with each method's
    token (repr, so whitespace shows) and its final probability to 3 decimals."""
    rows = aligned_rows(columns)
    cells = [[str(row["step"])] + [
        "" if row[f"{c.method}_token"] is None else f"{row[f'{c.method}_token']!r} {_format_p(row[f'{c.method}_p'])}"
        for c in columns] for row in rows]
    header = ["step"] + [c.label for c in columns]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

    def line(values: list[str]) -> str:
        first = values[0].rjust(widths[0])
        return "  ".join([first] + [v.ljust(w) for v, w in zip(values[1:], widths[1:])]).rstrip()

    return "\n".join([line(header), *(line(values) for values in cells)])


def _format_p(p: float | None) -> str:
    if p is None:
        return "nan"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"  # a tiny p stays readable, not 0.000

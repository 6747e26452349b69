"""The selected kept runs' numbers: a sweep's perplexity per value, or a comparison's per method.
A sweep's references (the LM alone, and those a method's own sweep carries) are rows of their own;
a point that was timed shows its generation tokens/s beside its perplexity.

For people who would rather read than look: the same numbers as the plots, one column per run,
the best of each column in bold.
"""
from __future__ import annotations

import math

from PySide6.QtGui import QFont
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from ...core.methods import UnknownMethod, get, labels
from ...core.methods.lm_alone import LM_ALONE
from .evaluation_plots import ShownRun, method_perplexities


def _points(run: ShownRun) -> dict[str, float | None]:
    """Row label → perplexity (None: infinite)."""
    r = run.row.results
    if run.row.kind == "sweep":
        return {**{f"{p['value']:g}": p["ppl"] for p in r["results"]}, labels()[LM_ALONE]: r["ppl_lm"],
                **r.get("references", {})}
    return {labels().get(m, m): p for m, p in method_perplexities(run.row).items()}


def _notes(run: ShownRun) -> dict[str, str]:
    """Row label → what follows the perplexity: generation tokens/s where the sweep timed it; what a
    compared method measured besides perplexity (`Method.results_note`: SPALM's gate)."""
    r = run.row.results
    if run.row.kind != "sweep":
        notes = {}
        for name, values in (run.row.parameters.get("method_results") or {}).items():
            try:
                note = get(name).results_note(values)
            except (UnknownMethod, KeyError, TypeError, ValueError):  # a plug-in gone, or older numbers
                note = ""
            if note:
                notes[labels().get(name, name)] = f"  · {note}"
        return notes
    notes = {f"{p['value']:g}": f"  · {p['tokens_per_s']:,.0f} tok/s" for p in r["results"] if p.get("tokens_per_s")}
    if notes and r.get("tokens_per_s_lm"):
        notes[labels()[LM_ALONE]] = f"  · {r['tokens_per_s_lm']:,.0f} tok/s"
    return notes


class ResultsTable(QTableWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.setToolTip("Perplexity of each point of the selected runs (bold: each run's best; ∞: a target "
                        "no neighbour proposed, at λ = 1).\nSPALM: g, its gate's mean ± spread over the tokens; "
                        "r(g,u), the gate's correlation with the retrieval's usefulness u = log p_mem − log p_h\n"
                        "(negative: the gate lets the memory in where it helps)")

    def show_runs(self, runs: list[ShownRun]) -> None:
        columns = [(run.label, _points(run), run.row.results.get("ppl_lm")) for run in runs]
        notes = [_notes(run) for run in runs]
        rows = list(dict.fromkeys(label for _name, points, _lm_ppl in columns for label in points))
        self.clear()
        self.setColumnCount(len(columns))
        self.setRowCount(len(rows))
        self.setHorizontalHeaderLabels([name for name, _points, _lm_ppl in columns])
        self.setVerticalHeaderLabels(rows)
        bold = QFont(self.font())
        bold.setBold(True)
        for column, (_name, points, lm_ppl) in enumerate(columns):
            finite = [p for p in points.values() if p is not None and math.isfinite(p)]
            best = min(finite) if finite else None
            for row, label in enumerate(rows):
                ppl = points.get(label, math.nan)
                item = QTableWidgetItem(_format(ppl, lm_ppl) + notes[column].get(label, ""))
                if ppl is not None and ppl == best:
                    item.setFont(bold)
                self.setItem(row, column, item)


def _format(ppl: float | None, lm_ppl: float | None) -> str:
    if ppl is not None and math.isnan(ppl):
        return ""  # this run has no such point
    if ppl is None or math.isinf(ppl):
        return "∞"
    change = f"  ({ppl / lm_ppl - 1:+.1%})" if lm_ppl else ""
    return f"{ppl:.2f}{change}"

"""The Evaluate page's two plots: perplexity (vs the swept value, or per method) and the per-token gain.

Each draws one kept run, or two overlaid (the first in the accent colour, the second in orange),
always with the LM-alone perplexity as a dashed line for reference; a method's own sweep may carry
more references (its `references`), drawn dotted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from ...core.datastore.catalog import EvaluationRow
from ...core.evaluation.comparison import Comparison
from ...core.methods import UnknownMethod, get, labels
from ...core.methods.lm_alone import LM_ALONE
from ...core.methods.sweep_names import KeptAs, find_sweep
from .. import colours
from ..plot_style import export_png, style_plot

RUN_COLOURS = (colours.ACCENT, colours.CHOSEN)
GAIN_RANGE = 6.0  # nats either side; the rare larger gains go into the end bins


def param_label(param: str) -> str:
    """What a person reads for a swept parameter, from the sweeping method's `Sweepable`: a sweep kept
    under its bare name (kNN-LM's "lambda", the memory's "memory": `KeptAs`) as the sweep's label, the
    others ("adaptive.retrieve_fraction") as "<the method's label>: <the sweep's label>"."""
    found = find_sweep(param)
    if found is None:
        return param
    try:
        method = get(found[0])
    except UnknownMethod:  # kept by a plug-in that is not installed here
        return param
    sweepable = method.sweeps.get(found[1])
    if sweepable is None:
        return param
    return sweepable.label if isinstance(sweepable, KeptAs) else f"{method.label}: {sweepable.label}"


@dataclass
class ShownRun:
    """A kept run as the plots draw it: its catalog row and, for a comparison, its per-token details."""

    row: EvaluationRow
    comparison: Comparison | None = None
    title: str | None = None  # instead of the row's legend label (a comparison still running has no number)

    @property
    def label(self) -> str:
        return self.title or legend_label(self.row)


def run_label(row: EvaluationRow) -> str:
    when = row.created.strftime("%Y-%m-%d %H:%M")
    where = f" · {row.datastore}" if row.datastore else ""
    if row.kind == "sweep":
        return f"#{row.id} sweep {param_label(row.results['param']).split(' (')[0]}" \
               f"{where} · {when}"
    if row.kind == "compare":
        methods = ", ".join(labels().get(m, m) for m in row.results["methods"])
        return f"#{row.id} {methods}{where} · {when}"
    return f"#{row.id} eval {row.results.get('method', '')}{where} · {when}"


def legend_label(row: EvaluationRow) -> str:
    """Short enough for a legend: the run's number and, for a sweep, the settings it held fixed."""
    if row.kind != "sweep":
        return f"#{row.id}"
    r = row.results
    fixed = {"lambda": "λ", "k": "k", "temperature": "T"}
    parts = [f"{name} {r[key]:g}" for key, name in fixed.items() if key in r and key != r["param"]
             and isinstance(r[key], (int, float))]
    return f"#{row.id} · " + ", ".join(parts) if parts else f"#{row.id}"


def method_perplexities(row: EvaluationRow) -> dict[str, float | None]:
    """An evaluation's or comparison's perplexity per method, LM alone first (None: infinite); {} for a sweep."""
    r = row.results
    if row.kind == "compare":
        return {m: v["ppl"] for m, v in r["methods"].items()}
    if row.kind == "eval":
        return {LM_ALONE: r["ppl_lm"], r.get("method", LM_ALONE): r["ppl"]}
    return {}


def _finite_points(row: EvaluationRow) -> tuple[np.ndarray, np.ndarray]:
    points = [(p["value"], p["ppl"]) for p in row.results["results"]
              if p["ppl"] is not None and math.isfinite(p["ppl"])]
    if not points:
        return np.zeros(0), np.zeros(0)
    x, y = zip(*sorted(points))
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


class EvaluationPlots(QWidget):
    def __init__(self, parent=None, text_pt: int = 10):
        """`text_pt`: the size of its text (10 on screen; larger for an exported figure)."""
        super().__init__(parent)
        self.text_pt = text_pt
        self.text_font = QFont()
        self.text_font.setPointSize(text_pt)
        self.perplexity_plot = style_plot(pg.PlotWidget(), "Perplexity", left="perplexity", interactive=True)
        self.gain_plot = style_plot(pg.PlotWidget(), "Per-token gain", left="tokens",
                                    bottom="log p_method − log p_LM (nats)", interactive=True)
        for plot in (self.perplexity_plot, self.gain_plot):
            plot.setMinimumSize(240, 200)
            plot.addLegend(offset=(-10, 10), labelTextColor=colours.TEXT, labelTextSize=f"{max(9, text_pt)}pt",
                           brush=pg.mkBrush(255, 255, 255, 210))  # readable over a line that runs behind it
            for name in ("left", "bottom"):
                axis = plot.getPlotItem().getAxis(name)
                axis.enableAutoSIPrefix(False)  # λ 0 … 1 read as 0 … 1, not "0 … 1000 (x0.001)"
                if text_pt != 10:
                    axis.setTickFont(self.text_font)
                    axis.setLabel(axis.labelText, **{"font-size": f"{text_pt}pt"})
        self.perplexity_plot.setToolTip("Perplexity of each point; dashed: the LM alone on the same tokens")
        self.gain_plot.setToolTip("How many held-out tokens each method made more (right) or less (left) likely")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.perplexity_plot, 1)
        layout.addWidget(self.gain_plot, 1)
        self.runs: list[ShownRun] = []
        self.method: str | None = None

    # ---- drawing ---------------------------------------------------------------------------
    def show_runs(self, runs: list[ShownRun], method: str | None = None) -> None:
        """Draw up to two runs; `method` picks whose gains the histogram shows (default: the last one)."""
        self.runs, self.method = runs[:2], method
        self._draw_perplexity()
        self._draw_gains()

    def _draw_perplexity(self) -> None:
        plot = self.perplexity_plot
        plot.clear()
        plot.getPlotItem().legend.clear()
        item = plot.getPlotItem()
        sweeps = [r for r in self.runs if r.row.kind == "sweep"]
        plot.enableAutoRange()
        if sweeps:
            param = sweeps[0].row.results["param"]
            item.setLabel("bottom", param_label(param))
            xs = np.concatenate([_finite_points(r.row)[0] for r in sweeps])
            log_x = param == "k" and len(xs) > 0 and bool((xs > 0).all())  # k spans 1 … 1024
            item.setLogMode(x=log_x, y=False)
            item.getAxis("bottom").setTicks(None)
            plot.setTitle(f"Perplexity vs {param_label(param).split(' (')[0]}", color=colours.TEXT,
                          size=self._title_size)
            lm_lines: list[float] = []
            lowest, highest = math.inf, 0.0
            for i, run in enumerate(self.runs):
                if run.row.kind != "sweep":
                    continue
                x, y = _finite_points(run.row)
                colour = RUN_COLOURS[i]
                plot.plot(x, y, pen=pg.mkPen(colour, width=2 * self.text_pt / 10), symbol="o",
                          symbolSize=round(7 * self.text_pt / 10), symbolBrush=colour,
                          symbolPen=pg.mkPen("w"), name=run.label)
                ppl_lm = run.row.results["ppl_lm"]
                if not any(math.isclose(ppl_lm, seen, rel_tol=1e-9) for seen in lm_lines):  # same text: one line
                    self._lm_line(ppl_lm, colour, f"LM alone {ppl_lm:.2f}")
                    lm_lines.append(ppl_lm)
                for name, ppl in run.row.results.get("references", {}).items():
                    if ppl is not None and not any(math.isclose(ppl, seen, rel_tol=1e-9) for seen in lm_lines):
                        self._reference_line(ppl, colour, f"{name} {ppl:.2f}")
                        lm_lines.append(ppl)
                if len(y):
                    best = int(np.argmin(y))
                    # the best point, labelled above it (first run) or below it (second), so both read
                    marker = self._text(f"{y[best]:.2f}", color=colour, anchor=(0.5, 1.3) if i == 0 else (0.5, -0.3))
                    marker.setPos(math.log10(x[best]) if log_x else x[best], y[best])
                    plot.addItem(marker)
                    lowest, highest = min(lowest, float(y.min())), max(highest, float(y.max()))
            if lm_lines and math.isfinite(lowest):
                # λ near 1 sends perplexity far up; keep the interesting part (up to twice the LM's) in view
                top = min(highest, 2.0 * max(lm_lines))
                plot.setYRange(min(lowest, min(lm_lines)) * 0.85, max(top, max(lm_lines)) * 1.08, padding=0)
            return
        item.setLogMode(x=False, y=False)
        plot.setTitle("Perplexity per method", color=colours.TEXT, size=self._title_size)
        methods = list(dict.fromkeys(m for r in self.runs for m in method_perplexities(r.row)))
        ticks = [(i, _tick_label(m)) for i, m in enumerate(methods)]
        item.getAxis("bottom").setTicks([ticks])
        item.setLabel("bottom", "")
        width = 0.8 / max(1, len(self.runs))
        for i, run in enumerate(self.runs):
            ppl = {m: p for m, p in method_perplexities(run.row).items() if p is not None}
            x = np.array([methods.index(m) for m in ppl], dtype=float) - 0.4 + width * (i + 0.5)
            heights = np.array([ppl[m] for m in ppl], dtype=float)
            bars = pg.BarGraphItem(x=x, height=heights, width=width * 0.9, brush=RUN_COLOURS[i], pen=pg.mkPen(None))
            plot.addItem(bars)
            if len(self.runs) > 1:  # one run needs no legend
                item.legend.addItem(bars, run.label)
            for xi, h in zip(x, heights):
                label = self._text(f"{h:.2f}", color=colours.TEXT, anchor=(0.5, 1.0))
                label.setPos(xi, h)
                plot.addItem(label)
            if ppl:
                self._lm_line(ppl.get(LM_ALONE, run.row.results.get("ppl_lm", 0.0)), RUN_COLOURS[i], None)
        if methods:
            top = max((p for r in self.runs for p in method_perplexities(r.row).values() if p is not None), default=1.0)
            plot.setXRange(-0.6, len(methods) - 0.4, padding=0)
            plot.setYRange(0, top * 1.15, padding=0)

    def _draw_gains(self) -> None:
        plot = self.gain_plot
        plot.clear()
        plot.getPlotItem().legend.clear()
        with_details = [(i, r) for i, r in enumerate(self.runs) if r.comparison is not None]
        if not with_details:
            plot.setTitle("Per-token gain", color=colours.TEXT, size=self._title_size)
            text = self._text("Per-token gains come with method comparisons\n(Compare methods, or `eval --methods`)",
                               color=colours.MUTED, anchor=(0.5, 0.5))
            plot.addItem(text)
            text.setPos(0, 0)
            plot.setXRange(-1, 1)
            plot.setYRange(-1, 1)
            return
        edges = np.linspace(-GAIN_RANGE, GAIN_RANGE, 61)
        for i, run in with_details:
            method = self.gain_method(run)
            if method is None:
                continue
            gains = np.clip(run.comparison.gains(method), -GAIN_RANGE, GAIN_RANGE)
            counts, _ = np.histogram(gains[np.isfinite(gains)], bins=edges)
            colour = pg.mkColor(RUN_COLOURS[i])
            fill = pg.mkColor(RUN_COLOURS[i])
            fill.setAlpha(90)
            plot.plot(edges, counts, stepMode="center", fillLevel=0, brush=fill, pen=pg.mkPen(colour, width=1.5),
                      name=f"{labels().get(method, method)} · {run.label}")
        zero = pg.InfiniteLine(0, angle=90, pen=pg.mkPen(colours.MUTED, style=Qt.PenStyle.DashLine))
        plot.addItem(zero)
        plot.setTitle(f"Per-token gain ({run.comparison.tokens:,} tokens)", color=colours.TEXT, size=self._title_size)
        plot.enableAutoRange()

    @property
    def _title_size(self) -> str:
        return f"{self.text_pt}pt" if self.text_pt == 10 else f"{self.text_pt + 3}pt"

    def _text(self, text: str, **options) -> pg.TextItem:
        item = pg.TextItem(text, **options)
        item.setFont(self.text_font)
        return item

    def has_gains(self) -> bool:
        """Whether the gain plot shows a histogram (a comparison with a method besides the LM alone)."""
        return any(r.comparison is not None and self.gain_method(r) is not None for r in self.runs)

    def gain_method(self, run: ShownRun) -> str | None:
        methods = [m for m in run.comparison.methods if m != LM_ALONE] if run.comparison is not None else []
        if not methods:
            return None
        return self.method if self.method in methods else methods[0]

    def _lm_line(self, ppl_lm: float, colour: str, label: str | None) -> None:
        line = pg.InfiniteLine(ppl_lm, angle=0, pen=pg.mkPen(colour, width=1.2, style=Qt.PenStyle.DashLine),
                               label=label, labelOpts={"position": 0.02, "color": colour, "anchors": [(0, 1), (0, 1)]})
        line.setToolTip(f"LM alone: {ppl_lm:.3f}")
        if label is not None:
            line.label.setFont(self.text_font)
        self.perplexity_plot.addItem(line)

    def _reference_line(self, ppl: float, colour: str, label: str) -> None:
        line = pg.InfiniteLine(ppl, angle=0, pen=pg.mkPen(colour, width=1.2, style=Qt.PenStyle.DotLine),
                               label=label, labelOpts={"position": 0.3, "color": colour, "anchors": [(0, 1), (0, 1)]})
        line.setToolTip(f"{label.rsplit(' ', 1)[0]}: {ppl:.3f}")
        line.label.setFont(self.text_font)
        self.perplexity_plot.addItem(line)

    # export: `gui/widgets/evaluation_figure.py` draws the shown runs again at a figure's size


def _tick_label(method: str) -> str:
    """A method's short label (pyqtgraph drops a tick label wider than its slot), read from the
    registry now: a plug-in registered after import is there too."""
    try:
        found = get(method)
    except UnknownMethod:  # a kept run of a method no longer installed
        return method
    return found.short_label or found.label


class FitHeatmap(QWidget):
    """A fit of kNN-LM's λ and T (`core/evaluation/fit.py`): held-out perplexity over the λ × T grid,
    one cell per point (lighter is lower, on a log scale from the best to the LM alone's), the best
    pair starred and the defaults (λ 0.25, T 1) circled where the grid has them."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.plot = style_plot(pg.PlotWidget(), "Fitted λ and T", left="T", bottom="λ")
        self.plot.setMinimumSize(220, 220)
        self.plot.setMaximumHeight(300)
        # under the Evaluate page's buttons: as wide as that column is, never widening it
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.plot.setToolTip("Held-out perplexity of kNN-LM at each λ and T (one forward pass, one retrieval); "
                             "★ the fitted pair, ○ the defaults")
        self.image = pg.ImageItem()
        self.plot.addItem(self.image)
        self.colour_map = pg.colormap.get("viridis")
        self.colour_map.reverse()  # low perplexity: light
        self.image.setColorMap(self.colour_map)
        self.best_marker = pg.ScatterPlotItem(symbol="star", size=18, brush=pg.mkBrush(colours.CHOSEN),
                                              pen=pg.mkPen("w", width=1.5))
        self.default_marker = pg.ScatterPlotItem(symbol="o", size=14, brush=pg.mkBrush(None),
                                                 pen=pg.mkPen("w", width=2))
        self.plot.addItem(self.best_marker)
        self.plot.addItem(self.default_marker)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.caption)
        self.result = None  # the FitResult drawn
        self.cells = np.zeros((0, 0))  # T × λ perplexities as drawn (∞ where infinite)

    def show_fit(self, result, source: str = "") -> None:
        """Draw a `FitResult` (its grid and best pair); `source` says what was fitted on what."""
        self.result = result
        ppl = np.asarray(result.ppl, dtype=float)
        self.cells = ppl
        lam, temperature, best = result.best
        finite = ppl[np.isfinite(ppl)]
        top = min(float(finite.max()) if len(finite) else best * 2, max(result.ppl_lm, best * 1.01))
        low, high = math.log(best), math.log(max(top, best * 1.01))
        shown = np.log(np.where(np.isfinite(ppl), np.clip(ppl, best, None), top))
        self.image.setImage(shown.T, levels=(low, high))  # image[x = λ index, y = T index]
        self.image.setRect(-0.5, -0.5, len(result.lambdas), len(result.temperatures))
        row, column = result.temperatures.index(temperature), result.lambdas.index(lam)
        self.best_marker.setData([column], [row])
        base = result.baseline
        if base["lambda"] in result.lambdas and base["temperature"] in result.temperatures:
            self.default_marker.setData([result.lambdas.index(base["lambda"])],
                                        [result.temperatures.index(base["temperature"])])
        else:
            self.default_marker.setData([], [])
        item = self.plot.getPlotItem()
        crowded = len(result.lambdas) > 10  # 0.05 … 0.95: label 0.1, 0.2, …
        item.getAxis("bottom").setTicks([[(i, f"{v:g}") for i, v in enumerate(result.lambdas)
                                          if not crowded or i % 2 == 1]])
        item.getAxis("left").setTicks([[(i, f"{v:g}") for i, v in enumerate(result.temperatures)]])
        before = base.get("ppl")
        self.plot.setTitle(f"Perplexity · ★ λ {lam:g}, T {temperature:g}", color=colours.TEXT, size="9pt")
        defaults = f"; ○ defaults (λ {base['lambda']:g}, T {base['temperature']:g}) {before:.2f}" if before else ""
        self.caption.setText(f"{source + ': ' if source else ''}★ fitted {best:.2f}{defaults}; LM alone "
                             f"{result.ppl_lm:.2f} · k {result.k}, {result.distance} distances, "
                             f"{result.tokens:,} tokens")
        self.plot.setXRange(-0.5, len(result.lambdas) - 0.5, padding=0)
        self.plot.setYRange(-0.5, len(result.temperatures) - 0.5, padding=0)

    def export_png(self, path: Path) -> Path:
        return export_png(self.plot, path)

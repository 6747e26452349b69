"""The Evaluate page's plots as one PNG figure, for a paper, a slide or a colleague.

A fixed size (1600 × 900 by default) rather than the window's, text sized for it, only the plots
that have something to show (a sweep has no per-token gains: its perplexity curve gets the whole
width), and above them what each run was run with — the model, the datastore, the held-out text,
the windows and every setting (`core.evaluation.export.run_context`) — so the picture alone says
what it shows. The plots are drawn again, off screen, by an `EvaluationPlots` of their own.
"""
from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFontMetrics, QImage
from PySide6.QtWidgets import QApplication, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from ...core.atomic_file import write_atomically
from ...core.evaluation.export import run_context
from ...core.methods import labels
from .. import colours
from .evaluation_plots import RUN_COLOURS, EvaluationPlots, ShownRun

FIGURE_SIZE = (1600, 900)
TEXT_PT = 14  # the plots' text; the header's is a little smaller
_SAID_ELSEWHERE = ("run", "kind", "model", "datastore", "text", "tokens", "window", "stride", "methods")


def describe_run(run: ShownRun) -> tuple[str, str]:
    """Two lines on what `run` was run with: where (run, model, datastore, text, windows) and its settings."""
    context = run_context(run.row)
    kind = {"sweep": "sweep", "compare": "comparison", "eval": "evaluation"}.get(context["kind"], context["kind"])
    where = [f"{run.label} {kind}", f"model {context['model']}", f"datastore {context['datastore'] or 'none'}"]
    if context.get("text"):
        where.append(f"text {context['text']}")
    if context.get("tokens"):
        where.append(f"{context['tokens']:,} tokens")
    if context.get("window"):
        where.append(f"windows of {context['window']} every {context['stride']}")
    settings: dict[str, list[str]] = {}  # who → "name value", a method's settings under its label
    for key, value in context.items():
        if key in _SAID_ELSEWHERE or isinstance(value, (list, dict)) or value is None:
            continue  # lists (per-head gates) are in the CSV and JSON
        who, dot, name = key.rpartition(".")
        if name == "datastore" and value == context["datastore"]:
            continue  # said once, above
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            shown = str(value)
        else:
            shown = f"{value:g}" if isinstance(value, float) else f"{value:,}"
        settings.setdefault(labels().get(who, who) if dot else "", []).append(f"{name} {shown}")
    lines = [(f"{who}: " if who else "") + ", ".join(values) for who, values in settings.items()]
    return " · ".join(where), " · ".join(lines)


class EvaluationFigure(QWidget):
    """What the PNG shows, laid out at its size: the runs' descriptions, then the non-empty plots."""

    def __init__(self, runs: list[ShownRun], method: str | None, size: tuple[int, int] = FIGURE_SIZE):
        super().__init__()
        self.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen)
        self.setAutoFillBackground(True)
        palette = self.palette()
        palette.setColor(self.backgroundRole(), QColor("#ffffff"))
        self.setPalette(palette)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 16, 24, 16)
        layout.setSpacing(8)
        self.header = QLabel(self._header(runs))
        self.header.setTextFormat(Qt.TextFormat.RichText)
        self.header.setWordWrap(True)
        self.header.setStyleSheet(f"color: {colours.TEXT}; font-size: {TEXT_PT - 2}pt; background: transparent;")
        layout.addWidget(self.header)
        self.plots = EvaluationPlots(text_pt=TEXT_PT)
        self.plots.show_runs(runs, method)
        for plot in (self.plots.perplexity_plot, self.plots.gain_plot):
            plot.setMinimumSize(0, 0)
        self.plots.gain_plot.setVisible(self.plots.has_gains())  # a sweep has none: no empty plot
        # the header names each run in its colour: no legend over the curves' top right
        self.plots.perplexity_plot.getPlotItem().legend.setVisible(False)
        plots = QHBoxLayout()
        plots.addWidget(self.plots)
        layout.addLayout(plots, 1)
        self.resize(*size)

    @staticmethod
    def _header(runs: list[ShownRun]) -> str:
        blocks = []
        for i, run in enumerate(runs):
            where, settings = describe_run(run)
            colour = RUN_COLOURS[i] if len(runs) > 1 else colours.TEXT
            blocks.append(f"<div><b style='color:{colour}'>{html.escape(where)}</b><br>"
                          f"<span>{html.escape(settings)}</span></div>")
        return "".join(blocks)

    def _fit_bottom_axes(self) -> None:
        """Room under each plot for its tick labels (and its axis label): pyqtgraph measures ticks
        in the default size, which clips larger ones ("LM alone" lost its lower half)."""
        line = QFontMetrics(self.plots.text_font).height()
        for plot in (self.plots.perplexity_plot, self.plots.gain_plot):
            axis = plot.getPlotItem().getAxis("bottom")
            labelled = axis.label.isVisible() and bool(axis.labelText)
            axis.setHeight(line + 10 + (round(line * 1.2) if labelled else 0))

    def render_image(self) -> QImage:
        """The figure as an image of exactly its size (device pixel ratio 1, on white)."""
        self.show()
        image = QImage(self.size(), QImage.Format.Format_ARGB32)
        for _ in range(2):  # the first paint sizes the axes to their tick labels; the second shows them so
            self.layout().activate()
            QApplication.sendPostedEvents()  # the plots' own layouts and ranges settle at this size
            self.plots.show_runs(self.plots.runs, self.plots.method)  # ranges and labels for this geometry
            self._fit_bottom_axes()
            QApplication.sendPostedEvents()
            image.fill(QColor("#ffffff"))
            self.render(image)
        self.hide()
        return image


def write_figure(path: Path, runs: list[ShownRun], method: str | None, size: tuple[int, int] = FIGURE_SIZE) -> Path:
    """`runs` (one, or two overlaid) as a PNG figure at `path`, written whole or not at all."""
    figure = EvaluationFigure(runs, method, size)
    try:
        image = figure.render_image()
    finally:
        figure.deleteLater()

    def save(partial: Path) -> None:
        if not image.save(str(partial), "PNG"):
            raise OSError(f"could not write {Path(path).name} (no permission, or the disk is full)")
    return write_atomically(path, save)

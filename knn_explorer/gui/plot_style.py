"""The app's look for pyqtgraph plots, and PNG export of one plot."""
from __future__ import annotations

from pathlib import Path

import pyqtgraph as pg
from pyqtgraph.exporters import ImageExporter
from PySide6.QtGui import QColor

from ..core.atomic_file import write_atomically
from . import colours


def style_plot(plot: pg.PlotWidget, title: str | None = None, left: str | None = None, bottom: str | None = None,
               interactive: bool = False) -> pg.PlotWidget:
    """White background, quiet axes, no context menu; mouse zoom only if `interactive`."""
    plot.setBackground("w")
    plot.setMenuEnabled(False)
    plot.setMouseEnabled(x=interactive, y=interactive)
    plot.hideButtons()
    if title is not None:
        plot.setTitle(title, color=colours.TEXT, size="10pt")
    item = plot.getPlotItem()
    for name in ("left", "bottom"):
        item.getAxis(name).setPen(pg.mkPen("#adb5bd"))
        item.getAxis(name).setTextPen(pg.mkPen("#495057"))
    if left is not None:
        item.setLabel("left", left)
    if bottom is not None:
        item.setLabel("bottom", bottom)
    return plot


def export_png(plot: pg.PlotWidget, path: Path, min_width: int = 480) -> Path:
    """The plot at twice its on-screen width (at least `min_width`), on white. An OSError says why
    it could not be written (QImage.save only returns False)."""
    exporter = ImageExporter(plot.getPlotItem())
    exporter.parameters()["width"] = int(max(plot.width(), min_width) * 2)
    exporter.parameters()["background"] = QColor("#ffffff")
    image = exporter.export(toBytes=True)

    def save(partial: Path) -> None:
        if not image.save(str(partial), "PNG"):
            raise OSError(f"could not write {Path(path).name} (no permission, or the disk is full)")
    return write_atomically(path, save)

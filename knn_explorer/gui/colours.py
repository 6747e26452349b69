"""Colour maps and the few named colours the token views share.

A `ColourMap` is a list of (position, colour) stops on [0, 1]; `colour(value)` interpolates
linearly in RGB between the stops around `value` after scaling it from [vmin, vmax]. Maps are
picked for readability of dark text on light chips at the low end and light text on dark chips at
the high end; `text_colour_on` chooses the text colour for a given background.
"""
from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QPointF
from PySide6.QtGui import QColor, QLinearGradient

# Named colours (one accent family, muted greys) used by the strip and the inspector.
ACCENT = "#3b5bdb"
ACCENT_LIGHT = "#dbe4ff"
CHOSEN = "#f08c00"  # the generated token wherever it appears in a distribution
P_LM = "#8aa1c1"
P_KNN = "#20a39e"
P_KNN_LIGHT = "#c3ebe9"
P_FINAL = "#4c6ef5"
LAMBDA = "#7048e8"
GAIN = "#e8590c"
TEXT = "#212529"
MUTED = "#868e96"
GRID = "#e9ecef"
MISSING = "#dee2e6"  # a chip whose quantity is not defined (e.g. no retrieval at that step)


@dataclass(frozen=True)
class ColourMap:
    name: str
    stops: tuple[tuple[float, str], ...]
    vmin: float = 0.0
    vmax: float = 1.0

    def _fraction(self, value: float) -> float:
        span = self.vmax - self.vmin
        t = (value - self.vmin) / span if span else 0.0
        return min(1.0, max(0.0, t))

    def colour(self, value: float | None) -> QColor:
        """The colour of `value` (clipped to [vmin, vmax]); MISSING for None or NaN."""
        if value is None or value != value:
            return QColor(MISSING)
        t = self._fraction(value)
        stops = self.stops
        for (p0, c0), (p1, c1) in zip(stops, stops[1:]):
            if t <= p1:
                a, b = QColor(c0), QColor(c1)
                u = 0.0 if p1 == p0 else (t - p0) / (p1 - p0)
                return QColor(round(a.red() + (b.red() - a.red()) * u),  # 8-bit: what is stored is what is painted
                              round(a.green() + (b.green() - a.green()) * u),
                              round(a.blue() + (b.blue() - a.blue()) * u))
        return QColor(stops[-1][1])

    def gradient(self, start: QPointF, end: QPointF) -> QLinearGradient:
        g = QLinearGradient(start, end)
        for p, c in self.stops:
            g.setColorAt(p, QColor(c))
        return g


def text_colour_on(background: QColor) -> QColor:
    """Near-black or white, whichever reads better on `background` (relative luminance)."""
    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * lin(background.redF()) + 0.7152 * lin(background.greenF()) + 0.0722 * lin(background.blueF())
    return QColor(TEXT) if lum > 0.23 else QColor("#ffffff")


# Sequential, light -> dark: λ in purples, p_final in teal-greens.
LAMBDA_MAP = ColourMap("lambda", ((0.0, "#f3f0ff"), (0.5, "#b197fc"), (1.0, "#5f3dc4")))
PROB_MAP = ColourMap("p_final", ((0.0, "#f1f8f6"), (0.5, "#63c7a9"), (1.0, "#087f5b")))
# Diverging around 0 (red: retrieval lowered the chosen token's probability; blue: raised it).
GAIN_LIMIT = 3.0  # nats
GAIN_MAP = ColourMap("gain", ((0.0, "#c92a2a"), (0.25, "#ff8787"), (0.5, "#f8f9fa"), (0.75, "#74c0fc"),
                              (1.0, "#1864ab")), -GAIN_LIMIT, GAIN_LIMIT)

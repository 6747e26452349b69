"""Draw the application icon: resources/icons/knn-explorer.svg and PNGs at 16 … 512 px.

    .venv/bin/python packaging/make_icon.py [--out resources/icons]

The picture is the idea of the app: a query (amber) among the datastore's keys (faint dots), its
k nearest neighbours (green) joined to it, inside the search radius (dashed). The SVG is written
here by hand, so the icon is reviewable text; the PNGs are rendered from it with Qt's SVG renderer.
At 16–48 px a simpler drawing (no faint keys, no radius, thicker strokes) stays legible.
tests/test_packaging.py checks that the committed SVG is what this script writes.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "knn-explorer"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
SMALL = 48  # at and below this size the simple drawing is rendered

QUERY = (236, 282)
NEIGHBOURS = ((146, 178), (346, 206), (318, 384))
KEYS = ((104, 300), (128, 402), (196, 112), (276, 138), (400, 116), (420, 300), (398, 404), (216, 420),
        (96, 214), (250, 356), (178, 250), (432, 210))


def svg(detailed: bool = True) -> str:
    """The icon as SVG text (512 × 512 view box)."""
    qx, qy = QUERY
    line_width, neighbour_r, query_r = (14, 24, 36) if detailed else (26, 42, 60)
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512" viewBox="0 0 512 512">',
        '  <title>kNN Explorer</title>',
        '  <defs>',
        '    <linearGradient id="bg" x1="0" y1="0" x2="1" y2="1">',
        '      <stop offset="0" stop-color="#2b4a86"/>',
        '      <stop offset="1" stop-color="#101d3a"/>',
        '    </linearGradient>',
        '  </defs>',
        '  <rect x="24" y="24" width="464" height="464" rx="104" fill="url(#bg)"/>',
    ]
    if detailed:
        parts.append(f'  <circle cx="{qx}" cy="{qy}" r="150" fill="#ffffff" fill-opacity="0.06" stroke="#ffffff" '
                     'stroke-opacity="0.55" stroke-width="8" stroke-dasharray="26 18"/>')
        parts += [f'  <circle cx="{x}" cy="{y}" r="11" fill="#8ea6d6" fill-opacity="0.75"/>' for x, y in KEYS]
    parts += [f'  <line x1="{qx}" y1="{qy}" x2="{x}" y2="{y}" stroke="#3ddc97" stroke-width="{line_width}" '
              'stroke-linecap="round"/>' for x, y in NEIGHBOURS]
    parts += [f'  <circle cx="{x}" cy="{y}" r="{neighbour_r}" fill="#3ddc97" stroke="#0c2a1f" stroke-width="6"/>'
              for x, y in NEIGHBOURS]
    parts.append(f'  <circle cx="{qx}" cy="{qy}" r="{query_r}" fill="#ffb020" stroke="#ffffff" stroke-width="10"/>')
    parts.append('</svg>')
    return "\n".join(parts) + "\n"


def render_png(svg_text: str, size: int, path: Path) -> None:
    from PySide6.QtCore import QByteArray, Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(QByteArray(svg_text.encode("utf-8")))
    if not renderer.isValid():
        raise SystemExit("the icon's SVG does not parse")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    if not image.save(str(path), "PNG"):
        raise SystemExit(f"could not write {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "resources" / "icons")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    args.out.mkdir(parents=True, exist_ok=True)
    scalable = args.out / f"{NAME}.svg"
    scalable.write_text(svg(), encoding="utf-8")
    print(f"wrote {scalable}")
    for size in SIZES:
        path = args.out / f"{NAME}-{size}.png"
        render_png(svg(detailed=size > SMALL), size, path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

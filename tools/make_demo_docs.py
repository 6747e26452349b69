"""Write the demo document folder from the Flask documentation (BSD-3-Clause).

    python tools/make_demo_docs.py

Flask's docs are English prose about one web framework: a domain the demo model (trained on the
Python standard library docs) has not seen, with recurring names (`app.route`, `url_for`,
`render_template`) that retrieval can supply. Every 5th file (sorted by path) goes to
resources/demo/heldout/ for evaluation; the rest to resources/demo/docs/.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from debian_text import rst_sources, unpack_debian_package

SOURCE_PACKAGE = "python-flask-doc"
HELD_OUT_EVERY = 5
DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"


def main() -> None:
    root = unpack_debian_package(SOURCE_PACKAGE)
    sources = rst_sources(root)
    for folder in ("docs", "heldout"):
        shutil.rmtree(DEMO / folder, ignore_errors=True)
    for i, source in enumerate(sources):
        relative = Path(*source.parts[source.parts.index("_sources") + 1 :]).with_suffix("")  # x.rst.txt -> x.rst
        target = DEMO / ("heldout" if i % HELD_OUT_EVERY == 0 else "docs") / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    licence = next(root.rglob("copyright"))
    shutil.copyfile(licence, DEMO / "FLASK-DOCS-LICENSE.txt")
    print(f"{len(sources)} files from {SOURCE_PACKAGE} -> {DEMO / 'docs'} and {DEMO / 'heldout'}")


if __name__ == "__main__":
    main()

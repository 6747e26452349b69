"""A small folder of real documents for build tests (written into tmp folders by the tests)."""
from __future__ import annotations

from pathlib import Path

PARAGRAPHS = {
    "routing.md": "Flask routes map URLs to view functions. The route decorator binds a URL rule to a view. "
                  "A view returns a response, a string or a template rendered with render_template.\n" * 6,
    "notes/datastore.txt": "A datastore maps each context to the token that followed it. The quick brown fox "
                           "jumps over the lazy dog. Retrieval helps when the test text resembles the stored text.\n" * 8,
    "notes/deep/fox.rst": "The lazy dog sleeps while the quick brown fox jumps. Retrieval finds the fox.\n" * 10,
}


def write_corpus(folder: Path) -> Path:
    for name, text in PARAGRAPHS.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder

"""The minimal main window lists what the catalog holds (real widgets, offscreen)."""
from corpus import write_corpus
from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.builder import BuildParameters
from knn_explorer.core.datastore.library import build_datastore
from knn_explorer.core.models import load_model
from knn_explorer.gui.main_window import MainWindow


def test_main_window_shows_the_catalog_and_the_loaded_model(qtbot, tmp_path, tiny_gpt2_dir):
    docs = write_corpus(tmp_path / "docs")
    (docs / "empty.txt").write_text("")
    catalog = Catalog()
    build_datastore(catalog, "notes", load_model(str(tiny_gpt2_dir), device="cpu"), [docs],
                    BuildParameters(context_length=32, stride=16))
    window = MainWindow(catalog, model_spec=str(tiny_gpt2_dir), build_demo=False)
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: window.model is not None, timeout=30_000)
    assert "feed-forward" in window.model_label.text()
    assert window.catalog_view.names() == ["notes"]
    item = window.catalog_view.item("notes")
    reasons = [item.child(i).toolTip(0) + " " + " ".join(item.child(i).text(c) for c in range(item.columnCount()))
               for i in range(item.childCount())]
    assert any("empty file" in r for r in reasons)
    window.show()
    assert not window.grab().isNull()


def test_a_model_that_fails_to_load_is_reported_in_the_window(qtbot, tmp_path):
    window = MainWindow(Catalog(), model_spec=str(tmp_path / "missing-model"), build_demo=False)
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: "not loaded" in window.model_label.text(), timeout=30_000)
    assert "no such model folder" in window.statusBar().currentMessage()


def test_qt_calls_do_not_leak_references_to_none(qtbot):
    """PySide6 6.12.0 on Python 3.11 dropped a reference to None on every void call, which kills a
    long-running app ("none_dealloc"); pyproject pins below it. This guards the pin."""
    import sys

    from PySide6.QtWidgets import QLabel

    label = QLabel()
    qtbot.addWidget(label)
    before = sys.getrefcount(None)
    for _ in range(5000):
        label.setText("x")
    assert abs(sys.getrefcount(None) - before) < 100

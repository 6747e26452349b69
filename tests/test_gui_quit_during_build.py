"""Quitting the app during a build interrupts it (the folder is kept and resumed next time); it
does not cancel it. A demo build interrupted that way is resumed at the next launch."""
import pytest
from corpus import write_corpus

from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.library import build_datastore
from knn_explorer.core.models import load_model
from knn_explorer.gui.build_tracker import BuildTracker
from knn_explorer.gui.main_window import DEMO_DATASTORE, MainWindow


@pytest.fixture(scope="module")
def model(tiny_gpt2_dir):
    return load_model(str(tiny_gpt2_dir), device="cpu")


def interrupted_build(qtbot, catalog, model, docs, name):
    tracker = BuildTracker(catalog, model, name, [docs])
    with qtbot.waitSignal(tracker.done, timeout=120_000):
        tracker.start()
        tracker.stop(keep=True)  # the app quits as soon as the build has started
    tracker.wait()
    return tracker


def test_a_build_stopped_because_the_app_quits_is_kept_and_resumes(qtbot, tmp_path, model):
    catalog = Catalog()
    docs = write_corpus(tmp_path / "docs")
    tracker = interrupted_build(qtbot, catalog, model, docs, "notes")
    assert tracker.state == "failed" and "resumes" in tracker.error
    assert [b.status for b in catalog.builds("notes")] == ["interrupted"]
    (unfinished,) = catalog.unfinished_builds("notes")
    report = build_datastore(catalog, "notes", model, [docs])  # the next build of the name resumes it
    assert str(report.folder) == unfinished.folder and catalog.datastore("notes") is not None
    assert catalog.unfinished_builds("notes") == []


def test_an_interrupted_demo_build_is_resumed_at_the_next_launch_and_a_removed_demo_is_not_rebuilt(
        qtbot, tmp_path, model):
    catalog = Catalog()
    interrupted_build(qtbot, catalog, model, write_corpus(tmp_path / "docs"), DEMO_DATASTORE)
    window = MainWindow(catalog, model_spec="demo", build_demo=False)
    qtbot.addWidget(window)
    assert window._first_launch()  # its demo build was interrupted: resume it

    catalog.abandon_builds(DEMO_DATASTORE)  # the user removed it: it stays removed
    assert not window._first_launch()

"""Unfinished builds in the Library (running here, running in another process, interrupted), Resume,
the table at a narrow panel width, and what Generate says while the datastore it needs is being built.

Real tiny model, real builds, a real build lock held by another process; offscreen Qt."""
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QTreeWidget

from corpus import write_corpus
from knn_explorer.core.datastore.builder import BuildParameters
from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.library import build_datastore, resume_problem, unfinished_build
from knn_explorer.core.models import load_model
from knn_explorer.gui import build_tracker
from knn_explorer.gui.build_tracker import BuildTracker, running_builds, waiting_for_build
from knn_explorer.gui.dialogs.build import BuildDialog
from knn_explorer.gui.pages.library import (COLUMNS, ENTRIES, INTERRUPTED, MODEL, NAME, POLL_MS, STATUS,
                                            CatalogView, fit_widths)

PARAMS = BuildParameters(context_length=32, stride=16, batch_size=2)
BUILD_TIMEOUT = 120_000


class Crash(Exception):
    """Stands for the app being killed mid-encoding: the folder and its keys so far stay."""


@pytest.fixture(scope="module")
def model(tiny_gpt2_dir):
    return load_model(str(tiny_gpt2_dir), device="cpu")


@pytest.fixture
def docs(tmp_path):
    return write_corpus(tmp_path / "docs")


def interrupt(catalog, name, model, docs, at=0.4):
    """A build of `name` that stopped while encoding, with `at` of its keys recorded as done."""
    def crash(progress):
        if progress.phase == "encoding":
            raise Crash("killed")

    with pytest.raises(Crash):
        build_datastore(catalog, name, model, [docs], PARAMS, on_progress=crash)
    folder = Path(catalog.unfinished_builds(name)[0].folder)
    entries = json.loads((folder / "manifest.json").read_text())["entries"]
    (folder / "progress.json").write_text(json.dumps({"windows": 0, "entries": int(entries * at)}))
    return folder


@pytest.fixture
def lock_held_elsewhere(data_home):
    """Hold a datastore name's build lock in another process, as a CLI build does."""
    holders = []

    def hold(name: str) -> subprocess.Popen:
        code = ("import sys, time\nfrom knn_explorer.core.datastore.build_lock import datastore_lock\n"
                f"with datastore_lock({name!r}, 'build'):\n    print('held', flush=True)\n    time.sleep(120)\n")
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        holders.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield hold
    for process in holders:
        process.kill()
        process.wait()


@pytest.fixture
def held_build(monkeypatch):
    """BuildTrackers whose build pauses at its first encoding report until `release` is set: a build
    that is really running (lock held, catalog row written, progress reported) for as long as a test needs."""
    release, encoding = threading.Event(), threading.Event()
    real = build_tracker.build_datastore

    def paused(catalog, name, model, sources, params, on_progress=None, should_stop=None):
        def report(progress):
            on_progress(progress)
            if progress.phase == "encoding" and not release.is_set():
                encoding.set()
                release.wait(60)

        return real(catalog, name, model, sources, params, on_progress=report, should_stop=should_stop)

    monkeypatch.setattr(build_tracker, "build_datastore", paused)
    yield release, encoding
    release.set()
    for tracker in list(running_builds().values()):
        tracker.wait(BUILD_TIMEOUT)


def view_of(qtbot, catalog, model=None, width=900) -> CatalogView:
    view = CatalogView(catalog)
    qtbot.addWidget(view)
    view.setMinimumWidth(200)  # as the main window's dock does: the panel may be narrower than the toolbar wants
    view.resize(width, 420)
    view.show()
    if model is not None:
        with qtbot.waitSignal(view.compatibility_checked, timeout=30_000):
            view.set_model(model)
    return view


def _double_click(qtbot, tree: QTreeWidget, item) -> None:
    where = tree.visualItemRect(item).center()
    qtbot.mouseClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=where)
    qtbot.mouseDClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=where)


# ---- what an unfinished build is ---------------------------------------------------------------------
def test_unfinished_build_records_how_far_it_got_and_what_resuming_needs(model, docs, other_tiny_gpt2_dir):
    catalog = Catalog()
    folder = interrupt(catalog, "notes", model, docs, at=0.4)
    build = unfinished_build(catalog, "notes")
    assert build.folder == folder and build.state == "encoding" and build.fraction == pytest.approx(0.4, abs=0.01)
    assert build.describe_progress() == "encoding 40%"
    assert build.source_paths() == [docs.resolve()] and build.parameters == PARAMS
    assert build.error == "killed"
    assert resume_problem(build, model) is None
    assert "load that model" in resume_problem(build, load_model(str(other_tiny_gpt2_dir), device="cpu"))
    assert "no model is loaded" in resume_problem(build, None)
    assert unfinished_build(catalog, "nothing") is None


# ---- running, elsewhere, interrupted ------------------------------------------------------------------
def test_a_build_running_in_this_app_is_listed_as_building_never_interrupted(qtbot, model, docs, held_build):
    release, encoding = held_build
    catalog = Catalog()
    view = view_of(qtbot, catalog, model)
    tracker = BuildTracker(catalog, model, "notes", [docs], PARAMS)
    view.watch_build(tracker)
    tracker.start()
    assert encoding.wait(60)
    qtbot.waitUntil(lambda: view.item("notes") is not None and "encoding" in view.item("notes").text(STATUS),
                    timeout=10_000)
    item = view.item("notes")
    assert view.build_state("notes") == "building"
    assert item.text(STATUS).startswith("building — encoding ")
    assert "1 building" in view.summary.text() and "interrupted" not in view.summary.text()
    assert "still being built" in view.unusable_reason("notes")
    view.select("notes")
    assert view.use_button.isVisible() and not view.use_button.isEnabled()
    assert not view.resume_button.isVisible() and not view.remove_button.isEnabled()
    view.refresh()  # a refresh (the catalog's row says "running") does not turn it into an interrupted build
    assert view.build_state("notes") == "building" and "interrupted" not in view.summary.text()

    release.set()
    with qtbot.waitSignal(tracker.done, timeout=BUILD_TIMEOUT):
        pass
    qtbot.waitUntil(lambda: view.names() == ["notes"], timeout=5000)
    assert view.build_state("notes") is None and "building" not in view.summary.text()


def test_a_build_locked_by_another_process_is_building_until_its_holder_dies(qtbot, model, docs,
                                                                            lock_held_elsewhere):
    catalog = Catalog()
    interrupt(catalog, "cli", model, docs, at=0.7)
    holder = lock_held_elsewhere("cli")
    view = view_of(qtbot, catalog, model)
    item = view.item("cli")
    assert view.build_state("cli") == "elsewhere"
    assert item.text(STATUS) == "building — encoding 70%"
    assert f"process {holder.pid}" in item.toolTip(STATUS)
    assert "1 building" in view.summary.text() and "interrupted" not in view.summary.text()
    view.select("cli")
    assert not view.resume_button.isVisible() and not view.remove_button.isEnabled()

    holder.kill()
    holder.wait()
    # Nothing tells the app that another process died: the view looks again on its own.
    qtbot.waitUntil(lambda: view.build_state("cli") == INTERRUPTED, timeout=POLL_MS * 3)
    assert view.item("cli").text(STATUS) == f"{INTERRUPTED} — encoding 70%"
    assert "1 interrupted build" in view.summary.text() and "building" not in view.summary.text()


# ---- resume -------------------------------------------------------------------------------------------
def test_an_interrupted_build_offers_resume_and_resuming_completes_it(qtbot, model, docs):
    catalog = Catalog()
    folder = interrupt(catalog, "notes", model, docs, at=0.4)
    view = view_of(qtbot, catalog, model)
    item = view.item("notes")
    assert view.build_state("notes") == INTERRUPTED and item.text(STATUS) == f"{INTERRUPTED} — encoding 40%"
    assert "1 interrupted build" in view.summary.text()
    assert "Resume" in item.toolTip(NAME)

    view.select("notes")
    assert view.resume_button.isVisible() and view.resume_button.isEnabled() and not view.use_button.isVisible()
    menu = {action.text(): action for action in view.context_menu().actions()}
    assert menu["Resume"].isEnabled() and "Build with these settings…" in menu

    # "Build…" with it selected: the dialog is filled in, and Start would resume it.
    dialog = BuildDialog(catalog, model)
    qtbot.addWidget(dialog)
    view.prepare_build_dialog(dialog)
    assert dialog.name_edit.text() == "notes" and dialog.source_paths() == [str(docs.resolve())]
    assert (dialog.context_spin.value(), dialog.stride_spin.value()) == (32, 16)
    assert dialog.parameters() == PARAMS
    assert dialog.name_hint.text().startswith("Start resumes the interrupted build of “notes”")
    assert dialog.start_problem() is None

    # Double-click resumes it right here; the row follows its progress; it ends as a datastore.
    with qtbot.waitSignal(view.build_started, timeout=5000) as started:
        _double_click(qtbot, view.tree, view.item("notes"))
    tracker = started.args[0]
    assert tracker.sources == [str(docs.resolve())] and tracker.params == PARAMS
    assert view.build_state("notes") == "building"
    with qtbot.waitSignal(tracker.finished, timeout=BUILD_TIMEOUT) as finished:
        pass
    assert finished.args[0].resumed_from == "encoding" and finished.args[0].folder == folder
    qtbot.waitUntil(lambda: view.names() == ["notes"], timeout=5000)
    assert catalog.datastore("notes") is not None and not catalog.unfinished_builds("notes")
    assert "complete" in view.message.text()


def test_resume_is_refused_with_the_reason_when_another_model_is_loaded(qtbot, model, docs, other_tiny_gpt2_dir):
    catalog = Catalog()
    interrupt(catalog, "notes", model, docs)
    view = view_of(qtbot, catalog, load_model(str(other_tiny_gpt2_dir), device="cpu"))
    view.select("notes")
    assert view.resume_button.isVisible() and not view.resume_button.isEnabled()
    assert "load that model" in view.resume_button.toolTip()
    with qtbot.assertNotEmitted(view.build_started):
        assert view.resume("notes") is None
    assert "Cannot resume 'notes'" in view.message.text() and not running_builds()


# ---- the table's width -----------------------------------------------------------------------------------
def _fits(view: CatalogView) -> bool:
    head = view.tree.header()
    shown = [c for c in range(len(COLUMNS)) if not view.tree.isColumnHidden(c)]
    return (sum(head.sectionSize(c) for c in shown) <= view.tree.viewport().width()
            and not view.tree.horizontalScrollBar().isVisible())


def test_the_table_fits_a_narrow_panel_with_every_column_and_a_readable_status(qtbot, model, docs, tmp_path):
    catalog = Catalog()
    build_datastore(catalog, "a-datastore-with-a-rather-long-name", model, [docs], PARAMS)
    interrupt(catalog, "notes", model, docs, at=0.4)
    view = view_of(qtbot, catalog, model, width=440)
    qtbot.wait(50)
    assert _fits(view)
    assert not any(view.tree.isColumnHidden(c) for c in range(len(COLUMNS))), "every column at a laptop's panel"
    metrics = view.tree.fontMetrics()
    for name in ("a-datastore-with-a-rather-long-name", "notes"):
        status = view.item(name).text(STATUS).split(" — ")[0]  # "ready", "interrupted"
        assert metrics.horizontalAdvance(status) < view.tree.columnWidth(STATUS)
    entries = view.item("a-datastore-with-a-rather-long-name").text(ENTRIES)
    assert metrics.horizontalAdvance(entries) < view.tree.columnWidth(ENTRIES), "numbers are never cut"
    long_name = view.item("a-datastore-with-a-rather-long-name")
    assert "a-datastore-with-a-rather-long-name" in long_name.toolTip(NAME), "an elided name is whole in its tooltip"
    view.grab().save(str(tmp_path / "library-440.png"))

    # Narrower than every column can take: the least useful go (their values are in the name's
    # tooltip), never a horizontal scrollbar.
    view.resize(250, 420)
    qtbot.wait(50)
    assert _fits(view)
    assert view.tree.isColumnHidden(MODEL)
    assert not any(view.tree.isColumnHidden(c) for c in (NAME, ENTRIES, STATUS))
    assert "tiny" in long_name.toolTip(NAME) or Path(model.name).name in long_name.toolTip(NAME)

    # Wider again: every column comes back, and the status takes what is spare.
    view.resize(900, 420)
    qtbot.wait(50)
    assert _fits(view) and not any(view.tree.isColumnHidden(c) for c in range(len(COLUMNS)))
    head = view.tree.header()
    assert sum(head.sectionSize(c) for c in range(len(COLUMNS))) == view.tree.viewport().width()


def test_fit_widths_gives_way_in_order_and_never_overflows():
    want = {c: 100 for c in range(len(COLUMNS))}
    floor = {c: 40 for c in range(len(COLUMNS))}
    roomy = fit_widths(want, floor, 900)
    assert sum(roomy.values()) == 900 and roomy[STATUS] == 300
    tight = fit_widths(want, floor, 600)  # 100 short: the model, index and time columns give it
    assert sum(tight.values()) == 600 and tight[NAME] == tight[STATUS] == tight[ENTRIES] == 100
    assert tight[MODEL] < 100
    tiny = fit_widths(want, floor, 200)  # below every floor: all scale alike, still no overflow
    assert sum(tiny.values()) <= 200 and all(w > 0 for w in tiny.values())


# ---- what Generate says while the datastore is being built ---------------------------------------------
def test_methods_that_need_a_datastore_say_the_build_in_progress(qtbot, model, docs, held_build):
    from knn_explorer.core.methods import get, names
    from knn_explorer.gui.main_window import MainWindow

    release, encoding = held_build
    assert waiting_for_build("kNN-LM") is None
    window = MainWindow(Catalog(), model_spec="demo", build_demo=False)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.model is not None, timeout=60_000)
    tracker = BuildTracker(window.catalog, window.model, "demo-docs", [docs], PARAMS)
    window._track_build(tracker)
    tracker.start()
    assert encoding.wait(60)
    qtbot.waitUntil(lambda: tracker.last_progress is not None and tracker.last_progress.phase == "encoding",
                    timeout=10_000)

    needing = [name for name in names() if get(name).needs_datastore]
    assert len(needing) >= 2  # kNN-LM, SPALM, adaptive retrieval, …: whatever the registry declares
    for name in needing:
        window.last_error = None
        window.controls.method.setCurrentIndex(window.controls.method.findData(name))
        window.controls.generate.click()
        label = get(name).label
        assert window.last_error.startswith(f"{label} needs a datastore: 'demo-docs' is being built (encoding ")
        assert window.last_error.endswith(f"%); {label} can run when it finishes"), window.last_error
        assert "build one" not in window.last_error and window.generation_job is None
    with pytest.raises(ValueError, match=r"need a datastore: 'demo-docs' is being built \(encoding \d+%\)"):
        window._side_by_side_generators(needing[:2], "The quick", 2, None)
    assert window.catalog_view.build_state("demo-docs") == "building"

    release.set()
    with qtbot.waitSignal(tracker.done, timeout=BUILD_TIMEOUT):
        pass
    window.last_error = None
    window.datastore_name = None
    window.controls.method.setCurrentIndex(window.controls.method.findData(needing[0]))
    window.controls.generate.click()
    assert "being built" not in window.last_error and "double-click one in the library" in window.last_error
    window.close()

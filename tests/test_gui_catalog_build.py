"""The build dialog and the catalog view, driven like a user would (real widgets, real tiny model, real files)."""
import os
import warnings
from pathlib import Path

import pytest
import shiboken6
import torch
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTreeWidget,
    QWidget,
)

from corpus import write_corpus
from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.builder import BuildParameters
from knn_explorer.core.home import datastores_dir
from knn_explorer.core.datastore.library import build_datastore
from knn_explorer.core.models import load_model
from knn_explorer.gui.dialogs.build import BAR_MAX, CANCELLED_TEXT, BuildDialog
from knn_explorer.gui.build_tracker import BuildTracker, running_builds
from knn_explorer.gui.pages.library import INTERRUPTED, MUTED, STATUS, CatalogView

BUILD_TIMEOUT = 120_000
PARAMS = BuildParameters(context_length=32, stride=16)


@pytest.fixture(scope="module")
def model(tiny_gpt2_dir):
    return load_model(str(tiny_gpt2_dir), device="cpu")


@pytest.fixture
def docs(tmp_path):
    folder = write_corpus(tmp_path / "docs")
    (folder / "empty.txt").write_text("")
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02garbage\x00" * 50)
    return folder


def _dialog(qtbot, catalog, model, parent=None) -> BuildDialog:
    dialog = BuildDialog(catalog, model, parent)
    if parent is None:
        qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def _configure(qtbot, dialog, docs, name):
    dialog.add_sources([docs])
    dialog.name_edit.clear()
    qtbot.keyClicks(dialog.name_edit, name)
    dialog.context_spin.setValue(32)
    dialog.stride_spin.setValue(16)


def _untooltipped(widget: QWidget) -> list[str]:
    kinds = (QPushButton, QComboBox, QSpinBox, QLineEdit, QListWidget, QTableWidget, QProgressBar, QTreeWidget)
    missing = []
    for child in widget.findChildren(QWidget):
        if not isinstance(child, kinds) or isinstance(child.parent(), (QAbstractSpinBox, QComboBox)):
            continue  # a spin box's own line edit is part of the spin box
        if not child.toolTip():
            missing.append(f"{type(child).__name__} {child.text() if hasattr(child, 'text') else ''}")
    return missing


def _drag_and_drop(target: QWidget, mime: QMimeData) -> bool:
    """Drag `mime` over an item view and drop it, as a file manager would; True if the drop was accepted."""
    viewport = target.viewport()
    where = QPointF(viewport.rect().center())
    args = (Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    with warnings.catch_warnings():  # PySide6 flags the QPoint constructors, the only ones Qt 6 has
        warnings.simplefilter("ignore", DeprecationWarning)
        enter = QDragEnterEvent(where.toPoint(), *args)
        move = QDragMoveEvent(where.toPoint(), *args)
    QApplication.sendEvent(viewport, enter)
    if not enter.isAccepted():
        return False
    QApplication.sendEvent(viewport, move)
    drop = QDropEvent(where, *args)
    QApplication.sendEvent(viewport, drop)
    return drop.isAccepted()


# ---- the build dialog ---------------------------------------------------------------------------
def test_dialog_builds_a_folder_showing_progress_and_skipped_files(qtbot, model, docs):
    catalog = Catalog()
    dialog = _dialog(qtbot, catalog, model)
    assert not dialog.start_button.isEnabled()
    assert "Add at least one file or folder" in dialog.start_button.toolTip()
    _configure(qtbot, dialog, docs, "notes")
    assert dialog.start_button.isEnabled(), dialog.start_button.toolTip()
    assert dialog.parameters() == BuildParameters(context_length=32, stride=16, index="auto", device="cpu")

    seen = []  # what the dialog showed at each progress report
    dialog.build_started.connect(lambda tracker: tracker.progress.connect(
        lambda p: seen.append((p.phase, dialog.phase_label.text(), dialog.count_label.text(),
                               dialog.rate_label.text(), dialog.eta_label.text(), dialog.progress_bar.value()))))
    qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    tracker = dialog.tracker
    assert isinstance(tracker, BuildTracker) and tracker.is_running()
    assert "notes" in running_builds()
    assert not dialog.start_button.isVisible() and dialog.cancel_button.text() == "Cancel build"
    with qtbot.waitSignal(tracker.finished, timeout=BUILD_TIMEOUT) as finished:
        pass
    report = finished.args[0]

    phases = [phase for phase, *_ in seen]
    assert {"reading", "encoding", "indexing"} <= set(phases)
    assert phases.index("reading") < phases.index("encoding") < phases.index("indexing")
    encoding = [s for s in seen if s[0] == "encoding"]
    assert all(label == "Encoding contexts with the model" for _, label, *_ in encoding)
    assert all(" / " in count and count.endswith("tokens") for _, _, count, *_ in encoding)
    assert all(rate.endswith("tokens/s") for _, _, _, rate, *_ in encoding)
    bar_values = [value for *_, value in seen]
    assert bar_values == sorted(bar_values), "the overall bar never goes backwards"
    assert dialog.progress_bar.value() == dialog.progress_bar.maximum() == BAR_MAX

    row = catalog.datastore("notes")
    assert row is not None and row.entries == report.manifest["entries"]
    summary = dialog.summary_label.text()
    assert f"{row.entries:,} entries" in summary and "3 documents indexed" in summary
    table = dialog.skipped_table
    skipped = {table.item(r, 0).text(): table.item(r, 1).text() for r in range(table.rowCount())}
    assert set(skipped) == {"empty.txt", "binary.txt"}
    assert "empty" in skipped["empty.txt"] and "binary" in skipped["binary.txt"]
    assert table.item(0, 0).toolTip().startswith(str(docs))
    assert dialog.message.text() == "Build complete" and dialog.cancel_button.text() == "Close"
    assert "notes" not in running_builds()
    assert _untooltipped(dialog) == []


def test_dialog_builds_with_pca_and_pruning_and_shows_the_compressing_step(qtbot, model, docs):
    catalog = Catalog()
    dialog = _dialog(qtbot, catalog, model)
    _configure(qtbot, dialog, docs, "compact")
    dim = model.key_site.dim
    assert dialog.pca_spin.text() == "off" and dialog.prune_spin.text() == "off"  # off unless asked
    assert dialog.pca_spin.maximum() == dim - 1
    dialog.pca_spin.setValue(dim // 2)
    dialog.prune_spin.setValue(4)
    assert dialog.parameters().compression.pca_dim == dim // 2 and dialog.parameters().prune_k == 4
    steps = []
    dialog.build_started.connect(lambda tracker: tracker.progress.connect(
        lambda p: steps.append((p.phase, dialog.phase_label.text(), dialog.step_label.text()))))
    qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(dialog.tracker.finished, timeout=BUILD_TIMEOUT):
        pass
    assert any(label.startswith("Compressing") for _, label, _ in steps)
    assert all("Compressing" in chain for *_, chain in steps)  # the chain names the extra step
    assert [p for p, *_ in steps].index("pruning") < [p for p, *_ in steps].index("indexing")
    row = catalog.datastore("compact")
    assert row.dim == dim // 2 and row.compression["prune_k"] == 4 and row.entries < row.compression["entries_before"]
    view = CatalogView(catalog)
    qtbot.addWidget(view)
    item = next(view.tree.topLevelItem(i) for i in range(view.tree.topLevelItemCount())
                if view.tree.topLevelItem(i).text(0) == "compact")
    index_column = [view.tree.headerItem().text(c) for c in range(view.tree.columnCount())].index("Index")
    assert item.text(index_column).endswith("PCA+pruned")
    assert f"PCA {dim}→{dim // 2}" in item.toolTip(index_column)


def test_name_is_validated_inline_and_start_needs_a_model(qtbot, model, docs, monkeypatch):
    catalog = Catalog()
    build_datastore(catalog, "taken", model, [docs], PARAMS)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dialog = _dialog(qtbot, catalog, model)
    dialog.add_sources([docs])
    assert dialog.name_edit.text() == "docs", "the folder's name is suggested"
    dialog.name_edit.clear()
    qtbot.keyClicks(dialog.name_edit, "taken")
    assert "already exists" in dialog.name_hint.text() and dialog.name_hint.isVisible()
    assert not dialog.start_button.isEnabled() and "already exists" in dialog.start_button.toolTip()
    assert dialog.start_build() is None and dialog.tracker is None
    dialog.name_edit.clear()
    qtbot.keyClicks(dialog.name_edit, "  ")
    assert "Enter a name" in dialog.name_hint.text() and not dialog.start_button.isEnabled()
    dialog.name_edit.clear()
    qtbot.keyClicks(dialog.name_edit, "fresh")
    assert dialog.name_hint.text() == "" and dialog.start_button.isEnabled()

    assert [dialog.index_combo.itemData(i) for i in range(dialog.index_combo.count())] == \
        ["auto", "flat", "ivfpq", "hnsw"]
    gpu = dialog.device_combo.model().item(1)
    assert gpu.text() == "GPU" and not gpu.isEnabled()
    assert "no CUDA device" in dialog.device_combo.itemData(1, Qt.ItemDataRole.ToolTipRole)
    assert "no CUDA device" in dialog.device_combo.toolTip()
    assert dialog.context_spin.maximum() == model.max_positions  # 64 for the tiny model
    dialog.context_spin.setValue(20)
    assert dialog.stride_spin.maximum() == 19

    no_model = _dialog(qtbot, catalog, None)
    no_model.add_sources([docs])
    no_model.name_edit.setText("anything")
    assert not no_model.start_button.isEnabled()
    assert "No model loaded" in no_model.message.text() and "No model loaded" in no_model.start_button.toolTip()


def test_sources_can_be_dropped_added_and_removed(qtbot, model, docs, tmp_path):
    dialog = _dialog(qtbot, Catalog(), model)
    extra = tmp_path / "extra.md"
    extra.write_text("# Extra\nSome words.\n")
    web = QMimeData()
    web.setUrls([QUrl("https://example.com/x.txt")])
    assert not _drag_and_drop(dialog.sources, web), "only local files and folders can be dropped"
    assert dialog.source_paths() == []
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(docs)), QUrl.fromLocalFile(str(extra)), QUrl("https://example.com/x.txt")])
    assert _drag_and_drop(dialog.sources, mime)
    assert dialog.source_paths() == [str(docs), str(extra)]
    assert dialog.add_sources([docs]) == 0, "duplicates are ignored"
    assert not dialog.remove_source_button.isEnabled()
    dialog.sources.item(1).setSelected(True)
    qtbot.mouseClick(dialog.remove_source_button, Qt.MouseButton.LeftButton)
    assert dialog.source_paths() == [str(docs)]
    assert dialog.sources.item(0).toolTip().startswith(str(docs))


def test_cancel_during_the_build_keeps_nothing(qtbot, model, docs):
    catalog = Catalog()
    dialog = _dialog(qtbot, catalog, model)
    _configure(qtbot, dialog, docs, "doomed")
    asked = []
    dialog.confirm_cancel = lambda: asked.append(True) or True
    # Press "Cancel build" as soon as the first progress report shows up.
    dialog.build_started.connect(lambda tracker: tracker.progress.connect(
        lambda _p: dialog.cancel_button.click() if dialog.cancel_button.isEnabled() else None))
    qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(dialog.tracker.cancelled, timeout=BUILD_TIMEOUT):
        pass
    dialog.tracker.wait()
    assert asked == [True], "cancelling a running build asks first"
    assert dialog.message.text() == CANCELLED_TEXT == "Cancelled — nothing was kept"
    assert dialog.phase_label.text() == "Cancelled"
    assert catalog.datastore("doomed") is None
    assert [b.status for b in catalog.builds("doomed")] == ["cancelled"]
    assert os.listdir(datastores_dir()) == []
    assert dialog.back_button.isVisible() and dialog.cancel_button.text() == "Close"
    qtbot.mouseClick(dialog.back_button, Qt.MouseButton.LeftButton)
    assert dialog.pages.currentIndex() == 0 and dialog.start_button.isEnabled(), "the same build can be retried"


def test_declining_the_cancel_confirmation_lets_the_build_finish(qtbot, model, docs):
    catalog = Catalog()
    dialog = _dialog(qtbot, catalog, model)
    _configure(qtbot, dialog, docs, "kept")
    asked = []
    dialog.confirm_cancel = lambda: asked.append(True) and False
    dialog.start_build()
    assert not dialog.cancel_build()
    with qtbot.waitSignal(dialog.tracker.finished, timeout=BUILD_TIMEOUT):
        pass
    assert asked == [True] and catalog.datastore("kept") is not None


def test_closing_the_dialog_mid_build_lets_the_build_finish(qtbot, model, docs):
    catalog = Catalog()
    window = QWidget()  # stands in for the main window
    qtbot.addWidget(window)
    view = CatalogView(catalog, window)
    dialog = _dialog(qtbot, catalog, model, parent=window)
    _configure(qtbot, dialog, docs, "background")
    tracker = dialog.start_build()
    assert tracker is not None and tracker.parent() is window, "the build is not owned by the dialog"
    ended = []
    tracker.done.connect(lambda: ended.append(tracker.state))
    view.watch_build(tracker)
    with qtbot.waitSignal(tracker.progress, timeout=BUILD_TIMEOUT):
        pass
    dialog.close()
    assert not dialog.isVisible() and tracker.is_running(), "closing the dialog does not stop the build"
    dialog.deleteLater()
    qtbot.waitUntil(lambda: not shiboken6.isValid(dialog), timeout=5000)
    qtbot.waitUntil(lambda: bool(ended), timeout=BUILD_TIMEOUT)
    assert ended == ["finished"]
    assert tracker.state == "finished" and tracker.report is not None
    assert catalog.datastore("background") is not None
    assert "background" in view.names(), "the view refreshed when the build ended"


def test_a_failing_build_is_a_one_line_message_not_a_crash(qtbot, model, docs, tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    dialog = _dialog(qtbot, Catalog(), model)
    _configure(qtbot, dialog, gone, "broken")
    gone.rmdir()
    dialog.start_build()
    with qtbot.waitSignal(dialog.tracker.failed, timeout=BUILD_TIMEOUT):
        pass
    assert dialog.message.text().startswith("Build failed: no such file or folder")
    assert "\n" not in dialog.message.text()
    assert dialog.phase_label.text() == "Failed" and dialog.back_button.isVisible()


def _double_click(qtbot, tree: QTreeWidget, item) -> None:
    """Press, release, then double-click, as the platform delivers a real double-click."""
    where = tree.visualItemRect(item).center()
    qtbot.mouseClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=where)
    qtbot.mouseDClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=where)


# ---- the catalog view ----------------------------------------------------------------------------
def test_catalog_view_lists_datastores_documents_and_interrupted_builds(qtbot, model, docs, other_tiny_gpt2_dir):
    catalog = Catalog()
    build_datastore(catalog, "mine", model, [docs], PARAMS)
    other = load_model(str(other_tiny_gpt2_dir), device="cpu")
    build_datastore(catalog, "theirs", other, [docs], PARAMS)
    half = datastores_dir() / "half-000000"
    half.mkdir()
    catalog.start_build("half", half, model.name, PARAMS.to_json())  # as if the app died mid-build

    view = CatalogView(catalog)
    qtbot.addWidget(view)
    view.resize(1200, 500)
    view.show()
    assert [view.tree.headerItem().text(c) for c in range(view.tree.columnCount())] == \
        ["Name", "Model", "Entries", "Size", "Index", "Built", "Status"]
    assert view.names() == ["mine", "theirs"]
    mine = view.item("mine")
    row = catalog.datastore("mine")
    assert mine.text(2) == f"{row.entries:,}" and mine.text(1) == Path(model.name).name
    assert model.name in mine.toolTip(1), "a model given as a folder is shown by name, its path in the tooltip"
    children = {mine.child(i).text(0): mine.child(i) for i in range(mine.childCount())}
    assert set(children) == {"routing.md", "datastore.txt", "fox.rst", "empty.txt", "binary.txt"}
    assert children["routing.md"].text(STATUS) == "indexed"
    assert children["empty.txt"].text(STATUS).startswith("skipped — ") and "empty" in children["empty.txt"].text(STATUS)
    assert "binary" in children["binary.txt"].text(STATUS)
    assert children["fox.rst"].toolTip(0) == str(docs / "notes" / "deep" / "fox.rst")
    half_item = view.item("half")
    assert half_item.text(STATUS) == INTERRUPTED
    assert half_item.foreground(0).color() == MUTED

    with qtbot.waitSignal(view.compatibility_checked, timeout=30_000):
        view.set_model(model)
    assert view.is_usable("mine") and not view.is_usable("theirs") and not view.is_usable("half")
    theirs = view.item("theirs")
    assert "built by" in theirs.text(STATUS) and "built by" in theirs.toolTip(0)
    assert theirs.foreground(0).color() == MUTED and view.item("mine").foreground(0).color() != MUTED
    assert view.item("mine").text(STATUS) == "ready"
    assert _untooltipped(view) == []


def test_catalog_view_chooses_only_usable_datastores(qtbot, model, docs, other_tiny_gpt2_dir):
    catalog = Catalog()
    build_datastore(catalog, "mine", model, [docs], PARAMS)
    build_datastore(catalog, "theirs", load_model(str(other_tiny_gpt2_dir), device="cpu"), [docs], PARAMS)
    view = CatalogView(catalog)
    qtbot.addWidget(view)
    view.show()
    with qtbot.waitSignal(view.compatibility_checked, timeout=30_000):
        view.set_model(model)

    assert view.select("theirs") and view.selected_name() == "theirs"
    assert not view.use_button.isEnabled() and "built by" in view.use_button.toolTip()
    activated = []
    view.tree.itemActivated.connect(lambda item, _column: activated.append(item.text(0)))
    with qtbot.assertNotEmitted(view.datastore_chosen):
        _double_click(qtbot, view.tree, view.item("theirs"))
        qtbot.keyClick(view.tree, Qt.Key.Key_Return)
    assert activated == ["theirs", "theirs"], "the tree did see the double-click and Enter"

    view.select("mine")
    assert view.use_button.isEnabled()
    with qtbot.waitSignal(view.datastore_chosen, timeout=1000) as chosen:
        qtbot.keyClick(view.tree, Qt.Key.Key_Return)
    assert chosen.args == ["mine"]
    with qtbot.waitSignal(view.datastore_chosen, timeout=1000) as chosen:
        _double_click(qtbot, view.tree, view.item("mine"))
    assert chosen.args == ["mine"]
    with qtbot.waitSignal(view.datastore_chosen, timeout=1000) as chosen:
        qtbot.mouseClick(view.use_button, Qt.MouseButton.LeftButton)
    assert chosen.args == ["mine"]
    with qtbot.waitSignal(view.build_requested, timeout=1000):
        qtbot.mouseClick(view.build_button, Qt.MouseButton.LeftButton)


def test_remove_asks_then_deletes_from_catalog_disk_and_view(qtbot, model, docs):
    catalog = Catalog()
    build_datastore(catalog, "keep", model, [docs], PARAMS)
    build_datastore(catalog, "drop", model, [docs], PARAMS)
    folder = Path(catalog.datastore("drop").folder)
    view = CatalogView(catalog)
    qtbot.addWidget(view)
    asked = []
    view.confirm = lambda name: asked.append(name) and False
    view.select("drop")
    with qtbot.assertNotEmitted(view.removed):
        qtbot.mouseClick(view.remove_button, Qt.MouseButton.LeftButton)
        qtbot.wait(100)
    assert asked == ["drop"] and catalog.datastore("drop") is not None

    view.confirm = lambda name: asked.append(name) or True
    view.select("drop")
    with qtbot.waitSignal(view.removed, timeout=30_000) as removed:
        qtbot.mouseClick(view.remove_button, Qt.MouseButton.LeftButton)
    assert removed.args == ["drop"] and asked == ["drop", "drop"]
    assert catalog.datastore("drop") is None and not folder.exists()
    assert view.item("drop") is None and view.names() == ["keep"]
    assert "Removed 'drop'" in view.message.text()

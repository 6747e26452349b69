"""The real flow in the real main window (offscreen): load a model, build a datastore through the
build dialog, generate with kNN-LM, inspect a token, branch, compare, export and read back."""
import csv
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer

from corpus import write_corpus
from knn_explorer.core.generation import run_export
from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.home import DEMO_DOCS_DIR
from knn_explorer.gui.main_window import MainWindow
from window_helpers import loaded_window


@pytest.fixture
def window(qtbot):
    window = loaded_window(qtbot)
    return window


def build_through_dialog(qtbot, window, docs, name="notes"):
    window.open_build_dialog()
    dialog = window.build_dialog
    dialog.add_sources([docs])
    dialog.name_edit.setText(name)
    dialog.context_spin.setValue(32)
    dialog.stride_spin.setValue(16)
    with qtbot.waitSignal(dialog.build_started, timeout=5000):
        dialog.start_button.click()
    with qtbot.waitSignal(dialog.tracker.finished, timeout=120_000):
        pass
    dialog.close()


def generate(qtbot, window, tokens, **values):
    window.controls.max_tokens.setValue(tokens)
    window.controls.knnlm.k.setValue(values.get("k", 8))
    window.controls.compare.setChecked(values.get("compare", False))
    window.controls.generate.click()
    qtbot.waitUntil(lambda: window.generation_job is not None and not window.generation_job.is_running(),
                    timeout=120_000)
    qtbot.wait(50)  # let the last queued records arrive


def test_build_generate_inspect_branch_export(qtbot, window, tmp_path):
    docs = write_corpus(tmp_path / "docs")
    build_through_dialog(qtbot, window, docs)
    assert window.catalog.datastore("notes") is not None
    window.use_datastore("notes")
    assert window.datastore_name == "notes"

    window.controls.prompt.setPlainText("The quick brown")
    generate(qtbot, window, 20)
    run = window.current_run
    assert len(run.records) == 20 and all(r.method == "knnlm" for r in run.records)
    assert window.strip.records() == run.records

    window.strip.select(5)
    qtbot.waitUntil(lambda: window.inspector.record is not None and window.inspector.record.step == 5, timeout=5000)
    table = window.inspector.neighbour_table.model()
    assert table.rowCount() == len(run.records[5].neighbours) > 0
    assert window.inspector.neighbour_table.isColumnHidden(table.KNN_WEIGHT)  # only SPALM compares with kNN-LM
    for neighbour in run.records[5].neighbours:
        assert docs in Path(neighbour.document).parents

    alternative = run.records[5].p_final[1].token_id
    window.branch(5, alternative)
    qtbot.waitUntil(lambda: not window.generation_job.is_running(), timeout=120_000)
    qtbot.wait(50)
    branch = window.current_run
    assert branch is not run and len(window.runs) == 2
    assert [r.token_id for r in branch.records[:5]] == [r.token_id for r in run.records[:5]]
    assert branch.records[5].token_id == alternative and branch.records[5].step == 5
    assert len(branch.records) == 5 + 20
    assert window.strip.branch_point() == 5  # the hand-chosen token is marked in the strip
    window.branch_choice.setCurrentIndex(0)
    assert window.current_run is run and window.strip.records() == run.records  # earlier run still reachable
    assert window.strip.branch_point() is None

    path = window.export_json(tmp_path / "run.json")
    prompt, _settings, records = run_export.read_json(path)
    assert prompt == "The quick brown" and records == run.records
    with open(window.export_csv(tmp_path / "run.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))  # tokens may be newlines: read it as CSV, not as lines
    assert [int(r["token_id"]) for r in rows] == [r.token_id for r in run.records]
    pngs = window.export_plots(tmp_path / "plots")
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_compare_runs_lm_alone_beside_knnlm(qtbot, window, tmp_path):
    build_through_dialog(qtbot, window, write_corpus(tmp_path / "docs"))
    window.use_datastore("notes")
    generate(qtbot, window, 6, compare=True)
    run = window.current_run
    assert len(run.compare) == 6 and all(r.method == "none" and r.neighbours == [] for r in run.compare)
    assert window.compare_strip.isVisible() and window.compare_strip.records() == run.compare


def test_knnlm_without_datastore_is_a_message_not_a_crash(qtbot, window):
    window.controls.generate.click()
    assert "needs a datastore" in window.last_error
    assert window.generation_job is None


def test_step_generates_exactly_one_token_at_a_time(qtbot, window):
    window.controls.method.setCurrentIndex(window.controls.method.findData("none"))
    window.controls.step.click()
    qtbot.waitUntil(lambda: window.current_run is not None and len(window.current_run.records) == 1, timeout=30_000)
    qtbot.wait(300)
    assert len(window.current_run.records) == 1
    window.controls.step.click()
    qtbot.waitUntil(lambda: len(window.current_run.records) == 2, timeout=30_000)
    window.controls.stop.click()
    qtbot.waitUntil(lambda: not window.generation_job.is_running(), timeout=30_000)


def largest_gap_ms(qtbot, until, timeout_s):
    """Largest interval between ticks of a 5 ms QTimer on the UI thread while `until()` is false."""
    ticks = []
    timer = QTimer(interval=5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    qtbot.waitUntil(until, timeout=timeout_s * 1000)
    timer.stop()
    return max(b - a for a, b in zip(ticks, ticks[1:])) * 1000, len(ticks)


# What the issue asks. Measured here (2 cores, offscreen) after the fixes in docs/ARCHITECTURE.md
# ("Keeping the UI thread free"): 12–40 ms during a model load, a build and a generation.
MAX_UI_GAP_MS = 50


def ui_gaps(qtbot, tmp_path, attempt: int) -> dict[str, tuple[float, int]]:
    """Largest UI gap and tick count during a model load, a real build and a real generation."""
    window = MainWindow(Catalog(), model_spec="demo", build_demo=False)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.model is not None, timeout=60_000)
    qtbot.wait(200)  # the window's first paint (fonts, styles, layout) is startup, not a load
    gaps = {}

    first = window.model
    window.load_model("demo")
    gaps["a model load"] = largest_gap_ms(qtbot, lambda: window.model is not first, 120)

    docs = tmp_path / f"docs-{attempt}"
    docs.mkdir()
    for source in sorted(DEMO_DOCS_DIR.glob("*.rst"))[:8]:
        (docs / source.name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    window.open_build_dialog()
    dialog = window.build_dialog
    dialog.add_sources([docs])
    name = f"ui-check-{attempt}"
    dialog.name_edit.setText(name)
    dialog.start_button.click()
    gaps["the build"] = largest_gap_ms(qtbot, lambda: dialog.tracker is not None and not dialog.tracker.is_running(),
                                       300)
    assert window.catalog.datastore(name) is not None

    window.use_datastore(name)
    window.controls.max_tokens.setValue(40)
    window.controls.generate.click()
    # Until the run has ended and the inspector has drawn its last token: that refresh is the heaviest.
    gaps["generation"] = largest_gap_ms(qtbot, lambda: not window.generation_job.is_running()
                                        and window.inspector.is_settled() and window.inspector.record is not None, 300)
    assert len(window.current_run.records) == 40
    window.close()
    return gaps


def test_ui_thread_never_blocks_during_a_model_load_a_real_build_and_generation(qtbot, tmp_path):
    min_ticks = {"a model load": 5, "the build": 50, "generation": 20}
    gaps = ui_gaps(qtbot, tmp_path, 1)
    if any(gap >= MAX_UI_GAP_MS for gap, _ in gaps.values()):
        # One retry: a machine-wide hiccup (another process, the OS) can stall any thread once; a
        # real block in the app (a slow paint, work on the UI thread) happens again every time.
        gaps = ui_gaps(qtbot, tmp_path, 2)
    for phase, (gap, ticks) in gaps.items():
        assert ticks > min_ticks[phase], f"the clock barely ticked during {phase}"
        assert gap < MAX_UI_GAP_MS, f"UI blocked for {gap:.0f} ms during {phase}"


@pytest.mark.slow  # builds the demo datastore (>50k entries) through the app
def test_first_launch_builds_and_catalogues_the_demo_datastore(qtbot, data_home):
    window = MainWindow(Catalog(), model_spec="demo")  # empty data home: a first launch
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.model is not None, timeout=60_000)
    qtbot.waitUntil(lambda: bool(window.build_trackers), timeout=10_000)
    assert window.build_progress.isVisible()
    qtbot.waitUntil(lambda: window.catalog.datastore("demo-docs") is not None, timeout=600_000)
    qtbot.waitUntil(lambda: window.datastore_name == "demo-docs", timeout=10_000)
    assert not window.build_trackers and window.last_error is None
    assert window.catalog.datastore("demo-docs").entries > 50_000
    fitted = window.catalog.fitted("demo-docs")  # it comes with the λ and T measured on it, applied
    panel = window.controls.knnlm
    assert fitted.origin == "shipped" and fitted.temperature > 1
    assert (panel.lambda_slider.value() / 100, panel.temperature.value()) == (fitted.lambda_, fitted.temperature)
    window.close()
    again = MainWindow(Catalog(), model_spec="demo")  # a later launch builds nothing and remembers
    qtbot.addWidget(again)
    qtbot.waitUntil(lambda: again.model is not None, timeout=60_000)
    assert again.datastore_name == "demo-docs" and not again.build_trackers


def test_spalm_generates_with_its_gate_on_the_chips_and_neighbours_in_the_inspector(qtbot, window, tmp_path):
    docs = write_corpus(tmp_path / "docs")
    build_through_dialog(qtbot, window, docs)
    window.use_datastore("notes")
    window.controls.method.setCurrentIndex(window.controls.method.findData("spalm"))
    assert window.controls.method_panels.currentWidget() is window.controls.spalm
    window.controls.spalm.k.setValue(8)
    window.controls.spalm.short_term.setValue(16)  # a short-term memory of 16 tokens
    window.controls.prompt.setPlainText("The quick brown fox jumps over the lazy dog. " * 3)
    window.strip.set_colour_by("lambda")
    generate(qtbot, window, 6)
    assert window.current_run.settings["spalm_short_term"] == 16
    assert window.last_error is None  # a prompt longer than the short-term memory runs on its recent half
    run = window.current_run
    assert len(run.records) == 6 and all(r.method == "spalm" and 0 < r.gate < 1 for r in run.records)
    qtbot.waitUntil(lambda: window.inspector.record is not None and window.inspector.is_settled(), timeout=5000)
    record = window.inspector.record
    assert "gate</b> " in window.inspector.settings_label.text()
    assert window.inspector.lower_tabs.currentIndex() == 0  # the neighbours, weighted by attention in m_t
    table = window.inspector.neighbour_table.model()
    assert table.rowCount() == len(record.neighbours) == 8
    assert all(docs in Path(n.document).parents for n in record.neighbours)
    # SPALM's attention weights beside kNN-LM's distance weights for the same neighbours.
    view = window.inspector.neighbour_table
    assert not view.isColumnHidden(table.KNN_WEIGHT)
    for row, n in enumerate(record.neighbours):
        assert table.data(table.index(row, table.WEIGHT)) == f"{n.weight * 100:.1f}%"
        assert table.data(table.index(row, table.KNN_WEIGHT)) == f"{n.knn_weight * 100:.1f}%"
    assert sum(n.knn_weight for n in record.neighbours) == pytest.approx(1.0, abs=1e-6)
    xs, ys = window.inspector.history_plot.weight_curve.getData()
    assert list(ys) == pytest.approx([r.gate for r in run.records])  # the gate over the steps


def test_the_load_model_dialog_opens_on_the_model_in_use(qtbot, tiny_gpt2_dir):
    window = MainWindow(Catalog(), model_spec=str(tiny_gpt2_dir), build_demo=False)
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: window.model is not None, timeout=30_000)
    dialog = window.model_dialog()
    qtbot.addWidget(dialog)
    assert dialog.folder.isChecked() and not dialog.demo.isChecked()
    assert dialog.choice().spec == window.model.spec == str(tiny_gpt2_dir)

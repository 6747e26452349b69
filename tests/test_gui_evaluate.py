"""The Evaluate page in the real main window (offscreen, the demo model, a real datastore): compare the
four methods, sweep, overlay two kept runs, open a held-out token in the inspector, export, cancel."""
import csv
import json
import math

import pytest
from PySide6.QtGui import QImage

from corpus import write_corpus
from knn_explorer.core.datastore.builder import BuildParameters
from knn_explorer.core.datastore.library import build_datastore
from window_helpers import loaded_window


@pytest.fixture
def window(qtbot, tmp_path):
    window = loaded_window(qtbot)
    docs = write_corpus(tmp_path / "docs")
    build_datastore(window.catalog, "notes", window.model, [docs], BuildParameters(context_length=32, stride=16))
    window.use_datastore("notes")
    heldout = tmp_path / "heldout.md"
    heldout.write_text(next(docs.rglob("*.md")).read_text(encoding="utf-8")[:1200]
                       + "\nZebras quietly juggle purple marmalade beneath seventeen arches.\n", encoding="utf-8")
    page = window.evaluate_page
    window.show_page(page)
    page.text_field.setText(str(heldout))
    page.context_spin.setValue(32)
    page.stride_spin.setValue(16)
    window.controls.knnlm.k.setValue(8)
    return window


def run_and_wait(qtbot, page):
    job = page.run()
    assert job is not None, page.status.text()
    qtbot.waitUntil(lambda: not job.is_running() and page.run_button.isEnabled(), timeout=120_000)
    qtbot.wait(20)
    return job


def test_compare_four_methods_then_inspect_a_helped_token_and_export(qtbot, window, tmp_path):
    page = window.evaluate_page
    page.compare_mode.setChecked(True)
    for method, box in page.method_boxes.items():  # the four of the title; plug-ins are ticked by default too
        box.setChecked(method in ("none", "knnlm", "spalm", "memtrf"))
    run_and_wait(qtbot, page)
    kept = window.catalog.evaluations("compare")
    assert len(kept) == 1 and list(kept[0].results["methods"]) == ["none", "knnlm", "spalm", "memtrf"]
    assert [r.id for r in page.selected_rows()] == [kept[0].id] and "Kept as run" in page.status.text()

    table = page.results_table  # the numbers, one row per method
    assert [table.verticalHeaderItem(r).text() for r in range(table.rowCount())] == \
           ["LM alone", "kNN-LM", "SPALM", "Memorizing Transformer"]
    assert table.item(1, 0).text().startswith(f"{kept[0].results['methods']['knnlm']['ppl']:.2f}")
    bars = [i for i in page.plots.perplexity_plot.getPlotItem().items if type(i).__name__ == "BarGraphItem"]
    assert len(bars) == 1 and len(bars[0].opts["height"]) == 4
    assert bars[0].opts["height"][1] == pytest.approx(kept[0].results["methods"]["knnlm"]["ppl"])
    histogram = page.plots.gain_plot.getPlotItem().listDataItems()
    tokens = kept[0].results["tokens"]
    assert len(histogram) == 1 and histogram[0].getData()[1].sum() == tokens  # every token in some bin

    page.gain_method.setCurrentIndex(page.gain_method.findData("knnlm"))
    assert page.token_lists.isVisible() and page.helped.rowCount() > 0
    change = page.helped.changes[0]
    with qtbot.waitSignal(page.inspect_requested, timeout=60_000):
        page.helped.cellClicked.emit(0, 0)
    qtbot.waitUntil(lambda: window.pages.currentIndex() == 0, timeout=5000)
    record = window.current_run.records[0]
    assert record.token_id == change.token_id and record.method == "knnlm"
    assert record.chosen_prob_final == pytest.approx(change.p, rel=1e-4)  # the same window, the same number
    assert record.chosen_prob_lm == pytest.approx(change.p_lm, rel=1e-4) and record.neighbours

    window.show_page(page)
    rows = list(csv.DictReader(open(page.export_csv(tmp_path / "run.csv"), encoding="utf-8")))
    assert len(rows) == tokens and set(rows[0]) >= {"token", "log_p_none", "log_p_knnlm", "log_p_memtrf"}
    gains = [float(r["log_p_knnlm"]) - float(r["log_p_none"]) for r in rows]
    assert max(gains) == pytest.approx(change.gain, rel=1e-6)
    exported = json.loads((page.export_json(tmp_path / "run.json")).read_text(encoding="utf-8"))
    assert exported["kind"] == "compare" and exported["results"]["tokens"] == tokens
    png = page.export_png(tmp_path / "plots.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and QImage(str(png)).size().toTuple() == (1600, 900)


def test_a_comparison_fills_the_results_table_method_by_method(qtbot, window, monkeypatch):
    """Issue 13 item 7: Compare showed nothing until every method was done. Each method's row (and
    bar) appears as the job's item signal brings it, before the next method's pass starts."""
    page = window.evaluate_page
    page.compare_mode.setChecked(True)
    for method, box in page.method_boxes.items():
        box.setChecked(method in ("none", "knnlm", "spalm"))
    seen, phases = [], []
    show, progressed = page._method_done, page._progressed

    def shown(item):  # the page's slot, then what the table holds at that moment
        show(item)
        table = page.results_table
        seen.append((item[0], table.horizontalHeaderItem(0).text(),
                     [table.verticalHeaderItem(r).text() for r in range(table.rowCount())]))

    monkeypatch.setattr(page, "_method_done", shown)
    monkeypatch.setattr(page, "_progressed", lambda p: (progressed(p), phases.append(p.phase)))
    run_and_wait(qtbot, page)
    assert seen == [("none", "running", ["LM alone"]), ("knnlm", "running", ["LM alone", "kNN-LM"]),
                    ("spalm", "running", ["LM alone", "kNN-LM", "SPALM"])]
    assert [p for p in dict.fromkeys(phases)] == ["scoring kNN-LM (1/2)", "scoring SPALM (2/2)"]
    kept = window.catalog.evaluations("compare")[0]
    table = page.results_table  # then the kept run, under its number
    assert table.horizontalHeaderItem(0).text() == f"#{kept.id}" and table.rowCount() == 3
    assert table.item(1, 0).text().startswith(f"{kept.results['methods']['knnlm']['ppl']:.2f}")


def test_two_lambda_sweeps_overlay_with_the_lm_line_and_are_kept(qtbot, window, tmp_path):
    page = window.evaluate_page
    page.sweep_mode.setChecked(True)
    page.param_combo.setCurrentIndex(page.param_combo.findData("lambda"))
    page.values_edit.setText("0, 0.25, 0.5, 1")
    run_and_wait(qtbot, page)
    window.controls.knnlm.k.setValue(2)
    run_and_wait(qtbot, page)
    sweeps = window.catalog.evaluations("sweep")
    assert len(sweeps) == 2 and {s.results["k"] for s in sweeps} == {8, 2}
    for i in range(page.runs_list.count()):
        page.runs_list.item(i).setSelected(True)
    assert len(page.selected_rows()) == 2 and not page.token_lists.isVisible()  # sweeps keep no per-token gains
    item = page.plots.perplexity_plot.getPlotItem()
    curves = item.listDataItems()
    assert len(curves) == 2
    lm_lines = [i for i in item.items if type(i).__name__ == "InfiniteLine"]
    assert lm_lines and lm_lines[0].value() == pytest.approx(sweeps[0].results["ppl_lm"])
    x, y = curves[0].getData()
    assert list(x) == [0.0, 0.25, 0.5] or list(x) == [0.0, 0.25, 0.5, 1.0]  # λ = 1 is ∞ when a target is unseen
    assert y[0] == pytest.approx(sweeps[0].results["ppl_lm"]) and all(math.isfinite(v) for v in y)

    table = page.results_table  # both runs' points side by side, λ = 1 infinite where a target is unseen
    assert table.columnCount() == 2 and table.rowCount() == 5
    assert table.verticalHeaderItem(4).text() == "LM alone" and table.item(0, 0).text().startswith(f"{y[0]:.2f}")

    # issue 13 item 12: both selected runs are exported, each row with the model, datastore and settings
    rows = list(csv.DictReader(open(page.export_csv(tmp_path / "two.csv"), encoding="utf-8")))
    assert {(r["run"], r["k"], r["model"], r["datastore"], r["window"], r["stride"]) for r in rows} == {
        (str(s.id), str(s.results["k"]), "demo", "notes", "32", "16") for s in sweeps}
    assert len(rows) == 8 and {r["temperature"] for r in rows} == {"1.0"} and "text" in rows[0]
    assert "runs #" in page.status.text() and " and #" in page.status.text()
    exported = json.loads(page.export_json(tmp_path / "two.json").read_text(encoding="utf-8"))
    assert sorted(r["id"] for r in exported["runs"]) == sorted(s.id for s in sweeps)
    assert all(r["model"] == "demo" and r["datastore"] == "notes" for r in exported["runs"])
    from knn_explorer.gui.widgets.evaluation_figure import EvaluationFigure
    figure = EvaluationFigure(page.shown_runs(), None)
    image = figure.render_image()
    assert image.size().toTuple() == (1600, 900)
    assert figure.plots.gain_plot.isHidden()  # a sweep has no per-token gains: no empty plot
    assert figure.plots.perplexity_plot.width() > 1400 and figure.plots.perplexity_plot.height() > 600
    header = figure.header.text()
    assert all(words in header for words in ("model demo", "datastore notes", "k 8", "k 2", "windows of 32 every 16"))
    figure.deleteLater()
    page.runs_list.setCurrentRow(0)
    page.forget_button.click()
    assert len(window.catalog.evaluations("sweep")) == 1 and page.runs_list.count() == 1


def test_mistakes_are_one_line_messages_and_cancel_keeps_nothing(qtbot, window):
    page = window.evaluate_page
    page.sweep_mode.setChecked(True)
    page.values_edit.setText("0.1, x")
    assert page.run() is None and "numbers" in page.status.text()
    page.values_edit.setText("0.1, 0.5")
    page.text_field.setText(str(page.text_field.text()) + ".missing")
    run_and_wait(qtbot, page)
    assert "no readable text" in page.status.text() and not window.catalog.evaluations()

    page.compare_mode.setChecked(True)
    page.text_field.setText(str(page.text_field.text()).removesuffix(".missing"))
    page.context_spin.setValue(8)
    page.stride_spin.setValue(1)  # many windows: time to cancel
    job = page.run()
    page.cancel()
    qtbot.waitUntil(lambda: not job.is_running() and page.run_button.isEnabled(), timeout=120_000)
    qtbot.wait(20)
    assert "Cancelled" in page.status.text() and not window.catalog.evaluations()


def test_ctrl_return_runs_the_visible_page_only(qtbot, window):
    from PySide6.QtCore import Qt

    page = window.evaluate_page
    window.activateWindow()
    page.compare_mode.setChecked(True)
    for box in ("knnlm", "spalm", "memtrf"):
        page.method_boxes[box].setChecked(False)  # the LM alone: quick
    qtbot.keyClick(page.runs_list, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: page.job is not None, timeout=5000)
    assert window.generation_job is None  # the Explore page's Ctrl+Return did not fire
    qtbot.waitUntil(lambda: not page.job.is_running() and page.run_button.isEnabled(), timeout=60_000)
    assert len(window.catalog.evaluations("compare")) == 1

    qtbot.keyClick(page.runs_list, Qt.Key.Key_3, Qt.KeyboardModifier.ControlModifier)
    assert window.current_page() is window.side_by_side_page


def test_the_page_remembers_its_fields(qtbot, window):
    from knn_explorer.gui.pages.evaluate import EvaluatePage

    page = window.evaluate_page
    page.method_boxes["spalm"].setChecked(False)
    page.context_spin.setValue(48)
    page._remember()
    again = EvaluatePage(window.catalog)
    qtbot.addWidget(again)
    assert again.text_field.text() == page.text_field.text() and again.context_spin.value() == 48
    assert not again.method_boxes["spalm"].isChecked() and again.method_boxes["memtrf"].isChecked()


def test_a_comparison_kept_by_the_cli_lists_in_the_app_and_a_memtrf_token_opens_with_its_memory(qtbot, window):
    from knn_explorer.core.evaluation.comparison import compare
    from knn_explorer.core.evaluation.store import keep_comparison

    page = window.evaluate_page
    text = open(page.text_field.text(), encoding="utf-8").read()
    memory = window._method_objects(window.controls.values(), ["memtrf"], None).methods["memtrf"]  # the demo's gates
    try:
        kept = compare(window.model, text, [memory], context_length=32, stride=16)
    finally:
        memory.close()
    row_id = keep_comparison(window.catalog, kept, window.model.name, None, {"methods": ["none", "memtrf"]})
    page.refresh_runs(select=[row_id])
    assert page.runs_list.count() == 1 and page.gain_method.currentData() == "memtrf"
    assert page.helped.rowCount() > 0 or page.hurt.rowCount() > 0
    table = page.helped if page.helped.rowCount() else page.hurt
    # a token past the first windows: the memory holds text, and the record's local context is its window
    row = next(i for i, c in enumerate(table.changes) if c.position < 2 * kept.window_of(c.index).begin)
    change = table.changes[row]
    with qtbot.waitSignal(page.inspect_requested, timeout=60_000):
        table.cellClicked.emit(row, 0)
    record = window.current_run.records[0]
    assert record.method == "memtrf" and record.token_id == change.token_id
    assert record.memory_hits and any(record.memory_attention)
    assert record.chosen_prob_lm == pytest.approx(change.p_lm, rel=1e-4)  # the LM's context is the window's


def test_memory_size_sweep_from_the_page_needs_no_datastore(qtbot, window):
    page = window.evaluate_page
    window.catalog_view.removed.emit("notes")  # as if the datastore were removed: none chosen
    assert window.datastore_name is None
    page.sweep_mode.setChecked(True)
    page.param_combo.setCurrentIndex(page.param_combo.findData("memory"))
    assert page.values_edit.text().startswith("0, 1024")
    page.values_edit.setText("0, 64")
    run_and_wait(qtbot, page)
    (kept,) = window.catalog.evaluations("sweep")
    assert kept.results["param"] == "memory" and kept.datastore is None
    assert [p["value"] for p in kept.results["results"]] == [0, 64]
    # memory 0 is the demo adapter's fine-tuned layers without lookups: the paper's "same model
    # without memory", not the LM alone
    from knn_explorer.core.evaluation.comparison import compare
    from knn_explorer.core.evaluation.perplexity import read_heldout
    from knn_explorer.core.mechanisms.memorizing import MemorizingSettings
    from knn_explorer.core.methods.memorizing import MemorizingTransformerMethod

    alone = MemorizingTransformerMethod(window.model, MemorizingSettings(memory_size=0))
    try:
        assert alone.retrofit.tuned_modules()  # the shipped adapter carries fine-tuned layers
        direct = compare(window.model, read_heldout(page.text_field.text()), [alone], context_length=32,
                         stride=16)
    finally:
        alone.close()
    assert kept.results["results"][0]["ppl"] == pytest.approx(direct.ppl(alone.name), rel=1e-6)
    assert kept.results["ppl_lm"] == pytest.approx(direct.ppl("none"), rel=1e-6)
    page.param_combo.setCurrentIndex(page.param_combo.findData("k"))
    assert page.run() is None and "datastore" in page.status.text()


def test_side_by_side_in_the_main_window_opens_a_clicked_cell_in_the_inspector(qtbot, window):
    side = window.side_by_side_page
    window.show_page(side)
    side.prompt.setPlainText("The quick brown")
    side.set_methods(["none", "knnlm", "memtrf"])
    side.max_tokens.setValue(4)
    with qtbot.waitSignal(side.run_ended, timeout=120_000):
        side.run()
    columns = side.columns()
    assert [c.method for c in columns] == ["none", "knnlm", "memtrf"] and all(len(c.records) == 4 for c in columns)
    assert all(r.neighbours for r in columns[1].records) and not any(hasattr(m, "_knn_memory") for m in window.model.model.modules())
    side.record_clicked.emit("knnlm", columns[1].records[2])
    assert window.pages.currentIndex() == 0 and window.current_run.records == columns[1].records
    qtbot.waitUntil(lambda: window.inspector.record is not None and window.inspector.record.step == 2, timeout=5000)

    window.datastore_name = None  # no datastore chosen: kNN-LM cannot run, and says why
    with qtbot.waitSignal(side.error, timeout=30_000) as failed:
        side.run()
    assert "datastore" in failed.args[0]


def test_a_methods_own_sweep_fraction_retrieved_with_knnlm_beside_and_tokens_per_second(qtbot, window):
    from dataclasses import replace

    from knn_explorer.core.evaluation.comparison import compare
    from knn_explorer.core.evaluation.perplexity import read_heldout
    from knn_explorer.core.methods import Resources, get
    from knn_explorer.gui.widgets.generation_controls import method_settings

    page = window.evaluate_page
    page.sweep_mode.setChecked(True)
    index = page.param_combo.findData("adaptive.retrieve_fraction")  # offered because the method declares it
    assert index >= 0 and page.param_combo.itemText(index) == "Adaptive retrieval: fraction retrieved"
    page.param_combo.setCurrentIndex(index)
    assert page.values_edit.text() == "0.25, 0.5, 0.75, 1"
    page.values_edit.setText("0.25, 2")
    assert page.run() is None and "fraction" in page.status.text()  # the method's settings refuse 2
    page.values_edit.setText("0.25, 0.5, 0.75, 1")
    run_and_wait(qtbot, page)
    (kept,) = window.catalog.evaluations("sweep")
    r = kept.results
    assert r["param"] == "adaptive.retrieve_fraction" and kept.datastore == "notes"
    assert [p["value"] for p in r["results"]] == [0.25, 0.5, 0.75, 1.0]
    assert all(p["tokens_per_s"] > 0 for p in r["results"]) and r["tokens_per_s_lm"] > 0
    assert "generation tokens/s: LM alone" in page.status.text() and "Kept as run" in page.status.text()

    settings, _adapter = method_settings(window.controls.values(), "adaptive")
    method = get("adaptive")(window.model, replace(settings, retrieve_fraction=1.0),
                             Resources(window._datastore("notes")))
    every = compare(window.model, read_heldout(page.text_field.text()), [method], context_length=32, stride=16)
    assert r["results"][-1]["ppl"] == pytest.approx(every.ppl("adaptive"), rel=1e-6)
    assert r["ppl_lm"] == pytest.approx(every.ppl("none"), rel=1e-9)

    item = page.plots.perplexity_plot.getPlotItem()
    (curve,) = item.listDataItems()
    assert list(curve.getData()[0]) == [0.25, 0.5, 0.75, 1.0]
    lines = sorted(i.value() for i in item.items if type(i).__name__ == "InfiniteLine")
    (knnlm,) = r["references"].values()
    assert lines == pytest.approx(sorted([r["ppl_lm"], knnlm]))  # dashed: the LM alone; dotted: kNN-LM
    table = page.results_table
    rows = [table.verticalHeaderItem(i).text() for i in range(table.rowCount())]
    assert rows[:5] == ["0.25", "0.5", "0.75", "1", "LM alone"] and rows[5].startswith("kNN-LM")
    assert "tok/s" in table.item(0, 0).text()
    page.resize(1366, 768)
    page.grab().save("/tmp/fraction.png")

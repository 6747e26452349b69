"""Side-by-side generation: lockstep lanes equal solo runs (memory included), rows, exports, the Compare page."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import threading
import time

import pytest
import torch
from corpus import write_corpus
from PySide6.QtCore import Qt

from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.builder import BuildParameters
from knn_explorer.core.generation.step_generator import GenerationSettings, StepGenerator
from knn_explorer.core.mechanisms.knnlm import KnnLmSettings
from knn_explorer.core.datastore.library import build_datastore, open_datastore
from knn_explorer.core.mechanisms.memorizing import MemorizingRetrofit, MemorizingSettings
from knn_explorer.core.methods import Resources
from knn_explorer.core.methods.knnlm import KnnLmMethod
from knn_explorer.core.methods.memorizing import MemorizingTransformerMethod
from knn_explorer.core.methods.spalm import SpalmMethod
from knn_explorer.core.models import load_model
from knn_explorer.core.generation.side_by_side import (
    SideBySideColumn,
    aligned_rows,
    check_generators,
    csv_header,
    format_table,
    generate_side_by_side,
    run_side_by_side,
    to_csv,
    to_json,
)
from knn_explorer.core.mechanisms.spalm import Spalm, SpalmSettings
from knn_explorer.gui import colours
from knn_explorer.gui.pages.side_by_side import SideBySidePage
from knn_explorer.gui.widgets.token_strip import visible_token

# Longer than the window below, so the memtrf lane's memory holds the start of the prompt from step 0.
PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 3)
WINDOW = 16
STEPS = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:  # the autouse data home is per test; the build writes now
        mp.setenv("KNN_EXPLORER_HOME", str(home))
        catalog = Catalog(home / "catalog.sqlite")
        build_datastore(catalog, "small", model, [write_corpus(tmp_path_factory.mktemp("docs"))],
                        BuildParameters(context_length=32, stride=16, batch_size=4))
        datastore = open_datastore(catalog, "small", model)
    return model, datastore


def open_retrofit(model) -> MemorizingRetrofit:
    retrofit = MemorizingRetrofit(model, MemorizingSettings(k=4))
    with torch.no_grad():
        retrofit.gate_bias.fill_(2.0)  # open gates (σ = 0.88): the memory visibly changes p
    return retrofit


def make_lanes(model, datastore, methods, memory=None, steps=STEPS, steps_of=None) -> dict[str, StepGenerator]:
    steps_of = steps_of or {}

    def settings(method):
        return GenerationSettings(max_new_tokens=steps_of.get(method, steps), stop_at_eos=False,
                                  context_window=WINDOW)

    made = {
        "none": lambda: None,
        "knnlm": lambda: KnnLmMethod(model, KnnLmSettings(k=8, lambda_=0.5), Resources(datastore)),
        "spalm": lambda: SpalmMethod(model, spalm=Spalm(model, datastore, SpalmSettings(k=8))),
        "memtrf": lambda: MemorizingTransformerMethod(model, retrofit=memory),
    }
    return {method: StepGenerator(model, PROMPT, settings(method), made[method]()) for method in methods}


def assert_same_column(records, solo):
    assert [r.token_id for r in records] == [r.token_id for r in solo]
    assert [r.step for r in records] == [r.step for r in solo]
    for r, s in zip(records, solo):
        assert abs(r.chosen_prob_final - s.chosen_prob_final) <= 1e-5
        assert abs(r.chosen_prob_lm - s.chosen_prob_lm) <= 1e-5
        # p is ~1/vocab for a random model, so also compare relatively: 1e-5 absolute alone is loose.
        assert math.isclose(r.chosen_prob_final, s.chosen_prob_final, rel_tol=1e-4)
        if s.memory_hits is not None:
            assert r.memory_attention == pytest.approx(s.memory_attention, abs=1e-6)  # the same memory content: the same earlier positions retrieved
            assert [[h.position for h in head] for head in r.memory_hits] == \
                   [[h.position for h in head] for head in s.memory_hits]


@pytest.fixture(scope="module")
def solo(setup):
    """Each method generated alone: none and knnlm with no retrofit on the model at all."""
    model, datastore = setup
    columns = {m: list(g) for m, g in make_lanes(model, datastore, ["none", "knnlm", "spalm"]).items()}
    memory = open_retrofit(model)
    try:
        columns["memtrf"] = list(make_lanes(model, datastore, ["memtrf"], memory)["memtrf"])
        columns["memory state"] = retrofit_state(memory)
    finally:
        memory.remove()
    return columns


def retrofit_state(memory: MemorizingRetrofit) -> tuple:
    """What the memtrf lane leaves in the retrofit: stored and pending positions, the next input start."""
    pending = sorted(int(p) for _keys, _values, positions in memory._pending for p in positions)
    stored = memory.memory.positions
    return sorted(stored[stored >= 0].tolist()), pending, memory._input_start


# ----------------------------------------------------------------------------- core

@pytest.mark.parametrize("order", [("none", "knnlm", "memtrf"), ("memtrf", "knnlm", "none")])
def test_lockstep_columns_equal_each_method_generated_alone(setup, solo, order):
    model, datastore = setup
    # The setup is one where the memory matters: otherwise equality below would prove nothing.
    assert any(h for r in solo["memtrf"] for h in r.memory_hits)
    assert max(abs(math.log(m.chosen_prob_final / n.chosen_prob_final))
               for m, n in zip(solo["memtrf"], solo["none"])) > 1e-2

    memory = open_retrofit(model)
    try:
        seen = list(run_side_by_side(make_lanes(model, datastore, order, memory)))
        assert memory.enabled  # the other lanes' steps gave the memory back switched on
        # ...and left no trace in it: the retrofit is exactly as the memtrf lane alone leaves it.
        assert retrofit_state(memory) == solo["memory state"]
    finally:
        memory.remove()
    # Row by row: step 0 of every lane, then step 1, ...
    assert [(m, r.step) for m, r in seen] == [(m, step) for step in range(STEPS) for m in order]
    for method in order:
        assert_same_column([r for m, r in seen if m == method], solo[method])


def test_an_ended_lane_stops_contributing_and_its_cells_are_none(setup, solo):
    model, datastore = setup
    lanes = make_lanes(model, datastore, ["none", "knnlm", "spalm"], steps=5, steps_of={"knnlm": 3})
    columns = generate_side_by_side(lanes)
    assert [c.method for c in columns] == ["none", "knnlm", "spalm"]
    assert [c.label for c in columns] == ["LM alone", "kNN-LM", "SPALM"]
    assert [len(c.records) for c in columns] == [5, 3, 5]
    assert_same_column(columns[2].records, solo["spalm"][:5])

    rows = aligned_rows(columns)
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4]
    for row, record in zip(rows, columns[0].records):
        assert (row["none_token"], row["none_token_id"], row["none_p"], row["none_p_lm"]) == \
               (record.token, record.token_id, record.chosen_prob_final, record.chosen_prob_lm)
    assert rows[2]["knnlm_token"] == columns[1].records[2].token
    for row in rows[3:]:
        assert row["knnlm_token"] is row["knnlm_token_id"] is row["knnlm_p"] is row["knnlm_p_lm"] is None
        assert row["spalm_token"] is not None

    table = format_table(columns).splitlines()
    assert len(table) == 1 + 5
    assert table[0].split() == ["step", "LM", "alone", "kNN-LM", "SPALM"]
    last = columns[0].records[4]
    assert table[5].lstrip().startswith("4") and f"{last.token!r} {last.chosen_prob_final:.3f}" in table[5]
    assert f"{columns[1].records[2].token!r}" in table[3]


def test_csv_and_json_hold_the_records(setup, tmp_path):
    model, datastore = setup
    columns = generate_side_by_side(make_lanes(model, datastore, ["knnlm", "none"], steps=4, steps_of={"none": 2}))
    path = to_csv(columns, tmp_path / "side.csv")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        lines = list(reader)
    assert reader.fieldnames == csv_header(columns) == ["step", "knnlm_token", "knnlm_p", "knnlm_p_lm",
                                                        "none_token", "none_p", "none_p_lm"]
    assert len(lines) == 4
    for line, record in zip(lines, columns[0].records):
        assert int(line["step"]) == record.step and line["knnlm_token"] == record.token
        assert float(line["knnlm_p"]) == record.chosen_prob_final  # written in full: exact
        assert float(line["knnlm_p_lm"]) == record.chosen_prob_lm
    assert float(lines[1]["none_p"]) == columns[1].records[1].chosen_prob_final
    assert lines[2]["none_token"] == lines[2]["none_p"] == lines[3]["none_p_lm"] == ""

    data = json.loads(json.dumps(to_json(columns, PROMPT), allow_nan=False))
    assert data["prompt"] == PROMPT and data["methods"] == ["knnlm", "none"]
    assert data["rows"] == aligned_rows(columns) and len(data["rows"]) == 4
    assert data["rows"][3]["none_token"] is None

    # A number strict JSON cannot hold becomes null instead of breaking the export.
    broken = dataclasses.replace(columns[1].records[0], chosen_prob_final=float("nan"))
    odd = [SideBySideColumn.for_method("none", [broken])]
    assert json.loads(json.dumps(to_json(odd), allow_nan=False))["rows"][0]["none_p"] is None


def test_lanes_that_cannot_run_side_by_side_are_refused(setup):
    model, datastore = setup
    lanes = make_lanes(model, datastore, ["none"])
    with pytest.raises(ValueError, match="at least one"):
        check_generators({})
    with pytest.raises(ValueError, match="'knnlm' lane was given a 'none'"):
        check_generators({"knnlm": lanes["none"]})
    with pytest.raises(ValueError, match="unknown method"):
        check_generators({"beam": lanes["none"]})
    with pytest.raises(ValueError, match="'spalm' lane"):  # at the call, before any step
        run_side_by_side({"spalm": lanes["none"]})
    assert lanes["none"].steps_taken == 0


# ----------------------------------------------------------------------------- the Compare page

def page_with(qtbot, make_generators, methods, max_tokens=STEPS) -> SideBySidePage:
    page = SideBySidePage(make_generators)
    qtbot.addWidget(page)
    page.resize(900, 500)
    page.show()
    qtbot.waitExposed(page)
    page.prompt.setPlainText(PROMPT)
    page.set_methods(methods)
    page.max_tokens.setValue(max_tokens)
    return page


def run_page(qtbot, page, timeout=30_000) -> None:
    with qtbot.waitSignal(page.run_ended, timeout=timeout):
        page.run_button.click()
    page.job.wait()


def test_the_page_fills_one_row_per_step_and_a_clicked_cell_emits_its_record(qtbot, setup, solo, tmp_path):
    model, datastore = setup
    ui_thread, calls = threading.get_ident(), []

    def make_generators(methods, prompt, max_new_tokens, control):
        calls.append((list(methods), prompt, max_new_tokens, threading.get_ident()))
        memory = open_retrofit(model) if "memtrf" in methods else None  # made in the job's thread, as the app does
        return make_lanes(model, datastore, methods, memory, steps=max_new_tokens), memory

    methods = ["none", "knnlm", "spalm", "memtrf"]
    page = page_with(qtbot, make_generators, methods)
    run_page(qtbot, page)
    assert calls == [(methods, PROMPT, STEPS, calls[0][3])] and calls[0][3] != ui_thread
    assert not hasattr(model.model.transformer.h[1].attn, "_knn_memory")  # the page removed the retrofit

    table = page.table_model
    assert (table.rowCount(), table.columnCount()) == (STEPS, 4)
    assert [table.headerData(c, Qt.Horizontal) for c in range(4)] == \
           ["LM alone", "kNN-LM", "SPALM", "Memorizing Transformer"]
    assert [table.headerData(r, Qt.Vertical) for r in range(STEPS)] == [str(s) for s in range(STEPS)]
    assert page.status.text() == f"Done: {STEPS} steps" and page.export_csv_button.isEnabled()
    for column, method in enumerate(methods):
        # Run in the job's thread, lanes in lockstep: still each method's solo column.
        assert_same_column(page.columns()[column].records, solo[method])
        for row, record in enumerate(page.columns()[column].records):
            index = table.index(row, column)
            assert table.data(index).startswith(visible_token(record.token))
            assert table.data(index, Qt.BackgroundRole).color() == colours.PROB_MAP.colour(record.chosen_prob_final)
            assert "p_final" in table.data(index, Qt.ToolTipRole)
        # and as readable text: the method's continuation, in one piece
        assert page.texts.text(method) == "".join(r.token for r in solo[method])
        assert page.texts._views[method].toPlainText() == PROMPT + page.texts.text(method)

    row, column = 3, methods.index("knnlm")
    target = page.table.visualRect(table.index(row, column)).center()
    with qtbot.waitSignal(page.record_clicked, timeout=2000) as clicked:
        qtbot.mouseClick(page.table.viewport(), Qt.LeftButton, pos=target)
    assert clicked.args[0] == "knnlm"
    assert clicked.args[1] is page.columns()[column].records[row]
    assert clicked.args[1].token_id == solo["knnlm"][row].token_id and clicked.args[1].step == row

    with open(page.export_csv(tmp_path / "page.csv"), encoding="utf-8", newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == STEPS and float(lines[0]["memtrf_p"]) == page.columns()[3].records[0].chosen_prob_final
    data = json.loads(page.export_json(tmp_path / "page.json").read_text(encoding="utf-8"))
    assert data["prompt"] == PROMPT and data["methods"] == methods and len(data["rows"]) == STEPS


def test_a_failing_make_generators_is_a_one_line_error_not_a_crash(qtbot):
    def make_generators(methods, prompt, max_new_tokens, control):
        raise ValueError("kNN-LM needs a datastore: double-click one in the library")

    page = page_with(qtbot, make_generators, ["knnlm"])
    with qtbot.waitSignal(page.error, timeout=5000) as error:
        run_page(qtbot, page)
    assert error.args == ["kNN-LM needs a datastore: double-click one in the library"]
    assert page.status.text() == error.args[0]
    assert page.table_model.rowCount() == 0 and page.run_button.isEnabled() and not page.stop_button.isEnabled()
    assert page.export_csv(None) is None and "Nothing to export" in page.status.text()  # no dialog either


def test_stop_cancels_a_long_run_promptly(qtbot, setup):
    model, _datastore = setup

    def make_generators(methods, prompt, max_new_tokens, control):
        settings = GenerationSettings(max_new_tokens=100_000, stop_at_eos=False)
        return {"none": StepGenerator(model, prompt, settings)}, None

    page = page_with(qtbot, make_generators, ["none"])
    page.run_button.click()
    qtbot.waitUntil(lambda: page.table_model.rowCount() >= 3, timeout=10_000)
    assert page.stop_button.isEnabled() and not page.run_button.isEnabled()
    started = time.perf_counter()
    with qtbot.waitSignal(page.run_ended, timeout=5000):
        page.stop_button.click()
    assert time.perf_counter() - started < 2.0
    page.job.wait()
    assert page.status.text().startswith("Stopped after") and page.table_model.rowCount() < 100_000


def test_methods_and_max_tokens_are_remembered_and_none_ticked_cannot_run(qtbot):
    calls = []
    page = page_with(qtbot, lambda *args: calls.append(args), ["spalm", "memtrf"], max_tokens=7)
    again = SideBySidePage(lambda *args: None)
    qtbot.addWidget(again)
    assert again.methods() == ["spalm", "memtrf"] and again.max_tokens.value() == 7

    page.set_methods([])
    assert not page.run_button.isEnabled()
    with qtbot.waitSignal(page.error, timeout=1000):
        page.run()
    assert page.status.text() == "Choose at least one method" and page.job is None and calls == []


def test_ctrl_return_runs(qtbot, setup):
    model, _datastore = setup

    def make_generators(methods, prompt, max_new_tokens, control):
        return {"none": StepGenerator(model, prompt, GenerationSettings(max_new_tokens=2))}, None

    page = page_with(qtbot, make_generators, ["none"], max_tokens=2)
    page.activateWindow()
    page.prompt.setFocus()
    qtbot.waitUntil(page.prompt.hasFocus, timeout=2000)
    with qtbot.waitSignal(page.run_ended, timeout=10_000):
        qtbot.keyClick(page.prompt, Qt.Key_Return, Qt.ControlModifier)
    page.job.wait()
    assert page.table_model.rowCount() == 2


def test_an_empty_prompt_is_refused_before_anything_runs(qtbot):
    calls = []
    page = page_with(qtbot, lambda *args: calls.append(args), ["none"])
    page.prompt.setPlainText("  \n")
    with qtbot.waitSignal(page.error, timeout=1000) as error:
        page.run()
    assert "Type a prompt" in error.args[0] and page.job is None and calls == []

"""SPALM's view: g_t per token as a plot beside the retrieval's usefulness, and its gate statistics
on the Evaluate page's results (tiny model, real datastore)."""
import math

import numpy as np
import pytest
import torch

from knn_explorer.core.datastore.catalog import EvaluationRow
from knn_explorer.core.evaluation.comparison import compare
from knn_explorer.core.generation.step_generator import GenerationSettings, StepGenerator
from knn_explorer.core.mechanisms.spalm import Spalm, SpalmSettings
from knn_explorer.core.methods.spalm import SpalmMethod
from knn_explorer.gui.widgets.distribution_plots import HistoryPlot
from knn_explorer.gui.widgets.evaluation_plots import ShownRun
from knn_explorer.gui.widgets.results_table import ResultsTable
from knn_explorer.gui.widgets.token_inspector import TokenInspector


@pytest.fixture(scope="module")
def spalm_records(small_datastore):
    model, _catalog, datastore, _docs = small_datastore
    spalm = Spalm(model, datastore, SpalmSettings(k=8))
    with torch.no_grad():
        spalm.gate.weight.normal_(0, 0.3)  # a gate that moves from token to token
    method = SpalmMethod(model, spalm=spalm)
    records = list(StepGenerator(model, "The quick brown", GenerationSettings(max_new_tokens=8, stop_at_eos=False),
                                 method))
    return model, datastore, spalm, records


def test_records_carry_the_memorys_usefulness_for_the_chosen_token(spalm_records):
    model, _, spalm, records = spalm_records
    ids = model.tokenizer("The quick brown", add_special_tokens=False)["input_ids"]
    method = SpalmMethod(model, spalm=spalm)
    step = StepGenerator(model, ids + [r.token_id for r in records[:3]], GenerationSettings(max_new_tokens=1),
                         method)
    outputs = step._forward()
    details = method.combine(outputs).details
    token = records[3].token_id
    expected = float(details.log_p_mem[0, token] - details.log_p_hidden[0, token])
    assert records[3].memory_usefulness == pytest.approx(expected, abs=1e-4)
    assert all(r.memory_usefulness is not None and math.isfinite(r.memory_usefulness) for r in records)


def test_the_history_plot_shows_the_gate_per_token_beside_the_usefulness(spalm_records, qtbot):
    _, _, _, records = spalm_records
    plot = HistoryPlot()
    qtbot.addWidget(plot)
    plot.set_history(records, records[2].step)
    steps, gates = plot.weight_curve.getData()
    assert list(gates) == pytest.approx([r.gate for r in records]) and len(set(np.round(gates, 6))) > 1
    _, usefulness = plot.usefulness_curve.getData()
    assert list(usefulness) == pytest.approx([r.memory_usefulness for r in records])
    low, high = plot.getPlotItem().vb.viewRange()[1]
    assert low <= min(r.gate for r in records) and high >= 1  # the gate's own range, not always 0..1
    assert "gate" in plot.getPlotItem().titleLabel.text


def test_the_inspector_names_the_gate_and_the_usefulness(spalm_records, qtbot):
    _, _, _, records = spalm_records
    inspector = TokenInspector()
    qtbot.addWidget(inspector)
    inspector.show_record(records[1], records)
    inspector.settle()
    text = inspector.settings_label.text()
    assert "gate" in text and "usefulness" in text


def test_a_comparison_keeps_spalms_gate_statistics_and_the_results_table_shows_them(spalm_records, small_datastore,
                                                                                    qtbot):
    model, datastore, spalm, _ = spalm_records
    _, _, _, docs = small_datastore
    method = SpalmMethod(model, spalm=spalm)
    text = next(docs.rglob("*.md")).read_text(encoding="utf-8")
    c = compare(model, text, [method], context_length=32, stride=16)
    results = method.results()
    assert results["tokens"] == c.tokens and 0 < results["gate_mean"] < 1 and results["gate_std"] > 0
    assert -1 <= results["gate_usefulness_pearson"] <= 1
    assert results["ppl_without_memory"] > 1
    row = EvaluationRow(kind="compare", model_name=model.name, datastore="small",
                        parameters={"methods": ["spalm"], "method_results": {"spalm": results}},
                        results={**c.to_json()})
    table = ResultsTable()
    qtbot.addWidget(table)
    table.show_runs([ShownRun(row, title="run")])
    cells = [table.item(r, 0).text() for r in range(table.rowCount())]
    assert any("g 0." in cell and "r(g,u)" in cell for cell in cells)

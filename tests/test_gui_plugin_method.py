"""A method registered by a third party reaches every place of the app (issue 12, item 2): the method
list, a panel generated from its settings, a generation, the Evaluate page's comparison and side by
side. The plug-in is a throwaway distribution on sys.path (an entry point in its dist-info), nothing
installed; and the generated panel on its own: round trip, a refused value in one line."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pytest
from plugin_helpers import installed_plugin
import torch
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox

from corpus import write_corpus
from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.methods import MethodError, MethodSettings, registry
from knn_explorer.core.methods.base import setting
from knn_explorer.gui.widgets.generation_controls import GenerationControls
from knn_explorer.gui.main_window import MainWindow
from knn_explorer.gui.widgets.settings_panel import SettingsPanel

TOY_METHOD = '''
"""Sharpen: p_final = softmax(log p_LM / tau), a plug-in for the tests."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from knn_explorer.core.methods import Method, MethodSettings, MethodStep
from knn_explorer.core.methods.base import setting


@dataclass(frozen=True)
class SharpenSettings(MethodSettings):
    tau: float = setting(1.0, help="temperature: p_final = softmax(log p_LM / tau)")
    top_k: int | None = setting(None, flag="sharpen-top-k", minimum=1, help="keep only the k likeliest tokens")

    def __post_init__(self):
        if not self.tau > 0:
            raise ValueError("tau must be positive")


class Sharpen(Method):
    name = "sharpen"
    label = "Sharpened LM"
    summary = "the LM's distribution at temperature tau, no retrieval"
    Settings = SharpenSettings

    def combine(self, outputs):
        logits = outputs.log_p_lm.double() / self.settings.tau
        if self.settings.top_k is not None:
            kth = logits.topk(self.settings.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return MethodStep(torch.log_softmax(logits, dim=-1))
'''


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    """The distribution `toy_method` 0.1 on sys.path, registering `sharpen`; gone afterwards."""
    with installed_plugin(tmp_path / "site", "toy_method", TOY_METHOD, {"sharpen": "toy_method:Sharpen"},
                          monkeypatch) as folder:
        yield folder


@pytest.fixture
def window(qtbot, toy_plugin, tiny_gpt2_dir):
    window = MainWindow(Catalog(), model_spec=str(tiny_gpt2_dir), build_demo=False)
    qtbot.addWidget(window)
    window.resize(1366, 768)
    window.show()
    qtbot.waitUntil(lambda: window.model is not None, timeout=30_000)
    return window


def wait_for_generation(qtbot, window):
    qtbot.waitUntil(lambda: window.generation_job is not None and not window.generation_job.is_running(),
                    timeout=60_000)
    qtbot.wait(50)  # the last queued records


def expected_p_final(model, ids: list[int], tau: float) -> torch.Tensor:
    """softmax(log p_LM / tau) at the end of `ids`, computed here from the model."""
    with torch.inference_mode():
        logits = model.model(torch.tensor([ids], device=model.device)).logits[0, -1].float().cpu()
    return torch.softmax(torch.log_softmax(logits, -1).double() / tau, -1)


def test_a_plugin_method_is_listed_gets_a_generated_panel_and_generates(qtbot, window, tmp_path):
    controls = window.controls
    index = controls.method.findData("sharpen")
    assert index >= 0 and controls.method.itemText(index) == "Sharpened LM"
    assert controls.method.count() == len(registry.names()) and "sharpen" in registry.names()

    controls.method.setCurrentIndex(index)
    panel = controls.method_panels.currentWidget()
    assert isinstance(panel, SettingsPanel) and panel is controls.panels["sharpen"]
    assert controls.method_box.title() == "Sharpened LM"
    assert set(panel.widgets) == {"tau", "top_k"}
    tau, top_k = panel.widgets["tau"], panel.widgets["top_k"]
    assert isinstance(tau, QDoubleSpinBox) and tau.value() == 1.0 and "softmax" in tau.toolTip()
    assert isinstance(top_k, QSpinBox) and top_k.text() == "auto" and top_k.minimum() == 0  # one below minimum=1
    assert panel.settings() == registry.get("sharpen").Settings()
    window.grab().save(str(tmp_path / "explore-sharpen.png"))

    tau.setValue(0.5)
    controls.prompt.setPlainText("The quick brown")
    controls.max_tokens.setValue(5)
    controls.generate.click()
    wait_for_generation(qtbot, window)
    run = window.current_run
    assert len(run.records) == 5 and all(r.method == "sharpen" for r in run.records)
    assert run.settings["method_settings"]["sharpen"] == {"tau": 0.5, "top_k": None}
    ids = list(run.prompt_ids)
    for record in run.records:
        expected = expected_p_final(window.model, ids, 0.5)
        for entry in record.p_final:
            assert entry.prob == pytest.approx(float(expected[entry.token_id]), rel=1e-4, abs=1e-7)
        assert record.chosen_prob_final == pytest.approx(float(expected[record.token_id]), rel=1e-4, abs=1e-7)
        assert record.p_knn is None and record.neighbours == []
        ids.append(record.token_id)

    tau.setValue(0.0)  # the settings refuse it: a message, no run
    assert panel.problem_label.isVisible() and "\n" not in panel.problem_label.text()
    runs = len(window.runs)
    controls.generate.click()
    assert window.last_error == "Sharpened LM: tau must be positive" and len(window.runs) == runs


def test_a_plugin_method_runs_in_the_evaluate_comparison_and_side_by_side(qtbot, window, tmp_path):
    window.controls.panels["sharpen"].widgets["tau"].setValue(0.5)

    page = window.evaluate_page
    assert page.method_boxes["sharpen"].text() == "Sharpened LM" and page.method_boxes["sharpen"].isChecked()
    for name, box in page.method_boxes.items():  # no datastore here: the LM alone and the plug-in
        box.setChecked(name in ("none", "sharpen"))
    window.show_page(page)
    heldout = tmp_path / "heldout.md"
    heldout.write_text(next(write_corpus(tmp_path / "docs").rglob("*.md")).read_text(encoding="utf-8")[:600],
                       encoding="utf-8")
    page.text_field.setText(str(heldout))
    page.context_spin.setValue(32)
    page.stride_spin.setValue(16)
    job = page.run()
    assert job is not None, page.status.text()
    qtbot.waitUntil(lambda: not job.is_running() and page.run_button.isEnabled(), timeout=60_000)
    kept = window.catalog.evaluations("compare")
    assert len(kept) == 1 and list(kept[0].results["methods"]) == ["none", "sharpen"], page.status.text()
    assert kept[0].parameters["settings"]["sharpen"] == {"method": "sharpen", "tau": 0.5, "top_k": None}
    table = page.results_table
    assert [table.verticalHeaderItem(r).text() for r in range(table.rowCount())] == ["LM alone", "Sharpened LM"]

    side = window.side_by_side_page
    assert side.method_boxes["sharpen"].text() == "Sharpened LM"
    window.show_page(side)
    side.set_methods(["none", "sharpen"])
    side.prompt.setPlainText("The quick brown")
    side.max_tokens.setValue(3)
    with qtbot.waitSignal(side.run_ended, timeout=60_000):
        side.run_button.click()
    columns = side.columns()
    assert [c.method for c in columns] == ["none", "sharpen"], side.status.text()
    assert [c.label for c in columns] == ["LM alone", "Sharpened LM"]
    assert len(columns[1].records) == 3 and all(r.method == "sharpen" for r in columns[1].records)
    first = columns[1].records[0]
    prompt_ids = window.model.tokenizer("The quick brown", add_special_tokens=False)["input_ids"]
    expected = expected_p_final(window.model, prompt_ids, 0.5)
    assert first.chosen_prob_final == pytest.approx(float(expected[first.token_id]), rel=1e-4)

    side.set_methods(list(side.method_boxes))  # five registered methods or more: more than the screen's columns
    with qtbot.waitSignal(side.error, timeout=2000):
        side.run()
    assert side.status.text() == "Choose at most 4 methods: their columns share the screen"


def test_the_plugin_panels_values_are_remembered(qtbot, toy_plugin):
    controls = GenerationControls()
    qtbot.addWidget(controls)
    controls.method.setCurrentIndex(controls.method.findData("sharpen"))
    panel = controls.panels["sharpen"]
    panel.widgets["tau"].setValue(0.25)
    panel.widgets["top_k"].setValue(40)
    remembered = json.loads(json.dumps(controls.values()))  # as the settings file keeps them

    again = GenerationControls()
    qtbot.addWidget(again)
    again.apply(remembered)
    assert again.method.currentData() == "sharpen" and again.method_panels.currentWidget() is again.panels["sharpen"]
    assert again.panels["sharpen"].settings() == registry.get("sharpen").Settings(tau=0.25, top_k=40)


# ---- the generated panel on its own ----------------------------------------------------------------
@dataclass(frozen=True)
class EveryKind(MethodSettings):
    count: int = setting(3, minimum=1, maximum=99, help="an int")
    scale: float = setting(0.5, help="a float")
    exact: bool = setting(True, flag="approximate", inverted=True, help="a bool the CLI inverts")
    name: str = setting("plain")
    mode: str = setting("a", choices=("a", "b"), help="choices in the metadata")
    shape: Literal["round", "square"] = setting("round")
    layer: int | None = setting(None, minimum=0, help="auto or a layer")
    cap: float | None = setting(None, minimum=0.0)
    note: str | None = setting(None)
    tags: tuple = setting(("x",))  # not editable: kept as given

    def __post_init__(self):
        if self.scale <= 0:
            raise ValueError("the scale must be positive,\n  not zero or less")


def test_the_generated_panel_offers_each_kind_and_round_trips(qtbot):
    panel = SettingsPanel(EveryKind, "Every kind")
    qtbot.addWidget(panel)
    kinds = {name: type(widget) for name, widget in panel.widgets.items()}
    assert kinds == {"count": QSpinBox, "scale": type(panel.widgets["scale"]), "exact": QCheckBox, "name": QLineEdit,
                     "mode": QComboBox, "shape": QComboBox, "layer": QSpinBox, "cap": type(panel.widgets["cap"]),
                     "note": QLineEdit, "tags": QLineEdit}
    assert isinstance(panel.widgets["scale"], QDoubleSpinBox) and isinstance(panel.widgets["cap"], QDoubleSpinBox)
    assert panel.widgets["exact"].isChecked() and panel.widgets["exact"].toolTip() == "a bool the CLI inverts"
    assert (panel.widgets["count"].minimum(), panel.widgets["count"].maximum()) == (1, 99)
    assert [panel.widgets["shape"].itemData(i) for i in range(2)] == ["round", "square"]
    assert panel.widgets["layer"].text() == "auto" and panel.widgets["tags"].isReadOnly()
    assert panel.settings() == EveryKind()

    chosen = EveryKind(count=7, scale=2.25, exact=False, name="mine", mode="b", shape="square", layer=5, cap=1.5,
                       note="n", tags=("y", "z"))
    panel.set_settings(chosen)
    assert panel.settings() == chosen
    panel.set_settings(EveryKind())
    assert panel.settings() == EveryKind()

    panel.apply({"count": "not a number", "unknown": 1, "mode": "b"})  # remembered junk is skipped
    assert panel.settings() == EveryKind(mode="b")


def test_a_refused_value_is_a_one_line_message(qtbot):
    panel = SettingsPanel(EveryKind, "Every kind")
    qtbot.addWidget(panel)
    panel.show()
    assert panel.problem() is None and not panel.problem_label.isVisible()
    panel.widgets["scale"].setValue(0.0)
    message = "Every kind: the scale must be positive, not zero or less"
    assert panel.problem() == message
    assert panel.problem_label.isVisible() and panel.problem_label.text() == message
    with pytest.raises(MethodError) as refused:
        panel.settings()
    assert str(refused.value) == message
    panel.widgets["scale"].setValue(1.0)
    assert panel.problem() is None and not panel.problem_label.isVisible()


def test_the_evaluate_pages_sweeps_come_from_the_registry(qtbot, toy_plugin, monkeypatch):
    """Every registered method's `sweeps`, a plug-in's too; kNN-LM's and the memory's keep the bare
    names kept runs and `sweep --param` have always used."""
    from knn_explorer.core.methods import Sweepable
    from knn_explorer.core.methods.sweep_names import find_sweep
    from knn_explorer.gui.pages.evaluate import EvaluatePage
    from knn_explorer.gui.widgets.evaluation_plots import param_label

    monkeypatch.setattr(registry.get("sharpen"), "sweeps", {"tau": Sweepable("temperature tau", (0.5, 1.0, 2.0))})
    page = EvaluatePage(Catalog())
    qtbot.addWidget(page)
    offered = [page.param_combo.itemData(i) for i in range(page.param_combo.count())]
    assert {"lambda", "k", "temperature", "size", "distance", "memory", "sharpen.tau"} <= set(offered)
    assert len(offered) == len(set(offered))
    assert find_sweep("sharpen.tau") == ("sharpen", "tau") and find_sweep("memory") == ("memtrf", "memory")
    assert find_sweep("lambda") == ("knnlm", "lambda")
    index = page.param_combo.findData("sharpen.tau")
    assert page.param_combo.itemText(index) == "Sharpened LM: temperature tau" == param_label("sharpen.tau")
    assert param_label("lambda") == "λ" and param_label("memory") == "memory size (tokens)"
    page.param_combo.setCurrentIndex(index)
    assert page.values_edit.text() == "0.5, 1, 2"


"""The Memorizing Transformer with the app's defaults on the demo: the memory is used on the demo
prompt, the panel names the layer its memory is in, the heatmap shows a per-token quantity, the
window is remembered, and the history plot's gain axis reads in plain nats."""
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.home import DEMO_MEMTRF_ADAPTER
from knn_explorer.core.training.adapters import read_adapter_info
from knn_explorer.core.mechanisms.memorizing import DEFAULT_WINDOW
from knn_explorer.gui.main_window import MainWindow
from knn_explorer.gui.settings import AppSettings
from knn_explorer.gui.widgets.generation_controls import DEFAULT_PROMPT
from knn_explorer.gui.widgets.memorizing_panel import MemorizingPanel


def demo_window(qtbot) -> MainWindow:
    window = MainWindow(Catalog(), model_spec="demo", build_demo=False)
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    qtbot.waitUntil(lambda: window.model is not None, timeout=60_000)
    return window


def top_change(record) -> float:
    """The largest change in probability of a token in the top of p_LM or p_final."""
    lm = {p.token_id: p.prob for p in record.p_lm}
    final = {p.token_id: p.prob for p in record.p_final}
    return max(abs(final.get(t, 0.0) - lm.get(t, 0.0)) for t in lm.keys() | final.keys())


def test_the_defaults_use_the_memory_on_the_demo_prompt_and_the_panel_names_the_layer(qtbot, tmp_path):
    window = demo_window(qtbot)
    controls = window.controls
    panel = controls.memorizing
    assert panel.window.value() == DEFAULT_WINDOW  # nothing remembered yet: not "the model's maximum"
    # "auto" is a concrete layer: the one the demo's shipped gates were trained for.
    shipped = read_adapter_info(DEMO_MEMTRF_ADAPTER).details["layer"]
    assert panel.layer.specialValueText() == f"auto (layer {shipped})"
    assert f"layer {shipped} (from the trained gates)" in panel.layer_note.text()
    panel.mode.setCurrentIndex(panel.mode.findData("joint"))  # no gates: ¾ of the 4 layers
    assert panel.layer.specialValueText() == "auto (layer 2)" and "layer 2 (¾ of the depth)" in panel.layer_note.text()
    panel.mode.setCurrentIndex(panel.mode.findData("gated"))
    panel.layer.setValue((shipped + 1) % 4)
    assert f"layer {(shipped + 1) % 4} (chosen)" in panel.layer_note.text() and "untrained gates" in panel.layer_note.text()
    panel.layer.setValue(panel.layer.minimum())  # back to auto

    controls.method.setCurrentIndex(controls.method.findData("memtrf"))
    assert controls.prompt.toPlainText() == DEFAULT_PROMPT
    controls.max_tokens.setValue(24)
    controls.generate.click()
    qtbot.waitUntil(lambda: window.generation_job is not None and not window.generation_job.is_running(),
                    timeout=120_000)
    qtbot.waitUntil(lambda: window.inspector.record is not None and window.inspector.is_settled(), timeout=10_000)
    assert window.last_error is None
    records = window.current_run.records
    assert len(records) == 24
    used = [r for r in records if r.memory_hits and any(r.memory_hits)]
    assert len(used) >= 12  # the memory holds the text that left the 16-token window from the 6th token on
    assert max(top_change(r) for r in used) > 0.02  # and it moves the distribution (same window, memory off)
    # before the memory holds text, the difference is the adapter's fine-tuned layers alone
    assert read_adapter_info(DEMO_MEMTRF_ADAPTER).details["fine_tuned"] == ["model.layers.2", "model.layers.3",
                                                                           "model.norm"]
    assert all(0 < top_change(r) < 0.5 for r in records if r not in used)
    gates = np.array(records[-1].head_gates)
    shipped = torch.sigmoid(load_file(str(DEMO_MEMTRF_ADAPTER))["gate_bias"].float())
    assert gates.tolist() == pytest.approx(shipped.tolist(), abs=1e-3)  # the shipped gates

    view = window.inspector.memory_view
    shares = np.array([r.memory_attention for r in used])
    busiest = int(np.argmax(gates))
    assert shares[:, busiest].std() > 0.01  # a per-token quantity, not a constant band...
    assert not np.allclose(shares, gates[None, :], atol=0.01)  # ...and not the gates
    image = view.image.image
    assert image.shape == (24, len(gates))
    empty = [not (r.memory_hits and any(r.memory_hits)) for r in records]
    assert np.isnan(image[empty]).all() and np.allclose(image[~np.array(empty)], shares)  # grey until memory fills
    low, high = view.share_levels()
    assert low == 0 and shares.max() <= high <= shares.max() + 0.1 + 1e-9
    item = view.heatmap_plot.getPlotItem()
    assert item.getAxis("bottom").labelText == "token (step)" and item.getAxis("left").labelText == "head"
    for record in used:
        for head, hits in enumerate(record.memory_hits):
            assert sum(h.weight for h in hits) <= record.memory_attention[head] + 1e-6

    right = window.inspector.history_plot.getPlotItem().getAxis("right")
    assert right.autoSIPrefix is False and right.labelText == "gain (nats)"
    gains = [r.gain for r in records if math.isfinite(r.gain)]
    lo, hi = window.inspector.history_plot.gain_view.viewRange()[1]
    largest = max(abs(g) for g in gains)  # plain nats just around the gains (1-2-5 steps), not ±200 milli-nats
    assert largest <= hi <= 2.5 * largest + 0.2

    window.inspector.grab().save(str(tmp_path / "memtrf-inspector.png"))
    view.grab().save(str(tmp_path / "memtrf.png"))


def test_side_by_side_shows_a_memorizing_column_that_differs_from_the_lm_alone(qtbot):
    window = demo_window(qtbot)
    page = window.side_by_side_page
    window.pages.setCurrentIndex(2)
    page.prompt.setPlainText(DEFAULT_PROMPT)
    page.set_methods(["none", "memtrf"])
    page.max_tokens.setValue(20)  # the page's default
    with qtbot.waitSignal(page.run_ended, timeout=120_000):
        page.run_button.click()
    page.job.wait()
    lm_alone, memtrf = page.columns()
    assert len(lm_alone.records) == len(memtrf.records) == 20
    assert any(r.memory_hits and any(r.memory_hits) for r in memtrf.records)
    assert [r.chosen_prob_final for r in memtrf.records] != pytest.approx([r.chosen_prob_final for r in lm_alone.records])
    assert max(top_change(r) for r in memtrf.records) > 0.02  # the memory's own effect, at its window


def test_the_window_is_remembered_and_an_old_null_does_not_reset_it(qtbot):
    AppSettings().generation = {"method": "memtrf", "memory_window": None}  # what earlier versions saved
    window = demo_window(qtbot)
    panel = window.controls.memorizing
    assert panel.window.value() == DEFAULT_WINDOW
    panel.window.setValue(48)
    fresh = MemorizingPanel()  # remembered the moment it changed
    qtbot.addWidget(fresh)
    assert fresh.window.value() == 48 and fresh.context_window(fresh.values()) == 48
    window.close()
    again = demo_window(qtbot)
    assert again.controls.memorizing.window.value() == 48
    again.controls.memorizing.window.setValue(0)  # "the model's maximum" is a choice too
    assert again.controls.memorizing.window.text().startswith("the model's maximum")
    again.close()
    third = MemorizingPanel()
    qtbot.addWidget(third)
    third.apply(AppSettings().generation)
    assert third.window.value() == 0 and third.context_window(third.values()) is None

"""The Memorizing Transformer in the real main window: panel, generation, gates, heatmap, hits."""
import numpy as np
from PySide6.QtCore import QPointF, Qt

from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.home import DEMO_DOCS_DIR
from knn_explorer.core.mechanisms.memorizing import _decoder_layers
from knn_explorer.gui.main_window import MainWindow


def attention(model, layer: int):
    """Layer `layer`'s attention module, whatever the architecture calls it."""
    layers, name = _decoder_layers(model)
    return getattr(layers[layer], name)


def test_memtrf_run_fills_the_memory_view_and_a_clicked_cell_lists_earlier_passages(qtbot, tmp_path):
    window = MainWindow(Catalog(), model_spec="demo", build_demo=False)
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    qtbot.waitUntil(lambda: window.model is not None, timeout=60_000)
    controls = window.controls
    controls.method.setCurrentIndex(controls.method.findData("memtrf"))
    assert controls.method_panels.currentWidget() is controls.memorizing
    panel = controls.memorizing
    panel.mode.setCurrentIndex(panel.mode.findData("joint"))  # no training needed to see memory use
    panel.window.setValue(48)
    panel.k.setValue(8)
    prompt = (DEMO_DOCS_DIR / "quickstart.rst").read_text(encoding="utf-8")[:1500]
    controls.prompt.setPlainText(prompt)
    controls.max_tokens.setValue(6)
    controls.compare.setChecked(True)
    controls.generate.click()
    qtbot.waitUntil(lambda: window.generation_job is not None and not window.generation_job.is_running(),
                    timeout=120_000)
    qtbot.waitUntil(lambda: window.inspector.record is not None and window.inspector.is_settled(), timeout=10_000)
    assert window.last_error is None
    run = window.current_run
    assert len(run.records) == 6 and all(r.method == "memtrf" for r in run.records)
    assert len(run.compare) == 6 and all(r.method == "none" for r in run.compare)
    view = window.inspector.memory_view
    assert window.inspector.lower_tabs.currentWidget() is view
    heads = window.model.model.config.num_attention_heads
    assert view.image.image.shape == (6, heads)
    assert np.allclose(view.image.image, [r.memory_attention for r in run.records])
    assert view.gates() == [float(v) for v in run.records[-1].memory_attention]  # joint mode: share per head
    # The model's own layer is back once the run ends: nothing of the memory is left attached.
    assert not hasattr(attention(window.model, 2), "_knn_memory")
    assert not any("forward" in vars(m) for m in window.model.model.modules())  # no fine-tuned layer left routed

    # Click the cell of the first step's head 1: its hits are earlier tokens of the prompt.
    vb = view.heatmap_plot.getPlotItem().vb
    first = run.records[0]
    scene_point = vb.mapViewToScene(QPointF(first.step, 1))
    view_point = view.heatmap_plot.mapFromScene(scene_point)
    with qtbot.waitSignal(view.cell_selected, timeout=2000) as blocker:
        qtbot.mouseClick(view.heatmap_plot.viewport(), Qt.LeftButton, pos=view_point)
    assert blocker.args == [first.step, 1]
    assert view.hits.topLevelItemCount() == len(first.memory_hits[1]) > 0
    prompt_tokens = len(run.prompt_ids)
    for i, hit in enumerate(first.memory_hits[1]):
        assert hit.position < prompt_tokens - 24  # older than the local window
        assert view.hits.topLevelItem(i).text(0) == f"{hit.position:,}"
        assert view.hits.topLevelItem(i).text(3) == f"{hit.similarity:.3f}"  # what the lookup ranked it by
    assert "head 1" in view.hits_caption.text()
    view.grab().save(str(tmp_path / "memory-view.png"))


def test_gate_training_dialog_trains_live_catalogues_the_adapter_and_hands_it_to_the_panel(qtbot, tmp_path):
    from knn_explorer.core.training.adapters import read_adapter_info
    from knn_explorer.gui.widgets.gate_bars import gate_label

    window = MainWindow(Catalog(), model_spec="demo", build_demo=False)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.model is not None, timeout=60_000)
    docs = tmp_path / "docs"
    docs.mkdir()
    for source in sorted(DEMO_DOCS_DIR.glob("*.rst"))[:2]:
        (docs / source.name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    window.open_gate_training()
    dialog = window.gate_training_dialog
    dialog.docs.setText(str(docs))
    dialog.name.setText("bad name!")
    assert not dialog.start()  # one-line reason, nothing started
    assert "letters, digits" in dialog.status.text() and dialog.job is None
    dialog.name.setText("tiny-gates")
    dialog.segment.setValue(32)
    dialog.layer.setValue(0)
    dialog.lr.setValue(0.5)
    with qtbot.waitSignal(dialog.adapter_ready, timeout=300_000) as blocker:
        assert dialog.start()
    assert blocker.args[0] == "memtrf"
    path = blocker.args[1]
    assert len(dialog.steps) > 3
    xs, ys = dialog.loss_curve.getData()
    assert list(xs) == [s.step for s in dialog.steps] and list(ys) == [s.loss for s in dialog.steps]
    assert dialog.gate_plot.values() == dialog.steps[-1].gates
    assert [label.textItem.toPlainText() for label in dialog.gate_plot.labels] == [
        gate_label(g) for g in dialog.steps[-1].gates]
    row = window.catalog.adapter("tiny-gates")
    assert row is not None and row.path == path and row.details["layer"] == 0
    assert read_adapter_info(path).model_fingerprint == window.model.model_fingerprint
    assert window.controls.memorizing.adapter.text() == path
    assert window.controls.method.currentData() == "memtrf"
    assert not hasattr(attention(window.model, 0), "_knn_memory")  # the model is itself again
    dialog.grab().save(str(tmp_path / "gate-training.png"))
    dialog.close()


def test_the_training_dialog_trains_a_spalm_gate_on_the_datastore_in_use(qtbot, tmp_path):
    from corpus import write_corpus
    from test_gui_main_flow import build_through_dialog

    window = MainWindow(Catalog(), model_spec="demo", build_demo=False)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.model is not None, timeout=60_000)
    window.open_gate_training()
    assert not window.gate_training_dialog.method.model().item(1).isEnabled()  # no datastore in use yet
    window.gate_training_dialog.close()
    build_through_dialog(qtbot, window, write_corpus(tmp_path / "docs"))
    window.use_datastore("notes")
    window.open_gate_training()
    dialog = window.gate_training_dialog
    dialog.method.setCurrentIndex(dialog.method.findData("spalm"))
    assert dialog.name.text() == "spalm" and dialog.datastore_label.text() == "notes"
    assert not dialog.docs.isVisibleTo(dialog) and dialog.datastore_label.isVisibleTo(dialog)
    dialog.segment.setValue(16)
    with qtbot.waitSignal(dialog.adapter_ready, timeout=300_000) as blocker:
        assert dialog.start()
    method, path = blocker.args
    assert method == "spalm" and window.catalog.adapter("spalm").details["datastore"] == "notes"
    assert window.controls.method.currentData() == "spalm" and window.controls.spalm.adapter.text() == path
    assert len(dialog.gate_plot.values()) == 1 and 0 < dialog.gate_plot.values()[0] < 1
    dialog.close()

"""The Memorizing Transformer in the real main window: panel, generation, gates, heatmap, hits."""
import numpy as np
from PySide6.QtCore import QPointF, Qt

from knn_explorer.core.catalog import Catalog
from knn_explorer.core.home import DEMO_DOCS_DIR
from knn_explorer.gui.main_window import MainWindow


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
    heads = window.model.model.config.n_head
    assert view.image.image.shape == (6, heads)
    assert np.allclose(view.image.image, [r.memory_attention for r in run.records])
    assert view.gates() == [float(v) for v in run.records[-1].memory_attention]  # joint mode: share per head
    # The model's own layer is back once the run ends: nothing of the memory is left attached.
    assert not hasattr(window.model.model.transformer.h[2].attn, "_knn_memory")

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
    assert "head 1" in view.hits_caption.text()
    view.grab().save(str(tmp_path / "memory-view.png"))

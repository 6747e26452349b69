"""The Evaluate page's "Fit λ and T" in the real main window (offscreen, the demo model, a real
datastore): it draws the λ × T heatmap, applies the pair to the kNN-LM panel and keeps it for the
datastore; choosing the datastore later applies it again, unless λ or T were moved by hand."""
import numpy as np
import pytest

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
    heldout.write_text("Flask routes bind a URL to a view function, and the quick brown fox jumps over a dog. "
                       "Zebras quietly juggle purple marmalade beneath seventeen arches.\n" * 3, encoding="utf-8")
    page = window.evaluate_page
    page.text_field.setText(str(heldout))
    page.context_spin.setValue(32)
    page.stride_spin.setValue(16)
    window.controls.knnlm.k.setValue(8)
    return window


def test_fit_draws_the_heatmap_applies_the_pair_and_keeps_it_for_the_datastore(qtbot, window):
    page, panel = window.evaluate_page, window.controls.knnlm
    window.show_page(page)
    assert page.fit_heatmap.isHidden()  # nothing fitted for 'notes' yet
    assert (panel.lambda_slider.value(), panel.temperature.value()) == (25, 1.0)

    page.fit_button.click()
    assert page.job is not None and not page.fit_button.isEnabled()
    qtbot.waitUntil(lambda: not page.job.is_running() and page.fit_button.isEnabled(), timeout=120_000)
    assert window.last_error is None, window.last_error
    row = window.catalog.fitted("notes")
    assert row is not None and row.k == 8 and row.heldout.endswith("heldout.md") and row.origin == "fit"

    heatmap = page.fit_heatmap
    assert heatmap.isVisible() and heatmap.height() >= 200
    cells = heatmap.image.image  # λ across, T up: one cell per grid point
    assert cells.shape == (len(row.grid["lambdas"]), len(row.grid["temperatures"]))
    assert heatmap.result.best[:2] == (row.lambda_, row.temperature)
    grid = np.array(row.grid["ppl"], dtype=float)
    best = np.unravel_index(np.argmin(grid), grid.shape)
    assert (row.grid["lambdas"][best[1]], row.grid["temperatures"][best[0]]) == (row.lambda_, row.temperature)
    assert list(zip(*heatmap.best_marker.getData())) == [(best[1], best[0])]

    # applied: the kNN-LM panel holds the pair, and the page and status bar say so
    assert panel.lambda_slider.value() == round(row.lambda_ * 100) and panel.temperature.value() == row.temperature
    assert window._knn_settings(window.controls.values()).temperature == row.temperature
    assert f"T {row.temperature:g}" in page.knn_label.text()
    message = window.statusBar().currentMessage()
    assert f"λ={row.lambda_:g}, T={row.temperature:g} fitted on heldout.md" in message
    assert "Applied" in page.status.text()

    # moved by hand: choosing the datastore again keeps the user's values, and says so
    panel.temperature.setValue(3.5)
    window.use_datastore("notes")
    assert panel.temperature.value() == 3.5 and "set by hand" in window.statusBar().currentMessage()
    # a new session (nothing moved by hand): choosing the datastore applies its fit
    window.fitted_knn.by_hand = False
    window.use_datastore("notes")
    assert panel.temperature.value() == row.temperature and "fitted on heldout.md" in window.statusBar().currentMessage()


def test_fit_needs_a_datastore(qtbot, window):
    page = window.evaluate_page
    window.datastore_name = None
    page.set_context(window.model, None)
    assert page.fit() is None and "needs a datastore" in page.status.text()

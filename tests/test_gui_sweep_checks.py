"""The Evaluate page refuses a sweep it cannot run with a one-line reason, before the model reads
the held-out text (issue 11: k values beyond the datastore asked for 32 GiB after the forward pass)."""
import pytest

from knn_explorer.gui.main_window import MainWindow


@pytest.fixture
def page(qtbot, small_datastore, tiny_gpt2_dir, tmp_path):
    """The Evaluate page on the tiny model and the shared datastore, set to sweep k."""
    _model, catalog, _datastore, docs = small_datastore
    window = MainWindow(catalog, model_spec=str(tiny_gpt2_dir), build_demo=False)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.model is not None, timeout=30_000)
    window.use_datastore("small")
    page = window.evaluate_page
    window.show_page(page)
    heldout = tmp_path / "heldout.md"
    heldout.write_text(next(docs.rglob("*.md")).read_text(encoding="utf-8")[:400], encoding="utf-8")
    page.text_field.setText(str(heldout))
    page.sweep_mode.setChecked(True)
    page.param_combo.setCurrentIndex(page.param_combo.findData("k"))
    return page


def test_k_beyond_the_datastore_is_refused_before_the_model_runs(qtbot, page, small_datastore, monkeypatch):
    entries = small_datastore[2].size

    def no_forward(*_args, **_kwargs):
        raise AssertionError("the model ran before the sweep's values were checked")

    monkeypatch.setattr(page.model.model, "forward", no_forward)
    page.values_edit.setText(f"1, 8, {entries + 1}")
    job = page.run()
    qtbot.waitUntil(lambda: not job.is_running() and page.run_button.isEnabled(), timeout=30_000)
    assert f"more than the {entries:,} entries" in page.status.text() and "\n" not in page.status.text()
    assert page.window().statusBar().currentMessage() == page.status.text()


@pytest.mark.parametrize("param,values,words", [("k", "0, 8", "whole numbers >= 1"), ("k", "2.5", "whole numbers"),
                                                ("lambda", "0.5, 1.5", "[0, 1]"), ("temperature", "0", "> 0"),
                                                ("size", "0.5, 2", "(0, 1]")])
def test_values_out_of_range_are_refused_at_once(page, param, values, words):
    page.param_combo.setCurrentIndex(page.param_combo.findData(param))
    page.values_edit.setText(values)
    assert page.run() is None  # no job started: the reason is on the page at once
    assert words in page.status.text() and "\n" not in page.status.text()

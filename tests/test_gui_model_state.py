"""What the header shows is what Generate uses: a failed load keeps (and names) the model in use, a
model switch sets aside a datastore built with the other model, and long messages never widen the
window."""
from corpus import write_corpus
from knn_explorer.core.datastore.builder import BuildParameters
from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.library import build_datastore
from knn_explorer.core.models import load_model
from window_helpers import loaded_window


def test_a_failed_load_keeps_the_model_in_use_and_the_header_names_it(qtbot, tmp_path, tiny_gpt2_dir):
    window = loaded_window(qtbot, Catalog(), str(tiny_gpt2_dir))
    width = window.width()
    before = window.model_label.text()
    missing = tmp_path / ("a-model-folder-with-a-very-long-name-" * 5)
    window.load_model(str(missing))
    assert "stays in use" in window.model_label.text()
    window.generate()  # refused while the load runs: the header no longer names what would run
    assert "finish loading" in window.last_error and not window.runs

    qtbot.waitUntil(lambda: window.loading_spec is None, timeout=30_000)
    assert window.model_label.text() == before  # the model Generate runs
    assert window.model.spec == str(tiny_gpt2_dir)
    assert "still using" in window.last_error and "no such model folder" in window.last_error
    assert window.width() == width  # the long reason did not widen the window


def test_a_model_switch_sets_aside_the_other_models_datastore(qtbot, tmp_path, tiny_gpt2_dir, other_tiny_gpt2_dir):
    catalog = Catalog()
    docs = write_corpus(tmp_path / "docs")
    build_datastore(catalog, "notes", load_model(str(tiny_gpt2_dir), device="cpu"), [docs],
                    BuildParameters(context_length=32, stride=16))
    window = loaded_window(qtbot, catalog, str(tiny_gpt2_dir))
    window.use_datastore("notes")
    assert window.datastore_name == "notes" and "notes" in window.datastore_label.text()

    window.load_model(str(other_tiny_gpt2_dir))
    qtbot.waitUntil(lambda: window.loading_spec is None, timeout=30_000)
    assert window.datastore_name is None
    assert window.datastore_label.text().startswith("Datastore: none") and "notes" in window.datastore_label.text()
    assert "set aside" in window.statusBar().currentMessage()
    window.controls.method.setCurrentIndex(window.controls.method.findData("knnlm"))
    window.generate()  # refused in one line, no empty run
    assert "needs a datastore" in window.last_error and not window.runs

    window.load_model(str(tiny_gpt2_dir))  # back to the model it was built with: it is used again
    qtbot.waitUntil(lambda: window.loading_spec is None, timeout=30_000)
    assert window.datastore_name == "notes"


def test_side_by_side_starts_from_the_explore_prompt_and_keeps_its_own(qtbot, tiny_gpt2_dir):
    window = loaded_window(qtbot, Catalog(), str(tiny_gpt2_dir))
    page = window.side_by_side_page
    page.prompt.setPlainText("")
    window.controls.prompt.setPlainText("The quick brown")
    window.show_page(page)
    assert page.prompt.toPlainText() == "The quick brown"
    page.prompt.setPlainText("Another prompt")
    window.pages.setCurrentIndex(0)
    window.show_page(page)
    assert page.prompt.toPlainText() == "Another prompt"

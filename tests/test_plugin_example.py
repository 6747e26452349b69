"""The third-party method in examples/, installed the way a user installs it (pip, into a folder on
sys.path), reaches the registry, `knn-explorer methods`, `generate --method` and `eval --methods`."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from knn_explorer.cli import main
from knn_explorer.core.methods import registry

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "knn-vote-method"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    site, source = tmp_path_factory.mktemp("site-packages"), tmp_path_factory.mktemp("example") / "src"
    shutil.copytree(EXAMPLE, source)  # pip builds in the source folder: keep the checkout clean
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(site), str(source)], check=True, capture_output=True)
    sys.path.insert(0, str(site))
    registry.refresh()
    yield site
    sys.path.remove(str(site))
    sys.modules.pop("knn_vote_method", None)
    registry.refresh()


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_an_installed_plugin_is_listed_and_runs_in_generate_and_eval(installed, small_datastore, capsys,
                                                                     monkeypatch, tmp_path):
    model, catalog, datastore, docs = small_datastore
    monkeypatch.setenv("KNN_EXPLORER_HOME", str(catalog.path.parent))
    assert "knn-vote" in registry.names() and registry.get("knn-vote").label == "kNN majority vote"
    listed = json.loads(run(capsys, "methods", "--json"))["methods"]
    assert {"name": "knn-vote", "needs_datastore": True}.items() <= next(m for m in listed
                                                                          if m["name"] == "knn-vote").items()

    model_dir = model.spec
    lines = run(capsys, "generate", "--model", model_dir, "--datastore", "small", "--method", "knn-vote",
                "--prompt", "The quick brown", "--max-new-tokens", 3, "--k", 4, "--setting", "weight=0.5",
                "--json").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 3 and all(r["method"] == "knn-vote" and r["lambda"] == 0.5 for r in records)
    assert all(len(r["neighbours"]) == 4 and {n["weight"] for n in r["neighbours"]} == {0.25} for r in records)

    held_out = tmp_path / "held-out.txt"
    held_out.write_text("The quick brown fox jumps over the lazy dog. " * 6)
    table = json.loads(run(capsys, "eval", "--model", model_dir, "--datastore", "small", "--text", held_out,
                           "--methods", "none,knnlm,knn-vote", "--context", 32, "--stride", 16, "--json"))
    assert list(table["methods"]) == ["none", "knnlm", "knn-vote"]
    assert table["methods"]["knn-vote"]["ppl"] != table["methods"]["none"]["ppl"]


def test_a_plugin_that_fails_to_import_is_left_out_with_a_reason(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "broken_method-0.1.dist-info").mkdir(parents=True)
    (site / "broken_method-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-method\nVersion: 0.1\n")
    (site / "broken_method-0.1.dist-info" / "entry_points.txt").write_text(
        "[knn_explorer.methods]\nbroken = broken_method:Broken\n")
    (site / "broken_method.py").write_text("raise ImportError('needs a library that is not installed')\n")
    monkeypatch.syspath_prepend(str(site))
    registry.refresh()
    try:
        assert "broken" in registry.names()
        with pytest.warns(RuntimeWarning, match="could not be loaded"):
            loaded = [m.name for m in registry.all_methods()]
        assert "broken" not in loaded and "knnlm" in loaded
        with pytest.raises(registry.UnknownMethod, match="needs a library that is not installed"):
            registry.get("broken")
    finally:
        monkeypatch.undo()
        registry.refresh()


def test_the_installed_plugin_is_in_the_apps_method_list_with_a_generated_panel(installed, qtbot):
    from knn_explorer.gui.widgets.generation_controls import GenerationControls
    from knn_explorer.gui.widgets.settings_panel import SettingsPanel

    controls = GenerationControls()
    qtbot.addWidget(controls)
    index = controls.method.findData("knn-vote")
    assert index >= 0 and controls.method.itemText(index) == "kNN majority vote"
    controls.method.setCurrentIndex(index)
    panel = controls.method_panels.currentWidget()
    assert isinstance(panel, SettingsPanel) and panel.settings().weight == 0.25

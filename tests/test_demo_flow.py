"""The first thing a user does, end to end, with the embedded demo model and demo documents:
build the demo datastore, generate with it, and see retrieval lower perplexity on held-out text."""
import json
from pathlib import Path

import pytest

import cli_helpers
from knn_explorer.core.home import DEMO_DOCS_DIR, DEMO_MODEL_DIR, RESOURCES

HELD_OUT = RESOURCES / "demo" / "heldout" / "tutorial"


def cli(*args):
    """The command's stdout; it must succeed. In this process (see cli_helpers)."""
    return cli_helpers.cli(*args).stdout


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KNN_EXPLORER_HOME", str(home))
        summary = json.loads(cli("build", "--name", "demo-docs", "--model", "demo", "--docs", DEMO_DOCS_DIR, "--json"))
    return home, summary


@pytest.fixture
def in_demo_home(demo_home, monkeypatch):
    monkeypatch.setenv("KNN_EXPLORER_HOME", str(demo_home[0]))
    return demo_home[1]


def test_demo_model_is_small_and_complete():
    files = {p.name for p in DEMO_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert sum(p.stat().st_size for p in DEMO_MODEL_DIR.iterdir()) <= 25 * 2**20


@pytest.mark.slow  # the demo datastore: >50k entries, built once for the module
def test_demo_build_indexes_every_demo_document(in_demo_home):
    summary = in_demo_home
    on_disk = {str(p.resolve()) for p in DEMO_DOCS_DIR.rglob("*.rst")}
    assert {d["path"] for d in summary["documents"]} | {s["path"] for s in summary["skipped"]} == on_disk
    assert len(summary["documents"]) >= len(on_disk) - 1 and summary["entries"] > 50_000


@pytest.mark.slow  # the demo datastore: >50k entries, built once for the module
def test_generated_tokens_are_explained_by_passages_of_the_demo_documents(in_demo_home):
    out = cli("generate", "--model", "demo", "--datastore", "demo-docs", "--method", "knnlm", "--max-new-tokens", 12,
              "--prompt", "To register a view function for a URL, use the", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 12
    for record in records:
        assert record["neighbours"]
        for n in record["neighbours"]:
            path = Path(n["document"])
            assert DEMO_DOCS_DIR.resolve() in path.parents
            assert n["context"] in path.read_text(encoding="utf-8")


@pytest.mark.slow  # the demo datastore: >50k entries, built once for the module
def test_retrieval_lowers_held_out_perplexity_and_lambda_zero_changes_nothing(in_demo_home):
    with_knn = json.loads(cli("eval", "--model", "demo", "--datastore", "demo-docs", "--text", HELD_OUT, "--json"))
    without = json.loads(cli("eval", "--model", "demo", "--datastore", "demo-docs", "--text", HELD_OUT,
                             "--lambda", 0, "--json"))
    assert with_knn["tokens"] > 5_000
    assert with_knn["ppl"] < 0.9 * with_knn["ppl_lm"]
    assert abs(without["ppl"] - without["ppl_lm"]) / without["ppl_lm"] < 1e-6


@pytest.mark.slow  # the demo datastore: >50k entries, built once for the module
def test_spalm_on_the_demo_uses_the_adapter_shipped_with_it(in_demo_home):
    from safetensors.torch import load_file

    from knn_explorer.core.home import DEMO_SPALM_ADAPTER

    records = [json.loads(line) for line in cli("generate", "--model", "demo", "--datastore", "demo-docs", "--method",
                                                 "spalm", "--max-new-tokens", 3, "--prompt",
                                                 "To register a view function, use the", "--json").splitlines()]
    shipped = load_file(str(DEMO_SPALM_ADAPTER))
    assert float(shipped["bias"][0]) != pytest.approx(2.1972, abs=1e-3)  # trained, not the initial ln 9
    assert float(shipped["embedding_delta"].abs().max()) > 0  # and W with it
    for record in records:
        assert record["gate"] != pytest.approx(0.9, abs=1e-4) and 0 < record["gate"] < 1
        assert all(Path(n["document"]).is_relative_to(DEMO_DOCS_DIR) for n in record["neighbours"])
        assert all(n["knn_weight"] is not None for n in record["neighbours"])


@pytest.mark.slow
@pytest.mark.parametrize("page", ["explore", "side-by-side"])
def test_gui_screenshot_runs_the_pages_job_and_writes_the_window(qapp, in_demo_home, tmp_path, page):
    from PySide6.QtGui import QImage

    path = tmp_path / f"{page}.png"
    out = cli("gui", "--screenshot", path, "--size", "1024x700", "--page", page)
    assert f"wrote {path}" in out
    image = QImage(str(path))
    assert (image.width(), image.height()) == (1024, 700)
    # Not a blank window: the token chips and plots give it many colours.
    colours = {image.pixel(x, y) for x in range(0, 1024, 7) for y in range(0, 700, 7)}
    assert len(colours) > 50


@pytest.mark.parametrize("args, words", [
    (("--size", "big"), ["size must look like 1366x768"]),
    (("--size", "100x100"), ["outside 320x240"]),
])
def test_gui_screenshot_refuses_a_bad_size_in_one_line(tmp_path, args, words):
    proc = cli_helpers.cli("gui", "--screenshot", tmp_path / "a.png", *args, check=False)
    cli_helpers.assert_one_line_error(proc, 2, *words)


@pytest.mark.slow  # the demo datastore, and a fit over the whole held-out folder (~45 s on 2 cores)
def test_the_demo_datastore_comes_with_the_fit_that_fitting_it_again_reproduces(in_demo_home):
    from knn_explorer.core.evaluation.fit import DEMO_FIT, DEMO_HELDOUT

    shipped = json.loads(DEMO_FIT.read_text(encoding="utf-8"))
    assert in_demo_home["fitted"]["lambda"] == shipped["lambda"] and in_demo_home["fitted"]["origin"] == "shipped"
    refit = json.loads(cli("fit", "--model", "demo", "--datastore", "demo-docs", "--heldout", DEMO_HELDOUT, "--json"))
    assert (refit["lambda"], refit["temperature"]) == (shipped["lambda"], shipped["temperature"])
    assert refit["grid"]["temperatures"] == shipped["grid"]["temperatures"]
    for key in ("ppl", "ppl_lm"):
        assert refit[key] == pytest.approx(shipped[key], rel=1e-4)
    assert refit["baseline"]["ppl"] == pytest.approx(shipped["baseline"]["ppl"], rel=1e-4)

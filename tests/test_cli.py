"""The CLI as a user runs it: real files, JSON on stdout, one-line errors on stderr. Commands run in this
process (`main(argv)`, as the console script calls it); the tests of the process itself (a reader that
closes the pipe, no display) start real ones."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, cli, cli_process
from corpus import write_corpus


@pytest.fixture
def built(tmp_path, tiny_gpt2_dir):
    docs = write_corpus(tmp_path / "docs")
    (docs / "blob.txt").write_bytes(b"\x00\xff" * 100)
    out = cli("build", "--name", "notes", "--model", tiny_gpt2_dir, "--docs", docs, "--context", 32, "--stride", 16,
              "--json")
    return docs, json.loads(out.stdout)


def test_build_json_names_every_document_and_skip(built):
    docs, summary = built
    assert summary["name"] == "notes" and summary["entries"] > 0
    indexed = {Path(d["path"]).name: d["status"] for d in summary["documents"]}
    assert indexed == {"routing.md": "indexed", "datastore.txt": "indexed", "fox.rst": "indexed"}
    (skip,) = summary["skipped"]
    assert Path(skip["path"]).name == "blob.txt" and skip["status"] == "skipped" and "binary" in skip["reason"]


def test_list_json_shows_documents_with_status_and_reason(built):
    listing = json.loads(cli("list", "--json").stdout)
    (store,) = listing["datastores"]
    assert store["name"] == "notes" and store["status"] == "complete"
    statuses = {Path(d["path"]).name: (d["status"], d.get("reason")) for d in store["documents"]}
    assert statuses["blob.txt"][0] == "skipped" and "binary" in statuses["blob.txt"][1]
    assert statuses["fox.rst"] == ("indexed", None)
    assert listing["unfinished_builds"] == []


def test_generate_json_prints_one_record_per_token_with_sources(built, tiny_gpt2_dir):
    docs, _ = built
    out = cli("generate", "--model", tiny_gpt2_dir, "--datastore", "notes", "--prompt", "The quick brown",
              "--max-new-tokens", 4, "--k", 8, "--json")
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4
    for step, line in enumerate(lines):
        record = json.loads(line)
        assert record["step"] == step and record["method"] == "knnlm" and record["lambda"] == 0.25
        assert record["retrieval"] == {"k": 8, "temperature": 1.0, "distance": "exact", "datastore": "notes"}
        assert record["neighbours"]
        for n in record["neighbours"]:
            assert docs in Path(n["document"]).parents
            assert n["context"] in Path(n["document"]).read_text(encoding="utf-8")


def test_eval_with_lambda_zero_equals_the_lm(built, tiny_gpt2_dir, tmp_path):
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("The quick brown fox jumps over the lazy dog while the route decorator binds a view.\n" * 3)
    result = json.loads(cli("eval", "--model", tiny_gpt2_dir, "--datastore", "notes", "--text", held_out,
                            "--lambda", 0, "--context", 32, "--stride", 16, "--json").stdout)
    assert result["tokens"] > 20 and result["method"] == "knnlm"
    assert abs(result["ppl"] - result["ppl_lm"]) / result["ppl_lm"] < 1e-6
    mixed = json.loads(cli("eval", "--model", tiny_gpt2_dir, "--datastore", "notes", "--text", held_out,
                           "--lambda", 0.5, "--context", 32, "--stride", 16, "--json").stdout)
    assert mixed["ppl_lm"] == result["ppl_lm"] and mixed["ppl"] != mixed["ppl_lm"]


def test_errors_are_one_line_with_nonzero_exit(built, tiny_gpt2_dir, tmp_path):
    assert_one_line_error(cli("generate", "--model", tiny_gpt2_dir, "--datastore", "nope", "--prompt", "x",
                              check=False), 1, "no datastore named 'nope'", "notes")
    assert_one_line_error(cli("generate", "--model", tiny_gpt2_dir, "--method", "knnlm", "--prompt", "x",
                              check=False), 2, "--datastore")
    assert_one_line_error(cli("generate", "--model", tmp_path / "no-model", "--prompt", "x", check=False), 1,
                          "no such model folder")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line_error(cli("eval", "--model", tiny_gpt2_dir, "--text", empty, check=False), 2, "empty file")
    assert_one_line_error(cli("build", "--name", "notes", "--model", tiny_gpt2_dir, "--docs", tmp_path,
                              check=False), 1, "already exists")
    assert_one_line_error(cli("eval", "--model", tiny_gpt2_dir, "--text", empty, "--lambda", 2, check=False), 2,
                          "--lambda")


def test_remove_then_list_is_empty(built):
    assert "removed 'notes'" in cli("remove", "notes").stdout
    assert json.loads(cli("list", "--json").stdout)["datastores"] == []
    assert_one_line_error(cli("remove", "notes", check=False), 1, "no datastore")


def test_gui_without_a_display_is_a_one_line_error(monkeypatch):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    if not sys.platform.startswith("linux"):
        pytest.skip("the check is for Linux desktops")
    assert_one_line_error(cli_process("gui", check=False), 2, "no display")


def test_output_cut_short_by_the_reader_is_not_an_error(built, tiny_gpt2_dir):
    """`knn-explorer generate --json | head -1` must end quietly when head stops reading."""
    proc = subprocess.Popen([sys.executable, "-m", "knn_explorer.cli", "generate", "--model", str(tiny_gpt2_dir),
                             "--datastore", "notes", "--prompt", "The quick", "--max-new-tokens", "40", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()  # like `head -1`
    proc.wait(timeout=300)
    assert json.loads(first)["step"] == 0
    assert "error" not in proc.stderr.read()


def test_generate_and_eval_with_spalm(built, tiny_gpt2_dir, tmp_path):
    docs, _ = built
    out = cli("generate", "--model", tiny_gpt2_dir, "--datastore", "notes", "--method", "spalm", "--prompt",
              "The quick", "--max-new-tokens", 3, "--k", 8, "--json")
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(records) == 3
    for r in records:
        assert r["method"] == "spalm" and 0 < r["gate"] < 1 and r["neighbours"]
        assert all(Path(n["document"]).is_relative_to(docs) for n in r["neighbours"])
    text = next(docs.rglob("*.md"))
    result = json.loads(cli("eval", "--model", tiny_gpt2_dir, "--datastore", "notes", "--method", "spalm", "--text",
                            text, "--context", 32, "--stride", 16, "--json").stdout)
    assert result["method"] == "spalm" and result["datastore"] == "notes" and result["ppl"] != result["ppl_lm"]
    assert_one_line_error(cli("generate", "--model", tiny_gpt2_dir, "--method", "spalm", "--prompt", "x",
                              check=False), 2, "--method spalm needs --datastore")


def test_train_spalm_gate_then_generate_with_it(built, tiny_gpt2_dir, tmp_path):
    gate = tmp_path / "spalm-gate.safetensors"
    out = cli("train-gates", "--method", "spalm", "--model", tiny_gpt2_dir, "--datastore", "notes", "--out", gate,
              "--segment", 16, "--k", 4, "--json")
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    summary = lines[-1]
    assert summary["datastore"] == "notes" and summary["steps"] == len(lines) - 1 > 0 and gate.exists()
    listed = json.loads(cli("list", "--json").stdout)["adapters"]
    assert [(a["name"], a["kind"]) for a in listed] == [("spalm-gate", "spalm")]
    first = json.loads(cli("generate", "--model", tiny_gpt2_dir, "--datastore", "notes", "--method", "spalm",
                           "--adapter", gate, "--prompt", "The quick", "--max-new-tokens", 1, "--k", 4,
                           "--json").stdout)
    untrained = json.loads(cli("generate", "--model", tiny_gpt2_dir, "--datastore", "notes", "--method", "spalm",
                               "--prompt", "The quick", "--max-new-tokens", 1, "--k", 4, "--json").stdout)
    assert untrained["gate"] == pytest.approx(0.9) and first["gate"] != pytest.approx(0.9)
    assert_one_line_error(cli("train-gates", "--method", "spalm", "--model", tiny_gpt2_dir, "--out", gate,
                              check=False), 2, "needs --datastore")


def test_sweep_json_has_the_design_shape_and_runs_are_kept_in_the_catalog(built, tiny_gpt2_dir):
    from knn_explorer.core.datastore.catalog import Catalog

    docs, _ = built
    text = next(docs.rglob("*.md"))
    out = json.loads(cli("sweep", "--model", tiny_gpt2_dir, "--text", text, "--datastore", "notes", "--param",
                         "lambda", "--values", "0,0.25,0.5", "--context", 32, "--stride", 16, "--json").stdout)
    assert out["param"] == "lambda" and [r["value"] for r in out["results"]] == [0.0, 0.25, 0.5]
    assert out["results"][0]["ppl"] == pytest.approx(out["ppl_lm"])
    size = json.loads(cli("sweep", "--model", tiny_gpt2_dir, "--text", text, "--datastore", "notes", "--param",
                          "size", "--values", "0.5,1", "--context", 32, "--stride", 16, "--json").stdout)
    assert [r["entries"] for r in size["results"]][-1] == size["entries"]
    cli("eval", "--model", tiny_gpt2_dir, "--datastore", "notes", "--text", text, "--context", 32, "--stride", 16)
    kept = Catalog().evaluations()
    assert [e.kind for e in kept] == ["eval", "sweep", "sweep"]
    assert kept[-1].results["param"] == "lambda" and kept[-1].datastore == "notes"
    assert_one_line_error(cli("sweep", "--model", tiny_gpt2_dir, "--text", text, "--datastore", "notes", "--param",
                              "lambda", "--values", "0,2", check=False), 2, "[0, 1]")  # bad usage, refused first
    assert_one_line_error(cli("sweep", "--model", tiny_gpt2_dir, "--text", text, "--datastore", "notes", "--param",
                              "k", "--values", "a,b", check=False), 2, "--values")


def test_eval_methods_compares_four_methods_on_one_text_in_one_table(built, tiny_gpt2_dir):
    from knn_explorer.core.datastore.catalog import Catalog

    docs, _ = built
    text = next(docs.rglob("*.md"))
    common = ("--model", tiny_gpt2_dir, "--text", text, "--context", 32, "--stride", 16, "--k", 8)
    out = json.loads(cli("eval", *common, "--datastore", "notes", "--methods", "none,knnlm,spalm,memtrf",
                         "--memory-mode", "joint", "--memory-layer", 1, "--json").stdout)
    assert list(out["methods"]) == ["none", "knnlm", "spalm", "memtrf"]
    assert out["methods"]["none"]["ppl"] == pytest.approx(out["ppl_lm"])
    single = json.loads(cli("eval", *common, "--datastore", "notes", "--json").stdout)  # kNN-LM alone, same windows
    assert out["methods"]["knnlm"]["ppl"] == pytest.approx(single["ppl"], rel=1e-6) and out["tokens"] == single["tokens"]
    table = cli("eval", *common, "--datastore", "notes", "--methods", "none,knnlm").stdout
    assert "LM alone" in table and "kNN-LM" in table and "Memorizing" not in table
    kept = Catalog().evaluations("compare")
    assert len(kept) == 2 and kept[-1].parameters["methods"] == ["none", "knnlm", "spalm", "memtrf"]
    assert_one_line_error(cli("eval", *common, "--methods", "none,knnlm", check=False), 2, "--datastore")
    assert_one_line_error(cli("eval", *common, "--methods", "none,gpt", check=False), 2, "--methods")


def test_memory_size_sweep_needs_no_datastore_and_zero_is_the_lm(built, tiny_gpt2_dir):
    docs, _ = built
    text = next(docs.rglob("*.md"))
    common = ("--model", tiny_gpt2_dir, "--text", text, "--context", 32, "--stride", 16, "--param", "memory")
    out = json.loads(cli("sweep", *common, "--values", "0,64,4096", "--memory-mode", "joint", "--json").stdout)
    assert out["param"] == "memory" and [r["value"] for r in out["results"]] == [0, 64, 4096]
    assert out["results"][0]["ppl"] == pytest.approx(out["ppl_lm"], rel=1e-6)
    assert_one_line_error(cli("sweep", *common, "--values", "0,1.5", check=False), 2, "whole numbers")
    assert_one_line_error(cli("sweep", *common, "--values", "64", "--datastore", "notes", check=False), 2,
                          "no --datastore")
    assert_one_line_error(cli("sweep", "--model", tiny_gpt2_dir, "--text", text, "--param", "k", "--values", "4",
                              check=False), 2, "--datastore")


def test_generate_methods_prints_columns_aligned_by_step(built, tiny_gpt2_dir):
    common = ("generate", "--model", tiny_gpt2_dir, "--prompt", "The quick brown", "--max-new-tokens", 5, "--k", 8)
    out = json.loads(cli(*common, "--datastore", "notes", "--methods", "none,knnlm", "--json").stdout)
    assert out["methods"] == ["none", "knnlm"] and [r["step"] for r in out["rows"]] == [0, 1, 2, 3, 4]
    alone = [json.loads(line) for line in cli(*common, "--datastore", "notes", "--json").stdout.splitlines()]
    assert [r["knnlm_token_id"] for r in out["rows"]] == [r["token_id"] for r in alone]
    assert out["rows"][0]["knnlm_p"] == pytest.approx(alone[0]["chosen_prob_final"], rel=1e-5)
    table = cli(*common, "--datastore", "notes", "--methods", "none,knnlm").stdout.splitlines()
    assert "LM alone" in table[0] and "kNN-LM" in table[0] and len(table) >= 6
    assert_one_line_error(cli(*common, "--methods", "knnlm", check=False), 2, "--datastore")


def test_compress_makes_a_smaller_datastore_that_eval_uses(built, tiny_gpt2_dir, tmp_path):
    dim = built[1]["dim"]
    out = json.loads(cli("compress", "notes", "--name", "notes-small", "--pca", dim // 2, "--prune", 4,
                         "--json").stdout)
    assert out["dim"] == dim // 2 and out["entries"] < built[1]["entries"]
    assert out["compression"]["entries_before"] == built[1]["entries"]
    listed = {d["name"]: d for d in json.loads(cli("list", "--json").stdout)["datastores"]}
    assert listed["notes-small"]["compression"]["pca_dim"] == dim // 2 and listed["notes"]["compression"] is None
    assert f"PCA {dim}→{dim // 2}" in cli("list").stdout
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("The quick brown fox jumps over the lazy dog while the route decorator binds a view.\n" * 3)
    result = json.loads(cli("eval", "--model", tiny_gpt2_dir, "--datastore", "notes-small", "--text", held_out,
                            "--context", 32, "--stride", 16, "--json").stdout)
    assert result["ppl"] != result["ppl_lm"]
    assert_one_line_error(cli("compress", "notes", "--name", "wide", "--pca", dim, check=False), 1, "PCA to")
    assert_one_line_error(cli("compress", "notes-small", "--name", "again", "--prune", 2, check=False), 1,
                          "compressed already")
    assert "wide" not in {d["name"] for d in json.loads(cli("list", "--json").stdout)["datastores"]}


def test_without_the_cluster_extra_a_cluster_build_and_a_sharded_datastore_say_what_to_install(
        tmp_path, tiny_gpt2_dir, monkeypatch):
    from knn_explorer.core.datastore.catalog import DatastoreRow
    from knn_explorer.core.datastore.library import LibraryError, _reader

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where the extra is not installed
    for name in [m for m in sys.modules if m.startswith("knn_explorer.core.cluster")]:
        monkeypatch.delitem(sys.modules, name)
    docs = write_corpus(tmp_path / "docs")
    result = cli("build", "--name", "n", "--model", tiny_gpt2_dir, "--docs", docs, "--cluster", "local", check=False)
    assert_one_line_error(result, 1, "pip install 'knn-explorer[cluster]'")
    with pytest.raises(LibraryError, match=r"sharded on a Ray cluster.*pip install 'knn-explorer\[cluster\]'"):
        _reader(DatastoreRow(name="n", folder=str(tmp_path), cluster="local", shards=2))

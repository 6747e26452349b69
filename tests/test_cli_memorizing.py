"""`--method memtrf` and `train-gates` as a user runs them (in this process, see cli_helpers): adapters on disk."""
import json

import pytest
from safetensors.torch import load_file

from cli_helpers import assert_one_line_error, cli
from corpus import write_corpus


@pytest.fixture(scope="module")
def long_docs(tmp_path_factory):
    # Each document repeats its text, so its second half is there to be remembered.
    docs = write_corpus(tmp_path_factory.mktemp("docs"))
    for path in (p for p in docs.rglob("*") if p.suffix in (".md", ".txt", ".rst")):
        text = path.read_text(encoding="utf-8")
        path.write_text(text + "\n\n" + text, encoding="utf-8")
    return docs


def test_generate_memtrf_json_has_head_gates_and_memory_attention_per_head(tiny_gpt2_dir, long_docs):
    prompt = next(long_docs.rglob("*.md")).read_text(encoding="utf-8")[:600]
    out = cli("generate", "--model", tiny_gpt2_dir, "--method", "memtrf", "--prompt", prompt, "--window", 24,
              "--max-new-tokens", 4, "--k", 4, "--json")
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(records) == 4
    for r in records:
        assert r["method"] == "memtrf" and r["p_knn"] is None
        assert len(r["head_gates"]) == len(r["memory_attention"]) == 2  # the tiny model has 2 heads
        assert all(0 <= g <= 1 for g in r["head_gates"])
        assert all(hits for hits in r["memory_hits"])  # the prompt is longer than the window


def test_train_gates_writes_an_adapter_that_generate_and_eval_load(tmp_path, tiny_gpt2_dir, long_docs):
    adapter = tmp_path / "gates.safetensors"
    out = cli("train-gates", "--model", tiny_gpt2_dir, "--docs", long_docs, "--out", adapter, "--segment", 16,
              "--k", 4, "--lr", 0.5, "--segments-per-step", 1, "--json")
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    summary = lines[-1]
    assert summary["adapter"] == str(adapter) and summary["steps"] == len(lines) - 1 > 5
    listed = json.loads(cli("list", "--json").stdout)["adapters"]
    assert [(a["name"], a["kind"], a["path"], a["layer"]) for a in listed] == [("gates", "memtrf", str(adapter), 1)]
    bias = load_file(str(adapter))["gate_bias"]
    assert bias.shape == (2,)
    assert summary["gates"] == pytest.approx(bias.sigmoid().tolist(), rel=1e-5)
    assert (bias + 16).abs().max() > 1  # training moved the gates from their initial bias of -16
    gen = cli("generate", "--model", tiny_gpt2_dir, "--method", "memtrf", "--adapter", adapter, "--prompt", "The",
              "--max-new-tokens", 2, "--json")
    assert json.loads(gen.stdout.splitlines()[0])["head_gates"] == pytest.approx(summary["gates"], rel=1e-5)
    ev = cli("eval", "--model", tiny_gpt2_dir, "--method", "memtrf", "--adapter", adapter, "--text", long_docs,
             "--window", 16, "--json")
    result = json.loads(ev.stdout)
    assert result["method"] == "memtrf" and result["gates"] == pytest.approx(summary["gates"], rel=1e-5)
    assert result["tokens"] > 100 and result["memory_layer"] == 1 and result["segment"] == 16
    joint = json.loads(cli("eval", "--model", tiny_gpt2_dir, "--method", "memtrf", "--memory-mode", "joint",
                           "--text", long_docs, "--window", 16, "--json").stdout)
    assert joint["ppl_lm"] == pytest.approx(result["ppl_lm"]) and joint["gates"] is None
    assert abs(joint["ppl"] / joint["ppl_lm"] - 1) > 1e-4  # the memory changed the predictions


def test_memtrf_mistakes_are_one_line_errors(tmp_path, tiny_gpt2_dir, long_docs):
    assert_one_line_error(cli("generate", "--model", tiny_gpt2_dir, "--method", "memtrf", "--datastore", "x",
                              "--prompt", "hi", check=False), 2, "no --datastore")
    assert_one_line_error(cli("generate", "--model", tiny_gpt2_dir, "--method", "memtrf", "--memory-layer", 9,
                              "--prompt", "hi", check=False), 1, "layer 9 does not exist")
    not_adapter = tmp_path / "x.safetensors"
    not_adapter.write_bytes(b"not a safetensors file")
    assert_one_line_error(cli("generate", "--model", tiny_gpt2_dir, "--method", "memtrf", "--adapter", not_adapter,
                              "--prompt", "hi", check=False), 1, "cannot read adapter")
    assert_one_line_error(cli("train-gates", "--model", tiny_gpt2_dir, "--docs", long_docs, "--out",
                              tmp_path / "g.bin", check=False), 2, ".safetensors")


def test_the_demo_model_uses_the_gates_it_ships_with():
    from knn_explorer.core.home import DEMO_MEMTRF_ADAPTER

    out = cli("generate", "--model", "demo", "--method", "memtrf", "--prompt", "Flask", "--max-new-tokens", 1, "--json")
    record = json.loads(out.stdout)
    shipped = load_file(str(DEMO_MEMTRF_ADAPTER))["gate_bias"].sigmoid().tolist()
    assert record["head_gates"] == pytest.approx(shipped, rel=1e-5)
    assert max(record["head_gates"]) > 0.1  # learned, not the initial σ(-16)
    untrained = json.loads(cli("generate", "--model", "demo", "--method", "memtrf", "--memory-layer", 2, "--prompt",
                               "Flask", "--max-new-tokens", 1, "--json").stdout)
    assert max(untrained["head_gates"]) < 1e-6  # another layer: no shipped gates apply


def test_one_document_reads_a_folder_as_its_files_joined_so_the_memory_spans_them(tmp_path, tiny_gpt2_dir, long_docs):
    text = next(long_docs.rglob("*.md")).read_text(encoding="utf-8")[:400]
    folder, joined = tmp_path / "two", tmp_path / "joined"
    folder.mkdir(), joined.mkdir()
    (folder / "a.txt").write_text(text, encoding="utf-8")
    (folder / "b.txt").write_text(text, encoding="utf-8")
    (joined / "ab.txt").write_text(text + "\n\n" + text, encoding="utf-8")

    def ppl(path, *extra):
        out = cli("eval", "--model", tiny_gpt2_dir, "--method", "memtrf", "--memory-mode", "joint", "--window", 16,
                  "--k", 4, "--text", path, "--json", *extra)
        return json.loads(out.stdout)["ppl"]

    as_one = ppl(folder, "--one-document")
    assert as_one == pytest.approx(ppl(joined), rel=1e-9)  # the files, in path order, joined by a blank line
    assert as_one != pytest.approx(ppl(folder), rel=1e-6)  # apart, the memory is cleared between them

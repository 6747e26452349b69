"""Building datastores from real folders: contents, sources, resume after a kill, cancel, refusal."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from corpus import write_corpus

from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.folder import Datastore, DatastoreError
from knn_explorer.core.datastore.builder import BuildParameters
from knn_explorer.core.generation.step_generator import GenerationSettings, StepGenerator
from knn_explorer.core.mechanisms.knnlm import KnnLmSettings
from knn_explorer.core.datastore.library import (
    LibraryError,
    build_datastore,
    open_datastore,
    remove_datastore,
)
from knn_explorer.core.methods import Resources
from knn_explorer.core.methods.knnlm import KnnLmMethod
from knn_explorer.core.models import load_model
from knn_explorer.core.progress import Cancelled

PARAMS = BuildParameters(context_length=32, stride=16, batch_size=4)


@pytest.fixture
def model(tiny_gpt2_dir):
    return load_model(str(tiny_gpt2_dir), device="cpu")


def test_user_flow_build_then_generate_shows_neighbours_from_the_folder(tmp_path, model):
    docs = write_corpus(tmp_path / "docs")
    catalog = Catalog()
    phases = []
    report = build_datastore(catalog, "notes", model, [docs], PARAMS, on_progress=lambda p: phases.append(p.phase))
    assert {"reading", "encoding", "indexing"} <= set(phases)
    assert report.manifest["state"] == "complete"

    datastore = open_datastore(catalog, "notes", model)
    generator = StepGenerator(model, "The quick brown", GenerationSettings(max_new_tokens=5, stop_at_eos=False),
                              KnnLmMethod(model, KnnLmSettings(k=8), Resources(datastore)))
    records = list(generator)
    assert len(records) == 5
    for record in records:
        assert record.neighbours, "every token is explained by retrieved neighbours"
        for n in record.neighbours:
            source = Path(n.document)
            assert docs in source.parents
            text = source.read_text(encoding="utf-8")
            start = n.offset - n.highlight[0]
            assert text[start : start + len(n.context)] == n.context
            assert text[n.offset :].startswith(n.token)
        assert record.lambda_ == 0.25
        assert sum(p.prob for p in record.p_final) <= 1.0 + 1e-9


def test_entries_are_next_tokens_with_offsets_and_keys_match_a_fresh_forward(tmp_path, model):
    docs = write_corpus(tmp_path / "docs")
    report = build_datastore(Catalog(), "check", model, [docs], PARAMS)
    ds = Datastore(report.folder)
    tokens = np.fromfile(report.folder / "tokens.i32", dtype=np.int32)
    assert ds.size == sum(d.token_count - 1 for d in ds.documents.values())
    for doc in ds.documents.values():
        doc_tokens = tokens[doc.token_start : doc.token_start + doc.token_count]
        entries = slice(doc.entry_start, doc.entry_start + doc.entry_count)
        assert np.array_equal(ds.values[entries], doc_tokens[1:])
        text = Path(doc.path).read_text(encoding="utf-8")
        for entry in range(doc.entry_start, doc.entry_start + 5):
            _, offset = ds.source(entry)
            assert text[offset:].startswith(model.tokenizer.decode([int(ds.values[entry])]))
    # Entry j of the first document: the key of its first j+1 tokens (within the first window).
    doc = ds.documents[min(ds.documents)]
    ids = torch.from_numpy(tokens[doc.token_start : doc.token_start + 20].astype(np.int64))[None]
    with torch.no_grad(), model.capture_keys() as captured:
        model.model(input_ids=ids)
    expected = captured[0][0, :19].numpy().astype(np.float16)
    assert np.allclose(np.asarray(ds.keys[doc.entry_start : doc.entry_start + 19]), expected, atol=1e-3)


def test_bad_files_are_skipped_with_reasons_and_the_rest_is_built(tmp_path, model):
    docs = write_corpus(tmp_path / "docs")
    (docs / "binary.txt").write_bytes(b"\x00\x01\x02garbage\x00" * 50)
    (docs / "empty.md").write_text("")
    (docs / "latin1.txt").write_bytes("Le café est très bon. Retrieval finds the fox.".encode("latin-1"))
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog")
    (docs / "broken.docx").write_bytes(b"PK\x03\x04 not really a zip")
    catalog = Catalog()
    report = build_datastore(catalog, "mixed", model, [docs], PARAMS)
    skipped = {Path(s["path"]).name: s["reason"] for s in report.skipped}
    assert set(skipped) == {"binary.txt", "empty.md", "broken.pdf", "broken.docx"}
    assert "binary" in skipped["binary.txt"] and "empty" in skipped["empty.md"]
    assert "PDF" in skipped["broken.pdf"] and "DOCX" in skipped["broken.docx"]
    indexed = {Path(d["path"]).name for d in report.documents}
    assert "latin1.txt" in indexed
    latin = next(d for d in report.documents if d["path"].endswith("latin1.txt"))
    assert "café" in (report.folder / "texts" / f"{latin['id']}.txt").read_text(encoding="utf-8")
    rows = {Path(d.path).name: d for d in catalog.datastore("mixed").documents}
    assert rows["broken.pdf"].status == "skipped" and rows["broken.pdf"].reason == skipped["broken.pdf"]
    assert rows["latin1.txt"].status == "indexed"


def test_datastore_of_another_model_is_refused(tmp_path, model, other_tiny_gpt2_dir):
    catalog = Catalog()
    build_datastore(catalog, "mine", model, [write_corpus(tmp_path / "docs")], PARAMS)
    other = load_model(str(other_tiny_gpt2_dir), device="cpu")
    with pytest.raises(DatastoreError, match="built by"):
        open_datastore(catalog, "mine", other)


def test_cancel_discards_the_partial_build(tmp_path, model):
    catalog = Catalog()
    calls = []
    with pytest.raises(Cancelled):
        build_datastore(catalog, "gone", model, [write_corpus(tmp_path / "docs")], PARAMS,
                        should_stop=lambda: len(calls) > 3 or calls.append(1))
    assert catalog.datastore("gone") is None
    assert not catalog.unfinished_builds("gone")
    assert [b.status for b in catalog.builds("gone")] == ["cancelled"]


def test_duplicate_names_and_missing_folders_are_refused(tmp_path, model):
    catalog = Catalog()
    docs = write_corpus(tmp_path / "docs")
    build_datastore(catalog, "once", model, [docs], PARAMS)
    with pytest.raises(LibraryError, match="already exists"):
        build_datastore(catalog, "once", model, [docs], PARAMS)
    with pytest.raises(LibraryError, match="no such file"):
        build_datastore(catalog, "twice", model, [tmp_path / "nowhere"], PARAMS)
    assert [r.name for r in catalog.datastores()] == ["once"]


KILLED_BUILD = textwrap.dedent("""
    import os, signal, sys
    from knn_explorer.core.datastore.catalog import Catalog
    from knn_explorer.core.datastore.builder import BuildParameters
    from knn_explorer.core.datastore.library import build_datastore
    from knn_explorer.core.models import load_model
    import knn_explorer.core.datastore.builder as builder

    builder.CHECKPOINT_SECONDS = 0.0  # checkpoint after every batch, so the kill lands mid-way
    polls = []
    def die_midway():
        polls.append(1)
        if len(polls) == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
        return False
    model = load_model(sys.argv[1], device="cpu")
    build_datastore(Catalog(), "killed", model, [sys.argv[2]],
                    BuildParameters(context_length=32, stride=16, batch_size=2), should_stop=die_midway)
""")


def test_killed_build_is_never_offered_and_the_same_build_resumes(tmp_path, model, tiny_gpt2_dir):
    docs = write_corpus(tmp_path / "docs")
    files = sum(1 for p in docs.rglob("*") if p.is_file())
    kill_at = files + 4  # past reading (one poll per file), a few batches into encoding
    proc = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(tiny_gpt2_dir), str(docs), str(kill_at)],
                          env=os.environ.copy(), capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    catalog = Catalog()
    assert catalog.datastore("killed") is None
    (unfinished,) = catalog.unfinished_builds("killed")
    progress = json.loads((Path(unfinished.folder) / "progress.json").read_text())
    assert progress["windows"] > 0
    with pytest.raises(LibraryError, match="not complete"):
        open_datastore(catalog, "killed", model)

    report = build_datastore(catalog, "killed", model, [docs], BuildParameters(context_length=32, stride=16, batch_size=2))
    assert report.resumed_from == "encoding"
    assert report.folder == Path(unfinished.folder)
    resumed = open_datastore(catalog, "killed", model)
    fresh = Datastore(build_datastore(catalog, "fresh", model, [docs],
                                      BuildParameters(context_length=32, stride=16, batch_size=2)).folder)
    assert np.array_equal(np.asarray(resumed.keys), np.asarray(fresh.keys))
    assert not catalog.unfinished_builds("killed")


def test_remove_deletes_folder_and_catalog_entry(tmp_path, model):
    catalog = Catalog()
    report = build_datastore(catalog, "temp", model, [write_corpus(tmp_path / "docs")], PARAMS)
    remove_datastore(catalog, "temp")
    assert not report.folder.exists()
    assert catalog.datastore("temp") is None
    with pytest.raises(LibraryError, match="no datastore"):
        remove_datastore(catalog, "temp")


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_indexes_work_and_exact_distances_are_recomputed(tmp_path, model, kind):
    catalog = Catalog()
    docs = write_corpus(tmp_path / "docs")
    report = build_datastore(catalog, kind, model, [docs], BuildParameters(context_length=32, stride=16, index=kind))
    assert (report.folder / "index.faiss").is_file() and report.manifest["index"]["kind"] == kind
    datastore = open_datastore(catalog, kind, model)
    queries = np.asarray(datastore.keys[:4], dtype=np.float32) + 0.01
    exact_d, exact_ids = datastore.search(queries, 8, exact=True)
    approx_d, approx_ids = datastore.search(queries, 8, exact=False)
    assert datastore.index_spec.rerank > 1
    # exact: the 8 nearest of the index's rerank·8 candidates, by distances from the stored keys
    _, candidates = datastore.search(queries, 8 * datastore.index_spec.rerank, exact=False)
    keys = np.asarray(datastore.keys, dtype=np.float32)
    true_d = ((keys[candidates] - queries[:, None]) ** 2).sum(-1)
    nearest = np.take_along_axis(candidates, np.argsort(true_d, axis=1, kind="stable")[:, :8], axis=1)
    assert np.array_equal(np.sort(exact_ids, axis=1), np.sort(nearest, axis=1))
    assert np.all(np.diff(exact_d, axis=1) >= 0)
    direct = ((keys[exact_ids] - queries[:, None]) ** 2).sum(-1)
    assert np.allclose(exact_d, direct, rtol=1e-5)
    if kind == "ivfpq":  # the manifest's nprobe is applied, whatever the file was saved with
        assert datastore.searcher.index.nprobe == datastore.index_spec.nprobe
        index = faiss.read_index(str(report.folder / "index.faiss"))
        index.nprobe = 1
        faiss.write_index(index, str(report.folder / "index.faiss"))
        assert open_datastore(catalog, kind, model).searcher.index.nprobe == datastore.index_spec.nprobe > 1
    if kind == "ivfpq":  # PQ distances are estimates: they differ from the true ones
        true_for_approx = ((keys[approx_ids] - queries[:, None]) ** 2).sum(-1)
        assert not np.allclose(approx_d, true_for_approx, rtol=1e-3)


def test_flat_datastore_has_no_index_file_and_exact_search(tmp_path, model):
    report = build_datastore(Catalog(), "flat", model, [write_corpus(tmp_path / "docs")], PARAMS)
    assert report.manifest["index"]["kind"] == "flat" and not (report.folder / "index.faiss").exists()

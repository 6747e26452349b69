"""Four methods on the same targets; the memory-size sweep; kept comparisons and their details."""
import math

import numpy as np
import pytest

from knn_explorer.core.evaluation.comparison import compare, most_changed
from knn_explorer.core.evaluation.perplexity import evaluate
from knn_explorer.core.evaluation.store import (
    details_folder,
    forget,
    keep_comparison,
    load_comparison,
)
from knn_explorer.core.mechanisms.knnlm import KnnLmSettings
from knn_explorer.core.mechanisms.memorizing import MemorizingRetrofit, MemorizingSettings
from knn_explorer.core.methods import Resources
from knn_explorer.core.methods.knnlm import KnnLmMethod
from knn_explorer.core.methods.memorizing import MemorizingTransformerMethod
from knn_explorer.core.methods.spalm import SpalmMethod
from knn_explorer.core.mechanisms.spalm import Spalm, SpalmSettings
from knn_explorer.core.evaluation.sweeps import sweep_memory_size


@pytest.fixture(scope="module")
def setup(small_datastore):
    model, catalog, datastore, docs = small_datastore
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(docs.rglob("*.md")))[:3000]
    return model, catalog, datastore, text


def _joint_retrofit(model, size=4096):
    # joint mode needs no trained gates: retrieved keys compete with local ones in one softmax
    return MemorizingRetrofit(model, MemorizingSettings(layer=1, k=8, memory_size=size, mode="joint"))


def test_knnlm_and_spalm_in_a_comparison_equal_their_own_evaluations(setup):
    model, _catalog, datastore, text = setup
    knn = KnnLmMethod(model, KnnLmSettings(k=8, lambda_=0.3), Resources(datastore))
    spalm = SpalmMethod(model, spalm=Spalm(model, datastore, SpalmSettings(k=8)))
    c = compare(model, text, [knn, spalm], context_length=32, stride=16)
    alone_knn = evaluate(model, text, knn, context_length=32, stride=16)
    alone_spalm = evaluate(model, text, spalm, context_length=32, stride=16)
    assert c.methods == ["none", "knnlm", "spalm"]
    assert c.tokens == alone_knn.tokens == len(model.tokenizer(text)["input_ids"]) - 1
    assert c.ppl("none") == pytest.approx(alone_knn.ppl_lm, rel=1e-6)
    assert c.ppl("knnlm") == pytest.approx(alone_knn.ppl, rel=1e-6)
    assert c.ppl("spalm") == pytest.approx(alone_spalm.ppl, rel=1e-6)
    assert np.array_equal(c.token_ids[c.positions], alone_knn.target_ids)


def test_memtrf_in_a_comparison_scores_the_same_targets_with_the_text_before_each_window(setup):
    model, _catalog, _datastore, text = setup
    retrofit = _joint_retrofit(model)
    try:
        with_memory = compare(model, text, [MemorizingTransformerMethod(model, retrofit=retrofit)], context_length=32,
                              stride=16)
        retrofit.enabled = False  # a batched pass through the switched-off memory layer is the plain model
        plain = compare(model, text, context_length=32, stride=16)
        retrofit.enabled = True
        assert np.array_equal(with_memory.positions, plain.positions)
        assert np.allclose(with_memory.log_p_lm, plain.log_p_lm, atol=1e-5)  # the memory-off pass is the LM
        first_window = with_memory.positions < 32  # nothing before the first window: nothing to remember
        gains = with_memory.gains("memtrf")
        assert np.allclose(gains[first_window], 0.0, atol=1e-5)
        assert np.abs(gains[~first_window]).max() > 1e-3  # later windows do read the memory
        assert len(retrofit.memory) == 0 and retrofit.enabled  # left as found
    finally:
        retrofit.remove()


def test_memory_size_sweep_zero_is_the_lm_and_sizes_change_the_result(setup):
    model, _catalog, _datastore, text = setup
    retrofit = _joint_retrofit(model, size=100)
    try:
        result = sweep_memory_size(model, MemorizingTransformerMethod(model, retrofit=retrofit), text, [0, 16, 4096], context_length=32, stride=16)
        ppl = [p["ppl"] for p in result.results]
        assert result.param == "memory" and [p["value"] for p in result.results] == [0, 16, 4096]
        assert ppl[0] == pytest.approx(result.ppl_lm, rel=1e-6)
        assert ppl[1] != pytest.approx(ppl[2], rel=1e-6)
        assert retrofit.settings.memory_size == 100 and retrofit.memory.capacity == 100  # restored
        with pytest.raises(ValueError, match="whole numbers"):
            sweep_memory_size(model, MemorizingTransformerMethod(model, retrofit=retrofit), text, [1.5])
    finally:
        retrofit.remove()


def test_most_helped_and_hurt_are_the_extremes_of_the_gain(setup):
    model, _catalog, datastore, text = setup
    unseen = " Zebras quietly juggle purple quantum marmalade beneath seventeen arches."  # retrieval hurts here
    c = compare(model, text[:1500] + unseen, [KnnLmMethod(model, KnnLmSettings(k=8, lambda_=0.5), Resources(datastore))],
                context_length=32, stride=16)
    helped, hurt = most_changed(c, "knnlm", count=5)
    gains = c.gains("knnlm")
    assert helped[0].gain == pytest.approx(gains.max()) and hurt[0].gain == pytest.approx(gains.min())
    assert [h.gain for h in helped] == sorted((h.gain for h in helped), reverse=True)
    top = helped[0]
    assert top.token_id == c.token_ids[top.position]
    assert math.log(top.p) - math.log(top.p_lm) == pytest.approx(top.gain, rel=1e-6)
    span = c.window_of(top.index)
    assert span.first_target <= top.position < span.end


def test_a_kept_comparison_comes_back_with_its_details_and_can_be_forgotten(setup):
    model, catalog, datastore, text = setup
    c = compare(model, text, [KnnLmMethod(model, KnnLmSettings(k=8), Resources(datastore))], context_length=32,
                stride=16)
    row_id = keep_comparison(catalog, c, model.name, "small", {"text": "held-out.md"})
    row = next(r for r in catalog.evaluations("compare") if r.id == row_id)
    assert row.results["methods"]["knnlm"]["ppl"] == pytest.approx(c.ppl("knnlm"))
    back = load_comparison(catalog, row)
    assert back.methods == c.methods and back.context_length == 32 and back.stride == 16
    assert np.array_equal(back.token_ids, c.token_ids) and np.array_equal(back.log_p["knnlm"], c.log_p["knnlm"])
    assert not list(details_folder(catalog).glob("*.partial.npz"))
    forget(catalog, row)
    assert all(r.id != row_id for r in catalog.evaluations())
    assert not (details_folder(catalog) / row.parameters["details"]).exists()


def test_the_memory_holds_one_document_at_a_time(setup):
    from knn_explorer.core.evaluation.comparison import encode_documents

    model, _catalog, _datastore, text = setup
    first, second = text[:1500], "Zebras quietly juggle marmalade. " * 12
    ids, starts = encode_documents(model.tokenizer, [first, second])
    assert len(starts) == 2 and model.tokenizer.decode(ids[starts[1]:]).startswith("Zebras")
    assert ids == model.tokenizer("\n\n".join([first, second]))["input_ids"]  # the LM reads the same stream
    retrofit = _joint_retrofit(model)
    try:
        memory = MemorizingTransformerMethod(model, retrofit=retrofit)
        per_document = compare(model, [first, second], [memory], context_length=32, stride=16)
        one_stream = compare(model, "\n\n".join([first, second]), [memory], context_length=32, stride=16)
    finally:
        retrofit.remove()
    assert np.array_equal(per_document.log_p_lm, one_stream.log_p_lm)
    window = next(s for s in per_document_windows(per_document) if s.first_target >= starts[1])
    fresh = (per_document.positions >= window.first_target) & (per_document.positions < window.end)
    assert window.begin < starts[1]  # nothing of the new document has left local view yet: an empty memory
    assert np.allclose(per_document.gains("memtrf")[fresh], 0.0, atol=1e-5)
    assert not np.allclose(one_stream.gains("memtrf")[fresh], 0.0, atol=1e-5)  # one stream remembers doc 1
    assert per_document.document_start(int(per_document.positions[-1])) == starts[1]


def per_document_windows(c):
    from knn_explorer.core.windows import sliding_windows

    return sliding_windows(len(c.token_ids), c.context_length, c.stride)


def test_a_kept_sweep_exports_as_csv_and_strict_json_with_infinity_as_null(setup, tmp_path):
    import csv
    import json

    from knn_explorer.core.evaluation.export import write_csv, write_json
    from knn_explorer.core.evaluation.sweeps import collect, sweep

    model, catalog, datastore, text = setup
    unseen = " Zebras quietly juggle purple quantum marmalade."  # λ = 1 gives these tokens p = 0
    result = sweep(datastore, collect(model, text[:600] + unseen, 32, 16), "lambda", [0.0, 0.5, 1.0],
                   KnnLmSettings(k=8))
    assert math.isinf(result.results[-1]["ppl"])
    row_id = catalog.record_evaluation("sweep", model.name, "small", {"param": "lambda"}, result.to_json())
    row = next(r for r in catalog.evaluations("sweep") if r.id == row_id)
    with open(write_csv(row, tmp_path / "sweep.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["value"]) for r in rows] == [0.0, 0.5, 1.0] and rows[-1]["ppl"] == ""
    assert float(rows[1]["ppl"]) == pytest.approx(result.results[1]["ppl"]) and float(rows[0]["ppl_lm"]) > 0
    exported = json.loads(write_json(row, tmp_path / "sweep.json").read_text(encoding="utf-8"),
                          parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert exported["results"]["results"][-1]["ppl"] is None and exported["kind"] == "sweep"


def test_a_sweeps_csv_carries_the_model_datastore_and_the_settings_it_held_fixed(setup, tmp_path):
    import csv

    from knn_explorer.core.evaluation.export import write_csv
    from knn_explorer.core.evaluation.sweeps import collect, sweep

    model, catalog, datastore, text = setup
    collected = collect(model, text[:600], 32, 16)
    files = []
    for temperature in (1.0, 8.0):
        result = sweep(datastore, collected, "lambda", [0.25, 0.5], KnnLmSettings(k=8, temperature=temperature))
        row_id = catalog.record_evaluation("sweep", model.name, "small", {"param": "lambda"}, result.to_json())
        row = next(r for r in catalog.evaluations("sweep") if r.id == row_id)
        with open(write_csv(row, tmp_path / f"sweep-{temperature}.csv"), newline="", encoding="utf-8") as f:
            files.append(list(csv.DictReader(f)))
    for rows, temperature in zip(files, (1.0, 8.0)):
        assert {(r["model"], r["datastore"], r["k"], float(r["temperature"])) for r in rows} == {
            (model.name, "small", "8", temperature)}


def test_compare_hands_over_each_methods_result_as_soon_as_it_is_done(setup):
    """Issue 13 item 7: Compare showed nothing for minutes. With `on_method`, each method is scored in
    a pass of its own and delivered before the next starts; the numbers equal one shared pass's."""
    model, _catalog, datastore, text = setup
    knn = KnnLmMethod(model, KnnLmSettings(k=8, lambda_=0.3), Resources(datastore))
    spalm = SpalmMethod(model, spalm=Spalm(model, datastore, SpalmSettings(k=8)))
    log = []
    c = compare(model, text, [knn, spalm], context_length=32, stride=16,
                on_progress=lambda p: log.append(("progress", p.phase, p.done, p.total)),
                on_method=lambda name, partial: log.append(("done", name, partial.methods, partial.ppl(name))))
    done = [entry for entry in log if entry[0] == "done"]
    assert [(name, methods) for _, name, methods, _ in done] == [
        ("none", ["none"]), ("knnlm", ["none", "knnlm"]), ("spalm", ["none", "knnlm", "spalm"])]
    assert all(ppl == c.ppl(name) for _, name, _, ppl in done)
    phases = list(dict.fromkeys(entry[1] for entry in log if entry[0] == "progress"))
    assert phases == ["scoring kNN-LM (1/2)", "scoring SPALM (2/2)"]
    knn_done = log.index(done[1])
    assert all(entry[1] != "scoring SPALM (2/2)" for entry in log[:knn_done])  # kNN-LM's before SPALM starts
    shared = compare(model, text, [knn, spalm], context_length=32, stride=16)  # one pass for all
    for method in shared.methods:
        assert c.ppl(method) == pytest.approx(shared.ppl(method), rel=1e-9)


def test_method_by_method_with_a_memory_in_the_set_sets_it_aside_in_the_other_passes(setup):
    """The kNN-LM pass runs batched with the memory layer plain; the memory's own pass reads the text
    before each window as in one shared pass."""
    model, _catalog, datastore, text = setup
    retrofit = _joint_retrofit(model)
    try:
        methods = [KnnLmMethod(model, KnnLmSettings(k=8), Resources(datastore)),
                   MemorizingTransformerMethod(model, retrofit=retrofit)]
        done = []
        one_by_one = compare(model, text, methods, context_length=32, stride=16,
                             on_method=lambda name, _partial: done.append(name))
        shared = compare(model, text, methods, context_length=32, stride=16)
        assert done == ["none", "knnlm", "memtrf"] and len(retrofit.memory) == 0 and retrofit.enabled
    finally:
        retrofit.remove()
    for method in shared.methods:
        assert one_by_one.ppl(method) == pytest.approx(shared.ppl(method), rel=1e-5)
    assert np.abs(one_by_one.gains("memtrf")).max() > 1e-3  # the memory did take part

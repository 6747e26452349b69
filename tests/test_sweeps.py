"""Sweeps: the target-probability shortcut equals the full evaluation; size sweeps reuse stored keys."""
import math

import pytest

from knn_explorer.core.evaluation.perplexity import evaluate
from knn_explorer.core.mechanisms.knnlm import KnnLmSettings
from knn_explorer.core.methods import Resources
from knn_explorer.core.methods.knnlm import KnnLmMethod
from knn_explorer.core.evaluation.sweeps import collect, sweep


@pytest.fixture(scope="module")
def setup(small_datastore):
    model, _catalog, datastore, docs = small_datastore
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(docs.rglob("*.md")))
    return model, datastore, text


@pytest.mark.parametrize("param,value,settings", [
    ("lambda", 0.25, KnnLmSettings(k=8, lambda_=0.25)),
    ("lambda", 0.9, KnnLmSettings(k=8, lambda_=0.9)),
    ("k", 3, KnnLmSettings(k=3, lambda_=0.5)),
    ("temperature", 10.0, KnnLmSettings(k=8, lambda_=0.5, temperature=10.0)),
])
def test_each_sweep_point_equals_a_full_evaluation_with_those_settings(setup, param, value, settings):
    model, datastore, text = setup
    collected = collect(model, text, context_length=32, stride=16)
    base = KnnLmSettings(k=8, lambda_=0.5)
    point = sweep(datastore, collected, param, [value], base).results[0]
    full = evaluate(model, text, KnnLmMethod(model, settings, Resources(datastore)), context_length=32, stride=16)
    assert point["ppl"] == pytest.approx(full.ppl, rel=1e-6)


def test_lambda_zero_is_the_lm_and_the_lm_line_is_shared(setup):
    model, datastore, text = setup
    collected = collect(model, text, context_length=32, stride=16)
    result = sweep(datastore, collected, "lambda", [0.0, 0.5])
    full = evaluate(model, text, context_length=32, stride=16)
    assert result.ppl_lm == pytest.approx(full.ppl_lm, rel=1e-9)
    assert result.results[0]["ppl"] == pytest.approx(result.ppl_lm, rel=1e-12)
    assert result.to_json()["param"] == "lambda" and "lambda" not in result.fixed and result.fixed["k"] == 32


def test_size_sweep_searches_stored_keys_without_running_the_model(setup, monkeypatch):
    model, datastore, text = setup
    collected = collect(model, text, context_length=32, stride=16)
    full_point = sweep(datastore, collected, "lambda", [0.25], KnnLmSettings(k=8)).results[0]["ppl"]

    def no_forward(*_args, **_kwargs):
        raise AssertionError("a size sweep must not run the model")

    monkeypatch.setattr(model.model, "forward", no_forward)
    result = sweep(datastore, collected, "size", [0.1, 0.5, 1.0], KnnLmSettings(k=8, lambda_=0.25))
    entries = [p["entries"] for p in result.results]
    assert entries == [round(0.1 * datastore.size), round(0.5 * datastore.size), datastore.size]
    assert result.results[-1]["ppl"] == pytest.approx(full_point, rel=1e-5)  # all of it: the full datastore
    assert all(math.isfinite(p["ppl"]) for p in result.results)


def test_bad_sweep_values_are_refused_with_a_reason(setup):
    model, datastore, text = setup
    collected = collect(model, text[:400], context_length=32, stride=16)
    for param, values, words in (("lambda", [1.5], "[0, 1]"), ("k", [2.5], "whole"), ("size", [0], "(0, 1]"),
                                 ("temperature", [-1], "> 0"), ("nprobe", [1], "unknown sweep parameter")):
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("(", r"\(")):
            sweep(datastore, collected, param, values)


def test_an_infinite_perplexity_is_null_in_json(setup):
    import json

    model, datastore, text = setup
    unseen = "Zebras quietly juggle purple quantum marmalade beneath seventeen arches. " * 3  # not in the datastore
    collected = collect(model, unseen, context_length=32, stride=16)
    result = sweep(datastore, collected, "lambda", [1.0], KnnLmSettings(k=1))
    assert math.isinf(result.results[0]["ppl"])  # k = 1: some target's only neighbour proposes another token
    assert json.loads(json.dumps(result.to_json(), allow_nan=False))["results"][0]["ppl"] is None


def test_a_sweep_reports_every_phase_and_reaches_its_total_only_at_the_end(setup):
    """Issue 13 item 7: the bar sat at "31,043/31,043, ETA 0s" while retrieval ran for a minute."""
    model, datastore, text = setup
    events = []
    collected = collect(model, text[:1500], context_length=32, stride=16, on_progress=events.append)
    forward = len(events)
    result = sweep(datastore, collected, "size", [0.5, 1.0], KnnLmSettings(k=4), on_progress=events.append)
    assert {e.phase for e in events[:forward]} == {"forward pass"} and events[forward - 1].done == events[0].total
    retrieving = events[forward:]
    assert retrieving and all(e.phase.startswith("retrieving") for e in retrieving)
    assert retrieving[0].done == 0  # the bar leaves the forward pass's 100% as retrieval starts
    assert [e.phase for e in retrieving][-1] == "retrieving, size 1 (2/2)"  # which of the retrievals it is
    assert retrieving[-1].done == retrieving[-1].total == 2 * result.tokens  # at the end, and only there
    assert all(e.done < e.total for e in retrieving[:-1])
    assert [e.done for e in retrieving] == sorted(e.done for e in retrieving)

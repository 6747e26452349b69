"""Adaptive retrieval (He et al. 2021) on a real built datastore: its two limits are kNN-LM and the
LM alone, skipped tokens search nothing and say so in their records, the λ predictor trains with
leave-one-out retrieval, and the fraction sweep's ends are those limits."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from knn_explorer.core.evaluation.comparison import compare
from knn_explorer.core.generation.step_generator import GenerationSettings, StepGenerator
from knn_explorer.core.mechanisms.knnlm import KnnLmSettings
from knn_explorer.core.methods import PassOutputs, Resources, registry
from knn_explorer.core.methods.adaptive import AdaptiveRetrievalMethod, AdaptiveRetrievalSettings
from knn_explorer.core.methods.adaptive_predictor import RetrievalPredictor, load_predictor, save_predictor
from knn_explorer.core.methods.knnlm import KnnLmMethod

TEXT = "The quick brown fox jumps over the lazy dog. Flask routes map URLs to view functions. " * 3


@pytest.fixture(scope="module")
def built(small_datastore):
    model, catalog, datastore, docs = small_datastore
    return model, catalog, datastore, docs


def predictor_file(path: Path, model, datastore, constant: float | None = None, seed: int = 0) -> Path:
    """A predictor for the tiny model: random weights (λ̂ varies from token to token), or one that
    predicts `constant` everywhere."""
    torch.manual_seed(seed)
    predictor = RetrievalPredictor(datastore.dim)
    with torch.no_grad():
        last = predictor.net[-1]
        if constant is None:
            last.weight.normal_(0, 2.0)
        else:
            last.weight.zero_()
            last.bias.fill_(math.log(constant / (1 - constant)))
    outputs = shared_pass(model)  # quantiles of λ̂ on the test text, as training keeps them on its rows
    lambdas = predictor.predict(outputs.log_p_lm, outputs.keys)
    predictor.lambda_quantiles.copy_(torch.quantile(lambdas, torch.linspace(0, 1, 101, dtype=torch.float64)))
    return save_predictor(path, predictor, model, {"made_by": "a test"})


def adaptive(model, datastore, adapter: Path, fraction: float, k: int = 8) -> AdaptiveRetrievalMethod:
    return AdaptiveRetrievalMethod(model, AdaptiveRetrievalSettings(k=k, retrieve_fraction=fraction),
                                   Resources(datastore, adapter))


def shared_pass(model, text=TEXT) -> PassOutputs:
    ids = torch.tensor([model.tokenizer(text)["input_ids"][:60]])
    with torch.no_grad(), model.capture_keys() as keys:
        logits = model.model(input_ids=ids).logits[0]
    return PassOutputs(log_p_lm=torch.log_softmax(logits.float(), -1), keys=keys[-1][0].float())


def test_it_is_registered_and_listed():
    assert registry.get("adaptive") is AdaptiveRetrievalMethod
    assert AdaptiveRetrievalMethod.needs_datastore


def test_retrieving_every_token_with_a_constant_lambda_is_knnlm(built, tmp_path):
    model, _, datastore, _ = built
    method = adaptive(model, datastore, predictor_file(tmp_path / "c.safetensors", model, datastore, 0.3), 1.0)
    assert method.threshold == 0.0
    knn = KnnLmMethod(model, KnnLmSettings(k=8, lambda_=0.3), Resources(datastore))
    outputs = shared_pass(model)
    ours, theirs = method.combine(outputs), knn.combine(outputs)
    assert bool(ours.details.retrieved.all()) and torch.allclose(ours.details.lambdas, torch.tensor(0.3, dtype=torch.float64))
    assert torch.allclose(ours.log_p_final, theirs.log_p_final, rtol=0, atol=1e-6)
    c = compare(model, TEXT, [method, knn], context_length=32, stride=16)
    assert c.ppl("adaptive") == pytest.approx(c.ppl("knnlm"), rel=1e-6) and c.ppl("adaptive") != c.ppl("none")


def test_above_every_prediction_it_is_the_lm_alone_and_searches_nothing(built, tmp_path, monkeypatch):
    model, _, datastore, _ = built
    adapter = predictor_file(tmp_path / "r.safetensors", model, datastore)
    searched = []
    search = datastore.search
    monkeypatch.setattr(datastore, "search", lambda q, k, exact=True: searched.append(len(q)) or search(q, k, exact))
    never = adaptive(model, datastore, adapter, 0.0)
    assert never.threshold == math.inf
    c = compare(model, TEXT, [never], context_length=32, stride=16)
    assert searched == [] and np.array_equal(c.log_probs("adaptive"), c.log_p_lm)
    assert never.retrieved_share == 0.0
    half = adaptive(model, datastore, adapter, 0.5)
    outputs = shared_pass(model)
    step = half.combine(outputs)
    retrieved = int(step.details.retrieved.sum())
    assert 0 < retrieved < len(outputs.keys) and sum(searched) == retrieved  # only those rows were searched
    skipped = ~step.details.retrieved
    assert torch.equal(step.log_p_final[skipped], outputs.log_p_lm.double()[skipped])


def test_records_show_skipped_tokens_with_lambda_zero_and_no_neighbours(built, tmp_path):
    model, _, datastore, docs = built
    method = adaptive(model, datastore, predictor_file(tmp_path / "r.safetensors", model, datastore), 0.5)
    outputs = shared_pass(model)
    step = method.combine(outputs)
    method.threshold = float(step.details.lambdas.median())  # about half of these rows retrieve
    step = method.combine(outputs)
    context = StepGenerator(model, "x", GenerationSettings(max_new_tokens=1))
    reference = KnnLmMethod(model, KnnLmSettings(k=8), Resources(datastore)).knn
    kinds = set()
    for row in range(len(outputs.keys)):
        fields = method.describe_step(step, row, context)
        if bool(step.details.retrieved[row]):
            kinds.add("retrieved")
            assert fields["lambda_"] == pytest.approx(float(step.details.lambdas[row])) and fields["lambda_"] > 0
            expected = reference.retrieve(outputs.keys[row: row + 1])
            assert [n.token_id for n in fields["neighbours"]] == expected.values[0].tolist()  # this row's own
            assert all(docs in Path(n.document).parents for n in fields["neighbours"])
            assert fields["retrieval"].k == 8 and fields["p_knn"]
        else:
            kinds.add("skipped")
            assert fields == {"lambda_": 0.0, "neighbours": [], "retrieval": None, "p_knn": None}
    assert kinds == {"retrieved", "skipped"}
    records = list(StepGenerator(model, "The quick brown", GenerationSettings(max_new_tokens=4, stop_at_eos=False),
                                 adaptive(model, datastore, method.predictor_path, 0.0)))
    assert all(r.method == "adaptive" and r.lambda_ == 0.0 and not r.neighbours and r.retrieval is None
               and r.chosen_prob_final == pytest.approx(r.chosen_prob_lm, rel=1e-6) for r in records)


@pytest.mark.parametrize("leave_out", ["document", "entry"])
def test_training_lowers_the_loss_without_retrieving_what_it_leaves_out_and_round_trips(
        built, tmp_path, other_tiny_gpt2_dir, leave_out):
    import knn_explorer.core.methods.adaptive_training as training
    from knn_explorer.core.training.adapters import AdapterError
    from knn_explorer.core.models import load_model

    model, _, datastore, _ = built
    documents = datastore.positions[:, 0]
    seen = []
    name = "without_own_document" if leave_out == "document" else "without_self"
    original = getattr(training, name)

    def spy(retrieval, own, *args, **kwargs):
        kept = original(retrieval, own, *args, **kwargs)
        seen.append((retrieval.ids, kept.ids, own))
        return kept

    setattr(training, name, spy)
    try:
        settings = training.AdaptiveTrainingSettings(k=4, epochs=4, batch_size=32, learning_rate=0.01,
                                                     validation_every=3, leave_out=leave_out)
        predictor, report = training.train_adaptive_predictor(model, datastore, settings, tmp_path / "p.safetensors")
    finally:
        setattr(training, name, original)
    assert report.tokens + report.validation_tokens == datastore.size  # every entry, once
    assert report.loss_after < report.loss_before
    if leave_out == "entry":
        assert any((ids[:, 0] == own).all() for ids, _, own in seen)  # each target finds itself first...
        assert all((kept != own[:, None]).all() for _, kept, own in seen)  # ...and it is dropped
    else:
        assert any((documents[ids] == own).any() for ids, _, own in seen)  # its own document is found...
        assert all((documents[kept[kept >= 0]] != own).all() for _, kept, own in seen)  # ...and dropped
    quantiles = predictor.lambda_quantiles
    assert bool((quantiles[1:] >= quantiles[:-1]).all()) and 0 < float(quantiles[0]) <= float(quantiles[-1]) < 1
    loaded, details = load_predictor(tmp_path / "p.safetensors", model)
    outputs = shared_pass(model)
    assert torch.equal(loaded.predict(outputs.log_p_lm, outputs.keys), predictor.predict(outputs.log_p_lm, outputs.keys))
    assert details["datastore"] == "small" and details["settings"]["leave_out"] == leave_out
    other = load_model(str(other_tiny_gpt2_dir), device="cpu")
    with pytest.raises(AdapterError, match="trained for model"):
        load_predictor(tmp_path / "p.safetensors", other)


def test_fraction_sweep_runs_from_the_lm_to_the_method_and_tokens_per_second(built, tmp_path):
    from knn_explorer.core.methods.adaptive_sweep import generation_speed, sweep_retrieved_fraction

    model, _, datastore, _ = built
    adapter = predictor_file(tmp_path / "r.safetensors", model, datastore)
    method = adaptive(model, datastore, adapter, 1.0)
    sweep = sweep_retrieved_fraction(model, method, TEXT, fractions=(0.0, 0.5, 1.0), context_length=32, stride=16)
    every = compare(model, TEXT, [method, KnnLmMethod(model, KnnLmSettings(k=8), Resources(datastore))],
                    context_length=32, stride=16)
    none, half, full = sweep.points
    assert sweep.tokens == every.tokens and sweep.ppl_lm == pytest.approx(every.ppl("none"), rel=1e-12)
    assert none["ppl"] == pytest.approx(every.ppl("none"), rel=1e-12) and none["threshold"] == math.inf
    assert full["ppl"] == pytest.approx(every.ppl("adaptive"), rel=1e-9)
    assert sweep.ppl_knnlm == pytest.approx(every.ppl("knnlm"), rel=1e-9) == full["ppl_fixed_lambda"]
    assert half["ppl_random"] != half["ppl"]
    assert json.loads(json.dumps(sweep.to_json(), allow_nan=False))["points"][0]["threshold"] is None
    speeds = generation_speed(model, [method, adaptive(model, datastore, adapter, 0.0)], ["The quick"], tokens=3)
    assert [s["tokens"] for s in speeds] == [3, 3] and all(s["tokens_per_s"] > 0 for s in speeds)
    assert speeds[0]["retrieved"] == 1.0 and speeds[1]["retrieved"] == 0.0


def test_the_cli_runs_it_through_generate_and_eval(built, tmp_path, monkeypatch, capsys):
    from knn_explorer.cli import main

    model, catalog, datastore, _ = built
    monkeypatch.setenv("KNN_EXPLORER_HOME", str(catalog.path.parent))
    adapter = predictor_file(tmp_path / "r.safetensors", model, datastore)

    def run(*args):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        return captured.out

    lines = run("generate", "--model", model.spec, "--datastore", "small", "--method", "adaptive", "--adapter", adapter,
                "--prompt", "The quick brown", "--max-new-tokens", 3, "--k", 4, "--setting", "retrieve_fraction=1",
                "--json").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 3 and all(r["method"] == "adaptive" and 0 < r["lambda"] < 1 and len(r["neighbours"]) == 4
                                     for r in records)
    held_out = tmp_path / "held-out.txt"
    held_out.write_text(TEXT)
    table = json.loads(run("eval", "--model", model.spec, "--datastore", "small", "--text", held_out, "--adapter",
                           adapter, "--methods", "none,knnlm,adaptive", "--context", 32, "--stride", 16, "--json"))
    assert list(table["methods"]) == ["none", "knnlm", "adaptive"]
    assert table["settings"]["retrieve_fraction"] == 0.5
    code = main(["generate", "--model", model.spec, "--datastore", "small", "--method", "adaptive",
                 "--prompt", "x", "--json"])  # no predictor for this model: one line saying how to make one
    err = capsys.readouterr().err
    assert code != 0 and "λ predictor" in err and len(err.strip().splitlines()) == 1


def test_its_own_sweep_hook_is_the_fraction_sweep_with_kNN_LM_beside_and_tokens_per_second(built, tmp_path):
    from knn_explorer.core.methods import Method, MethodError, get
    from knn_explorer.core.methods.adaptive_sweep import sweep_retrieved_fraction

    model, _, datastore, _ = built
    method = adaptive(model, datastore, predictor_file(tmp_path / "r.safetensors", model, datastore), 0.5)
    assert get("spalm").sweeps == {} and Method.sweeps == {}  # the default: no sweeps of its own
    assert list(AdaptiveRetrievalMethod.sweeps) == ["retrieve_fraction"]
    assert AdaptiveRetrievalMethod.sweeps["retrieve_fraction"].values == (0.25, 0.5, 0.75, 1.0)
    for param, values in (("k", [1.0]), ("retrieve_fraction", [0.5, 1.5]), ("retrieve_fraction", [])):
        with pytest.raises(MethodError):
            AdaptiveRetrievalMethod.check_sweep(param, values)
    with pytest.raises(MethodError):
        get("none")(model).sweep([TEXT], "lambda", [0.5])  # the default: no sweep to run

    result = method.sweep([TEXT], "retrieve_fraction", [0.25, 0.5, 1.0], context_length=32, stride=16)
    plain = sweep_retrieved_fraction(model, method, [TEXT], (0.25, 0.5, 1.0), context_length=32, stride=16)
    full = compare(model, [TEXT], [adaptive(model, datastore, method.predictor_path, 1.0)], context_length=32,
                   stride=16)
    assert result.param == "adaptive.retrieve_fraction" and result.tokens == plain.tokens
    assert [p["value"] for p in result.results] == [0.25, 0.5, 1.0]
    assert [p["ppl"] for p in result.results] == [p["ppl"] for p in plain.points]
    assert result.results[-1]["ppl"] == pytest.approx(full.ppl("adaptive"), rel=1e-9)
    assert list(result.references.values()) == [pytest.approx(plain.ppl_knnlm)]
    assert all(p["tokens_per_s"] > 0 for p in result.results) and result.fixed["tokens_per_s_lm"] > 0
    assert result.results[-1]["retrieved_in_generation"] == 1.0
    assert "retrieve_fraction" not in result.fixed and method.settings.retrieve_fraction == 0.5  # left as it was
    out = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert out["references"] and out["results"][0]["tokens_per_s"] > 0


def test_the_cli_sweeps_it_as_method_dot_setting(built, tmp_path, monkeypatch, capsys):
    from knn_explorer.cli import main

    model, catalog, datastore, _ = built
    monkeypatch.setenv("KNN_EXPLORER_HOME", str(catalog.path.parent))
    adapter = predictor_file(tmp_path / "r.safetensors", model, datastore)
    held_out = tmp_path / "held-out.txt"
    held_out.write_text(TEXT)
    code = main(["sweep", "--model", model.spec, "--datastore", "small", "--text", str(held_out), "--adapter",
                 str(adapter), "--param", "adaptive.retrieve_fraction", "--values", "0.5,1", "--k", "8",
                 "--context", "32", "--stride", "16", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["param"] == "adaptive.retrieve_fraction" and [p["value"] for p in out["results"]] == [0.5, 1]
    assert out["references"] and out["results"][1]["tokens_per_s"] > 0 and out["k"] == 8
    code = main(["sweep", "--model", model.spec, "--datastore", "small", "--text", str(held_out),
                 "--param", "adaptive.k", "--values", "1"])
    err = capsys.readouterr().err
    assert code != 0 and "no sweep of 'k'" in err and len(err.strip().splitlines()) == 1

"""SPALM checked against a direct numpy computation, on a real built datastore; generation with it."""
from pathlib import Path

import numpy as np
import pytest
import torch

from knn_explorer.core.generation.step_generator import GenerationSettings, StepGenerator
from knn_explorer.core.methods.spalm import SpalmMethod
from knn_explorer.core.models import capture_output_input
from knn_explorer.core.mechanisms.spalm import INITIAL_GATE_BIAS, Spalm, SpalmSettings


@pytest.fixture(scope="module")
def built(small_datastore):
    model, _catalog, datastore, docs = small_datastore
    return model, datastore, docs


def hidden_and_query(model, text="The quick brown fox"):
    ids = torch.tensor([model.tokenizer(text)["input_ids"]])
    with torch.no_grad(), model.capture_keys() as keys, capture_output_input(model) as hidden:
        logits = model.model(input_ids=ids).logits[0, -1]
    return hidden[0][0, -1], keys[0][0, -1].float(), torch.log_softmax(logits.double(), -1)


@pytest.mark.parametrize("k", [1, 8])
def test_aggregation_and_gate_match_numpy(built, k):
    model, datastore, _ = built
    spalm = Spalm(model, datastore, SpalmSettings(k=k))
    with torch.no_grad():
        spalm.gate.weight.normal_(0, 0.3)  # a gate that depends on h_t, not only its bias
        h, q, _ = hidden_and_query(model)
        step = spalm.combine(h[None], q[None])
    emb = model.model.get_input_embeddings().weight.detach().double().numpy()
    out = model.model.get_output_embeddings()
    w_out = out.weight.detach().double().numpy()
    bias = out.bias.detach().double().numpy() if getattr(out, "bias", None) is not None else 0.0
    hn = h.double().numpy()
    ys = step.retrieval.values[0].numpy()
    e = emb[ys]  # k×d
    scores = e @ hn
    a = np.exp(scores - scores.max())
    a /= a.sum()
    m = (a[:, None] * e).sum(0)
    g = 1 / (1 + np.exp(-(hn @ spalm.gate.weight.detach().double().numpy() + INITIAL_GATE_BIAS)))
    z = (1 - g) * m + g * hn
    logits = w_out @ z + bias
    log_p = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    assert np.allclose(step.log_p_final[0].numpy(), log_p, atol=1e-4)
    assert np.allclose(step.attention[0].numpy(), a, atol=1e-5)
    assert float(step.gates[0]) == pytest.approx(g, abs=1e-6)
    assert float(step.p_memory[0].sum()) == pytest.approx(1.0)


def test_gate_forced_to_one_is_the_base_model(built):
    model, datastore, _ = built
    spalm = Spalm(model, datastore)
    spalm.forced_gate = 1.0
    with torch.no_grad():
        h, q, log_p_lm = hidden_and_query(model, "Retrieval helps when")
        step = spalm.combine(h[None], q[None])
    assert float((step.log_p_final[0].exp() - log_p_lm.exp()).abs().max()) < 1e-6
    spalm.forced_gate = None  # the initial gate (0.9) does change the distribution
    with torch.no_grad():
        step = spalm.combine(h[None], q[None])
    assert float(step.gates[0]) == pytest.approx(0.9)
    assert float((step.log_p_final[0].exp() - log_p_lm.exp()).abs().max()) > 1e-4


def test_generation_records_carry_the_gate_and_weighted_neighbours(built):
    model, datastore, docs = built
    spalm = Spalm(model, datastore, SpalmSettings(k=8))
    records = list(StepGenerator(model, "The quick brown", GenerationSettings(max_new_tokens=5),
                                 SpalmMethod(model, spalm=spalm)))
    assert records
    for record in records:
        assert record.method == "spalm" and 0 < record.gate < 1 and record.lambda_ is None
        assert record.neighbours and all(docs in Path(n.document).parents for n in record.neighbours)
        assert sum(n.weight for n in record.neighbours) == pytest.approx(1.0, abs=1e-6)  # all 8 shown
        assert record.retrieval.k == 8 and record.retrieval.datastore == "small"
        proposed = {n.token_id for n in record.neighbours}
        assert record.p_knn and {p.token_id for p in record.p_knn} <= proposed  # only retrieved tokens


def test_a_prompt_longer_than_the_window_runs_on_the_short_term_memory(built):
    model, datastore, _ = built
    spalm = Spalm(model, datastore)
    spalm.forced_gate = 1.0  # isolate the short-term memory: SPALM reduces to the model itself
    prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)
    window = 48
    generator = StepGenerator(model, prompt, GenerationSettings(max_new_tokens=6, stop_at_eos=False,
                                                                context_window=window), SpalmMethod(model, spalm=spalm))
    records = list(generator)
    assert len(generator.prompt_ids) > model.max_positions  # longer than the model's own context
    # Each step saw the cached tokens since the last restart (at most the window): the same
    # distribution as a direct forward pass over exactly those.
    context = generator.ids[generator._cache_end - generator._cache_tokens: generator._cache_end]
    assert window // 2 <= len(context) <= window
    with torch.no_grad():
        probs = torch.softmax(model.model(input_ids=torch.tensor([context])).logits[0, -1].double(), -1)
    assert records[-1].token_id == int(probs.argmax())
    assert records[-1].chosen_prob_final == pytest.approx(float(probs.max()), rel=1e-4)


def test_leave_one_out_drops_each_position_itself_and_keeps_k():
    from knn_explorer.core.mechanisms.knnlm import Retrieval
    from knn_explorer.core.training.spalm_training import without_self

    ids = np.array([[7, 3, 9], [4, 5, 6]])
    r = Retrieval(ids=ids, distances=np.array([[0.0, 1.0, 2.0], [0.5, 1.0, 3.0]]),
                  values=torch.tensor([[70, 30, 90], [40, 50, 60]]), weights=torch.ones(2, 3) / 3)
    kept = without_self(r, np.array([7, 99]), k=2)
    assert kept.ids.tolist() == [[3, 9], [4, 5]]  # row 0 loses itself; row 1 (not found) its farthest
    assert kept.values.tolist() == [[30, 90], [40, 50]]
    assert kept.distances.tolist() == [[1.0, 2.0], [0.5, 1.0]]

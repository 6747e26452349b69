"""SPALM trained as specified: the gate and the word embeddings W together, the datastore's keys
frozen, Transformer-XL's short-term memory carried from segment to segment (tiny random models)."""
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny_models import save_tiny_model

from knn_explorer.core.datastore.builder import BuildParameters
from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.library import build_datastore, open_datastore
from knn_explorer.core.evaluation.comparison import compare
from knn_explorer.core.generation.step_generator import GenerationSettings, StepGenerator
from knn_explorer.core.mechanisms.short_term_memory import ShortTermMemory
from knn_explorer.core.mechanisms.spalm import INITIAL_GATE_BIAS, Spalm, SpalmSettings
from knn_explorer.core.methods.spalm import SpalmMethod
from knn_explorer.core.models import load_model
from knn_explorer.core.training.adapters import AdapterError
from knn_explorer.core.training.spalm_training import (
    SpalmTrainingSettings,
    TokenStream,
    load_spalm_adapter,
    save_spalm_adapter,
    train_spalm,
)
from knn_explorer.core.windows import sliding_windows

# Four copies of one passage of random words: whatever a position's context, another document
# holds the same context with the right next token, so retrieval (its own document left out)
# carries the answer; the random model alone does not know it.
WORDS = ("fox dog datastore context token route view flask quick brown lazy jumps maps followed URLs functions "
         "decorator retrieval helps text stored resembles test each the a").split()
PASSAGE = " ".join(random.Random(0).choice(WORDS) for _ in range(30))
PASSAGE_TEXT = ("The quick brown fox jumps over the lazy dog. A datastore maps each context to the token that "
                "followed it. Flask routes map URLs to view functions with the route decorator. ")


def tiny_tied_model(folder: Path) -> Path:
    """A tiny GPT-2 (tied embeddings, as the demo) whose embeddings are 15× the random initialisation:
    at std 0.02 they are ~50× shorter than h_t, and W m_t (a mix of embeddings) is a uniform
    distribution whatever the memory holds; a trained model's are within ~20× of h_t."""
    from transformers import AutoModelForCausalLM

    save_tiny_model(folder, "gpt2")
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(15)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def toy(tmp_path_factory, session_home):
    model = load_model(str(tiny_tied_model(tmp_path_factory.mktemp("tiny-gpt2"))), device="cpu")
    docs = tmp_path_factory.mktemp("copies")
    for i in range(4):
        (docs / f"copy{i}.txt").write_text(PASSAGE, encoding="utf-8")
    catalog = Catalog(tmp_path_factory.mktemp("home") / "catalog.sqlite")
    build_datastore(catalog, "copies", model, [docs], BuildParameters(context_length=32, stride=16, batch_size=4))
    return model, open_datastore(catalog, "copies", model)


@pytest.fixture(scope="module")
def llama_store(tmp_path_factory, session_home):
    """A tiny Llama (rotary positions, untied embeddings) and a datastore of the test corpus."""
    from corpus import write_corpus

    model = load_model(str(save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")), device="cpu")
    catalog = Catalog(tmp_path_factory.mktemp("home") / "catalog.sqlite")
    build_datastore(catalog, "corpus", model, [write_corpus(tmp_path_factory.mktemp("docs"))],
                    BuildParameters(context_length=32, stride=16, batch_size=4))
    return model, open_datastore(catalog, "corpus", model)


def loss_on_the_datastore(spalm: Spalm, segment: int = 16) -> float:
    """Mean −log p_SPALM over the datastore's own tokens, each document's own entries left out (as trained)."""
    from knn_explorer.core.training.spalm_training import _retrieve

    settings = SpalmTrainingSettings(segment=segment, streams=1)
    streams = TokenStream.of(spalm.datastore).streams(1)
    memory = ShortTermMemory(spalm.model, segment)
    losses = []
    with torch.no_grad(), spalm.in_model():
        for start in range(0, streams.tokens.shape[1] - 1, segment):
            end = min(start + segment, streams.tokens.shape[1] - 1)
            with spalm.model.capture_keys() as keys:
                hidden = memory.forward(torch.from_numpy(streams.tokens[:, start:end])).last_hidden_state[0]
            retrieval = _retrieve(spalm, keys[-1][0].float(), streams, start, end, spalm.datastore.positions[:, 0],
                                  spalm.settings.k, settings)
            log_p = torch.log_softmax(spalm.mix(hidden, retrieval).logits().float(), -1)
            targets = torch.from_numpy(streams.tokens[0, start + 1:end + 1])
            scored = torch.from_numpy(streams.entries[0, start:end] >= 0)
            losses.append(-log_p.gather(1, targets[:, None])[:, 0][scored])
    return float(torch.cat(losses).mean())


TOY_TRAINING = SpalmTrainingSettings(epochs=3, segment=16, streams=2, learning_rate=0.05, embedding_learning_rate=0.01)


@pytest.fixture(scope="module")
def trained(toy):
    model, datastore = toy
    spalm = Spalm(model, datastore, SpalmSettings(k=4))
    before = loss_on_the_datastore(spalm)
    own_w = model.model.get_input_embeddings().weight
    copy = own_w.detach().clone()
    result = train_spalm(spalm, TOY_TRAINING)
    return spalm, result, before, own_w, copy


def test_w_and_the_gate_trained_together_learn_to_use_retrieval(toy, trained):
    spalm, result, before, _, _ = trained
    assert result.steps and all(np.isfinite(s.loss) for s in result.steps)
    after = loss_on_the_datastore(spalm)
    spalm.forced_gate = 1.0  # the same trained W without its memory
    try:
        without_memory = loss_on_the_datastore(spalm)
    finally:
        spalm.forced_gate = None
    gate_only = Spalm(*toy, SpalmSettings(k=4))
    train_spalm(gate_only, replace(TOY_TRAINING, embedding_learning_rate=0.0))
    assert spalm.has_trained_embeddings and not gate_only.has_trained_embeddings
    assert after < 0.5 * before  # a real drop, not noise
    assert after < without_memory - 1.0  # and it comes from the memory
    assert after < loss_on_the_datastore(gate_only) - 0.5  # which W, trained with the gate, made usable
    assert result.final_gates[0] < 0.5  # the gate opened towards the memory (initial g = 0.9)


def test_the_models_own_w_is_restored_bit_for_bit(trained):
    spalm, _, _, own_w, copy = trained
    model = spalm.model
    weight = model.model.get_input_embeddings().weight
    assert weight is own_w and torch.equal(weight.detach(), copy)  # after training
    data = weight.data_ptr()
    seen = []
    hook = model.model.get_input_embeddings().register_forward_pre_hook(
        lambda module, args: seen.append(torch.equal(module.weight.detach(), copy)))
    try:
        method = SpalmMethod(model, spalm=spalm)
        records = list(StepGenerator(model, "The quick brown", GenerationSettings(max_new_tokens=3), method))
    finally:
        hook.remove()
    assert records and True in seen and False in seen  # the shared pass had the model's W, SPALM's pass its own
    method.close()
    assert weight.data_ptr() == data and torch.equal(weight.detach(), copy)
    with pytest.raises(RuntimeError), spalm.in_model():  # an error inside SPALM's pass puts it back too
        assert not torch.equal(weight.detach(), copy)
        raise RuntimeError("boom")
    assert weight.data_ptr() == data and torch.equal(weight.detach(), copy)


def test_the_adapter_round_trips_and_refuses_another_model(trained, tmp_path):
    spalm, _, _, _, _ = trained
    model, datastore = spalm.model, spalm.datastore
    path = save_spalm_adapter(tmp_path / "spalm.safetensors", spalm, {"steps": 1})
    fresh = Spalm(model, datastore, SpalmSettings(k=4))
    info = load_spalm_adapter(path, fresh)
    assert info.details["trained"] == "gate and word embeddings"
    assert torch.equal(fresh.gate.weight, spalm.gate.weight) and float(fresh.gate.bias.detach()) == float(spalm.gate.bias.detach())
    assert torch.equal(fresh.input_delta, spalm.input_delta.half())  # stored in float16
    assert float((fresh.trained_input - spalm.trained_input).abs().max()) < 1e-3
    other = load_model(str(save_tiny_model(tmp_path / "other", "llama", seed=1)), device="cpu")
    with pytest.raises(AdapterError, match="trained for model") as refused:
        load_spalm_adapter(path, Spalm(other, datastore, SpalmSettings(k=4)))
    assert "\n" not in str(refused.value)


def test_a_gate_only_adapter_still_loads_and_leaves_w_alone(toy, tmp_path):
    """The adapters SPALM's earlier training wrote: the gate's two tensors and nothing else."""
    import json

    model, datastore = toy
    path = tmp_path / "gate.safetensors"
    save_file({"weight": torch.full((32,), 0.01), "bias": torch.tensor([1.5])}, str(path),
              metadata={"kind": "spalm", "model_name": model.name, "model_fingerprint": model.model_fingerprint,
                        "details": json.dumps({"datastore": datastore.name, "k": 4, "training": {}})})
    spalm = Spalm(model, datastore, SpalmSettings(k=4))
    load_spalm_adapter(path, spalm)
    assert float(spalm.gate.bias.detach()) == 1.5 and not spalm.has_trained_embeddings
    assert not SpalmMethod(model, spalm=spalm).own_pass  # nothing differs from the shared pass in generation


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_the_short_term_memory_carries_the_previous_segment(kind, tmp_path):
    model = load_model(str(save_tiny_model(tmp_path / kind, kind)), device="cpu")  # 64 positions
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 70))
    memory = ShortTermMemory(model, 24)
    with torch.no_grad():
        first = memory.forward(ids[:, :20]).last_hidden_state
        second = memory.forward(ids[:, 20:40]).last_hidden_state
        together = model.model.base_model(input_ids=ids[:, :40]).last_hidden_state
        alone = model.model.base_model(input_ids=ids[:, 20:40]).last_hidden_state
    assert torch.allclose(first, together[:, :20], atol=1e-5)
    assert torch.allclose(second, together[:, 20:], atol=1e-5)  # as if the text were one, within the bound
    assert (second - alone).abs().max() > 1e-2  # without the carried cache it is another computation
    assert memory.tokens == 24  # bounded
    with torch.no_grad():  # on past the position table: the memory stays within it
        third = memory.forward(ids[:, 40:70]).last_hidden_state
    assert third.shape == (2, 30, 32) and torch.isfinite(third).all()
    assert memory.tokens == 24 and memory.bound(30) == 24 and memory.bound(50) == 14


def test_compare_scores_spalm_with_the_cache_carried_from_window_to_window(llama_store):
    """Windows of 32 every 16: SPALM's own pass runs each window's 16 new tokens after the cached
    states of its first 16 — with the gate at 1 and the model's W, its numbers are those of the
    model read that way, and they differ from the LM alone's (which recomputes each window)."""
    model, datastore = llama_store
    spalm = Spalm(model, datastore, SpalmSettings(k=4))
    spalm.forced_gate = 1.0
    text = PASSAGE_TEXT * 2
    result = compare(model, text, [SpalmMethod(model, spalm=spalm)], context_length=32, stride=16)
    ids = torch.tensor(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    memory, expected = ShortTermMemory(model, 64), []
    fed, last = 0, None  # tokens read; the log-probabilities after the last of them
    with torch.no_grad():
        for span in sliding_windows(len(ids), 32, 16):
            hidden = memory.forward(ids[None, fed:span.end], keep=fed - span.begin).last_hidden_state[0]
            log_p = torch.log_softmax(model.model.get_output_embeddings()(hidden).double(), -1)
            first = fed  # position of log_p's first row
            if last is not None:  # the first target's context is the previous window's last token
                log_p, first = torch.cat([last[None], log_p]), fed - 1
            targets = torch.arange(span.first_target, span.end)
            expected.append(log_p[targets - 1 - first, ids[targets]])
            last, fed = log_p[-1], span.end
    expected = torch.cat(expected).numpy()
    got = result.log_probs("spalm")
    assert np.allclose(got, expected, atol=1e-4)
    first_window = result.positions < 32
    assert np.allclose(got[first_window], result.log_p_lm[first_window], atol=1e-4)
    assert np.abs(got[~first_window] - result.log_p_lm[~first_window]).max() > 1e-3


def test_training_leaves_out_each_positions_own_document_or_own_entry(llama_store):
    import knn_explorer.core.training.spalm_training as training

    model, datastore = llama_store
    documents = datastore.positions[:, 0]
    original = training._retrieve
    for leave_out in ("document", "entry"):
        seen = []

        def spy(spalm, queries, streams, start, end, entry_documents, k, settings, seen=seen):
            kept = original(spalm, queries, streams, start, end, entry_documents, k, settings)
            seen.append((kept.ids, streams.entries[:, start:end].reshape(-1),
                         streams.documents[:, start:end].reshape(-1)))
            return kept

        training._retrieve = spy
        try:
            train_spalm(Spalm(model, datastore, SpalmSettings(k=4)),
                        SpalmTrainingSettings(segment=16, streams=2, leave_out=leave_out, max_updates=4))
        finally:
            training._retrieve = original
        assert seen
        for ids, own, docs in seen:
            if leave_out == "document":
                assert ((ids < 0) | (documents[np.maximum(ids, 0)] != docs[:, None])).all()
            else:
                assert (ids != own[:, None]).all()


def test_untied_embeddings_train_both_matrices_and_both_come_back(llama_store, tmp_path):
    model, datastore = llama_store
    spalm = Spalm(model, datastore, SpalmSettings(k=4))
    assert not spalm.tied and float(spalm.gate.bias.detach()) == pytest.approx(INITIAL_GATE_BIAS)
    inputs, outputs = (model.model.get_input_embeddings().weight, model.model.get_output_embeddings().weight)
    copies = inputs.detach().clone(), outputs.detach().clone()
    train_spalm(spalm, SpalmTrainingSettings(segment=16, streams=2, max_updates=3, embedding_learning_rate=0.01))
    assert torch.equal(inputs.detach(), copies[0]) and torch.equal(outputs.detach(), copies[1])
    assert float(spalm.input_delta.abs().max()) > 0 and float(spalm.output_delta.abs().max()) > 0
    path = save_spalm_adapter(tmp_path / "untied.safetensors", spalm)
    fresh = Spalm(model, datastore, SpalmSettings(k=4))
    load_spalm_adapter(path, fresh)
    assert torch.equal(fresh.output_delta, spalm.output_delta.half())
    with fresh.in_model():
        assert torch.equal(model.model.get_output_embeddings().weight, fresh.trained_output)
    assert torch.equal(inputs.detach(), copies[0]) and torch.equal(outputs.detach(), copies[1])


def test_training_through_the_method_writes_an_adapter(toy, tmp_path):
    from knn_explorer.core.methods import Resources, TrainingSettings

    model, datastore = toy
    trained = SpalmMethod.train(model, SpalmSettings(k=4), Resources(datastore), [],
                                TrainingSettings(segment=32, segments_per_step=2), tmp_path / "a.safetensors")
    assert trained.summary["steps"] > 0 and Path(tmp_path / "a.safetensors").exists()
    spalm = Spalm(model, datastore, SpalmSettings(k=4))
    load_spalm_adapter(tmp_path / "a.safetensors", spalm)
    assert spalm.has_trained_embeddings

"""The Memorizing Transformer fine-tuned with its memory: trained layer copies that leave the base
model bit-identical, adapters that carry weight deltas, training that teaches the model to use its
memory, and a memory view that moves."""
import threading

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import TINY_CONFIGS, save_tiny_model, tiny_tokenizer

from knn_explorer.core.generation.step_generator import GenerationSettings, StepGenerator
from knn_explorer.core.mechanisms.memorizing import MemorizingRetrofit, MemorizingSettings
from knn_explorer.core.methods.memorizing import MemorizingTransformerMethod
from knn_explorer.core.models import load_model
from knn_explorer.core.training.adapters import (
    AdapterError,
    load_memorizing_adapter,
    memorizing_with_gates,
    read_adapter_info,
    save_memorizing_adapter,
)
from knn_explorer.core.training.memory_finetuning import FineTuneSettings, train_with_memory


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return load_model(str(save_tiny_model(tmp_path_factory.mktemp("llama"), "llama")), device="cpu")


def _ids(n=48, seed=0):
    return torch.randint(3, 100, (1, n), generator=torch.Generator().manual_seed(seed))


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.model.state_dict().items()}


def _assert_bit_identical(model, snapshot) -> None:
    state = model.model.state_dict()
    assert state.keys() == snapshot.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, snapshot[name]), name
    for module in model.model.modules():
        assert "forward" not in vars(module) and not hasattr(module, "_knn_memory")


def _perturbed(model, layer=1, seed=0) -> MemorizingRetrofit:
    """A retrofit as if fine-tuned: its tuned copies moved off the base weights, gates open."""
    retrofit = MemorizingRetrofit(model, MemorizingSettings(layer=layer, k=4))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in retrofit.tune_layers().values():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        retrofit.gate_bias.copy_(torch.linspace(-1.5, 1.0, retrofit.heads))
    return retrofit


def _memory_pass(model, retrofit, ids, split=24) -> torch.Tensor:
    retrofit.reset()
    retrofit.set_window(0, 0)
    with torch.no_grad():
        model.model(ids[:, :split])
        retrofit.set_window(split, split)
        return model.model(ids[:, split:]).logits


def test_fine_tuned_layers_leave_the_base_model_bit_identical_aside_in_other_threads_and_after_close(llama):
    ids = _ids()
    snapshot = _snapshot(llama)
    with torch.no_grad():
        base = llama.model(ids[:, 24:]).logits
    retrofit = _perturbed(llama)
    method = MemorizingTransformerMethod(llama, retrofit=retrofit)
    try:
        assert retrofit.tuned_modules() == ["model.layers.1", "model.norm"]  # the memory layer up, the final norm
        tuned = _memory_pass(llama, retrofit, ids)
        assert float((tuned - base).abs().max()) > 1e-3  # the fine-tuned layers and the memory are in use
        _assert_bit_identical_parameters(llama, snapshot)  # ... in copies: the model's own are untouched
        with method.set_aside(), torch.no_grad():
            assert torch.equal(llama.model(ids[:, 24:]).logits, base)  # another lane sees the base model exactly
        with method.shared_pass(24, 24), torch.no_grad():
            assert torch.equal(llama.model(ids[:, 24:]).logits, base)  # p_LM beside it too
        seen = {}
        worker = threading.Thread(target=lambda: seen.update(logits=llama.model(ids[:, 24:]).logits.detach()))
        worker.start()
        worker.join()
        assert torch.equal(seen["logits"], base)  # e.g. a datastore build sharing the model
        assert float((_memory_pass(llama, retrofit, ids) - tuned).abs().max()) == 0  # and back on afterwards
    finally:
        method.close()
    _assert_bit_identical(llama, snapshot)
    with torch.no_grad():
        assert torch.equal(llama.model(ids[:, 24:]).logits, base)


def _assert_bit_identical_parameters(model, snapshot) -> None:
    for name, tensor in model.model.state_dict().items():
        assert torch.equal(tensor, snapshot[name]), name


def test_an_adapter_carries_the_fine_tuned_weights_as_float16_deltas_and_refuses_another_model(llama, tmp_path):
    ids = _ids(seed=1)
    snapshot = _snapshot(llama)
    trained = _perturbed(llama, seed=2)
    try:
        expected = _memory_pass(llama, trained, ids)
        deltas = trained.weight_deltas()
        path = save_memorizing_adapter(tmp_path / "memtrf.safetensors", trained, {"steps": 3})
    finally:
        trained.remove()
    tensors = load_file(str(path))
    assert set(tensors) == {"gate_bias"} | {f"delta.{name}" for name in deltas}
    assert all(t.dtype == torch.float16 for name, t in tensors.items() if name.startswith("delta."))
    info = read_adapter_info(path)
    assert info.details["fine_tuned"] == ["model.layers.1", "model.norm"] and info.details["layer"] == 1

    loaded = memorizing_with_gates(llama, MemorizingSettings(k=4), path)  # auto: the adapter's layer
    try:
        assert loaded.layer == 1 and loaded.tuned_modules() == ["model.layers.1", "model.norm"]
        for name, delta in loaded.weight_deltas().items():
            assert torch.allclose(delta, deltas[name], atol=1e-4, rtol=1e-3)
        assert torch.allclose(_memory_pass(llama, loaded, ids), expected, atol=1e-3)
    finally:
        loaded.remove()
    _assert_bit_identical(llama, snapshot)

    other = load_model(str(save_tiny_model(tmp_path / "other", "llama", seed=1)), device="cpu")
    with pytest.raises(AdapterError) as refused:
        memorizing_with_gates(other, MemorizingSettings(k=4), path)
    assert "was trained for model" in str(refused.value) and "\n" not in str(refused.value)
    assert not any(hasattr(m, "_knn_memory") or "forward" in vars(m) for m in other.model.modules())

    gates_only = MemorizingRetrofit(llama, MemorizingSettings(layer=1))  # the retrofit for users' models: gates only
    with torch.no_grad():
        gates_only.gate_bias.fill_(-1.0)
    gate_file = save_memorizing_adapter(tmp_path / "gates.safetensors", gates_only)
    gates_only.remove()
    assert set(load_file(str(gate_file))) == {"gate_bias"}
    again = MemorizingRetrofit(llama, MemorizingSettings(layer=1))
    try:
        load_memorizing_adapter(gate_file, again)
        assert again.tuned_modules() == [] and again.gates().tolist() == pytest.approx([0.2689] * 2, abs=1e-4)
    finally:
        again.remove()
    _assert_bit_identical(llama, snapshot)


WORDS, VOCAB = 4, 20


def _document(seed: int, length: int = 96) -> list[int]:
    """A document that keeps repeating its own few words, in an order of its own."""
    generator = torch.Generator().manual_seed(seed)
    words = torch.randperm(VOCAB, generator=generator)[:WORDS] + 3
    return words[torch.randint(0, WORDS, (length,), generator=generator)].tolist()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny tied-embedding Llama briefly trained (without memory) on such documents: a model
    that has learned to repeat what its local context holds."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    eos = tokenizer.eos_token_id
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos,
                                  pad_token_id=eos, **{**TINY_CONFIGS["llama"], "tie_word_embeddings": True})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(400):
        batch = torch.tensor([_document(5000 + 8 * step + i)[:24] for i in range(8)])
        logits = model(input_ids=batch).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    folder = tmp_path_factory.mktemp("pretrained")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_model(str(folder), device="cpu")


def _heldout_loss(model, retrofit, segment: int, memory: int) -> float:
    """Mean loss on held-out documents' later segments (the memory, of `memory` tokens for this
    measurement only, holds the earlier ones)."""
    size = retrofit.settings.memory_size
    retrofit.resize_memory(memory)
    losses = []
    with torch.no_grad():
        for seed in range(1000, 1010):
            ids = torch.tensor(_document(seed))
            retrofit.reset()
            for start in range(0, len(ids) - 1, segment):
                end = min(start + segment, len(ids) - 1)
                retrofit.set_window(start, start)
                logits = model.model(input_ids=ids[None, start:end]).logits[0]
                if start >= 16:
                    losses.append(float(torch.nn.functional.cross_entropy(logits, ids[start + 1:end + 1])))
    retrofit.resize_memory(size)
    return sum(losses) / len(losses)


def test_fine_tuning_with_the_memory_lowers_the_loss_and_teaches_the_model_to_use_it(pretrained):
    segment = 4  # a segment shows a few of the document's words; the memory holds all of them
    snapshot = _snapshot(pretrained)
    # Layer 0 of 2: where this tiny model learned to copy what it attends to.
    retrofit = MemorizingRetrofit(pretrained, MemorizingSettings(layer=0, k=8, memory_size=256))
    try:
        before = _heldout_loss(pretrained, retrofit, segment, 256)  # untrained gates: the base model
        assert before == pytest.approx(_heldout_loss(pretrained, retrofit, segment, 0), abs=1e-5)
        result = train_with_memory(pretrained, retrofit, [_document(seed) for seed in range(40)],
                                   FineTuneSettings(segment_length=segment, segments_per_step=4, steps=200,
                                                    learning_rate=3e-3))
        losses = [s.loss for s in result.steps]
        assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 0.1  # training lowers the loss
        assert retrofit.tuned_modules() == ["model.layers.0", "model.layers.1", "model.norm"]
        with_memory, without = _heldout_loss(pretrained, retrofit, segment, 256), _heldout_loss(pretrained, retrofit,
                                                                                                segment, 0)
        assert with_memory < without - 0.1  # the memory of the document's earlier words helps ...
        assert with_memory < before - 0.2  # ... and the fine-tuned model with it beats the base model
    finally:
        retrofit.remove()
    _assert_bit_identical(pretrained, snapshot)


DEMO_LIKE_PROMPT = (
    "A minimal Flask application looks something like this. The route decorator tells Flask what URL "
    "should trigger our function, and url_for builds a URL to a specific function. Use render_template "
    "to render a template; Flask looks for templates in the templates folder. The request object holds "
    "the form data, and the session object remembers the user from one request to the next. "
)


def _heatmap_rows_vary(records, heads: int) -> None:
    used = [r for r in records if r.memory_hits and any(r.memory_hits)]  # steps whose memory held text
    assert len(used) >= 8
    gates = used[-1].head_gates
    assert gates is not None and len(gates) == heads
    for head in range(heads):
        if gates[head] < 1e-3:  # a shut gate: nothing from memory, a constant 0 is the truth
            continue
        row = [r.memory_attention[head] for r in used]
        assert max(row) - min(row) > 1e-3, f"head {head}'s heatmap row is constant ({row[0]:.4f})"
        for r in used:  # each cell's hits carry the similarity the lookup ranked them by
            assert all(hit.similarity is not None and -1 - 1e-4 <= hit.similarity <= 1 + 1e-4
                       for hit in r.memory_hits[head])


def test_the_heatmap_row_of_every_head_with_an_open_gate_varies_along_the_tokens(llama):
    retrofit = _perturbed(llama, seed=3)
    method = MemorizingTransformerMethod(llama, retrofit=retrofit)
    try:
        records = list(StepGenerator(llama, DEMO_LIKE_PROMPT, GenerationSettings(
            max_new_tokens=20, stop_at_eos=False, context_window=16), method))
    finally:
        method.close()
    _heatmap_rows_vary(records, retrofit.heads)


def test_the_demo_heatmap_row_of_every_head_with_an_open_gate_varies_along_the_tokens():
    """The same on the demo model with the adapter it ships (the app's defaults: a 16-token window)."""
    from knn_explorer.core.mechanisms.memorizing import DEFAULT_WINDOW

    demo = load_model("demo", device="cpu")
    method = MemorizingTransformerMethod(demo, MemorizingSettings())
    try:
        assert method.retrofit.adapter is not None  # the shipped adapter
        records = list(StepGenerator(demo, DEMO_LIKE_PROMPT, GenerationSettings(
            max_new_tokens=24, stop_at_eos=False, context_window=DEFAULT_WINDOW), method))
    finally:
        method.close()
    _heatmap_rows_vary(records, method.retrofit.heads)

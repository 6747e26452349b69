"""Memorizing Transformer retrofit: unchanged at init, memory semantics, rotary keys, GQA lookup."""
import pytest
import torch
from tiny_models import save_tiny_model

from knn_explorer.core.mechanisms.memorizing import (
    INITIAL_GATE_BIAS,
    MemorizingError,
    MemorizingRetrofit,
    MemorizingSettings,
    default_layer,
)
from knn_explorer.core.mechanisms.memory_store import MemoryStore
from knn_explorer.core.methods.memorizing import MemorizingTransformerMethod
from knn_explorer.core.models import load_model

ARCHITECTURES = ["gpt2", "gpt_neox", "llama", "mistral", "qwen2"]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def tiny(request, tmp_path_factory):
    folder = save_tiny_model(tmp_path_factory.mktemp(request.param), request.param)
    return load_model(str(folder), device="cpu")


def _ids(n=48, seed=0):
    return torch.randint(3, 100, (1, n), generator=torch.Generator().manual_seed(seed))


def _two_segments(model, retrofit, ids, split):
    """First segment fills the memory; returns the second segment's logits."""
    retrofit.set_window(0, 0)
    with torch.no_grad():
        model.model(ids[:, :split])
        retrofit.set_window(split, split)
        return model.model(ids[:, split:]).logits


def test_untrained_gates_leave_the_logits_unchanged(tiny):
    ids = _ids()
    with torch.no_grad():
        base = tiny.model(ids[:, 24:]).logits
    retrofit = MemorizingRetrofit(tiny, MemorizingSettings(k=4))
    try:
        logits = _two_segments(tiny, retrofit, ids, 24)
        assert retrofit.memory_tokens() == 24  # the memory was really consulted
        assert max(retrofit.last_step.memory_attention) > 0
        assert float((logits - base).abs().max()) < 1e-5
        gates = retrofit.last_step.head_gates
        assert len(gates) == retrofit.heads and all(0 < g < 1e-6 for g in gates)
        # Open gates change the output: the comparison above could fail.
        with torch.no_grad():
            retrofit.gate_bias.fill_(0.0)
        retrofit.reset()
        opened = _two_segments(tiny, retrofit, ids, 24)
        assert float((opened - base).abs().max()) > 1e-3
    finally:
        retrofit.remove()
    with torch.no_grad():
        assert torch.equal(tiny.model(ids[:, 24:]).logits, base)  # remove() restores the model


def test_joint_mode_with_an_empty_memory_is_the_base_model_and_with_memory_is_not(tiny):
    ids = _ids(seed=1)
    with torch.no_grad():
        base = tiny.model(ids[:, 24:]).logits
    retrofit = MemorizingRetrofit(tiny, MemorizingSettings(mode="joint", k=8))
    try:
        retrofit.set_window(24, 24)
        with torch.no_grad():
            alone = tiny.model(ids[:, 24:]).logits
        assert float((alone - base).abs().max()) < 1e-5
        retrofit.reset()
        logits = _two_segments(tiny, retrofit, ids, 24)
        share = retrofit.last_step.memory_attention
        assert retrofit.last_step.head_gates is None
        assert len(share) == retrofit.heads and all(0 < s < 1 for s in share)
        assert float((logits - base).abs().max()) > 1e-4
        for hits in retrofit.last_step.hits:
            assert all(0 <= position < 24 for position, _w, _c in hits)  # only earlier tokens are in memory
    finally:
        retrofit.remove()


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox"])
def test_memory_keys_are_stored_before_the_rotary_embedding(tmp_path, model_type):
    # In layer 0 a token's key depends on the token alone, so before rotation the keys of a token
    # repeated at other positions are identical; after rotation they would differ.
    model = load_model(str(save_tiny_model(tmp_path / model_type, model_type)), device="cpu")
    retrofit = MemorizingRetrofit(model, MemorizingSettings(layer=0))
    try:
        retrofit.set_window(0, 0)
        ids = torch.tensor([[5, 17, 23, 5, 17, 23, 9, 5]])
        with torch.no_grad():
            model.model(ids)
        retrofit.set_window(8, 8)  # everything moves to memory
        keys = retrofit.memory.keys[:, :8].transpose(0, 1)  # (tokens, kv_heads, head_dim)
        assert torch.allclose(keys[0], keys[3], atol=1e-5) and torch.allclose(keys[0], keys[7], atol=1e-5)
        assert torch.allclose(keys[1], keys[4], atol=1e-5)
        assert not torch.allclose(keys[0], keys[1], atol=1e-3)
    finally:
        retrofit.remove()


def test_pending_tokens_enter_memory_only_when_the_window_passes_them(tiny):
    retrofit = MemorizingRetrofit(tiny, MemorizingSettings())
    try:
        ids = _ids(30, seed=2)
        retrofit.set_window(0, 0)
        with torch.no_grad():
            tiny.model(ids[:, :20])
        assert retrofit.memory_tokens() == 0  # still inside local attention
        retrofit.set_window(10, 20)  # the window moved past positions 0..9
        assert retrofit.memory_tokens() == 10
        assert sorted(retrofit.memory.positions[:10].tolist()) == list(range(10))
        retrofit.set_window(10, 15)  # positions 15.. are recomputed: their pending keys are dropped
        with torch.no_grad():
            tiny.model(ids[:, 15:30])
        retrofit.set_window(30, 30)
        assert sorted(retrofit.memory.positions[: retrofit.memory_tokens()].tolist()) == list(range(30))
        retrofit.reset()
        assert retrofit.memory_tokens() == 0
    finally:
        retrofit.remove()


def test_memory_is_a_bounded_fifo():
    store = MemoryStore(capacity=5, kv_heads=1, head_dim=4)
    for start in (0, 3, 6):
        keys = torch.randn(3, 1, 4)
        store.add(keys, keys, torch.arange(start, start + 3))
    assert len(store) == 5
    assert sorted(store.positions.tolist()) == [4, 5, 6, 7, 8]
    store.add(torch.randn(9, 1, 4), torch.randn(9, 1, 4), torch.arange(100, 109))
    assert sorted(store.positions.tolist()) == list(range(104, 109))


def test_lookup_is_exact_cosine_top_k_per_head_with_grouped_query_heads():
    torch.manual_seed(0)
    heads, kv_heads, dim, size, k = 4, 2, 8, 50, 5
    store = MemoryStore(capacity=64, kv_heads=kv_heads, head_dim=dim)
    keys, values = torch.randn(size, kv_heads, dim) * 3, torch.randn(size, kv_heads, dim)
    store.add(keys, values, torch.arange(size))
    queries = torch.randn(heads, 3, dim)
    found = store.search(queries, k, scaling=0.5)
    for h in range(heads):
        g = h // (heads // kv_heads)
        cosine = torch.nn.functional.normalize(queries[h], dim=-1) @ torch.nn.functional.normalize(keys[:, g], dim=-1).T
        expected = cosine.topk(k, dim=-1).indices
        assert torch.equal(store.positions[found.slots[h]], expected)
        assert torch.allclose(found.logits[h], (queries[h] @ keys[:, g].T).gather(1, expected) * 0.5, atol=1e-5)
        assert torch.allclose(found.values[h], values[expected, g], atol=1e-6)


def test_default_layer_is_three_quarters_of_the_depth():
    assert default_layer(12) == 8  # layer 9 of 12, 1-based, as in the paper
    assert default_layer(4) == 2 and default_layer(2) == 1 and default_layer(1) == 0


def test_unsupported_models_and_layers_are_refused_with_a_reason(tmp_path):
    opt = load_model(str(save_tiny_model(tmp_path / "opt", "opt")), device="cpu")
    with pytest.raises(MemorizingError, match="supports .*gpt2.*this model is opt"):
        MemorizingRetrofit(opt)
    gpt2 = load_model(str(save_tiny_model(tmp_path / "gpt2", "gpt2")), device="cpu")
    with pytest.raises(MemorizingError, match="layer 7 does not exist"):
        MemorizingRetrofit(gpt2, MemorizingSettings(layer=7))
    assert INITIAL_GATE_BIAS <= -12


def test_generation_records_carry_gates_memory_attention_and_hits_from_earlier_text(tmp_path):
    from knn_explorer.core.generation.step_generator import GenerationSettings, StepGenerator
    from knn_explorer.core.generation.run_export import read_json, write_json

    model = load_model(str(save_tiny_model(tmp_path / "llama", "llama")), device="cpu")
    prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 6)  # longer than the window
    window = 32
    plain = list(StepGenerator(model, prompt, GenerationSettings(max_new_tokens=12,
                                                                  stop_at_eos=False, context_window=window)))
    retrofit = MemorizingRetrofit(model, MemorizingSettings(k=4))
    try:
        generator = StepGenerator(model, prompt, GenerationSettings(max_new_tokens=12,
                                                                    stop_at_eos=False, context_window=window),
                                  MemorizingTransformerMethod(model, retrofit=retrofit))
        records = list(generator)
    finally:
        retrofit.remove()
    assert len(generator.prompt_ids) > window
    # Untrained gates: the same tokens and probabilities as the model alone.
    assert [r.token_id for r in records] == [r.token_id for r in plain]
    for record, base in zip(records, plain):
        assert record.method == "memtrf"
        assert record.chosen_prob_final == pytest.approx(base.chosen_prob_lm, abs=1e-5)
        assert len(record.head_gates) == len(record.memory_attention) == retrofit.heads
        assert all(0 <= g <= 1 for g in record.head_gates)
        assert len(record.memory_hits) == retrofit.heads
        for head in record.memory_hits:
            assert head, "the memory held the start of the prompt"
            for hit in head:
                assert hit.position < len(generator.ids) - window // 2
                assert hit.context[hit.highlight[0]:hit.highlight[1]] == hit.token
    path = write_json(tmp_path / "run.json", records, prompt)
    assert read_json(path)[2] == records  # memory hits survive the round trip


def test_other_threads_sharing_the_model_see_the_plain_layer(tiny):
    import threading

    ids = _ids(seed=3)
    with torch.no_grad():
        base = tiny.model(ids[:, 24:]).logits
    retrofit = MemorizingRetrofit(tiny, MemorizingSettings(mode="joint", k=4))
    try:
        _two_segments(tiny, retrofit, ids, 24)  # memory now holds 24 tokens and changes this thread's output
        seen = {}
        worker = threading.Thread(target=lambda: seen.update(logits=tiny.model(ids[:, 24:]).logits.detach()))
        worker.start()
        worker.join()
        assert torch.allclose(seen["logits"], base, atol=1e-6)  # e.g. a build running beside a generation
    finally:
        retrofit.remove()


def test_a_large_memory_searches_full_chunks_with_faiss_and_forgets_evicted_ones():
    torch.manual_seed(1)
    heads, kv_heads, dim, k = 4, 2, 16, 5
    exact = MemoryStore(capacity=256, kv_heads=kv_heads, head_dim=dim, approximate=False)
    chunked = MemoryStore(capacity=256, kv_heads=kv_heads, head_dim=dim, chunk=64, approximate=True)
    keys, values = torch.randn(230, kv_heads, dim), torch.randn(230, kv_heads, dim)
    for store in (exact, chunked):
        store.add(keys, values, torch.arange(230))
    assert sorted(chunked.chunks.indexes) == [0, 1, 2]  # three full chunks indexed, the fourth filling
    queries = keys[200:210].transpose(0, 1).repeat_interleave(2, dim=0)  # stored keys as queries
    a, b = exact.search(queries, k, 0.25), chunked.search(queries, k, 0.25)
    same = (a.slots[..., :, None] == b.slots[..., None, :]).any(-1).float().mean()
    assert same > 0.9  # IVF with nprobe over a few lists: (nearly) the exact top-k
    assert torch.equal(b.slots[..., 0], a.slots[..., 0])  # a stored key finds itself first
    # Wrapping overwrites chunk 0 first: its index goes, and no evicted position comes back.
    chunked.add(torch.randn(40, kv_heads, dim), torch.randn(40, kv_heads, dim), torch.arange(230, 270))
    assert 0 not in chunked.chunks.indexes and len(chunked) == 256
    found = chunked.search(torch.randn(heads, 3, dim), k, 0.25)
    assert chunked.positions[found.slots].min() >= 270 - 256


def test_joint_mode_local_part_is_the_models_own_attention(tiny):
    # With every memory logit at -inf the joint softmax is local attention alone: the joint path's
    # own scores and masking must then reproduce the model exactly.
    ids = _ids(seed=4)
    with torch.no_grad():
        base = tiny.model(ids[:, 24:]).logits
    retrofit = MemorizingRetrofit(tiny, MemorizingSettings(mode="joint", k=4))
    search = retrofit.memory.search

    def silenced(queries, k, scaling):
        found = search(queries, k, scaling)
        found.logits = torch.full_like(found.logits, float("-inf"))
        return found

    retrofit.memory.search = silenced
    try:
        logits = _two_segments(tiny, retrofit, ids, 24)
        assert retrofit.memory_tokens() == 24 and retrofit.last_step.memory_attention == [0.0] * retrofit.heads
        assert float((logits - base).abs().max()) < 1e-5
    finally:
        retrofit.remove()


def test_a_layer_takes_one_memory_at_a_time(tiny):
    first = MemorizingRetrofit(tiny, MemorizingSettings(layer=1))
    try:
        with pytest.raises(MemorizingError, match="already has a memory"):
            MemorizingRetrofit(tiny, MemorizingSettings(layer=1))
    finally:
        first.remove()
    MemorizingRetrofit(tiny, MemorizingSettings(layer=1)).remove()  # free again once removed


def test_gated_memory_share_is_each_heads_output_norm_share_per_token(tiny):
    """memory_attention in gated mode: ‖g·mem_h‖ / (‖g·mem_h‖ + ‖(1 − g)·local_h‖) at the last
    position, so it moves from token to token though g does not; the hits split it by weight."""
    retrofit = MemorizingRetrofit(tiny, MemorizingSettings(k=4))
    seen = {}
    base, search = retrofit._base_attention, retrofit.memory.search

    def base_attention(*args, **kwargs):
        seen["local"] = base(*args, **kwargs)[0]
        return base(*args, **kwargs)

    def memory_search(*args, **kwargs):
        seen["found"] = search(*args, **kwargs)
        return seen["found"]

    retrofit._base_attention, retrofit.memory.search = base_attention, memory_search
    try:
        with torch.no_grad():
            retrofit.gate_bias.copy_(torch.linspace(-2, 2, retrofit.heads))
        gates = torch.sigmoid(retrofit.gate_bias.detach())
        ids = _ids(40, seed=5)
        shares = []
        retrofit.set_window(0, 0)
        with torch.no_grad():
            tiny.model(ids[:, :24])
            for end in range(25, 33):  # the segment after the memory, one token longer each time
                retrofit.set_window(24, 24)  # 0..23 are in memory; the pass recomputes from 24
                tiny.model(ids[:, 24:end])
                found, local = seen["found"], seen["local"][0, -1].float()  # local: (q, H, d) -> (H, d)
                remembered = (torch.softmax(found.logits.float(), -1)[..., None] * found.values.float()).sum(-2)[:, -1]
                memory_norm = gates * remembered.norm(dim=-1)
                expected = memory_norm / (memory_norm + (1 - gates) * local.norm(dim=-1))
                step = retrofit.last_step
                assert step.memory_attention == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-6)
                assert step.head_gates == pytest.approx(gates.tolist(), rel=1e-5)
                for head, hits in enumerate(step.hits):
                    assert sum(w for _p, w, _c in hits) <= step.memory_attention[head] + 1e-6
                shares.append(step.memory_attention)
        shares = torch.tensor(shares)
        assert float(shares.std(0).max()) > 1e-3  # not a constant band per head
        assert not torch.allclose(shares, gates.expand_as(shares), atol=1e-3)  # nor the gates
    finally:
        retrofit.remove()


def test_auto_layer_is_the_trained_gates_layer_else_three_quarters_of_the_depth(tmp_path):
    from knn_explorer.core.home import DEMO_MEMTRF_ADAPTER
    from knn_explorer.core.training.adapters import (memorizing_with_gates, plan_memory_layer, read_adapter_info,
                                                     save_memorizing_adapter)

    demo = load_model("demo", device="cpu")
    shipped = read_adapter_info(DEMO_MEMTRF_ADAPTER).details["layer"]
    plan = plan_memory_layer(demo, MemorizingSettings())
    assert (plan.layer, plan.layers, plan.adapter) == (shipped, 4, DEMO_MEMTRF_ADAPTER)
    assert plan.describe() == f"layer {shipped} (from the trained gates)"
    joint = plan_memory_layer(demo, MemorizingSettings(mode="joint"))
    assert (joint.layer, joint.adapter, joint.describe()) == (2, None, "layer 2 (¾ of the depth)")
    chosen = plan_memory_layer(demo, MemorizingSettings(layer=shipped))  # the gates fit the chosen layer: used
    assert (chosen.layer, chosen.reason, chosen.adapter) == (shipped, "chosen", DEMO_MEMTRF_ADAPTER)
    other = (shipped + 1) % 4
    assert plan_memory_layer(demo, MemorizingSettings(layer=other)).adapter is None  # another layer: untrained

    gpt2 = load_model(str(save_tiny_model(tmp_path / "gpt2", "gpt2")), device="cpu")  # 2 layers: auto is 1
    retrofit = MemorizingRetrofit(gpt2, MemorizingSettings(layer=0))
    with torch.no_grad():
        retrofit.gate_bias.fill_(-1.0)
    adapter = save_memorizing_adapter(tmp_path / "gates.safetensors", retrofit)
    retrofit.remove()
    assert plan_memory_layer(gpt2, MemorizingSettings()).layer == 1
    # auto with gates trained for layer 0 puts the memory there (it used to refuse: "gates layer 0, the memory is in 1")
    retrofit = memorizing_with_gates(gpt2, MemorizingSettings(), adapter)
    try:
        assert retrofit.layer == 0 and retrofit.gates().tolist() == pytest.approx([torch.sigmoid(torch.tensor(-1.0)).item()] * 2)
    finally:
        retrofit.remove()

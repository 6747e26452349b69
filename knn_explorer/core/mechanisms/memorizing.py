"""Memorizing Transformer (Wu et al. 2022) retrofitted onto a pretrained causal LM.

One attention layer (default: at ¾ of the depth) also looks up, for every head, the top-k (key,
value) pairs of that same layer's earlier tokens (`MemoryStore`), and combines the result with its
local attention, before the output projection. Two modes:

- ``gated`` (the paper): out_h = g_h · mem_h + (1 − g_h) · local_h with g_h = σ(b_h) per head.
  b_h starts at -16, so an untrained retrofit leaves the logits unchanged (σ(-16) ≈ 1e-7);
  `train_gates` (gate_training.py) learns b.
- ``joint`` (training-free, as in Extended Mind Transformers): one softmax over the local keys and
  the retrieved ones; no parameters.

Fine-tuned with the memory, as the paper does (`tune_layers`, `training/memory_finetuning.py`): the
memory layer and the layers above it (attention, feed-forward and norms) and the final norm get
trained copies, used by the memory's own forward passes only. The model's parameters are never
written: a tuned layer's `forward` sends the memory's passes (the owner thread, memory on) to its
copy and every other pass (the LM alone beside it, `set_aside`, another thread) to the original
layer, so the base model stays bit-identical, and `remove()` drops the copies. The layers below
the memory stay frozen, so the keys of the text it stores are those the model was trained to make.

Rotary models (gpt_neox, llama, mistral, qwen2): memory keys and the queries that look them up are
taken *before* the rotation. The lookup is then by content alone, as in the paper (its memory has
no positions), and a retrieved key scores exactly as an un-rotated pair would: q·k before rotation
equals q·k after rotating both to the same position, i.e. a memory token is treated as being at
relative distance 0 — never as thousands of positions away, a distance the model was not trained
on. The layer's attention function gets the rotated tensors; `_unrotate` undoes the rotation with
the cos/sin the layer was called with.

How it attaches: the chosen attention module gets its own copy of the config whose attention
implementation is ``knn_memory`` (registered with transformers' `AttentionInterface`); every other
layer keeps its own. Batch size 1: memory belongs to one document.

Which tokens are in memory: the driver (evaluation, generation, training) says where the local
window starts (`set_window`). Tokens the layer has processed wait in a pending buffer while they are
inside the local window and move to the memory when the window passes them, so no token is both
attended locally and retrieved.
"""
from __future__ import annotations

import copy
import math
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .memory_store import MemoryStore
from ..methods.base import MethodSettings, setting
from ..models import LoadedModel

MEMORY_ATTENTION = "knn_memory"
INITIAL_GATE_BIAS = -16.0  # σ(-16) ≈ 1.1e-7: the untrained retrofit is the base model
MODES = ("gated", "joint")
MAX_MEMORY = 262_144  # tokens; exact lookup costs ~45 ms per query there on 2 cores (6.6 ms at 65,536)
# The local window the app's panel starts with (the CLI's `generate` without --window: the model's maximum).
# Only text that has left the local window enters the memory, and the window restarts on its most
# recent half when full, so with a window of W the memory is first used once the text passes W
# tokens and local attention then sees W/2 to W tokens. With the model's maximum (1,024+ tokens for
# most models) a typed prompt never reaches the memory. 16 puts the memory to work from step 6
# (the 7th generated token) of the demo prompt (11 tokens) and covers most of a 20-token side-by-side run;
# the demo's shipped gates were trained on 64-token segments, whose first tokens have as little
# local context. For long pasted documents a larger window (a few hundred tokens) is the paper's
# setting; the app remembers the user's choice.
DEFAULT_WINDOW = 16

# model_type -> path of the decoder-layer list and the attention module's name in a layer.
ATTENTION_MODULES = {
    "gpt2": ("transformer.h", "attn"),
    "gpt_neox": ("gpt_neox.layers", "attention"),
    "llama": ("model.layers", "self_attn"),
    "mistral": ("model.layers", "self_attn"),
    "qwen2": ("model.layers", "self_attn"),
}
# model_type -> the norm after the last decoder layer (fine-tuned with the layers above the memory).
FINAL_NORMS = {
    "gpt2": "transformer.ln_f",
    "gpt_neox": "gpt_neox.final_layer_norm",
    "llama": "model.norm",
    "mistral": "model.norm",
    "qwen2": "model.norm",
}


class MemorizingError(Exception):
    """A retrofit that cannot be made; str() is a one-line reason."""


@dataclass(frozen=True)
class MemorizingSettings(MethodSettings):
    layer: int | None = setting(None, flag="memory-layer", help="0-based layer with the memory (default: ¾ depth)")
    k: int = setting(32, help="memory entries each head retrieves")
    memory_size: int = setting(65_536, help="tokens the memory holds")
    mode: str = setting("gated", flag="memory-mode", help="gated (learned per-head gates) or joint (one softmax)")
    hits_shown: int = setting(4, flag="hits-shown", help="memory entries per head described in each record")

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown memory mode {self.mode!r}: use one of {', '.join(MODES)}")
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if not 0 <= self.memory_size <= MAX_MEMORY:
            raise ValueError(f"the memory holds 0 to {MAX_MEMORY:,} tokens (lookups are exact)")


@dataclass
class MemoryStep:
    """What the memory layer did for the last query position of the latest forward pass."""

    head_gates: list[float] | None  # g_h (gated mode), None in joint mode
    # Per head, the share of its output that came from memory at this token: gated mode
    # ‖g·mem_h‖ / (‖g·mem_h‖ + ‖(1 − g)·local_h‖); joint mode the softmax mass on memory keys.
    memory_attention: list[float]
    # per head: (position, weight, cosine similarity of the query and the entry's key)
    hits: list[list[tuple[int, float, float]]] = field(default_factory=list)


def default_layer(num_layers: int) -> int:
    """The layer at ¾ of the depth (layer 9 of 12, 1-based, as in the paper), 0-based."""
    return max(0, round(0.75 * num_layers) - 1)


def _get(root: torch.nn.Module, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _decoder_layers(loaded: LoadedModel) -> tuple[torch.nn.ModuleList, str]:
    """The model's decoder layers and the attention module's name in one; a `MemorizingError` for an
    architecture without a memory layer."""
    model_type = loaded.model.config.model_type
    if model_type not in ATTENTION_MODULES:
        supported = ", ".join(sorted(ATTENTION_MODULES))
        raise MemorizingError(f"the Memorizing Transformer supports {supported}; this model is {model_type}")
    layers_path, attention_name = ATTENTION_MODULES[model_type]
    return _get(loaded.model, layers_path), attention_name


def layer_count(loaded: LoadedModel) -> int:
    """How many layers could hold the memory (a `MemorizingError` if none can)."""
    return len(_decoder_layers(loaded)[0])


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _unrotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Undo transformers' rotary embedding (x·cos + rotate_half(x)·sin) on the first cos.shape[-1] dims.

    `x` is (batch, heads, seq, head_dim); cos/sin are (batch, seq, rotary_dim). The inverse of a
    rotation by θ is the rotation by −θ.
    """
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    rotary = cos.shape[-1]
    x_rot, x_pass = x[..., :rotary], x[..., rotary:]
    return torch.cat((x_rot * cos - _rotate_half(x_rot) * sin, x_pass), dim=-1)


def _local_scores(query, key, attention_mask, scaling) -> torch.Tensor:
    """Scaled dot products of local attention with the mask applied (-inf where masked)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    scores = (query @ key.transpose(-1, -2)) * scaling
    if attention_mask is None:  # sdpa's causal shortcut: the queries are the last q_len positions
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
        return scores.masked_fill(~allowed, float("-inf"))
    if attention_mask.dtype == torch.bool:
        return scores.masked_fill(~attention_mask[..., :kv_len], float("-inf"))
    return scores + attention_mask[..., :kv_len]


def _memory_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    retrofit = module._knn_memory
    if threading.get_ident() != retrofit._owner:
        return retrofit._base_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                        **kwargs)
    return retrofit.attend(module, query, key, value, attention_mask, scaling, dropout, **kwargs)


AttentionInterface.register(MEMORY_ATTENTION, _memory_attention)


class MemorizingRetrofit:
    """kNN memory inside one attention layer of `loaded.model`. `remove()` restores the model."""

    def __init__(self, loaded: LoadedModel, settings: MemorizingSettings = MemorizingSettings()):
        model = loaded.model
        config = model.config
        layers, attention_name = _decoder_layers(loaded)
        layer = default_layer(len(layers)) if settings.layer is None else settings.layer
        if not 0 <= layer < len(layers):
            raise MemorizingError(f"layer {layer} does not exist: the model has layers 0–{len(layers) - 1}")
        module = getattr(layers[layer], attention_name)
        if hasattr(module, "_knn_memory"):  # a second retrofit would swap the first one's config under it
            raise MemorizingError(f"layer {layer} already has a memory in use (another run); wait for it to end")
        self.loaded = loaded
        self.settings = settings
        self.layer = layer
        self.module = module
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        device = next(model.parameters()).device
        self.gate_bias = torch.nn.Parameter(torch.full((self.heads,), INITIAL_GATE_BIAS, device=device))
        self.memory = MemoryStore(settings.memory_size, self.kv_heads, self.head_dim, device=device)
        self.enabled = True  # memory on: lookups and the fine-tuned layers; off: the base model exactly
        self._filling = False  # `filling()`: tuned weights without lookups
        self.adapter = None  # the AdapterInfo of loaded gates, if any
        # Fine-tuned copies (`tune_layers`): module path -> (original module, its trained copy).
        self._tuned: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}
        self.last_step: MemoryStep | None = None
        self._window_start = 0  # absolute position of the first token local attention sees
        self._input_start = 0  # absolute position of the next forward pass's first token
        self._document_start = 0  # tokens before it never enter the memory (another document's)
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        # Only the thread that made the retrofit uses the memory: another job sharing the model
        # (a datastore build in the app) goes through the layer's plain attention.
        self._owner = threading.get_ident()

        base_name = config._attn_implementation or "eager"
        eager = getattr(sys.modules[type(self.module).__module__], "eager_attention_forward", None)
        self._base_attention = ALL_ATTENTION_FUNCTIONS.get_interface(base_name, eager)
        self._original_config = self.module.config
        own_config = copy.copy(config)
        own_config._attn_implementation = MEMORY_ATTENTION
        self.module.config = own_config
        self.module._knn_memory = self
        self._hook = self.module.register_forward_pre_hook(self._capture_rotary, with_kwargs=True)

    # ---- lifecycle -------------------------------------------------------------------------
    def adopt(self) -> None:
        """Make the calling thread the one whose forward passes use the memory."""
        self._owner = threading.get_ident()

    def remove(self) -> None:
        """Detach from the model; its own layers (never written) are used again."""
        self._untune()
        self._hook.remove()
        self.module.config = self._original_config
        del self.module._knn_memory

    @contextmanager
    def filling(self):
        """Passes inside the block only store text: the fine-tuned layers (whose keys the memory
        holds) without lookups. The memory layer's keys do not depend on the memory."""
        saved = self.enabled, self._filling
        self.enabled, self._filling = False, True
        try:
            yield self
        finally:
            self.enabled, self._filling = saved

    def reset(self) -> None:
        """Forget everything: a new document starts."""
        self.memory.clear()
        self._pending.clear()
        self._window_start = self._input_start = self._document_start = 0
        self.last_step = None

    def start_document(self, position: int) -> None:
        """A new document starts at absolute `position` of the text being read: forget the memory, and
        keep the earlier document's tokens still in local view out of it."""
        self.memory.clear()
        self._document_start = position

    def set_window(self, window_start: int, input_start: int) -> None:
        """Before a forward pass: local attention sees positions ≥ `window_start`; the pass's first
        token is at `input_start`. Pending tokens left of the window move into the memory; pending
        tokens at or after `input_start` are about to be recomputed and are dropped."""
        self._window_start, self._input_start = window_start, input_start
        keep = []
        for keys, values, positions in self._pending:
            recomputed = positions >= input_start
            keys, values, positions = keys[~recomputed], values[~recomputed], positions[~recomputed]
            left = positions < window_start
            into_memory = left & (positions >= self._document_start)
            if into_memory.any():
                self.memory.add(keys[into_memory], values[into_memory], positions[into_memory])
            if (~left).any():
                keep.append((keys[~left], values[~left], positions[~left]))
        self._pending = keep

    @contextmanager
    def set_aside(self):
        """Forward passes of another text inside the block see the plain layer and leave no trace.

        With `enabled = False` the layer computes the plain model's attention, but it still queues
        the pass's keys as pending (advancing `_input_start`) and overwrites `last_step`. Restoring
        those makes another lane (the LM alone beside a memtrf run) invisible to the memory whatever
        the order of their passes; the store itself only changes in `set_window`, which the other
        lane never calls."""
        saved = (self.enabled, self._filling, list(self._pending), self._input_start, self._window_start,
                 self.last_step)
        self.enabled = self._filling = False
        try:
            yield self
        finally:
            (self.enabled, self._filling, self._pending, self._input_start, self._window_start,
             self.last_step) = saved

    def resize_memory(self, size: int) -> None:
        """A new, empty memory of `size` tokens (a memory-size sweep); the gates stay."""
        self.settings = replace(self.settings, memory_size=size)  # validates the size
        self.memory = MemoryStore(size, self.kv_heads, self.head_dim, device=self.gate_bias.device)
        self.reset()

    def gates(self) -> torch.Tensor:
        return torch.sigmoid(self.gate_bias.detach()).cpu()

    def memory_tokens(self) -> int:
        return len(self.memory)

    # ---- fine-tuned layers ---------------------------------------------------------------------
    def tunable_modules(self, first_layer: int | None = None) -> list[str]:
        """The module paths fine-tuning trains: the decoder layers from `first_layer` (default: the
        memory's) to the top, and the final norm."""
        layers_path, _attention = ATTENTION_MODULES[self.loaded.model.config.model_type]
        first = self.layer if first_layer is None else first_layer
        count = len(_get(self.loaded.model, layers_path))
        if not 0 <= first < count:
            raise MemorizingError(f"layer {first} does not exist: the model has layers 0–{count - 1}")
        paths = [f"{layers_path}.{i}" for i in range(first, count)]
        norm = FINAL_NORMS[self.loaded.model.config.model_type]
        return paths + [norm]

    def tune_layers(self, paths: list[str] | None = None) -> dict[str, torch.nn.Parameter]:
        """Give the modules at `paths` (default: `tunable_modules()`) trained copies, equal to the
        originals until trained or given deltas; the memory's passes use them. Returns the copies'
        parameters by their names in the model (e.g. "model.layers.3.mlp.up_proj.weight")."""
        model = self.loaded.model
        for path in paths if paths is not None else self.tunable_modules():
            if path in self._tuned:
                continue
            try:
                original = _get(model, path)
            except AttributeError:
                raise MemorizingError(f"the model has no module {path}") from None
            # The copy shares the retrofit (the memory layer's attention calls it) and the configs.
            memo = {id(self): self, id(model.config): model.config, id(self.module.config): self.module.config}
            copy_ = copy.deepcopy(original, memo)
            for parameter in copy_.parameters():
                parameter.requires_grad_(True)
            original.forward = self._dispatch(original.forward, copy_)
            self._tuned[path] = (original, copy_)
        return self.tuned_parameters()

    def tuned_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {f"{path}.{name}": p for path, (_o, tuned) in self._tuned.items() for name, p in tuned.named_parameters()}

    def base_parameters(self) -> dict[str, torch.Tensor]:
        """The original parameters of the tuned modules, by the same names."""
        return {f"{path}.{name}": p for path, (original, _t) in self._tuned.items()
                for name, p in original.named_parameters()}

    @torch.no_grad()
    def weight_deltas(self) -> dict[str, torch.Tensor]:
        """Trained minus base, in float32, per tuned parameter."""
        base = self.base_parameters()
        return {name: (p.detach().float() - base[name].detach().float()).cpu()
                for name, p in self.tuned_parameters().items()}

    @torch.no_grad()
    def apply_weight_deltas(self, deltas: dict[str, torch.Tensor]) -> None:
        """Tune the modules the deltas name and set their copies to base + delta."""
        self.tune_layers(self._module_paths(sorted({name.rsplit(".", 1)[0] for name in deltas})))
        tuned, base = self.tuned_parameters(), self.base_parameters()
        for name, delta in deltas.items():
            if name not in tuned:
                raise MemorizingError(f"the model has no parameter {name}")
            if tuple(delta.shape) != tuple(tuned[name].shape):
                raise MemorizingError(f"{name} is {tuple(tuned[name].shape)} in the model, {tuple(delta.shape)} in "
                                      "the adapter")
            tuned[name].copy_((base[name].float() + delta.to(base[name].device).float()).to(tuned[name].dtype))

    def _module_paths(self, parameter_parents: list[str]) -> list[str]:
        """The tunable modules (layers, final norm) that contain these sub-module paths."""
        candidates = self.tunable_modules(0)
        found = []
        for parent in parameter_parents:
            owner = next((c for c in candidates if parent == c or parent.startswith(c + ".")), None)
            if owner is None:
                raise MemorizingError(f"{parent} is not in a layer that can be fine-tuned")
            if owner not in found:
                found.append(owner)
        return found

    def tuned_modules(self) -> list[str]:
        return list(self._tuned)

    def _tuned_active(self) -> bool:
        return (self.enabled or self._filling) and threading.get_ident() == self._owner

    def _dispatch(self, original_forward, tuned: torch.nn.Module):
        def forward(*args, **kwargs):
            if self._tuned_active():
                return tuned(*args, **kwargs)
            return original_forward(*args, **kwargs)
        return forward

    def _untune(self) -> None:
        for original, _tuned in self._tuned.values():
            del original.forward  # the class's forward again
        self._tuned.clear()

    # ---- the attention function ------------------------------------------------------------
    def _capture_rotary(self, _module, _args, kwargs):
        self._rotary = kwargs.get("position_embeddings")

    def attend(self, module, query, key, value, attention_mask, scaling, dropout, **kwargs):
        if query.shape[0] != 1 and not self.enabled:  # a batch of other texts, memory off: the plain layer
            return self._base_attention(module, query, key, value, attention_mask, dropout=dropout,
                                        scaling=scaling, **kwargs)
        if query.shape[0] != 1:
            raise MemorizingError("the memory layer runs one document at a time (batch size 1)")
        scaling = scaling if scaling is not None else 1 / math.sqrt(self.head_dim)
        q_len = query.shape[2]
        query_plain, new_keys = query, key[:, :, -q_len:]
        if self._rotary is not None:
            cos, sin = self._rotary
            query_plain, new_keys = _unrotate(query, cos, sin), _unrotate(new_keys, cos, sin)
        positions = self._input_start + torch.arange(q_len, device=query.device)
        self._pending.append((new_keys[0].transpose(0, 1).detach(), value[0, :, -q_len:].transpose(0, 1).detach(),
                              positions))
        self._input_start += q_len  # a later pass without set_window continues after this one

        use_memory = self.enabled and len(self.memory) > 0
        if self.settings.mode == "joint" and use_memory:
            return self._joint(module, query, query_plain, key, value, attention_mask, scaling)
        local, weights = self._base_attention(module, query, key, value, attention_mask, dropout=dropout,
                                              scaling=scaling, **kwargs)
        if not use_memory:
            self.last_step = MemoryStep(self._gate_list(), [0.0] * self.heads)
            return local, weights
        found = self.memory.search(query_plain[0], self.settings.k, scaling)
        weights_mem = torch.softmax(found.logits.float(), dim=-1).to(found.values.dtype)  # (H, q, k)
        remembered = (weights_mem[..., None] * found.values).sum(-2)  # (H, q, d)
        gate = torch.sigmoid(self.gate_bias).to(local.dtype)[None, None, :, None]
        from_memory = gate * remembered.transpose(0, 1)[None].to(local.dtype)  # (1, q, H, d), as `local`
        from_local = (1 - gate) * local
        # Each head's share of its output that came from memory: the gate scaled by how large the
        # memory's result is against local attention's, so it changes from token to token.
        memory_norm = from_memory[0, -1].detach().float().norm(dim=-1)
        local_norm = from_local[0, -1].detach().float().norm(dim=-1)
        share = memory_norm / (memory_norm + local_norm).clamp_min(torch.finfo(torch.float32).tiny)
        self._note(found, weights_mem[:, -1].detach().float() * share[:, None], share,
                   gate.detach().flatten().float().tolist())
        return from_memory + from_local, weights

    def _joint(self, module, query, query_plain, key, value, attention_mask, scaling):
        group = self.heads // self.kv_heads
        key_all = key.repeat_interleave(group, dim=1)
        value_all = value.repeat_interleave(group, dim=1)
        local = _local_scores(query, key_all, attention_mask, scaling)  # (1, H, q, kv)
        found = self.memory.search(query_plain[0], self.settings.k, scaling)
        joint = torch.softmax(torch.cat((local.float(), found.logits[None].float()), dim=-1), dim=-1)
        p_local, p_memory = joint[..., : local.shape[-1]].to(value.dtype), joint[..., local.shape[-1]:]
        out = p_local @ value_all + (p_memory[0, ..., None].to(value.dtype) * found.values).sum(-2)[None]
        last = p_memory[0, :, -1].detach().float()  # (H, k): the last position's mass on each memory key
        self._note(found, last, last.sum(-1), None)
        return out.transpose(1, 2).contiguous(), None

    def _note(self, found, weights: torch.Tensor, share: torch.Tensor, gates: list[float] | None) -> None:
        """Keep the last query position's per-head memory share and strongest hits for the record.

        `weights` is (H, k): each retrieved entry's part of the head's output at the last position
        (they sum to `share`, (H,)); `found` the lookup (slots and cosine similarities)."""
        top = weights.topk(min(self.settings.hits_shown, weights.shape[-1]), dim=-1)
        positions = self.memory.positions[found.slots[:, -1].gather(1, top.indices)].cpu()
        similarity = found.similarity[:, -1].gather(1, top.indices).float().cpu()
        hits = [[(int(p), float(w), float(c)) for p, w, c in zip(positions[h], top.values[h].cpu(), similarity[h])]
                for h in range(self.heads)]
        self.last_step = MemoryStep(gates, share.cpu().tolist(), hits)

    def _gate_list(self) -> list[float] | None:
        return self.gates().tolist() if self.settings.mode == "gated" else None

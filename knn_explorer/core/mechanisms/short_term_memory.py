"""Transformer-XL's short-term memory (Dai et al. 2019) as SPALM uses it: the cached hidden states
of the previous segment carried into the next one, bounded.

In Hugging Face terms the cached hidden states are the key/value cache: each segment runs after
the cache of the tokens before it, and afterwards the cache keeps the most recent `length` tokens'
keys and values, detached (Transformer-XL's stop-gradient: training never backpropagates into an
earlier segment). So a segment's tokens attend to the previous segment's states as they were
computed — with *their* own memory — rather than to a recomputation of those tokens.

Positions. A model with relative positions (rotary: Llama, Mistral, Qwen, GPT-NeoX, Phi) gets each
token's position in the stream: attention depends only on the distance between a query and a
cached key, which the memory's bound keeps within the model's position table (memory + segment ≤
`max_positions`). A model with a learned table of absolute positions (GPT-2, OPT) cannot carry its
cache past that table: the segment takes the positions right after the cache while they fit, and
otherwise the memory's tokens are recomputed from position 0 first (the generator's restart on the
most recent half-window, once per table's length).
"""
from __future__ import annotations

import inspect

import torch

from ..models import LoadedModel


def has_absolute_positions(model: torch.nn.Module) -> bool:
    """Whether the model adds a learned table of absolute positions to its token embeddings."""
    table = {getattr(model.config, "n_positions", None), getattr(model.config, "max_position_embeddings", None)}
    table |= {n + 2 for n in table if isinstance(n, int)}  # OPT's table has two extra rows
    embeddings = model.get_input_embeddings()
    return any(isinstance(m, torch.nn.Embedding) and m is not embeddings and m.num_embeddings in table
               for m in model.modules())


def _accepts_position_ids(module: torch.nn.Module) -> bool:
    try:
        return "position_ids" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


class ShortTermMemory:
    """The key/value cache of the last `length` tokens of B parallel streams, carried from segment to segment."""

    def __init__(self, model: LoadedModel, length: int):
        self.model = model
        self.length = max(0, int(length))
        self.base = model.model.base_model  # its output is the input of the output embedding (h_t)
        self.absolute = has_absolute_positions(model.model)
        self.positions = _accepts_position_ids(self.base)
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new text, or new streams)."""
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys, values (B×H×M×d), detached
        self.ids: torch.Tensor | None = None  # B×M: the cached tokens
        self.position = 0  # stream position of the next token
        self.table_position = 0  # absolute-position models: the position table's row of the next token

    @property
    def tokens(self) -> int:
        """How many tokens' states the memory holds."""
        return 0 if self.ids is None else int(self.ids.shape[1])

    def bound(self, segment: int) -> int:
        """The most tokens a segment of `segment` tokens may see in memory (the memory's length,
        and memory + segment within the model's positions)."""
        return max(0, min(self.length, self.model.max_positions - segment))

    def forward(self, input_ids: torch.Tensor, keep: int | None = None):
        """Run a segment (B×L token ids) after the memory, of which at most `keep` tokens (default:
        `bound(L)`) are kept before it runs. Returns the base model's output: `last_hidden_state`
        is h_t of each token. The memory then holds the most recent `length` tokens, detached.
        Gradients flow within the segment as the caller's grad mode allows."""
        from transformers import DynamicCache

        batch, segment = input_ids.shape
        limit = self.bound(segment) if keep is None else min(max(0, keep), self.bound(segment))
        self._trim(limit)
        if self.absolute and self.table_position + segment > self.model.max_positions:
            self._recompute()
        cache = DynamicCache(ddp_cache_data=self.layers) if self.layers else DynamicCache()
        kwargs = {"input_ids": input_ids, "cache": cache, "use_cache": True}
        start = self.table_position if self.absolute else self.position
        if self.positions:
            kwargs["position_ids"] = torch.arange(start, start + segment, device=input_ids.device)[None].expand(batch, -1)
        out = self.base(**kwargs)
        kept = self.length
        carried = out.past_key_values if hasattr(out, "past_key_values") else out.cache
        self.layers = [(layer.keys[..., -kept:, :].detach(), layer.values[..., -kept:, :].detach())
                       for layer in carried.layers] if kept else []
        ids = input_ids.detach() if self.ids is None else torch.cat([self.ids, input_ids.detach()], dim=1)
        self.ids = ids[:, -kept:] if kept else ids[:, :0]
        self.position += segment
        self.table_position = start + segment
        return out

    def _trim(self, keep: int) -> None:
        if self.tokens > keep:
            self.layers = [(k[..., k.shape[-2] - keep:, :], v[..., v.shape[-2] - keep:, :]) for k, v in self.layers]
            self.ids = self.ids[:, self.ids.shape[1] - keep:]
        if not keep:
            self.layers = []

    @torch.no_grad()
    def _recompute(self) -> None:
        """Absolute positions past the table: run the memory's tokens again from position 0."""
        from transformers import DynamicCache

        ids = self.ids
        self.layers, self.table_position = [], 0
        if ids is None or ids.shape[1] == 0:
            return
        kwargs = {"input_ids": ids, "cache": DynamicCache(), "use_cache": True}
        if self.positions:
            kwargs["position_ids"] = torch.arange(ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
        out = self.base(**kwargs)
        carried = out.past_key_values if hasattr(out, "past_key_values") else out.cache
        self.layers = [(layer.keys.detach(), layer.values.detach()) for layer in carried.layers]
        self.table_position = ids.shape[1]

"""The Memorizing Transformer's memory: one layer's (key, value) pairs of earlier tokens, FIFO.

Keys are stored before any rotary position embedding (see `memorizing.py` for why), with their
unit-length copies for the lookup; each entry keeps the absolute position of its token in the
document, so a hit can be shown as a passage. Up to 65,536 tokens search is exact (a matmul +
top-k per head, a few ms per query on a CPU, on the model's device); a larger memory searches its
full chunks with FAISS (`memory_chunks.py`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .memory_chunks import CHUNK, EXACT_LIMIT, ChunkIndexes


@dataclass
class MemoryLookup:
    """The k entries each (head, query) retrieved, as buffer slots, with the model's logits for them."""

    slots: torch.Tensor  # (heads, queries, k) int64, indices into the store's buffers
    logits: torch.Tensor  # (heads, queries, k): scaled dot products q·k, as local attention scores them
    values: torch.Tensor  # (heads, queries, k, head_dim)
    similarity: torch.Tensor  # (heads, queries, k): cosine of the query and each entry's key


class MemoryStore:
    """A ring buffer of `capacity` tokens × `kv_heads` keys and values."""

    def __init__(self, capacity: int, kv_heads: int, head_dim: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, chunk: int = CHUNK, approximate: bool | None = None):
        """`approximate` (default: above EXACT_LIMIT tokens) searches full chunks with FAISS."""
        if capacity < 0:
            raise ValueError("memory size must be >= 0")
        self.capacity = capacity
        shape = (kv_heads, capacity, head_dim)  # per head contiguous: a lookup is one batched matmul
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.unit_keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.positions = torch.full((capacity,), -1, device=device, dtype=torch.long)
        self.size = 0
        self._next = 0  # the slot the next entry goes to
        use_faiss = capacity > EXACT_LIMIT if approximate is None else approximate
        self.chunks = ChunkIndexes(capacity, chunk) if use_faiss and capacity else None

    def __len__(self) -> int:
        return self.size

    def clear(self) -> None:
        self.size, self._next = 0, 0
        self.positions.fill_(-1)
        if self.chunks is not None:
            self.chunks.clear()

    def add(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> None:
        """Append (n, kv_heads, head_dim) keys/values; the oldest entries make room."""
        if self.capacity == 0 or keys.shape[0] == 0:
            return
        keys, values, positions = keys[-self.capacity:], values[-self.capacity:], positions[-self.capacity:]
        n = keys.shape[0]
        slots = (self._next + torch.arange(n, device=self.positions.device)) % self.capacity
        keys = keys.detach().to(self.keys).transpose(0, 1)
        self.keys[:, slots] = keys
        self.unit_keys[:, slots] = torch.nn.functional.normalize(keys, dim=-1)
        self.values[:, slots] = values.detach().to(self.values).transpose(0, 1)
        self.positions[slots] = positions.to(self.positions)
        if self.chunks is not None:
            self.chunks.written(self._next, n, self.unit_keys)
        self._next = (self._next + n) % self.capacity
        self.size = min(self.capacity, self.size + n)

    def search(self, queries: torch.Tensor, k: int, scaling: float) -> MemoryLookup:
        """Top-k entries per (head, query) by cosine similarity, as the Memorizing Transformer does.

        `queries` is (heads, n, head_dim); query head h reads key/value head h // (heads / kv_heads)
        (grouped-query attention). Logits are the layer's own scaled dot products, so memory and
        local attention scores are on one scale; they carry gradients to the queries (fine-tuning),
        the choice of entries does not.
        """
        heads, n, dim = queries.shape
        kv_heads = self.keys.shape[0]
        group = heads // kv_heads
        k = min(k, self.size)
        q = queries.to(self.keys.dtype).reshape(kv_heads, group * n, dim)
        with torch.no_grad():
            unit_q = torch.nn.functional.normalize(q, dim=-1)
            if self.chunks is None:
                cosine, slots = (unit_q @ self.unit_keys[:, : self.size].transpose(1, 2)).topk(k, dim=-1)
            else:
                slots = self._search_chunks(unit_q, k)  # (kv_heads, group * n, k)
            # rows of the (kv_heads · capacity, dim) buffers: index_select is far faster than [head, slots]
            rows = (slots + torch.arange(kv_heads, device=slots.device)[:, None, None] * self.capacity).reshape(-1)
            if self.chunks is not None:
                cosine = (unit_q[:, :, None, :] * self._rows(self.unit_keys, rows, slots.shape)).sum(-1)
        picked_keys, picked_values = self._rows(self.keys, rows, slots.shape), self._rows(self.values, rows, slots.shape)
        logits = (q[:, :, None, :] * picked_keys).sum(-1) * scaling
        return MemoryLookup(slots=slots.reshape(heads, n, k), logits=logits.reshape(heads, n, k),
                            values=picked_values.reshape(heads, n, k, dim), similarity=cosine.reshape(heads, n, k))

    @staticmethod
    def _rows(buffer: torch.Tensor, rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """`buffer[head, slot]` for the flat `rows`, as (kv_heads, queries, k, dim)."""
        return buffer.view(-1, buffer.shape[-1]).index_select(0, rows).view(*shape, buffer.shape[-1])

    def _search_chunks(self, unit_q: torch.Tensor, k: int) -> torch.Tensor:
        """Top-k slots from the exact part (the chunk being filled) and the FAISS-indexed chunks."""
        exact_slots = self.chunks.unindexed_slots(self.size, unit_q.device)
        exact_sim = unit_q @ self.unit_keys[:, exact_slots].transpose(1, 2)
        top = exact_sim.topk(min(k, exact_slots.numel()), dim=-1)
        index_sim, index_slots = self.chunks.search(unit_q, k)
        sims = torch.cat((top.values.float().cpu(), index_sim), dim=-1)
        slots = torch.cat((exact_slots[top.indices].cpu(), index_slots), dim=-1)
        sims[slots < 0] = float("-inf")  # FAISS pads with -1 when a chunk has fewer than k hits
        best = sims.topk(k, dim=-1).indices
        return slots.gather(-1, best).clamp(min=0).to(unit_q.device)

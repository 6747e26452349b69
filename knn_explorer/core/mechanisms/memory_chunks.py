"""FAISS indexes over the full chunks of a large memory's ring buffer.

A memory of more than `EXACT_LIMIT` tokens is searched in two parts: the chunk being filled, by
an exact matmul, and every full chunk (`CHUNK` slots) through its own FAISS IVF-Flat index per
key/value head, built once when the chunk fills (~0.1 s for 16k keys). A FIFO memory overwrites
whole chunks in order, so an index is dropped when its chunk's first slot is written again and no
evicted entry is ever returned. Exact search costs ~6.6 ms per query at 65,536 tokens and ~45 ms
at 262,144 on 2 cores (4 heads × 64 dims); per indexed chunk a query costs ~0.1–0.2 ms.
"""
from __future__ import annotations

import math

import faiss
import numpy as np
import torch

EXACT_LIMIT = 65_536
CHUNK = 16_384


class ChunkIndexes:
    def __init__(self, capacity: int, chunk: int = CHUNK):
        self.capacity, self.chunk = capacity, chunk
        self.count = math.ceil(capacity / chunk) if capacity else 0
        self.indexes: dict[int, list[faiss.Index]] = {}  # chunk -> one index per kv head
        self._filled = [0] * self.count  # slots written since the chunk was last started

    def length(self, j: int) -> int:
        return min(self.chunk, self.capacity - j * self.chunk)

    def clear(self) -> None:
        self.indexes.clear()
        self._filled = [0] * self.count

    def written(self, first_slot: int, n: int, unit_keys: torch.Tensor) -> None:
        """`n` slots from `first_slot` (wrapping) were written; index the chunks that are now full."""
        slot = first_slot
        for _ in range(min(n, self.capacity)):
            j = slot // self.chunk
            if slot % self.chunk == 0:  # a chunk starts over: its index describes evicted entries
                self.indexes.pop(j, None)
                self._filled[j] = 0
            self._filled[j] += 1
            if self._filled[j] == self.length(j):
                self._build(j, unit_keys)
            slot = (slot + 1) % self.capacity

    def _build(self, j: int, unit_keys: torch.Tensor) -> None:
        start, end = j * self.chunk, j * self.chunk + self.length(j)
        per_head = []
        for head in unit_keys[:, start:end].float().cpu().numpy():
            data = np.ascontiguousarray(head)
            lists = max(1, int(math.sqrt(len(data))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(data.shape[1]), data.shape[1], lists,
                                       faiss.METRIC_INNER_PRODUCT)
            index.train(data)
            index.add(data)
            index.nprobe = min(lists, max(8, lists // 8))  # 16 of 128 lists for a full chunk
            per_head.append(index)
        self.indexes[j] = per_head

    def unindexed_slots(self, size: int, device) -> torch.Tensor:
        """Valid slots not covered by an index (searched exactly)."""
        ranges = [torch.arange(j * self.chunk, min(j * self.chunk + self.length(j), size), device=device)
                  for j in range(self.count) if j not in self.indexes and j * self.chunk < size]
        return torch.cat(ranges) if ranges else torch.zeros(0, dtype=torch.long, device=device)

    def search(self, unit_queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Similarities and slots (kv_heads, queries, chunks × k) from every indexed chunk."""
        if not self.indexes:
            shape = (unit_queries.shape[0], unit_queries.shape[1], 0)
            return torch.zeros(shape), torch.zeros(shape, dtype=torch.long)
        sims, slots = [], []
        queries = unit_queries.float().cpu().numpy()
        for j, per_head in self.indexes.items():
            found = [index.search(np.ascontiguousarray(q), min(k, index.ntotal)) for index, q in zip(per_head, queries)]
            sims.append(torch.from_numpy(np.stack([d for d, _ in found])))
            ids = torch.from_numpy(np.stack([i for _, i in found]))
            slots.append(torch.where(ids >= 0, ids + j * self.chunk, ids))
        return torch.cat(sims, dim=-1), torch.cat(slots, dim=-1)

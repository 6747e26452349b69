"""Queries in batches whose working memory fits a byte budget.

Recomputing exact distances gathers each query's k neighbour keys (k × dim float32), so searching
a whole held-out text at once needs queries × k × dim × 4 bytes: 9 GB for the demo's held-out text
at k = 256. Cut into chunks, the peak depends on the budget, not on how long the text is.
"""
from __future__ import annotations

from collections.abc import Iterator

CHUNK_BYTES = 64 << 20  # per chunk; small next to a model, large enough that per-chunk overhead is noise


def query_chunks(count: int, bytes_per_query: int, budget: int = CHUNK_BYTES) -> Iterator[slice]:
    """Consecutive slices covering range(count), each at most `budget` bytes' worth of queries (at least one)."""
    step = max(1, budget // max(1, bytes_per_query))
    for start in range(0, count, step):
        yield slice(start, min(count, start + step))


def neighbour_key_bytes(k: int, dim: int) -> int:
    """What one query's k gathered float32 neighbour keys take."""
    return max(1, k) * dim * 4

"""Smaller datastores: PCA of the keys and greedy merging of entries (He et al., 2021, "Efficient
Nearest Neighbor Language Models", §4–5).

- **PCA** to `pca_dim` dimensions: fitted on a sample of the keys (mean-centred, top eigenvectors of
  the covariance), applied to every stored key and to every query, so distances are exact in the
  reduced space. The projection is stored in `pca.f32` (mean, then components, row-major).
- **Pruning by greedy merge**: each entry, in order, absorbs those of its `prune_k` nearest
  neighbours that predict the same next token and have not been absorbed yet; an absorbed entry
  leaves the datastore and its count goes to the one that absorbed it. `counts.i32` holds each
  kept entry's count, and kNN-LM weighs a neighbour by count · exp(−d/T) — a merged entry
  stands for all the contexts it absorbed.

Both run on the keys block by block (memory does not grow with the datastore beyond 4–12 bytes per
entry), and write their results next to the inputs, for the builder to commit (builder.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .exact_search import ExactSearch
from .index import sample_rows, train_max_bytes

PCA_FILE, COUNTS_FILE = "pca.f32", "counts.i32"
PCA_SAMPLE = 200_000  # keys the projection is fitted on (fewer when the training budget is smaller)
BLOCK = 65_536  # keys projected or searched per step


class CompressionError(ValueError):
    """Compression settings that cannot apply to this datastore; str() is a one-line reason."""


@dataclass(frozen=True)
class Compression:
    pca_dim: int = 0  # 0: keys keep their dimension
    prune_k: int = 0  # 0: no pruning; else neighbours each entry may absorb

    def __bool__(self) -> bool:
        return bool(self.pca_dim or self.prune_k)

    def to_json(self) -> dict:
        return asdict(self)

    def check(self, dim: int, entries: int) -> None:
        if self.pca_dim < 0 or self.prune_k < 0:
            raise CompressionError("PCA dimension and pruning neighbours must be >= 0")
        if self.pca_dim and not 1 <= self.pca_dim < dim:
            raise CompressionError(f"PCA to {self.pca_dim} dimensions: the keys have {dim}; choose 1 to {dim - 1}")
        if self.pca_dim and self.pca_dim > entries:
            raise CompressionError(f"PCA to {self.pca_dim} dimensions needs at least that many entries ({entries})")


def describe_applied(record: dict | None) -> str:
    """"PCA 768→256, pruned 1,000,000→612,000" for lists; "" for an uncompressed datastore."""
    if not record:
        return ""
    parts = [f"PCA {record['input_dim']}→{record['pca_dim']}"] if record.get("pca_dim") else []
    if record.get("prune_k"):
        parts.append(f"pruned {record['entries_before']:,}→{record.get('entries_after', 0):,}")
    return ", ".join(parts)


@dataclass
class Projection:
    """x ↦ (x − mean) · componentsᵀ."""

    mean: np.ndarray  # d, float32
    components: np.ndarray  # d' × d, float32, orthonormal rows
    explained: float  # share of the keys' variance the components keep

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) - self.mean) @ self.components.T

    def save(self, path: Path) -> None:
        np.concatenate([self.mean[None], self.components]).astype(np.float32).tofile(path)

    @classmethod
    def load(cls, path: Path, input_dim: int, explained: float = float("nan")) -> "Projection":
        rows = np.fromfile(path, dtype=np.float32).reshape(-1, input_dim)
        return cls(rows[0], rows[1:], explained)


def fit_pca(keys, dim: int, sample: int = PCA_SAMPLE) -> Projection:
    """The top-`dim` principal directions of a random sample of `keys` (N×d, may be file-backed)."""
    budget = max(dim + 1, min(sample, train_max_bytes() // (4 * keys.shape[1])))
    x = torch.from_numpy(sample_rows(keys, budget)).double()
    mean = x.mean(dim=0)
    centred = x - mean
    covariance = centred.T @ centred / max(1, len(x) - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    top = eigenvectors[:, -dim:].flip(1).T  # d' × d, largest first
    explained = float(eigenvalues[-dim:].sum() / eigenvalues.sum().clamp_min(1e-30))
    return Projection(mean.float().numpy(), top.float().contiguous().numpy(), explained)


def project_keys(keys, projection: Projection, write: Callable[[int, np.ndarray], None],
                 on_progress: Callable[[int], None] | None = None) -> None:
    """Write `projection(keys)` as fp16, block by block: `write(first_row, rows)`."""
    for start in range(0, len(keys), BLOCK):
        write(start, projection(keys[start : start + BLOCK]).astype(np.float16))
        if on_progress is not None:
            on_progress(min(len(keys), start + BLOCK))


Search = Callable[[np.ndarray, int], np.ndarray]  # (queries, k) -> ids, nearest first


def greedy_merge(keys, values: np.ndarray, k: int, search: Search | None = None,
                 on_progress: Callable[[int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Counts after merging (0: absorbed), for N entries with `keys` (N×d) and `values` (N).

    Entry i, in order, absorbs each of its k nearest neighbours j (i itself excluded) with the
    same value that is still present and has not absorbed anything itself — so every kept entry
    stands for itself and the neighbours it took, and the datastore's mass per token is kept.
    `search` finds the neighbours: exact by default; a large datastore passes its own index's."""
    n = len(values)
    counts = np.ones(n, dtype=np.int64)
    if search is None:
        mapped = keys if isinstance(keys, np.ndarray) else np.memmap(keys.path, np.float16, "r", shape=keys.shape)
        exact = ExactSearch(mapped)  # an exact scan reads every key anyway
        search = lambda queries, kk: exact.search(queries, kk)[1]  # noqa: E731
    absorber = np.zeros(n, dtype=bool)  # has absorbed others: stays
    for start in range(0, n, BLOCK // 16):
        if should_stop is not None and should_stop():
            raise InterruptedError("pruning cancelled")
        stop = min(n, start + BLOCK // 16)
        neighbours = search(np.asarray(keys[start:stop], dtype=np.float32), k + 1)
        same = values[neighbours] == values[start:stop, None]
        for row, i in enumerate(range(start, stop)):
            if counts[i] == 0:
                continue
            for j in neighbours[row][same[row]]:
                if j != i and j >= 0 and counts[j] > 0 and not absorber[j]:
                    counts[i] += counts[j]
                    counts[j] = 0
                    absorber[i] = True
        if on_progress is not None:
            on_progress(stop)
    return counts

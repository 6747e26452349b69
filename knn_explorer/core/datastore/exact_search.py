"""Exact search over the fp16 keys, without a float32 copy of them.

A flat datastore is searched on keys.f16 as it lies on disk, memory-mapped. Opening costs the mapped
file (its pages are the page cache's) plus 4 bytes per entry for the squared norms. A float32 copy
of all keys (the previous design) cost 2× the key file, and 5× at its peak.

Two scans, by batch size (measured on 2 cores, 1M × 768 keys, docs/SCALE.md):
- **A few queries** (generation: one per token): one fp16 matrix product over all keys ranks
  candidates (rerank·k of them), whose distances are then recomputed in float32 from their
  keys. Widening 1.5 GB of keys to float32 for one query costs more than the product itself.
- **Many queries** (evaluation, sweeps): the keys are widened block by block and each block is
  scored for a whole chunk of queries with one float32 matrix product, so the widening is paid
  once per chunk of QUERY_CHUNK queries.

On a GPU the fp16 keys are copied to the device once (the file's size, not twice it).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

BLOCK_BYTES = 8 * 2**20  # one float32 block of keys: large enough for BLAS, small enough for a cache
FP16_BLOCK = 262_144  # keys per fp16 product (bounds its output to 256k scores per query)
FEW_QUERIES = 16  # up to this many queries take the fp16 scan
RERANK = 8  # the fp16 scan hands RERANK·k candidates (at least MIN_CANDIDATES) to the exact distances
MIN_CANDIDATES = 256
TIE_MARGIN = 8  # the float32 scan keeps k + this many, so that keys tied at the k-th place are all seen
FP16_RANGE = 16_384.0  # dot products are scaled into ±this before the fp16 product (fp16 tops out at 65,504)


class ExactSearch:
    """Exact squared-L2 search: ‖q‖² − 2 q·k + ‖k‖², ranked by the last two terms."""

    QUERY_CHUNK = 1024

    def __init__(self, keys: np.ndarray, device: str = "cpu"):
        """`keys` is N×d (fp16 as stored; other dtypes are converted once); a memmap stays a memmap."""
        self.device = device
        self.size, self.dim = keys.shape
        self.block = max(1024, BLOCK_BYTES // (4 * max(1, self.dim)))
        if device == "cpu":
            self.keys = keys if keys.dtype == np.float16 else np.asarray(keys, dtype=np.float16)
            self._keys16 = tensor_view(self.keys)
        else:  # fp16 on the device: a copy the file's size
            self._keys16 = torch.empty((self.size, self.dim), dtype=torch.float16, device=device)
            for start, block in self._blocks(tensor_view(np.asarray(keys, dtype=np.float16))):
                self._keys16[start : start + len(block)] = block.to(device=device, dtype=torch.float16)
            self.keys = self._keys16
        self.norms = torch.empty(self.size, dtype=torch.float32, device=device)
        for start, block in self._blocks(self._keys16):
            self.norms[start : start + len(block)] = (block * block).sum(dim=1)
        self.max_norm = float(self.norms.max().sqrt()) if self.size else 0.0

    def _blocks(self, keys: torch.Tensor):
        """(first row, float32 block) over the fp16 `keys`."""
        for start in range(0, self.size, self.block):
            yield start, keys[start : start + self.block].to(device=self.device, dtype=torch.float32)

    def set_nprobe(self, nprobe: int) -> None:  # exact: nothing to probe
        pass

    @torch.no_grad()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.size)
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        if len(q) <= FEW_QUERIES:
            candidates = self._search_fp16(q, min(self.size, max(RERANK * k, MIN_CANDIDATES)))
        else:
            wider = min(self.size, k + TIE_MARGIN)
            candidates = torch.cat([self._search_fp32(chunk, wider) for chunk in q.split(self.QUERY_CHUNK)])
        best, ids = self._rescored(q, candidates, k)
        distances = (best + (q * q).sum(dim=1, keepdim=True)).clamp(min=0)
        return distances.cpu().numpy(), ids.cpu().numpy().astype(np.int64)

    def _rescored(self, q: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k smallest ‖k‖² − 2 q·k among each query's candidates, computed one way whichever
        scan found them, so a query's distances do not depend on the batch it came in. Equal
        scores (duplicate keys: the same context in two places) go to the lower entry first, so a
        search and a sharded search of the same keys pick the same ones."""
        ids = ids.sort(dim=1).values
        picked = self._keys16[ids.reshape(-1)].to(torch.float32).reshape(*ids.shape, self.dim)
        scores = self.norms[ids] - 2.0 * (picked @ q[:, :, None])[..., 0]
        order = scores.sort(dim=1, stable=True).indices[:, :k]
        return scores.gather(1, order), ids.gather(1, order)

    def _search_fp32(self, chunk: torch.Tensor, k: int) -> torch.Tensor:
        """The ids of the k smallest ‖k‖² − 2 q·k per query, over float32 blocks."""
        return self._merged_topk(chunk, k, ((start, torch.addmm(self.norms[start : start + len(block)], chunk,
                                                                  block.T, alpha=-2.0))
                                             for start, block in self._blocks(self._keys16)))[1]

    def _search_fp16(self, q: torch.Tensor, candidates: int) -> torch.Tensor:
        """The ids of the `candidates` best-scored keys per query by one fp16 product."""
        scale = max(self.max_norm * float(q.norm(dim=1).max()), 1e-30) / FP16_RANGE
        q16 = (q / scale).to(torch.float16)

        def scores():
            for start in range(0, self.size, FP16_BLOCK):
                block = self._keys16[start : start + FP16_BLOCK]
                dots = torch.mm(q16, block.T).float() * scale
                yield start, self.norms[start : start + len(block)] - 2.0 * dots

        return self._merged_topk(q, candidates, scores())[1]

    @staticmethod
    def _merged_topk(q: torch.Tensor, k: int, scored) -> tuple[torch.Tensor, torch.Tensor]:
        """The k smallest scores per row over (first row, scores) blocks, with their ids."""
        best = torch.full((len(q), 0), float("inf"), device=q.device)
        best_ids = torch.empty((len(q), 0), dtype=torch.long, device=q.device)
        for start, partial in scored:
            d, i = partial.topk(min(k, partial.shape[1]), dim=1, largest=False)
            merged, merged_ids = torch.cat((best, d), dim=1), torch.cat((best_ids, i + start), dim=1)
            keep = merged.topk(min(k, merged.shape[1]), dim=1, largest=False)
            best, best_ids = keep.values, merged_ids.gather(1, keep.indices)
        return best, best_ids


def tensor_view(keys: np.ndarray) -> torch.Tensor:
    """The array as a tensor without a copy; a read-only memmap is never written through it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(keys))

"""Exact search over the fp16 keys, without a float32 copy of them.

A flat datastore is searched on keys.f16 as it lies on disk, memory-mapped: a block of rows at a
time is widened to float32 and scored with one matrix product, and each block's top-k is merged
into a running top-k. Opening costs the mapped file (its pages are the page cache's) plus 4 bytes
per entry for the squared norms; a search holds one float32 block (BLOCK_BYTES) per query chunk.
A float32 copy of all keys (the previous design) cost 2× the key file, and 5× at its peak.

On a GPU the fp16 keys are copied to the device once (the file's size, not twice it) and widened
block by block there.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

BLOCK_BYTES = 32 * 2**20  # one float32 block of keys: large enough for BLAS, small enough for a cache


class ExactSearch:
    """Exact squared-L2 search: ‖q‖² − 2 q·k + ‖k‖², ranked by the last two terms."""

    QUERY_CHUNK = 256

    def __init__(self, keys: np.ndarray, device: str = "cpu"):
        """`keys` is N×d in any float dtype; a memmap stays a memmap on the CPU."""
        self.device = device
        self.size, self.dim = keys.shape
        self.block = max(1024, BLOCK_BYTES // (4 * max(1, self.dim)))
        if device == "cpu":
            self.keys = keys
        else:  # fp16 on the device: a copy the file's size, widened block by block when searched
            self.keys = torch.empty((self.size, self.dim), dtype=torch.float16, device=device)
            for start, block in self._blocks(keys):
                self.keys[start : start + len(block)] = block.to(device=device, dtype=torch.float16)
        self.norms = torch.empty(self.size, dtype=torch.float32, device=device)
        for start, block in self._blocks(self.keys):
            self.norms[start : start + len(block)] = (block * block).sum(dim=1)

    def _blocks(self, keys):
        """(first row, float32 block) over `keys`, a numpy array/memmap or a device tensor."""
        for start in range(0, self.size, self.block):
            rows = keys[start : start + self.block]
            if isinstance(rows, np.ndarray):
                # The widening copy is torch's, which releases the GIL (numpy's astype would hold it
                # and freeze a GUI thread); the read-only view is never written.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                    rows = torch.from_numpy(np.asarray(rows))
            yield start, rows.to(dtype=torch.float32)

    def set_nprobe(self, nprobe: int) -> None:  # exact: nothing to probe
        pass

    @torch.no_grad()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.size)
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        distances, ids = [], []
        for chunk in q.split(self.QUERY_CHUNK):
            best, best_ids = self._search_chunk(chunk, k)
            distances.append((best + (chunk * chunk).sum(dim=1, keepdim=True)).clamp(min=0))
            ids.append(best_ids)
        return torch.cat(distances).cpu().numpy(), torch.cat(ids).cpu().numpy().astype(np.int64)

    def _search_chunk(self, chunk: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k smallest ‖k‖² − 2 q·k per query, over all blocks."""
        best = torch.full((len(chunk), 0), float("inf"), device=chunk.device)
        best_ids = torch.empty((len(chunk), 0), dtype=torch.long, device=chunk.device)
        with torch.inference_mode():
            for start, block in self._blocks(self.keys):
                partial = torch.addmm(self.norms[start : start + len(block)], chunk, block.T, alpha=-2.0)
                d, i = partial.topk(min(k, len(block)), dim=1, largest=False)
                merged = torch.cat((best, d), dim=1)
                merged_ids = torch.cat((best_ids, i + start), dim=1)
                keep = merged.topk(min(k, merged.shape[1]), dim=1, largest=False)
                best, best_ids = keep.values, merged_ids.gather(1, keep.indices)
        return best, best_ids

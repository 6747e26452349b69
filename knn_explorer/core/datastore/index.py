"""FAISS index over datastore keys: which kind for which size, how to train, add and search.

- flat:  exact L2 over the memory-mapped fp16 keys (`exact_search.py`); no index file. For
         datastores whose float32 keys would fit in FLAT_MAX_BYTES.
- ivfpq: IVF coarse quantizer + product quantization (the kNN-LM paper's IVF4096,PQ64 scaled to
         the datastore). Trained on a fixed-size random sample, then keys are added in chunks, so
         memory does not grow with the keys' float size.
- hnsw:  graph index over float32 vectors; fast queries, more memory. Optional.

Training can run on a GPU: FAISS-GPU when installed, otherwise k-means in torch on CUDA
(`torch_train_ivfpq`), whose centroids are then handed to the CPU index.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Callable

import faiss
import numpy as np
import torch

FLAT_SCAN_MAX_BYTES = 128 * 2**20  # "auto": exact search while one scan reads at most this many fp16 key bytes
TRAIN_MAX_BYTES = 512 * 2**20  # the float32 training sample; bounded, so build memory does not grow with N
MAX_LISTS = 4096  # k-means time grows with lists × sample: 4096 lists train in minutes on 2 cores
# Past ~2M keys of >= 512 dims: 8,192 lists behind an HNSW graph, 64 of them probed, OPQ-rotated
# 4-bit codes re-ranked 24·k (10M × 768: 9.4% of the LM step, recall@32 0.92, perplexity +1.5%).
# k-means gets ~21 points per list from the 512 MiB sample (FAISS asks 39; measured fine).
MAX_LISTS_ROTATED, MIN_TRAIN_PER_LIST_ROTATED, NPROBE_ROTATED, RERANK_ROTATED = 8192, 20, 64, 24
# Probe ~1.2% of the lists, at least 48 (8-bit codes); fast-scan codes ~2.3%: at 1M × 768 (4,096 lists)
# nprobe 48 / 64 / 96 / 128 gave perplexity +2.3% / +2.15% / +0.71% / +0.28% against exact search in
# the same ~1.9 ms (SIMD scans the small lists fast; collecting the 48·k candidates dominates)
NPROBE_MIN, NPROBE_FRACTION, NPROBE_FRACTION_FAST_SCAN = 48, 85, 43
# Approximate indexes hand rerank·k candidates to the exact re-rank (at most MAX_CANDIDATES): PQ codes
# rank near-duplicates poorly, so recall comes from re-ranking many (docs/SCALE.md); HNSW's own
# candidate list is efSearch long.
RERANK_IVF, RERANK_HNSW, MAX_CANDIDATES = 48, 4, 4096
FAST_SCAN_MIN_DIM = 512
FAST_SCAN_ONE_QUERY = 15  # IndexIVFFastScan.implem: multithreaded over queries × probes, reservoir
COARSE_HNSW_M, COARSE_HNSW_EF = 32, 128  # the graph over many lists' centroids, and its search list
ADD_CHUNK = 65_536


@dataclass(frozen=True)
class IndexSpec:
    kind: str  # flat | ivfpq | hnsw
    nlist: int = 0
    m: int = 0  # PQ sub-quantizers
    nbits: int = 8
    nprobe: int = 0
    train_size: int = 0
    hnsw_m: int = 32
    ef_search: int = 128
    rerank: int = 1  # an exact search takes rerank·k candidates from the index and keeps the k nearest
    fast_scan: bool = False  # IVF-PQ with 4-bit codes scanned by SIMD (IndexIVFPQFastScan)
    opq: bool = False  # keys rotated by a learned OPQ matrix before PQ (finer codes: fewer candidates to re-rank)
    coarse_hnsw: bool = False  # the IVF lists found through an HNSW graph over their centroids (many lists)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "IndexSpec":
        data = dict(data)
        # datastores built before the re-rank get the current one: it needs nothing but keys.f16
        data.setdefault("rerank", {"ivfpq": RERANK_IVF, "hnsw": RERANK_HNSW}.get(data.get("kind"), 1))
        return cls(**data)

    def factory(self) -> str:
        """The IVF-PQ index as FAISS's index_factory names it ("OPQ128_768,IVF8192_HNSW32,PQ128x4fs")."""
        opq = f"OPQ{self.m}," if self.opq else ""
        coarse = f"IVF{self.nlist}" + (f"_HNSW{COARSE_HNSW_M}" if self.coarse_hnsw else "")
        return f"{opq}{coarse},PQ{self.m}x{self.nbits}{'fs' if self.fast_scan else ''}"

    def describe(self) -> str:
        rerank = f" re-rank {self.rerank}k" if self.rerank > 1 else ""
        if self.kind == "ivfpq":
            return f"{self.factory()} nprobe={self.nprobe}{rerank}"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m} efSearch={self.ef_search}{rerank}"
        return "Flat (exact)"


def choose_index(kind: str, entries: int, dim: int) -> IndexSpec:
    """Resolve `auto` by size and fill in parameters scaled to the datastore (the measurements
    behind them: docs/SCALE.md)."""
    if kind == "auto":
        kind = "flat" if entries * dim * 2 <= FLAT_SCAN_MAX_BYTES else "ivfpq"
    if kind == "flat":
        return IndexSpec("flat")
    if kind == "hnsw":
        return IndexSpec("hnsw", rerank=RERANK_HNSW)
    if kind != "ivfpq":
        raise ValueError(f"unknown index kind {kind!r}: use auto, flat, ivfpq or hnsw")
    # ~4·sqrt(N) lists, a power of two, at most MAX_LISTS, with >= 39 training points per list as
    # FAISS asks (64 when the sample budget allows), from a sample of at most train_max_bytes().
    budget = train_max_bytes() // (4 * dim)
    nlist = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(entries)))))
    if nlist > MAX_LISTS and dim >= FAST_SCAN_MIN_DIM and budget >= MAX_LISTS_ROTATED * MIN_TRAIN_PER_LIST_ROTATED:
        # Millions of keys (10M × 768, docs/SCALE.md): twice the lists, found through an HNSW graph
        # (a flat scan of 8,192 centroids would cost more than the lists), and an OPQ rotation that
        # makes the 4-bit codes fine enough to re-rank 24·k candidates instead of 48·k.
        nlist = MAX_LISTS_ROTATED
        return IndexSpec("ivfpq", nlist=nlist, m=_pq_subquantizers(dim, 6, 128), nbits=4, nprobe=NPROBE_ROTATED,
                         train_size=min(entries, budget), rerank=RERANK_ROTATED, fast_scan=True, opq=True,
                         coarse_hnsw=True)
    nlist = max(1, min(nlist, MAX_LISTS, budget // 39, entries // 39))
    train_size = min(entries, budget, max(64 * nlist, 256 * 39))
    m = _pq_subquantizers(dim)
    nprobe = min(nlist, max(NPROBE_MIN, nlist // NPROBE_FRACTION))
    # 4-bit codes scanned 32 at a time by SIMD: measured at d = 768 (docs/SCALE.md); with few
    # dimensions the 16-centroid sub-quantizers are too coarse (d = 32: 1-recall 0.85 at 320 candidates)
    if dim >= FAST_SCAN_MIN_DIM and train_size >= 16 * 39:  # ~6 dimensions per 4-bit sub-quantizer
        nprobe = min(nlist, max(NPROBE_MIN, nlist // NPROBE_FRACTION_FAST_SCAN))
        return IndexSpec("ivfpq", nlist=nlist, m=_pq_subquantizers(dim, 6, 128), nbits=4, nprobe=nprobe,
                         train_size=train_size, rerank=RERANK_IVF, fast_scan=True)
    nbits = 8 if train_size >= 256 * 39 else max(1, int(math.log2(max(2, train_size // 39))))
    return IndexSpec("ivfpq", nlist=nlist, m=m, nbits=nbits, nprobe=nprobe, train_size=train_size, rerank=RERANK_IVF)


def train_max_bytes() -> int:
    """The float32 training sample's budget: TRAIN_MAX_BYTES, or a 16th of the machine's memory
    when that is smaller."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on every platform (Windows)
        return TRAIN_MAX_BYTES
    return max(16 * 2**20, min(TRAIN_MAX_BYTES, physical // 16))


def _pq_subquantizers(dim: int, per: int = 8, most: int = 64) -> int:
    """About `per` dimensions per sub-quantizer, at most `most`, and it must divide dim."""
    target = min(most, max(1, dim // per))
    for m in range(target, 0, -1):
        if dim % m == 0:
            return m
    return 1


def empty_index(spec: IndexSpec, dim: int) -> faiss.Index:
    if spec.kind == "flat":
        # Not IndexScalarQuantizer(fp16): half the memory, but its scan does not use BLAS and
        # batched queries (evaluation) ran ~8x slower.
        return faiss.IndexFlatL2(dim)
    if spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m)
        index.hnsw.efSearch = spec.ef_search
        return index
    if spec.opq or spec.coarse_hnsw:
        factory = spec.factory().replace(f"OPQ{spec.m},", f"OPQ{spec.m}_{dim},")
        index = faiss.index_factory(dim, factory)
        faiss.extract_index_ivf(index).nprobe = spec.nprobe
        return index
    quantizer = faiss.IndexFlatL2(dim)
    if spec.fast_scan:
        index = faiss.IndexIVFPQFastScan(quantizer, dim, spec.nlist, spec.m, 4)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, spec.nlist, spec.m, spec.nbits)
    index.nprobe = spec.nprobe
    return index


def sample_rows(keys, count: int, seed: int = 0) -> np.ndarray:
    """`count` random rows as float32, read chunk by chunk (keys may be a file-backed reader)."""
    rows = np.sort(np.random.default_rng(seed).choice(len(keys), size=min(count, len(keys)), replace=False))
    out = np.empty((len(rows), keys.shape[1]), dtype=np.float32)
    filled = 0
    for start in range(0, len(keys), ADD_CHUNK):
        wanted = rows[(rows >= start) & (rows < start + ADD_CHUNK)]
        if len(wanted):
            out[filled : filled + len(wanted)] = np.asarray(keys[start : start + ADD_CHUNK])[wanted - start]
            filled += len(wanted)
    return out


def build_index(
    keys: np.ndarray,
    spec: IndexSpec,
    device: str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    trained: faiss.Index | None = None,
) -> faiss.Index:
    """Train (if needed) and fill an index from `keys` (N×d, any float dtype, may be a memmap).
    `trained` is an empty index trained elsewhere, filled instead (a sharded datastore's shards share
    one coarse quantizer and codebooks, so that their distances compare)."""
    n, dim = keys.shape
    index = trained if trained is not None else empty_index(spec, dim)
    if spec.kind == "ivfpq" and trained is None:
        sample = sample_rows(keys, spec.train_size)
        if device == "cuda" and torch.cuda.is_available() and not spec.fast_scan:  # fast scan: FAISS trains it
            torch_train_ivfpq(index, sample, torch.device("cuda"))
        else:
            index.train(sample)
    for start in range(0, n, ADD_CHUNK):
        if should_stop is not None and should_stop():
            raise InterruptedError("index build cancelled")
        index.add(np.ascontiguousarray(keys[start : start + ADD_CHUNK], dtype=np.float32))
        if on_progress is not None:
            on_progress(min(n, start + ADD_CHUNK), n)
    return index


def kmeans(x: torch.Tensor, clusters: int, iterations: int = 20, seed: int = 0) -> torch.Tensor:
    """Plain Lloyd's k-means in torch (runs on whatever device `x` is on)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    centroids = x[torch.randperm(len(x), generator=generator)[:clusters].to(x.device)].clone()
    for _ in range(iterations):
        assign = torch.cdist(x, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=clusters).unsqueeze(1)
        empty = counts.squeeze(1) == 0
        centroids = torch.where(empty.unsqueeze(1), centroids, sums / counts.clamp(min=1))
    return centroids


def torch_train_ivfpq(index: faiss.IndexIVFPQ, sample: np.ndarray, device: torch.device) -> None:
    """Train an IVF-PQ index's coarse quantizer and PQ codebooks with torch k-means on `device`,
    mirroring what `IndexIVFPQ.train` does on the CPU (PQ on residuals)."""
    x = torch.from_numpy(sample).to(device)
    coarse = kmeans(x, index.nlist)
    residuals = x - coarse[torch.cdist(x, coarse).argmin(dim=1)]
    sub = index.d // index.pq.M
    codebooks = [kmeans(residuals[:, j * sub : (j + 1) * sub].contiguous(), index.pq.ksub) for j in range(index.pq.M)]
    index.quantizer.add(coarse.cpu().numpy().astype(np.float32))
    faiss.copy_array_to_vector(torch.stack(codebooks).cpu().numpy().astype(np.float32).ravel(), index.pq.centroids)
    index.pq.sync_transposed_centroids()
    index.is_trained = True
    index.precompute_table()


class FaissSearch:
    """Search through a FAISS index (IVF-PQ, HNSW). Ids are -1 where fewer than k were found."""

    def __init__(self, index: faiss.Index):
        self.index = index
        try:  # the IVF inside (behind an OPQ rotation, say); None for HNSW
            self.ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        except RuntimeError:
            self.ivf = None

    def set_nprobe(self, nprobe: int) -> None:
        if self.ivf is None:
            return
        self.ivf.nprobe = nprobe
        quantizer = faiss.downcast_index(self.ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):  # its search list must hold the lists to probe
            quantizer.hnsw.efSearch = max(COARSE_HNSW_EF, 2 * nprobe)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(self.ivf, faiss.IndexIVFFastScan):
            # One query (generation) is scanned by every thread over its probes (implementation 15:
            # multithreaded over queries × probes, results in a reservoir): 1.38 ms against 1.88 at
            # 10M with 2 threads; batches are spread over queries as usual (0: FAISS's choice).
            self.ivf.implem = FAST_SCAN_ONE_QUERY if len(queries) < faiss.omp_get_max_threads() * 2 else 0
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

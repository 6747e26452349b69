"""Index choice and the IVF-PQ paths (FAISS training, and torch k-means training as on a GPU)."""
import dataclasses

import faiss
import numpy as np
import pytest
import torch

from knn_explorer.core.datastore.index import (FLAT_SCAN_MAX_BYTES, IndexSpec, build_index, choose_index, empty_index, kmeans,
                                               sample_rows, torch_train_ivfpq)


def clustered_keys(n=20_000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, d)) * 4
    return (centres[rng.integers(0, 50, n)] + rng.normal(size=(n, d))).astype(np.float16)


def recall_at_10(index, keys, queries, candidates=10):
    """How often the true nearest neighbour is among the index's top `candidates` (1-recall@10 by default)."""
    exact = faiss.IndexFlatL2(keys.shape[1])
    exact.add(keys.astype(np.float32))
    _, truth = exact.search(queries, 1)
    _, found = index.search(queries, candidates)
    return np.mean([t[0] in f for t, f in zip(truth, found)])


def test_auto_picks_exact_for_small_and_ivfpq_for_large(monkeypatch):
    monkeypatch.setattr("knn_explorer.core.datastore.index.train_max_bytes", lambda: 512 * 2**20)  # any machine's
    assert choose_index("auto", 1_000, 256).kind == "flat"
    assert choose_index("auto", FLAT_SCAN_MAX_BYTES // (2 * 768), 768).kind == "flat"
    big = choose_index("auto", FLAT_SCAN_MAX_BYTES // (2 * 768) + 1, 768)
    assert big.kind == "ivfpq" and 768 % big.m == 0 and big.m <= 128 and big.fast_scan  # 6 dims per 4-bit code
    assert big.train_size >= 39 * big.nlist and not big.opq
    # millions of wide keys: more lists behind an HNSW graph, OPQ-rotated codes, fewer to re-rank
    huge = choose_index("auto", 10_000_000, 768)
    assert (huge.nlist, huge.coarse_hnsw, huge.opq, huge.nprobe) == (8192, True, True, 64)
    assert huge.rerank < big.rerank and huge.train_size >= 20 * huge.nlist
    assert not choose_index("auto", 10_000_000, 256).opq  # narrow keys keep 8-bit codes on a flat quantizer
    assert choose_index("hnsw", 10, 8).kind == "hnsw"
    with pytest.raises(ValueError):
        choose_index("lsh", 10, 8)


def test_flat_index_distances_are_exact_on_the_stored_keys():
    keys = clustered_keys(2_000)
    index = build_index(keys, choose_index("flat", len(keys), keys.shape[1]))
    queries = keys[:5].astype(np.float32) + 0.1
    distances, ids = index.search(queries, 3)
    direct = ((keys[ids].astype(np.float32) - queries[:, None]) ** 2).sum(-1)
    assert np.allclose(distances, direct, rtol=1e-4)


@pytest.mark.parametrize("trainer", ["faiss", "torch"])
def test_ivfpq_recall_is_useful(trainer):
    keys = clustered_keys()
    spec = choose_index("ivfpq", len(keys), keys.shape[1])
    if trainer == "faiss":
        assert not spec.fast_scan and spec.nbits == 8  # 32 dimensions: too few for 4-bit codes
        index = build_index(keys, spec)
    else:  # the GPU path's trainer (8-bit codes), run on the CPU here
        spec = dataclasses.replace(spec, fast_scan=False, nbits=8)
        index = empty_index(spec, keys.shape[1])
        torch_train_ivfpq(index, sample_rows(keys, spec.train_size), torch.device("cpu"))
        index.add(keys.astype(np.float32))
    queries = keys[::997][:20].astype(np.float32) + 0.05
    assert index.ntotal == len(keys)
    # the true nearest is among the candidates the exact re-rank sees (rerank·k of them)
    assert recall_at_10(index, keys, queries, candidates=10 * spec.rerank) >= 0.9


def test_wide_keys_get_fast_scan_codes_whose_candidates_hold_the_true_neighbours():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 512)) * 3
    keys = (centres[rng.integers(0, 40, 20_000)] + rng.normal(size=(20_000, 512))).astype(np.float16)
    spec = choose_index("ivfpq", len(keys), 512)
    assert spec.fast_scan and spec.nbits == 4 and "PQ64x4fs" in spec.describe()  # 512 = 64 × 8: the divisor nearest 6
    index = build_index(keys, spec)
    assert isinstance(index, faiss.IndexIVFPQFastScan) and index.ntotal == len(keys)
    queries = keys[::997][:20].astype(np.float32) + 0.05
    assert recall_at_10(index, keys, queries, candidates=10 * spec.rerank) >= 0.9


def test_kmeans_finds_separated_clusters():
    x = torch.cat([torch.randn(200, 2) * 0.1 + torch.tensor(c) for c in ([0.0, 0.0], [5.0, 5.0], [-5.0, 5.0])])
    centroids = kmeans(x, 3)
    found = sorted((round(a), round(b)) for a, b in centroids.tolist())
    assert found == [(-5, 5), (0, 0), (5, 5)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ivfpq_trained_on_gpu_matches_cpu_recall():
    keys = clustered_keys()
    spec = choose_index("ivfpq", len(keys), keys.shape[1])
    gpu = build_index(keys, spec, device="cuda")
    cpu = build_index(keys, spec, device="cpu")
    queries = keys[::997][:20].astype(np.float32) + 0.05
    assert recall_at_10(gpu, keys, queries) >= recall_at_10(cpu, keys, queries) - 0.15


def test_an_index_spec_from_before_the_rerank_gets_the_current_one():
    old = {"kind": "ivfpq", "nlist": 64, "m": 8, "nbits": 8, "nprobe": 32, "train_size": 5000, "hnsw_m": 32,
           "ef_search": 128}
    assert IndexSpec.from_json(old).rerank == choose_index("ivfpq", 100_000, 64).rerank > 1
    assert IndexSpec.from_json({"kind": "flat"}).rerank == 1
    assert IndexSpec.from_json(choose_index("hnsw", 10, 8).to_json()) == choose_index("hnsw", 10, 8)


def test_an_opq_rotated_index_over_an_hnsw_coarse_quantizer_is_probed_as_its_spec_says():
    from knn_explorer.core.datastore.index import FaissSearch

    keys = clustered_keys(n=6_000, d=64)
    spec = IndexSpec("ivfpq", nlist=64, m=16, nbits=4, nprobe=8, train_size=6_000, rerank=8, fast_scan=True,
                     opq=True, coarse_hnsw=True)
    assert spec.factory() == "OPQ16,IVF64_HNSW32,PQ16x4fs" and spec.describe().startswith("OPQ16,IVF64_HNSW32")
    search = FaissSearch(build_index(keys, spec))
    assert isinstance(search.index, faiss.IndexPreTransform)  # the rotation comes first
    search.set_nprobe(12)
    assert search.ivf.nprobe == 12 and faiss.downcast_index(search.ivf.quantizer).hnsw.efSearch >= 24
    queries = keys[::97].astype(np.float32) + 0.01
    assert recall_at_10(search, keys, queries, candidates=80) > 0.9  # 4-bit codes: found among the candidates
    search.set_nprobe(1)
    _, one_list = search.search(queries, 10)
    search.set_nprobe(64)
    _, every_list = search.search(queries, 10)
    assert not np.array_equal(one_list, every_list)  # nprobe reaches the IVF behind the rotation

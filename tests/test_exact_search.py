"""Exact search block by block over memory-mapped fp16 keys, against a direct computation."""
import numpy as np
import pytest

from knn_explorer.core.datastore.exact_search import ExactSearch


@pytest.fixture
def mapped_keys(tmp_path):
    rng = np.random.default_rng(0)
    keys = (rng.normal(size=(5_000, 24)) * rng.uniform(0.5, 3, size=(5_000, 1))).astype(np.float16)
    keys.tofile(tmp_path / "keys.f16")
    return np.memmap(tmp_path / "keys.f16", dtype=np.float16, mode="r", shape=keys.shape)


def direct(keys, queries, k):
    d = ((keys.astype(np.float64)[None] - queries.astype(np.float64)[:, None]) ** 2).sum(-1)
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, ids, axis=1), ids


@pytest.mark.parametrize("block", [1024, 1_500, 100_000])  # many blocks, a ragged last one, one block
def test_blockwise_search_equals_the_direct_computation(mapped_keys, block):
    searcher = ExactSearch(mapped_keys)
    searcher.block = block
    queries = np.random.default_rng(1).normal(size=(300, 24)).astype(np.float32)  # > one query chunk
    distances, ids = searcher.search(queries, 40)
    want_d, want_ids = direct(mapped_keys, queries, 40)
    assert np.allclose(distances, want_d, rtol=1e-4, atol=1e-3)
    # the same entries (ties aside, the same order)
    assert np.mean(ids == want_ids) > 0.999


def test_k_larger_than_a_block_and_than_the_datastore(mapped_keys):
    searcher = ExactSearch(mapped_keys[:1_200])
    searcher.block = 1024
    queries = np.asarray(mapped_keys[:3], dtype=np.float32)
    distances, ids = searcher.search(queries, 5_000)
    assert ids.shape == (3, 1_200) and sorted(ids[0].tolist()) == list(range(1_200))
    assert ids[:, 0].tolist() == [0, 1, 2] and np.allclose(distances[:, 0], 0, atol=1e-3)


def test_no_float32_copy_of_the_keys_is_kept(mapped_keys):
    searcher = ExactSearch(mapped_keys)
    assert isinstance(searcher.keys, np.memmap)  # the file itself, not a copy
    assert searcher.norms.numel() == len(mapped_keys)
    assert np.allclose(searcher.norms.numpy(), (mapped_keys.astype(np.float32) ** 2).sum(1), rtol=1e-5)


@pytest.mark.parametrize("magnitude", [1.0, 300.0])  # 300: dot products far past fp16's 65,504
def test_few_queries_take_the_fp16_scan_and_still_get_the_exact_neighbours(tmp_path, magnitude):
    rng = np.random.default_rng(2)
    keys = (rng.normal(size=(20_000, 48)) * magnitude).astype(np.float16)
    searcher = ExactSearch(keys)
    queries = (keys[:5].astype(np.float32) + rng.normal(size=(5, 48)).astype(np.float32) * magnitude * 0.3)
    distances, ids = searcher.search(queries, 10)
    want_d, want_ids = direct(keys, queries, 10)
    assert np.array_equal(ids, want_ids)
    assert np.allclose(distances, want_d, rtol=1e-4)

"""A sweep's memory does not grow with the held-out text, and values it cannot run are refused
before the model runs (issue 11: `sweep --param k` with the app's own values went past 9 GB)."""
import math
import tracemalloc

import numpy as np
import pytest

from knn_explorer.core.mechanisms.knnlm import KnnLmSettings
from knn_explorer.core.evaluation.sweeps import Collected, sweep


def held_out_like(datastore, queries: int) -> Collected:
    """`queries` targets whose keys sit near stored keys, as a real held-out text's do (no model
    pass needed: the sweep only reads targets, log p_LM and keys)."""
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(datastore.size, queries))
    keys = np.asarray(datastore.keys[rows], dtype=np.float32) + rng.normal(0, 0.05, (queries, datastore.dim))
    return Collected(targets=datastore.values[rows].astype(np.int64), log_p_lm=rng.uniform(-8, -0.1, queries),
                     keys=keys.astype(np.float32))


def test_a_large_k_sweep_over_many_queries_keeps_numpy_memory_bounded(small_datastore):
    _model, _catalog, datastore, _docs = small_datastore
    k, queries = 2048, 1024
    collected = held_out_like(datastore, queries)
    all_at_once = queries * k * datastore.dim * 4  # the neighbour keys gathered for exact distances: 256 MiB
    tracemalloc.start()  # numpy's arrays are traced; the old code held ~3 copies of all_at_once
    try:
        result = sweep(datastore, collected, "k", [1, 8, k], KnnLmSettings(lambda_=0.5))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 160 << 20, f"peak {peak / 2**20:.0f} MiB for {all_at_once / 2**20:.0f} MiB of neighbour keys"
    assert all(math.isfinite(p["ppl"]) for p in result.results) and result.tokens == queries


def test_k_beyond_the_datastore_is_refused_not_clamped(small_datastore):
    _model, _catalog, datastore, _docs = small_datastore
    collected = held_out_like(datastore, 8)
    with pytest.raises(ValueError, match=f"{datastore.size:,} entries"):
        sweep(datastore, collected, "k", [1, datastore.size + 1])


def test_the_check_runs_on_values_alone_before_any_model_pass(small_datastore):
    from knn_explorer.core.evaluation.sweeps import SweepValueError, check_sweep_values

    _model, _catalog, datastore, _docs = small_datastore
    with pytest.raises(SweepValueError, match="more than the") as refused:
        check_sweep_values(datastore, "k", [1, 1e9])
    assert "\n" not in str(refused.value)
    check_sweep_values(datastore, "k", [1, datastore.size])  # every entry is fine
    check_sweep_values(None, "k", [1, 1e9])  # no datastore yet: only the values' own ranges


@pytest.mark.parametrize("param,values", [
    ("k", [0]), ("k", [-4]), ("k", [2.5]), ("k", [math.nan]), ("k", [math.inf]),
    ("lambda", [-0.1]), ("lambda", [1.5]), ("lambda", [math.nan]),
    ("temperature", [0]), ("temperature", [-1]), ("temperature", [math.inf]),
    ("size", [0]), ("size", [1.5]), ("size", [-0.5]),
    ("distance", [0.5]), ("memory", [-1]), ("memory", [0.5]), ("memory", [1e12]),
    ("nprobe", [1]), ("k", []),
])
def test_out_of_range_values_are_refused_with_a_one_line_reason(param, values):
    from knn_explorer.core.evaluation.sweeps import SweepValueError, check_sweep_values

    with pytest.raises(SweepValueError) as refused:
        check_sweep_values(None, param, values)
    assert str(refused.value) and "\n" not in str(refused.value)


def test_a_size_too_small_for_k_is_refused(small_datastore):
    from knn_explorer.core.evaluation.sweeps import SweepValueError, check_sweep_values

    _model, _catalog, datastore, _docs = small_datastore
    with pytest.raises(SweepValueError, match="fewer than k = 32"):
        check_sweep_values(datastore, "size", [1 / datastore.size, 1], KnnLmSettings(k=32))

"""PCA and pruning: the reduced datastores retrieve what a direct computation says they should."""
import numpy as np
import pytest
import torch

from knn_explorer.core.datastore.builder import BuildParameters
from knn_explorer.core.datastore.compress_existing import compress_datastore
from knn_explorer.core.datastore.compression import Compression, CompressionError, greedy_merge
from knn_explorer.core.datastore.library import LibraryError, build_datastore, open_datastore
from knn_explorer.core.mechanisms.knnlm import KnnLM, KnnLmSettings


def reference_merge(keys: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """efficient-knnlm's greedy merge, written directly: float64 distances, every pair."""
    d = ((keys[:, None, :].astype(np.float64) - keys[None, :, :]) ** 2).sum(-1)
    counts, absorber = np.ones(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
    for i in range(len(keys)):
        if counts[i] == 0:
            continue
        for j in np.argsort(d[i], kind="stable")[: k + 1]:
            if j != i and values[j] == values[i] and counts[j] > 0 and not absorber[j]:
                counts[i] += counts[j]
                counts[j] = 0
                absorber[i] = True
    return counts


def test_greedy_merge_equals_the_direct_computation():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(600, 6)).astype(np.float32)
    values = rng.integers(0, 5, size=600)  # few tokens: many neighbours share one
    counts = greedy_merge(keys, values, k=6)
    assert np.array_equal(counts, reference_merge(keys, values, 6))
    assert counts.sum() == len(keys) and 0 < np.count_nonzero(counts) < len(keys)
    for token in range(5):  # each token keeps its mass
        assert counts[values == token].sum() == np.sum(values == token)


@pytest.fixture(scope="module")
def original(small_datastore):
    model, catalog, datastore, _docs = small_datastore
    return model, catalog, datastore, np.asarray(datastore.keys, dtype=np.float64)


def test_pca_datastore_searches_the_projected_keys_exactly(original):
    model, catalog, datastore, keys = original
    dim = datastore.dim // 4
    manifest = compress_datastore(catalog, "small", "small-pca", Compression(pca_dim=dim))
    reduced = open_datastore(catalog, "small-pca", model)
    assert (reduced.dim, reduced.query_dim, reduced.size) == (dim, datastore.dim, datastore.size)
    assert catalog.datastore("small-pca").compression["pca_dim"] == dim == manifest["compression"]["pca_dim"]
    # the projection is the keys' principal subspace: it keeps what a direct eigendecomposition says
    centred = keys - keys.mean(0)
    eigenvalues = np.linalg.eigvalsh(centred.T @ centred)[::-1]
    assert reduced.compression["explained"] == pytest.approx(eigenvalues[:dim].sum() / eigenvalues.sum(), abs=1e-4)
    components = reduced.projection.components.astype(np.float64)
    assert np.allclose(components @ components.T, np.eye(dim), atol=1e-4)
    # stored keys are the projected keys; a query goes through the same projection; search is exact
    projected = (keys - reduced.projection.mean) @ components.T
    assert np.allclose(np.asarray(reduced.keys, dtype=np.float64), projected, atol=2e-2, rtol=1e-2)
    queries = keys[::97][:12].astype(np.float32) + 0.05
    distances, ids = reduced.search(queries, 8)
    q = (queries - reduced.projection.mean) @ components.T
    stored = np.asarray(reduced.keys, dtype=np.float64)
    direct = ((stored[None] - q[:, None]) ** 2).sum(-1)
    assert np.allclose(distances, np.take_along_axis(direct, ids, 1), rtol=1e-4, atol=1e-3)
    assert np.allclose(distances, np.sort(direct, axis=1)[:, :8], rtol=1e-4, atol=1e-3)
    assert datastore.index_spec.kind == "flat" and np.asarray(datastore.keys).shape[1] == datastore.dim  # untouched


def test_pruned_datastore_weighs_each_neighbour_by_its_count(original):
    model, catalog, datastore, keys = original
    compress_datastore(catalog, "small", "small-pruned", Compression(prune_k=8))
    pruned = open_datastore(catalog, "small-pruned", model)
    counts = np.asarray(pruned.counts)
    assert counts.sum() == datastore.size and pruned.size == len(counts) < datastore.size
    assert pruned.compression["entries_before"] == datastore.size
    kept_positions = {tuple(p) for p in np.asarray(pruned.positions)}
    assert kept_positions <= {tuple(p) for p in np.asarray(datastore.positions)}
    # p_kNN with counts: Σ count · exp(−d/T) over each token's neighbours, normalised
    queries = torch.from_numpy(keys[::89][:10].astype(np.float32))
    knn = KnnLM(pruned, KnnLmSettings(k=16, temperature=5.0))
    found = knn.retrieve(queries)
    d = found.distances.astype(np.float64)
    weight = counts[found.ids] * np.exp(-(d - d[:, :1]) / 5.0)
    assert np.allclose(found.weights.numpy(), weight / weight.sum(1, keepdims=True), atol=1e-9)


def test_build_with_compression_records_it(tmp_path, small_datastore):
    model, catalog, datastore, docs = small_datastore
    params = BuildParameters(context_length=32, stride=16, batch_size=4, pca_dim=datastore.dim // 2, prune_k=4)
    report = build_datastore(catalog, "built-compressed", model, [docs], params)
    compression = report.manifest["compression"]
    assert compression["entries_before"] == datastore.size and compression["input_dim"] == datastore.dim
    built = open_datastore(catalog, "built-compressed", model)
    assert built.dim == datastore.dim // 2 and built.size == compression["entries_after"] == len(built.counts)
    assert int(np.asarray(built.counts).sum()) == datastore.size
    assert not list(report.folder.glob("*.tmp"))
    row = catalog.datastore("built-compressed")
    assert row.compression["prune_k"] == 4 and row.dim == datastore.dim // 2


def test_impossible_compression_is_refused_and_leaves_nothing(small_datastore):
    model, catalog, datastore, docs = small_datastore
    with pytest.raises(LibraryError, match="PCA to"):
        compress_datastore(catalog, "small", "too-wide", Compression(pca_dim=datastore.dim))
    with pytest.raises(CompressionError, match="PCA to"):
        build_datastore(catalog, "too-wide", model, [docs], BuildParameters(pca_dim=datastore.dim + 5))
    assert catalog.datastore("too-wide") is None
    with pytest.raises(LibraryError, match="nothing to do"):
        compress_datastore(catalog, "small", "same", Compression())


def test_a_pruned_datastore_refuses_to_train_what_finds_entries_by_document(original):
    from knn_explorer.core.training.spalm_training import TokenStream

    model, catalog, _datastore, _keys = original
    if catalog.datastore("small-pruned-2") is None:
        compress_datastore(catalog, "small", "small-pruned-2", Compression(prune_k=4))
    pruned = open_datastore(catalog, "small-pruned-2", model)
    with pytest.raises(ValueError, match="is pruned"):
        TokenStream.of(pruned)
    open_datastore(catalog, "small", model).require_entries_in_document_order()  # unpruned: fine

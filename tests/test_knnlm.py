"""kNN-LM arithmetic checked against a direct numpy computation, on a real built datastore."""
import numpy as np
import pytest
import torch

from corpus import write_corpus
from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.builder import BuildParameters
from knn_explorer.core.mechanisms.knnlm import KnnLM, KnnLmSettings, adaptive_lambdas, interpolate, knn_distribution
from knn_explorer.core.datastore.library import build_datastore, open_datastore
from knn_explorer.core.models import load_model


@pytest.fixture
def built(tmp_path, tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    catalog = Catalog()
    build_datastore(catalog, "small", model, [write_corpus(tmp_path / "docs")],
                    BuildParameters(context_length=32, stride=16, batch_size=4))
    return model, open_datastore(catalog, "small", model)


def lm_and_query(model, text="The quick brown fox"):
    ids = torch.tensor([model.tokenizer(text)["input_ids"]])
    with torch.no_grad(), model.capture_keys() as captured:
        logits = model.model(input_ids=ids).logits[0, -1]
    return torch.log_softmax(logits.float(), -1), captured[0][0, -1].float()


@pytest.mark.parametrize("k,lam,temperature", [(1, 0.5, 1.0), (8, 0.25, 1.0), (16, 0.9, 10.0)])
def test_interpolation_matches_numpy(built, k, lam, temperature):
    model, datastore = built
    log_p_lm, query = lm_and_query(model)
    step = KnnLM(datastore, KnnLmSettings(k=k, lambda_=lam, temperature=temperature)).combine(log_p_lm[None], query[None])

    # Direct computation: brute-force squared L2 over every stored key.
    keys = np.asarray(datastore.keys, dtype=np.float64)
    q = query.numpy().astype(np.float32).astype(np.float64)
    d = ((keys - q) ** 2).sum(axis=1)
    nearest = np.argsort(d, kind="stable")[:k]
    w = np.exp(-(d[nearest] - d[nearest].min()) / temperature)
    w /= w.sum()
    p_knn = np.zeros(log_p_lm.shape[0])
    np.add.at(p_knn, datastore.values[nearest], w)
    expected = lam * p_knn + (1 - lam) * np.exp(log_p_lm.double().numpy())

    final = step.log_p_final[0].exp().numpy()
    assert np.allclose(step.p_knn[0].numpy(), p_knn, atol=1e-5)
    assert np.allclose(final, expected, atol=1e-6)
    assert final.sum() == pytest.approx(1.0, abs=1e-6)  # p_LM is a float32 softmax
    # Repeated contexts give tied distances, so compare distances rather than ids.
    assert np.allclose(np.sort(step.retrieval.distances[0]), d[nearest], rtol=1e-4, atol=1e-4)


def test_lambda_zero_is_exactly_the_lm(built):
    model, datastore = built
    log_p_lm, query = lm_and_query(model)
    step = KnnLM(datastore, KnnLmSettings(k=8, lambda_=0.0)).combine(log_p_lm[None], query[None])
    assert torch.equal(step.log_p_final[0], log_p_lm.double())


def test_interpolation_primitives_on_hand_made_numbers():
    values = torch.tensor([[2, 2, 0, -1]])
    weights = torch.tensor([[0.5, 0.25, 0.25, 0.0]], dtype=torch.float64)
    p_knn = knn_distribution(values, weights, 4)
    assert p_knn.tolist() == [[0.25, 0.0, 0.75, 0.0]]
    log_p_lm = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64))
    mixed = interpolate(log_p_lm, p_knn, torch.tensor([0.5])).exp()
    assert torch.allclose(mixed, torch.tensor([[0.175, 0.1, 0.525, 0.2]], dtype=torch.float64))


def test_entropy_lambda_is_full_for_agreement_and_zero_for_spread():
    agree = torch.zeros(1, 8, dtype=torch.float64)
    agree[0, 3] = 1.0
    spread = torch.zeros(1, 8, dtype=torch.float64)
    spread[0, :4] = 0.25
    assert adaptive_lambdas(agree, 0.6, 4).item() == pytest.approx(0.6)
    assert adaptive_lambdas(spread, 0.6, 4).item() == pytest.approx(0.0)

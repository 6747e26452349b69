"""kNN-LM (Khandelwal et al. 2020): interpolate the LM with a distribution over retrieved next tokens.

For a context x with key q = f(x), retrieve the k nearest datastore entries (k_i, w_i) by squared
L2 distance d_i, then

    p_kNN(y) = Σ_i 1[y = w_i] · softmax_i(−d_i / T)
    p(y)     = λ · p_kNN(y) + (1 − λ) · p_LM(y)

λ is fixed, or adaptive: λ_t = λ · (1 − H(p_kNN) / log k), i.e. the full λ when the neighbours
agree on one next token and none when they are spread evenly over k different tokens.
Interpolation is done in log space, so λ = 0 reproduces the LM's log-probabilities exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..datastore.folder import Datastore
from ..methods.base import MethodSettings, setting

LAMBDA_MODES = ("fixed", "entropy")


@dataclass(frozen=True)
class KnnLmSettings(MethodSettings):
    k: int = setting(32, help="neighbours retrieved per token")
    lambda_: float = setting(0.25, flag="lambda", dest="lambda_",  # the paper's in-domain value; ~0.65 out of domain
                             help="weight of p_kNN in the mix")
    temperature: float = setting(1.0, help="T in softmax(−d/T) over the neighbours' distances")
    exact_distances: bool = setting(True, flag="approximate", inverted=True,  # recompute (better) or trust the index
                                    help="use the index's distances instead of recomputing them from stored keys")
    lambda_mode: str = setting("fixed", help="fixed λ, or scaled by how much the neighbours agree")

    def __post_init__(self):
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if not 0.0 <= self.lambda_ <= 1.0:
            raise ValueError("λ must be between 0 and 1")
        if self.temperature <= 0:
            raise ValueError("the temperature must be positive")
        if self.lambda_mode not in LAMBDA_MODES:
            raise ValueError(f"unknown λ mode {self.lambda_mode!r}: use {' or '.join(LAMBDA_MODES)}")

    @property
    def distance(self) -> str:
        return "exact" if self.exact_distances else "approximate"

    def describe(self) -> dict:
        """As kept with evaluations and printed as JSON (λ mode only when it is not the fixed λ)."""
        out = {"k": self.k, "lambda": self.lambda_, "temperature": self.temperature, "distance": self.distance}
        return out if self.lambda_mode == "fixed" else {**out, "lambda_mode": self.lambda_mode}


@dataclass
class Retrieval:
    """The k neighbours of a batch of queries (B×k each), nearest first; id −1 = no neighbour."""

    ids: np.ndarray
    distances: np.ndarray
    values: torch.Tensor  # next-token ids (long); −1 where there is no neighbour
    weights: torch.Tensor  # softmax(−d/T) over each row's neighbours


@dataclass
class KnnStep:
    log_p_final: torch.Tensor  # B×V
    p_knn: torch.Tensor  # B×V
    lambdas: torch.Tensor  # B
    retrieval: Retrieval


def neighbour_weights(distances: torch.Tensor, temperature: float,
                      log_counts: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(−d/T) over each row; missing neighbours (d = +inf) get weight 0. A pruned
    datastore's entries weigh count · exp(−d/T): `log_counts` is added to the logits."""
    logits = -distances / temperature
    if log_counts is not None:
        logits = logits + log_counts
    return torch.softmax(logits, dim=-1).nan_to_num(0.0)


def knn_distribution(values: torch.Tensor, weights: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Scatter neighbour weights onto the vocabulary: B×k -> B×V (rows sum to 1)."""
    p_knn = torch.zeros(values.shape[0], vocab_size, dtype=weights.dtype, device=weights.device)
    return p_knn.scatter_add_(1, values.clamp(min=0), weights * (values >= 0))


def interpolate(log_p_lm: torch.Tensor, p_knn: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """log(λ p_kNN + (1 − λ) p_LM), computed stably; exact p_LM when λ = 0."""
    lam = lambdas.to(log_p_lm.dtype).unsqueeze(-1)
    return torch.logaddexp(torch.log(lam) + torch.log(p_knn.to(log_p_lm.dtype)), torch.log1p(-lam) + log_p_lm)


def adaptive_lambdas(p_knn: torch.Tensor, lambda_max: float, k: int) -> torch.Tensor:
    if k <= 1:
        return torch.full((p_knn.shape[0],), lambda_max, dtype=p_knn.dtype, device=p_knn.device)
    entropy = -(p_knn * torch.log(p_knn.clamp(min=1e-30))).sum(dim=-1)
    return lambda_max * (1.0 - entropy / math.log(k)).clamp(0.0, 1.0)


class KnnLM:
    """A datastore plus settings, applied to the LM's next-token distribution."""

    def __init__(self, datastore: Datastore, settings: KnnLmSettings = KnnLmSettings()):
        self.datastore = datastore
        self.settings = settings

    def retrieve(self, queries: torch.Tensor, k: int | None = None) -> Retrieval:
        """The k (default: the settings' k) nearest entries of each query."""
        s = self.settings
        distances, ids = self.datastore.search(queries.float().cpu().numpy(), k or s.k, exact=s.exact_distances)
        values = torch.from_numpy(np.where(ids >= 0, self.datastore.values[np.maximum(ids, 0)], -1).astype(np.int64))
        log_counts = self.datastore.log_counts(ids)
        weights = neighbour_weights(torch.from_numpy(distances).double(), s.temperature,
                                    None if log_counts is None else torch.from_numpy(log_counts))
        return Retrieval(ids=ids, distances=distances, values=values, weights=weights)

    def combine(self, log_p_lm: torch.Tensor, queries: torch.Tensor) -> KnnStep:
        """log p_final for each row of `log_p_lm` (B×V), given the kNN keys of the same contexts."""
        s = self.settings
        retrieval = self.retrieve(queries)
        log_p_lm = log_p_lm.double().cpu()
        p_knn = knn_distribution(retrieval.values, retrieval.weights, log_p_lm.shape[-1])
        if s.lambda_mode == "entropy":
            lambdas = adaptive_lambdas(p_knn, s.lambda_, s.k)
        else:
            lambdas = torch.full((log_p_lm.shape[0],), s.lambda_, dtype=torch.float64)
        return KnnStep(interpolate(log_p_lm, p_knn, lambdas), p_knn, lambdas, retrieval)

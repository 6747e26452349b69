"""kNN-LM perplexity as one parameter varies: λ, k, the temperature, the datastore's size, or the
distance mode — from one forward pass over the held-out text.

Perplexity needs only each target token's probability. One pass (the same sliding windows as
`evaluate`) collects, per target, log p_LM(target) and the kNN key; one retrieval of the largest k
gives every neighbour's distance and next token. Then for any (k, T, λ)

    p_kNN(target) = Σ_{i ≤ k} softmax_i(−d_i / T) · 1[v_i = target]
    p(target)     = λ · p_kNN(target) + (1 − λ) · p_LM(target)

without touching the model again. A size sweep searches random fractions of the stored keys
(seeded) exactly, with no forward pass over the corpus; a distance sweep retrieves with the
index's approximate distances and with distances recomputed from the stored keys.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .comparison import compare
from .datastore import Datastore
from .index import TorchExactSearch
from .knnlm import KnnLM, KnnLmSettings
from .memorizing import MemorizingRetrofit
from .models import LoadedModel
from .progress import Cancelled, ProgressCallback

PARAMS = ("lambda", "k", "temperature", "size", "distance")  # kNN-LM's; "memory" is the Memorizing Transformer's
DEFAULT_VALUES = {  # what the app proposes: the kNN-LM paper's ranges, on a scale that shows the curve's shape
    "lambda": [0, 0.05, 0.1, 0.25, 0.4, 0.5, 0.65, 0.8, 0.95, 1],
    "k": [1, 4, 8, 16, 32, 64, 128, 256],
    "temperature": [0.25, 0.5, 1, 2, 4, 8],
    "size": [0.05, 0.1, 0.25, 0.5, 1],
    "distance": [0, 1],
    "memory": [0, 1024, 4096, 16384, 65536],
}


@dataclass
class Collected:
    """Per target token of the held-out text: its id, log p_LM and kNN key."""

    targets: np.ndarray  # n
    log_p_lm: np.ndarray  # n, float64
    keys: np.ndarray  # n × dim, float32


@dataclass
class SweepResult:
    param: str
    tokens: int
    ppl_lm: float
    results: list[dict] = field(default_factory=list)  # {"value": v, "ppl": p}
    fixed: dict = field(default_factory=dict)  # the other parameters, as used

    def to_json(self) -> dict:
        """Strict JSON: an infinite perplexity (λ = 1 and a target no neighbour proposes) is null."""
        results = [{**r, "ppl": r["ppl"] if math.isfinite(r["ppl"]) else None} for r in self.results]
        return {"param": self.param, "tokens": self.tokens, "ppl_lm": self.ppl_lm, "results": results, **self.fixed}


def collect(model: LoadedModel, text: str, context_length: int = 256, stride: int = 128, batch_size: int = 8,
            on_progress: ProgressCallback | None = None, should_stop: Callable[[], bool] | None = None) -> Collected:
    """The LM alone over `compare`'s windows, keeping each target's key."""
    c = compare(model, text, context_length=context_length, stride=stride, batch_size=batch_size,
                on_progress=on_progress, should_stop=should_stop, keep_keys=True)
    return Collected(c.token_ids[c.positions], c.log_p_lm, c.keys)


def target_knn_probs(values: np.ndarray, distances: np.ndarray, targets: np.ndarray, k: int,
                     temperature: float) -> np.ndarray:
    """p_kNN(target) of each row from its first k neighbours (missing ones: distance +inf)."""
    d = distances[:, :k].astype(np.float64)
    logits = np.where(np.isfinite(d), -d / temperature, -np.inf)
    top = logits.max(axis=1, keepdims=True)
    weights = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return (weights * (values[:, :k] == targets[:, None])).sum(axis=1)


def perplexity_with(log_p_lm: np.ndarray, p_knn: np.ndarray, lam: float) -> float:
    """exp of the mean negative log of λ p_kNN + (1 − λ) p_LM, computed in log space."""
    with np.errstate(divide="ignore"):
        mixed = np.logaddexp(np.log(lam) + np.log(p_knn), np.log1p(-lam) + log_p_lm) if lam > 0 else log_p_lm
    return math.exp(-float(np.mean(mixed)))


def _retrieve(datastore: Datastore, keys: np.ndarray, k: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
    """(next tokens, distances) of the k nearest entries: the same retrieval kNN-LM runs."""
    found = KnnLM(datastore, KnnLmSettings(k=k, exact_distances=exact)).retrieve(torch.from_numpy(keys))
    return found.values.numpy(), found.distances


def _retrieve_subset(datastore: Datastore, keys: np.ndarray, k: int, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search over a random `fraction` of the stored keys: no model forward, no re-encoding."""
    chosen = np.sort(np.random.default_rng(seed).choice(datastore.size, max(1, round(fraction * datastore.size)),
                                                        replace=False))
    distances, local = TorchExactSearch(datastore.keys[chosen]).search(keys, k)
    ids = np.where(local >= 0, chosen[np.maximum(local, 0)], -1)
    values = np.where(ids >= 0, datastore.values[np.maximum(ids, 0)], -1)
    return values, np.where(ids < 0, np.inf, distances)


def sweep(datastore: Datastore, collected: Collected, param: str, values: list[float],
          settings: KnnLmSettings = KnnLmSettings(), seed: int = 0,
          should_stop: Callable[[], bool] | None = None) -> SweepResult:
    """Perplexity of kNN-LM (fixed λ) at each value of `param`, the others as in `settings`."""
    if param not in PARAMS:
        raise ValueError(f"unknown sweep parameter {param!r}: use one of {', '.join(PARAMS)}")
    if not values:
        raise ValueError("give at least one value to sweep")
    checks = {"lambda": (lambda v: 0 <= v <= 1, "λ values must lie in [0, 1]"),
              "k": (lambda v: v >= 1 and float(v).is_integer(), "k values must be whole numbers >= 1"),
              "temperature": (lambda v: v > 0, "temperatures must be > 0"),
              "size": (lambda v: 0 < v <= 1, "sizes are fractions of the datastore, in (0, 1]"),
              "distance": (lambda v: v in (0, 1), "distance values are 1 (exact) or 0 (the index's)")}
    valid, reason = checks[param]
    if not all(valid(v) for v in values):
        raise ValueError(reason)
    c = collected
    ppl_lm = math.exp(-float(np.mean(c.log_p_lm)))
    fixed = {**replace(settings, lambda_mode="fixed").describe(), "datastore": datastore.name,
             "entries": datastore.size}  # sweeps use a fixed λ
    fixed.pop(param, None)  # the swept one is in the results
    result = SweepResult(param, len(c.targets), ppl_lm, fixed=fixed)
    k_max = int(max(values)) if param == "k" else settings.k
    shared = None if param in ("size", "distance") else _retrieve(datastore, c.keys, k_max, settings.exact_distances)
    for value in values:
        if should_stop is not None and should_stop():
            raise Cancelled("sweep cancelled")
        k, temperature, lam = settings.k, settings.temperature, settings.lambda_
        neighbours = shared
        if param == "lambda":
            lam = float(value)
        elif param == "k":
            k = int(value)
        elif param == "temperature":
            temperature = float(value)
        elif param == "size":
            neighbours = _retrieve_subset(datastore, c.keys, k, float(value), seed)
        else:  # distance: 1 = exact (recomputed from the stored keys), 0 = the index's own
            neighbours = _retrieve(datastore, c.keys, k, bool(value))
        p_knn = target_knn_probs(neighbours[0], neighbours[1], c.targets, k, temperature)
        point = {"value": value, "ppl": perplexity_with(c.log_p_lm, p_knn, lam)}
        if param == "size":
            point["entries"] = max(1, round(float(value) * datastore.size))
        result.results.append(point)
    return result


def sweep_memory_size(model: LoadedModel, memorizing: MemorizingRetrofit, text: str | list[str], sizes: list[int],
                      context_length: int = 256, stride: int = 128, on_progress: ProgressCallback | None = None,
                      should_stop: Callable[[], bool] | None = None) -> SweepResult:
    """Memorizing Transformer perplexity with memories of `sizes` tokens, on `compare`'s windows (the
    memory holds the text before each window, its most recent `size` tokens). Each size is one pass
    over the text: the memory's contents depend on its size. The memory is restored afterwards."""
    if not sizes:
        raise ValueError("give at least one memory size")
    if not all(float(v).is_integer() and v >= 0 for v in sizes):
        raise ValueError("memory sizes are whole numbers of tokens >= 0")
    original = memorizing.settings.memory_size
    result = None
    try:
        for size in sizes:
            memorizing.resize_memory(int(size))
            c = compare(model, text, memorizing=memorizing, context_length=context_length, stride=stride,
                        on_progress=on_progress, should_stop=should_stop)
            if result is None:
                fixed = {"memory_layer": memorizing.layer, "memory_mode": memorizing.settings.mode,
                         "k": memorizing.settings.k, "context": c.context_length, "stride": c.stride}
                result = SweepResult("memory", c.tokens, c.ppl("none"), fixed=fixed)
            result.results.append({"value": int(size), "ppl": c.ppl("memtrf")})
    finally:
        memorizing.resize_memory(original)
    return result

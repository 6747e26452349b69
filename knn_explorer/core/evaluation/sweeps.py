"""kNN-LM perplexity as one parameter varies: λ, k, the temperature, the datastore's size, or the
distance mode — from one forward pass over the held-out text.

Perplexity needs only each target token's probability. One pass (the same sliding windows as
`evaluate`) collects, per target, log p_LM(target) and the kNN key; one retrieval of the largest k
gives every neighbour's distance and next token (a chunk of targets at a time, so memory stays
bounded however long the text is). Then for any (k, T, λ)

    p_kNN(target) = Σ_{i ≤ k} softmax_i(−d_i / T) · 1[v_i = target]
    p(target)     = λ · p_kNN(target) + (1 − λ) · p_LM(target)

without touching the model again. A size sweep searches random fractions of the stored keys
(seeded) exactly, with no forward pass over the corpus; a distance sweep retrieves with the
index's approximate distances and with distances recomputed from the stored keys.

`check_sweep_values` refuses values a sweep cannot run (k beyond the datastore, λ outside [0, 1],
...) before anyone runs the model.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .comparison import compare
from ..datastore.folder import Datastore
from ..datastore.exact_search import ExactSearch
from ..mechanisms.knnlm import KnnLM, KnnLmSettings
from ..mechanisms.memorizing import MAX_MEMORY
from ..methods.lm_alone import LM_ALONE
from ..models import LoadedModel
from ..progress import Cancelled, PhaseMeter, ProgressCallback, relabelled
from ..datastore.query_chunks import neighbour_key_bytes, query_chunks

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
    context: int | None = None  # the windows it was read in (None: not said)
    stride: int | None = None


@dataclass
class SweepResult:
    param: str
    tokens: int
    ppl_lm: float
    results: list[dict] = field(default_factory=list)  # {"value": v, "ppl": p}
    fixed: dict = field(default_factory=dict)  # the other parameters, as used
    references: dict = field(default_factory=dict)  # label → perplexity drawn beside the LM alone's (a method's sweep)

    def to_json(self) -> dict:
        """Strict JSON: an infinite perplexity (λ = 1 and a target no neighbour proposes) is null."""
        results = [{**r, "ppl": r["ppl"] if math.isfinite(r["ppl"]) else None} for r in self.results]
        out = {"param": self.param, "tokens": self.tokens, "ppl_lm": self.ppl_lm, "results": results, **self.fixed}
        if self.references:
            out["references"] = {k: v if math.isfinite(v) else None for k, v in self.references.items()}
        return out


def method_sweep(param: str) -> tuple[str, str] | None:
    """("adaptive", "retrieve_fraction") for a method's own sweep "adaptive.retrieve_fraction"; None
    for the sweeps of this module ("lambda", "memory", ...)."""
    method, dot, setting = param.partition(".")
    return (method, setting) if dot and method and setting else None


def collect(model: LoadedModel, text: str, context_length: int = 256, stride: int = 128, batch_size: int = 8,
            on_progress: ProgressCallback | None = None, should_stop: Callable[[], bool] | None = None) -> Collected:
    """The LM alone over `compare`'s windows, keeping each target's key."""
    c = compare(model, text, context_length=context_length, stride=stride, batch_size=batch_size,
                on_progress=on_progress, should_stop=should_stop, keep_keys=True)
    return Collected(c.token_ids[c.positions], c.log_p_lm, c.keys, c.context_length, c.stride)


def target_knn_probs(values: np.ndarray, distances: np.ndarray, targets: np.ndarray, k: int,
                     temperature: float, log_counts: np.ndarray | None = None) -> np.ndarray:
    """p_kNN(target) of each row from its first k neighbours (missing ones: distance +inf);
    `log_counts`: a pruned datastore's log count per neighbour (its weight is count · exp(−d/T))."""
    d = distances[:, :k].astype(np.float64)
    logits = np.where(np.isfinite(d), -d / temperature, -np.inf)
    if log_counts is not None:
        logits = logits + log_counts[:, :k]
    top = logits.max(axis=1, keepdims=True)
    weights = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return (weights * (values[:, :k] == targets[:, None])).sum(axis=1)


def mixed_log_probs(log_p_lm: np.ndarray, p_knn: np.ndarray, lam: float) -> np.ndarray:
    """log(λ p_kNN + (1 − λ) p_LM) per target, computed in log space (exactly log p_LM when λ = 0)."""
    if lam == 0:
        return log_p_lm
    with np.errstate(divide="ignore"):
        return np.logaddexp(np.log(lam) + np.log(p_knn), np.log1p(-lam) + log_p_lm)


# (queries, k) -> (next tokens, distances, log counts or None): see target_knn_probs
Retriever = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, np.ndarray | None]]


def _retriever(datastore: Datastore, exact: bool) -> Retriever:
    """The same retrieval kNN-LM runs."""
    def retrieve(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        found = KnnLM(datastore, KnnLmSettings(k=k, exact_distances=exact)).retrieve(torch.from_numpy(keys))
        return found.values.numpy(), found.distances, datastore.log_counts(found.ids)
    return retrieve


def subset_entries(datastore: Datastore, fraction: float) -> int:
    """How many entries a size sweep's `fraction` keeps (at least one)."""
    return max(1, round(fraction * datastore.size))


def _subset_retriever(datastore: Datastore, fraction: float, seed: int) -> Retriever:
    """Exact search over a random `fraction` of the stored keys: no model forward, no re-encoding."""
    chosen = np.sort(np.random.default_rng(seed).choice(datastore.size, subset_entries(datastore, fraction),
                                                        replace=False))
    search = ExactSearch(datastore.keys[chosen])

    def retrieve(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if datastore.projection is not None:  # the stored keys are PCA-reduced
            keys = datastore.projection(keys)
        distances, local = search.search(keys, k)
        ids = np.where(local >= 0, chosen[np.maximum(local, 0)], -1)
        values = np.where(ids >= 0, datastore.values[np.maximum(ids, 0)], -1)
        return values, np.where(ids < 0, np.inf, distances), datastore.log_counts(ids)
    return retrieve


class SweepValueError(ValueError):
    """Values a sweep cannot run; str() is a one-line reason."""


VALUE_CHECKS = {  # param -> (is this value valid?, the rule, said when it is not)
    "lambda": (lambda v: 0 <= v <= 1, "λ values must lie in [0, 1]"),
    "k": (lambda v: v >= 1 and v.is_integer(), "k values must be whole numbers >= 1"),
    "temperature": (lambda v: 0 < v < math.inf, "temperatures must be > 0 and finite"),
    "size": (lambda v: 0 < v <= 1, "sizes are fractions of the datastore, in (0, 1]"),
    "distance": (lambda v: v in (0, 1), "distance values are 1 (exact) or 0 (the index's)"),
    "memory": (lambda v: 0 <= v <= MAX_MEMORY and v.is_integer(),
               f"memory sizes are whole numbers of tokens from 0 to {MAX_MEMORY:,}"),
}


def check_sweep_values(datastore: Datastore | None, param: str, values: list[float],
                       settings: KnnLmSettings | None = None) -> None:
    """Refuse, with a one-line reason, a sweep that cannot run: call it before the model's forward
    pass, so a mistake costs nothing. Without a datastore only the values' own ranges are checked.
    k is never silently clamped to the datastore's size in a sweep: two points would be one."""
    if param not in VALUE_CHECKS:
        raise SweepValueError(f"unknown sweep parameter {param!r}: use one of {', '.join(VALUE_CHECKS)}")
    if not values:
        raise SweepValueError("give at least one value to sweep")
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise SweepValueError(f"sweep values must be numbers, not {values!r}") from None
    valid, rule = VALUE_CHECKS[param]
    bad = [v for v in numbers if not valid(v)]  # NaN fails every comparison, so it is refused too
    if bad:
        raise SweepValueError(f"{rule}, not {bad[0]:g}")
    if datastore is None:
        return
    entries = datastore.size
    if param == "k" and max(numbers) > entries:
        raise SweepValueError(f"k = {max(numbers):g} is more than the {entries:,} entries of datastore "
                              f"'{datastore.name}': sweep k up to {entries:,}")
    if param == "size" and settings is not None:
        smallest = subset_entries(datastore, min(numbers))
        if smallest < settings.k:
            raise SweepValueError(f"size {min(numbers):g} keeps {smallest:,} of '{datastore.name}''s entries, "
                                  f"fewer than k = {settings.k}: use larger fractions or a smaller k")


def _point_settings(settings: KnnLmSettings, param: str, value: float) -> tuple[int, float, float]:
    """(k, temperature, λ) of one sweep point."""
    k, temperature, lam = settings.k, settings.temperature, settings.lambda_
    if param == "lambda":
        lam = float(value)
    elif param == "k":
        k = int(value)
    elif param == "temperature":
        temperature = float(value)
    return k, temperature, lam


def sweep(datastore: Datastore, collected: Collected, param: str, values: list[float],
          settings: KnnLmSettings = KnnLmSettings(), seed: int = 0,
          should_stop: Callable[[], bool] | None = None, on_progress: ProgressCallback | None = None) -> SweepResult:
    """Perplexity of kNN-LM (fixed λ) at each value of `param`, the others as in `settings`.

    The held-out targets are searched a chunk at a time (`query_chunks`), each chunk's neighbours
    scored for every point and dropped, so memory does not grow with the text's length. Progress is
    the phase "retrieving" (targets searched, every retrieval of a size or distance sweep counted),
    which reaches its total when the last point is scored."""
    if param not in PARAMS:
        raise SweepValueError(f"unknown sweep parameter {param!r}: use one of {', '.join(PARAMS)}")
    check_sweep_values(datastore, param, values, settings)
    c = collected
    ppl_lm = math.exp(-float(np.mean(c.log_p_lm)))
    fixed = {**replace(settings, lambda_mode="fixed").describe(), "datastore": datastore.name,
             "entries": datastore.size}  # sweeps use a fixed λ
    fixed.pop(param, None)  # the swept one is in the results
    if c.context is not None:
        fixed.update(context=c.context, stride=c.stride)
    result = SweepResult(param, len(c.targets), ppl_lm, fixed=fixed)
    # λ, k and T share one retrieval of the largest k; each size or distance mode retrieves its own.
    shared = param in ("lambda", "k", "temperature")
    groups = [range(len(values))] if shared else [[i] for i in range(len(values))]
    log_p_sums = np.zeros(len(values))
    meter = PhaseMeter("retrieving", len(c.targets) * len(groups), "targets", on_progress)
    meter.start()
    for number, group in enumerate(groups):
        value = values[group[0]]
        if len(groups) > 1:  # one retrieval per value: say which
            meter.phase = f"retrieving, {param} {value:g} ({number + 1}/{len(groups)})"
        if param == "size":
            retrieve = _subset_retriever(datastore, float(value), seed)
        else:  # distance: 1 = exact (recomputed from the stored keys), 0 = the index's own
            retrieve = _retriever(datastore, bool(value) if param == "distance" else settings.exact_distances)
        k_search = max(_point_settings(settings, param, values[i])[0] for i in group)
        for rows in query_chunks(len(c.targets), neighbour_key_bytes(k_search, datastore.dim)):
            if should_stop is not None and should_stop():
                raise Cancelled("sweep cancelled")
            neighbour_values, distances, log_counts = retrieve(c.keys[rows], k_search)
            for i in group:
                k, temperature, lam = _point_settings(settings, param, values[i])
                p_knn = target_knn_probs(neighbour_values, distances, c.targets[rows], k, temperature, log_counts)
                log_p_sums[i] += float(np.sum(mixed_log_probs(c.log_p_lm[rows], p_knn, lam)))
            meter.update(number * len(c.targets) + rows.stop)  # the total once the last point is scored
    for value, log_p_sum in zip(values, log_p_sums):
        point = {"value": value, "ppl": math.exp(-log_p_sum / len(c.targets))}
        if param == "size":
            point["entries"] = subset_entries(datastore, float(value))
        result.results.append(point)
    return result


def sweep_memory_size(model: LoadedModel, method, text: str | list[str], sizes: list[int],
                      context_length: int = 256, stride: int = 128, on_progress: ProgressCallback | None = None,
                      should_stop: Callable[[], bool] | None = None) -> SweepResult:
    """Memorizing Transformer (`method`, whose `retrofit` holds the memory) perplexity with memories
    of `sizes` tokens, on `compare`'s windows (the memory holds the text before each window, its most
    recent `size` tokens). Each size is one pass over the text: the memory's contents depend on its
    size. The memory is restored afterwards."""
    check_sweep_values(None, "memory", sizes)
    memorizing = method.retrofit
    original = memorizing.settings.memory_size
    result = None
    try:
        for number, size in enumerate(sizes, 1):
            memorizing.resize_memory(int(size))
            label = f"memory {int(size):,} ({number}/{len(sizes)})"  # each size is a pass of its own
            c = compare(model, text, [method], context_length=context_length, stride=stride,
                        on_progress=relabelled(on_progress, label), should_stop=should_stop)
            if result is None:
                fixed = {"memory_layer": memorizing.layer, "memory_mode": memorizing.settings.mode,
                         "k": memorizing.settings.k, "context": c.context_length, "stride": c.stride}
                result = SweepResult("memory", c.tokens, c.ppl(LM_ALONE), fixed=fixed)
            result.results.append({"value": int(size), "ppl": c.ppl(method.name)})
    finally:
        memorizing.resize_memory(original)
    return result

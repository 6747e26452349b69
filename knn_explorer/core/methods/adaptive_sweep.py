"""What adaptive retrieval trades: held-out perplexity against the share of tokens that retrieve,
and generation speed.

`sweep_retrieved_fraction` makes one pass over the held-out text (`compare`'s windows), keeping per
target log p_LM, the predicted λ̂ and the key; one retrieval per target gives p_kNN(target). Then
for each fraction f the f·n targets with the largest λ̂ retrieve (the threshold is that quantile of
λ̂ on this text, so f is exact) and

    log p = log(λ̂ p_kNN + (1 − λ̂) p_LM)   for them,   log p_LM   for the others.

Two controls separate the predictor's two jobs: the same share retrieving at random (is it choosing
the right tokens?) and the chosen tokens with kNN-LM's fixed λ (is its λ̂ better than a constant?).
The references are the LM alone and kNN-LM with every token retrieving at a fixed λ.

`generation_speed` generates with each method from the same prompts and reports tokens/s.
`fraction_sweep_result` is both as the method's own sweep (`Method.sweep`), for the app and the CLI.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ..evaluation.comparison import compare
from ..generation.step_generator import GenerationSettings, StepGenerator
from ..mechanisms.knnlm import KnnLM
from ..models import LoadedModel
from ..progress import Cancelled, PhaseMeter, ProgressCallback
from ..datastore.query_chunks import neighbour_key_bytes, query_chunks
from ..evaluation.sweeps import SweepResult, mixed_log_probs, target_knn_probs
from .adaptive import AdaptiveRetrievalMethod
from .adaptive_predictor import RetrievalPredictor
from .base import Method, MethodStep, PassOutputs
from .lm_alone import LmAlone

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass
class FractionSweep:
    tokens: int
    ppl_lm: float
    ppl_knnlm: float  # every token retrieves, λ = knn_lambda
    knn_lambda: float
    points: list[dict] = field(default_factory=list)  # fraction, threshold, ppl, ppl_random, ppl_fixed_lambda
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """Strict JSON (an infinite threshold, where nothing retrieves, is null)."""
        points = [{key: (v if not isinstance(v, float) or math.isfinite(v) else None) for key, v in p.items()}
                  for p in self.points]
        return {**asdict(self), "points": points}


class _PredictedLambdas(Method):
    """Rides along `compare`'s shared pass: keeps the predictor's λ̂ of every row, changes nothing."""

    name = "adaptive-lambdas"
    label = "predicted λ"

    def __init__(self, model: LoadedModel, predictor: RetrievalPredictor):
        super().__init__(model)
        self.predictor = predictor
        self.lambdas: list[torch.Tensor] = []

    def combine(self, outputs: PassOutputs) -> MethodStep:
        self.lambdas.append(self.predictor.predict(outputs.log_p_lm, outputs.keys))
        return MethodStep(outputs.log_p_lm.double())


def _mixed(log_p_lm: np.ndarray, p_knn: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """log(λ p_kNN + (1 − λ) p_LM) per target with a λ per target."""
    with np.errstate(divide="ignore"):
        return np.logaddexp(np.log(lambdas) + np.log(p_knn), np.log1p(-lambdas) + log_p_lm)


def sweep_retrieved_fraction(model: LoadedModel, method: AdaptiveRetrievalMethod, text: str | list[str],
                             fractions: Sequence[float] = FRACTIONS, knn_lambda: float = 0.25,
                             context_length: int = 256, stride: int = 128, seed: int = 0,
                             on_progress: ProgressCallback | None = None,
                             should_stop: Callable[[], bool] | None = None) -> FractionSweep:
    """Perplexity with `fractions` of the held-out targets retrieving (see the module docstring)."""
    if any(not 0.0 <= f <= 1.0 for f in fractions):
        raise ValueError("fractions retrieved must lie in [0, 1]")
    recorder = _PredictedLambdas(model, method.predictor)
    c = compare(model, text, [recorder], context_length=context_length, stride=stride, keep_keys=True,
                on_progress=on_progress, should_stop=should_stop)
    lambdas = torch.cat(recorder.lambdas).numpy()
    targets, log_p_lm, s = c.token_ids[c.positions], c.log_p_lm, method.settings
    knn, p_knn = KnnLM(method.knn.datastore, s.knn_settings()), np.empty(len(targets))
    meter = PhaseMeter("retrieving", len(targets), "targets", on_progress)
    meter.start()
    for rows in query_chunks(len(targets), neighbour_key_bytes(s.k, method.knn.datastore.dim)):
        if should_stop is not None and should_stop():
            raise Cancelled("sweep cancelled")
        found = knn.retrieve(torch.from_numpy(c.keys[rows]))
        p_knn[rows] = target_knn_probs(found.values.numpy(), found.distances, targets[rows], s.k, s.temperature,
                                       knn.datastore.log_counts(found.ids))
        meter.update(rows.stop)
    adaptive = _mixed(log_p_lm, p_knn, lambdas)
    fixed = mixed_log_probs(log_p_lm, p_knn, knn_lambda)
    by_lambda = np.argsort(-lambdas, kind="stable")
    at_random = np.random.default_rng(seed).permutation(len(targets))
    result = FractionSweep(c.tokens, c.ppl("none"), _ppl(fixed), knn_lambda,
                           settings={**method.describe(), "context": c.context_length, "stride": c.stride})
    for fraction in fractions:
        count = round(fraction * len(targets))
        chosen, random = np.zeros(len(targets), dtype=bool), np.zeros(len(targets), dtype=bool)
        chosen[by_lambda[:count]], random[at_random[:count]] = True, True
        result.points.append({
            "fraction": float(fraction),
            "threshold": float(lambdas[by_lambda[count - 1]]) if count else math.inf,
            "ppl": _ppl(np.where(chosen, adaptive, log_p_lm)),
            "ppl_random": _ppl(np.where(random, adaptive, log_p_lm)),
            "ppl_fixed_lambda": _ppl(np.where(chosen, fixed, log_p_lm)),
        })
    return result


def _ppl(log_p: np.ndarray) -> float:
    return math.exp(-float(np.mean(log_p)))


def generation_speed(model: LoadedModel, methods: Sequence[Method], prompts: Sequence[str], tokens: int = 32,
                     settings: GenerationSettings | None = None) -> list[dict]:
    """Tokens/s of greedy generation with each method, `tokens` from each prompt (after one
    untimed warm-up step per method); adaptive retrieval's rows also say what share retrieved."""
    settings = settings or GenerationSettings(max_new_tokens=tokens, stop_at_eos=False)
    out = []
    for method in methods:
        StepGenerator(model, prompts[0], GenerationSettings(max_new_tokens=1), method).step()  # warm-up
        if isinstance(method, AdaptiveRetrievalMethod):
            method.rows_seen = method.rows_retrieved = 0
        generated, started = 0, time.perf_counter()
        for prompt in prompts:
            generated += sum(1 for _ in StepGenerator(model, prompt, settings, method))
        seconds = time.perf_counter() - started
        row = {"method": method.name, "label": method.label, "tokens": generated, "seconds": seconds,
               "tokens_per_s": generated / seconds}
        if isinstance(method, AdaptiveRetrievalMethod):
            row.update(retrieve_fraction=method.settings.retrieve_fraction, retrieved=method.retrieved_share)
        out.append(row)
    return out


SPEED_PROMPT_TOKENS = 32  # the prompt: the held-out text's first tokens
SPEED_TOKENS = 64  # generated (greedy) per point


def fraction_sweep_result(method: AdaptiveRetrievalMethod, texts: str | list[str], fractions: Sequence[float],
                          context_length: int = 256, stride: int = 128,
                          on_progress: ProgressCallback | None = None,
                          should_stop: Callable[[], bool] | None = None) -> SweepResult:
    """`sweep_retrieved_fraction` as a `SweepResult` (param "adaptive.retrieve_fraction"; kNN-LM with
    every token retrieving as a reference), each point also timed: greedy generation of
    `SPEED_TOKENS` from the text's first tokens with `retrieve_fraction` at that value (the
    predictor's threshold, as the method runs), and the LM alone's tokens/s in `fixed`."""
    model = method.model
    swept = sweep_retrieved_fraction(model, method, texts, fractions, context_length=context_length, stride=stride,
                                     on_progress=on_progress, should_stop=should_stop)
    first = texts if isinstance(texts, str) else texts[0]
    prompt = model.tokenizer.decode(model.tokenizer(first, add_special_tokens=False)["input_ids"][:SPEED_PROMPT_TOKENS])
    timed = [LmAlone(model)] + [type(method)(model, replace(method.settings, retrieve_fraction=float(f)),
                                                   method.resources) for f in fractions]
    speeds = []
    meter = PhaseMeter("timing generation", len(timed), "points", on_progress)
    meter.start()
    for one in timed:  # one at a time, so cancelling waits for one generation at most
        if should_stop is not None and should_stop():
            raise Cancelled("sweep cancelled")
        speeds += generation_speed(model, [one], [prompt], tokens=SPEED_TOKENS)
        meter.update(len(speeds))
    fixed = {key: value for key, value in swept.settings.items() if key not in ("retrieve_fraction", "lambda_threshold")}
    fixed.update(knn_lambda=swept.knn_lambda, speed_tokens=SPEED_TOKENS, tokens_per_s_lm=speeds[0]["tokens_per_s"])
    result = SweepResult(f"{method.name}.retrieve_fraction", swept.tokens, swept.ppl_lm, fixed=fixed,
                         references={f"kNN-LM, every token (λ {swept.knn_lambda:g})": swept.ppl_knnlm})
    for point, speed in zip(swept.points, speeds[1:]):
        threshold = point["threshold"]
        result.results.append({"value": point["fraction"], "ppl": point["ppl"], "ppl_random": point["ppl_random"],
                               "ppl_fixed_lambda": point["ppl_fixed_lambda"],
                               "threshold": threshold if math.isfinite(threshold) else None,
                               "tokens_per_s": speed["tokens_per_s"], "retrieved_in_generation": speed["retrieved"]})
    return result

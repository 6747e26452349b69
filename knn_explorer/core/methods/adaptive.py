"""Adaptive retrieval (He, Neubig & Berg-Kirkpatrick 2021, "Efficient Nearest Neighbor Language
Models"): kNN-LM that retrieves only where retrieval is predicted to help.

Per token, a small network (`adaptive_predictor.py`) reads features the LM already computed — the
entropy and top log-probabilities of p_LM and the context's key — and predicts the λ that p_kNN
should get. Then

    λ̂ < threshold:   p = p_LM                                 (no search at all: the speed-up)
    otherwise:       p = λ̂ · p_kNN + (1 − λ̂) · p_LM           (kNN-LM with the predicted λ)

The threshold is set as the fraction of tokens that retrieve (`retrieve_fraction`): the predictor's
file keeps the quantiles of λ̂ over the tokens it was trained on, so 0.5 is "the λ̂ above which half
of those tokens lay" (the paper's cut-off ratio). 1 retrieves for every token (λ̂ everywhere),
0 for none (the LM alone). On other text the share that retrieves is about, not exactly, the
fraction asked; `AdaptiveRetrievalMethod.retrieved_share` counts it.

Records: a token that retrieved carries λ̂, its neighbours and p_kNN like kNN-LM's; a token that
skipped retrieval carries λ = 0, no neighbours, no p_kNN and no retrieval settings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..mechanisms.knnlm import KnnLM, KnnLmSettings, Retrieval, interpolate, knn_distribution
from .adaptive_predictor import DEMO_ADAPTIVE_PREDICTOR, predictor_for
from .base import Method, MethodSettings, MethodStep, PassOutputs, RecordContext, Resources, Sweepable, setting
from .knnlm import retrieval_fields


@dataclass(frozen=True)
class AdaptiveRetrievalSettings(MethodSettings):
    k: int = setting(32, minimum=1, help="neighbours retrieved per token that retrieves")
    temperature: float = setting(1.0, minimum=1e-3, help="T in softmax(−d/T) over the neighbours' distances")
    exact_distances: bool = setting(True, flag="approximate", inverted=True,
                                    help="use the index's distances instead of recomputing them from stored keys")
    retrieve_fraction: float = setting(0.5, minimum=0.0, maximum=1.0,
                                       help="share of tokens that retrieve (1: all, 0: none); the λ threshold "
                                            "is the predictor's quantile for it")

    def __post_init__(self):
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if self.temperature <= 0:
            raise ValueError("the temperature must be positive")
        if not 0.0 <= self.retrieve_fraction <= 1.0:
            raise ValueError("retrieve_fraction must be between 0 and 1")

    @property
    def distance(self) -> str:
        return "exact" if self.exact_distances else "approximate"

    def knn_settings(self) -> KnnLmSettings:
        return KnnLmSettings(k=self.k, temperature=self.temperature, exact_distances=self.exact_distances)

    def describe(self) -> dict:
        return {"k": self.k, "temperature": self.temperature, "distance": self.distance,
                "retrieve_fraction": self.retrieve_fraction}


@dataclass
class AdaptiveStep:
    lambdas: torch.Tensor  # B: predicted λ̂ of every row
    retrieved: torch.Tensor  # B bool: rows that retrieved
    rows: torch.Tensor  # indices of the rows that retrieved (R)
    retrieval: Retrieval | None  # R×k, for those rows only
    p_knn: torch.Tensor | None  # R×V


class AdaptiveRetrievalMethod(Method):
    name = "adaptive"
    label = "Adaptive retrieval"
    short_label = "Adaptive"  # a bar chart's tick drops "Adaptive retrieval" where it does not fit
    summary = ("kNN-LM that retrieves only where a small network predicts it helps, with the λ it "
               "predicts (He et al. 2021)")
    Settings = AdaptiveRetrievalSettings
    needs_datastore = True
    record_fields = ("p_knn", "lambda_", "neighbours", "retrieval")
    sweeps = {"retrieve_fraction": Sweepable("fraction retrieved", (0.25, 0.5, 0.75, 1.0))}

    def __init__(self, model, settings: AdaptiveRetrievalSettings | None = None, resources: Resources = Resources()):
        """The λ predictor is the resources' adapter, or the demo model's shipped one."""
        super().__init__(model, settings, resources)
        self.predictor, self.predictor_path, self.predictor_details = predictor_for(model, resources.adapter)
        self.knn = KnnLM(resources.datastore, self.settings.knn_settings())
        self.threshold = self.predictor.threshold(self.settings.retrieve_fraction)
        self.rows_seen = 0
        self.rows_retrieved = 0

    @property
    def retrieved_share(self) -> float | None:
        """Share of the rows combined so far that retrieved."""
        return self.rows_retrieved / self.rows_seen if self.rows_seen else None

    def combine(self, outputs: PassOutputs) -> MethodStep:
        log_p_lm = outputs.log_p_lm.double().cpu()
        lambdas = self.predictor.predict(outputs.log_p_lm, outputs.keys)
        retrieved = lambdas >= self.threshold
        rows = retrieved.nonzero()[:, 0]
        self.rows_seen += len(lambdas)
        self.rows_retrieved += len(rows)
        if len(rows) == 0:  # nothing searched
            return MethodStep(log_p_lm, AdaptiveStep(lambdas, retrieved, rows, None, None))
        retrieval = self.knn.retrieve(outputs.keys[rows])
        p_knn = knn_distribution(retrieval.values, retrieval.weights, log_p_lm.shape[-1])
        log_p_final = log_p_lm.clone()
        log_p_final[rows] = interpolate(log_p_lm[rows], p_knn, lambdas[rows])
        return MethodStep(log_p_final, AdaptiveStep(lambdas, retrieved, rows, retrieval, p_knn))

    def describe_step(self, step: MethodStep, row: int, context: RecordContext) -> dict:
        adaptive: AdaptiveStep = step.details
        if not bool(adaptive.retrieved[row]):  # skipped: λ 0, nothing retrieved
            return {"lambda_": 0.0, "neighbours": [], "retrieval": None, "p_knn": None}
        r = int((adaptive.rows == row).nonzero()[0, 0])  # its place among the rows that retrieved
        return retrieval_fields(self.knn, adaptive.retrieval, r, adaptive.p_knn[r], float(adaptive.lambdas[row]),
                                context)

    def describe(self) -> dict:
        threshold = self.threshold if math.isfinite(self.threshold) else None  # strict JSON: never retrieves
        shipped = self.predictor_path == DEMO_ADAPTIVE_PREDICTOR
        return {**super().describe(), "lambda_threshold": threshold,
                "predictor": "shipped with the demo" if shipped else str(self.predictor_path)}

    def sweep(self, texts, param, values, context_length=256, stride=128, on_progress=None, should_stop=None):
        """The fraction sweep (`adaptive_sweep.fraction_sweep_result`): perplexity against the share
        of tokens retrieving, kNN-LM as a reference, and generation tokens/s at each point."""
        from .adaptive_sweep import fraction_sweep_result  # it imports this module

        self.check_sweep(param, values)
        return fraction_sweep_result(self, texts, values, context_length, stride, on_progress, should_stop)

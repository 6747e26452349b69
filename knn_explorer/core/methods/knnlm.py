"""kNN-LM as a method: interpolate p_LM with p_kNN over the datastore's neighbours (the mechanism
is `core/knnlm.py`)."""
from __future__ import annotations

from ..mechanisms.knnlm import KnnLM, KnnLmSettings, KnnStep
from ..records import RetrievalSettings
from .base import Method, MethodStep, PassOutputs, RecordContext, Resources


class KnnLmMethod(Method):
    name = "knnlm"
    label = "kNN-LM"
    summary = "λ·p_kNN + (1 − λ)·p_LM over the k nearest datastore entries (Khandelwal et al. 2020)"
    Settings = KnnLmSettings
    needs_datastore = True
    record_fields = ("p_knn", "lambda_", "neighbours", "retrieval")

    def __init__(self, model, settings: KnnLmSettings | None = None, resources: Resources = Resources()):
        super().__init__(model, settings, resources)
        self.knn = KnnLM(resources.datastore, self.settings)

    def combine(self, outputs: PassOutputs) -> MethodStep:
        step = self.knn.combine(outputs.log_p_lm, outputs.keys)
        return MethodStep(step.log_p_final, step)

    def describe_step(self, step: MethodStep, row: int, context: RecordContext) -> dict:
        knn_step: KnnStep = step.details
        s, datastore = self.settings, self.knn.datastore
        return {
            "neighbours": context.neighbours(knn_step.retrieval, knn_step.retrieval.weights, datastore, row=row),
            "retrieval": RetrievalSettings(s.k, s.temperature, s.distance, datastore.name),
            "p_knn": context.top(knn_step.p_knn[row]),
            "lambda_": float(knn_step.lambdas[row]),
        }

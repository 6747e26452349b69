"""kNN majority vote: a toy method showing what a third party writes to add one.

The k nearest datastore entries each cast one vote for their next token, whatever their distance;
the votes are mixed into the LM's distribution with a fixed weight:

    p(y) = w · votes(y) / k + (1 − w) · p_LM(y)

It is kNN-LM with T = ∞ (uniform neighbour weights): a quick way to see how much the distances matter.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from knn_explorer.core.mechanisms.knnlm import KnnLM, KnnLmSettings, interpolate, knn_distribution
from knn_explorer.core.methods import Method, MethodSettings, MethodStep, Resources
from knn_explorer.core.methods.base import setting
from knn_explorer.core.records import RetrievalSettings


@dataclass(frozen=True)
class VoteSettings(MethodSettings):
    k: int = setting(16, help="neighbours that vote")
    weight: float = setting(0.25, flag="vote-weight", help="weight of the votes in the mix")

    def __post_init__(self):
        if self.k < 1 or not 0 <= self.weight <= 1:
            raise ValueError("k must be at least 1 and the vote weight within [0, 1]")


class KnnVote(Method):
    name = "knn-vote"
    label = "kNN majority vote"
    summary = "the k nearest entries vote for their next token, one vote each (a plug-in example)"
    Settings = VoteSettings
    needs_datastore = True
    record_fields = ("p_knn", "lambda_", "neighbours", "retrieval")

    def __init__(self, model, settings: VoteSettings | None = None, resources: Resources = Resources()):
        super().__init__(model, settings, resources)
        self.knn = KnnLM(resources.datastore, KnnLmSettings(k=self.settings.k))

    def combine(self, outputs) -> MethodStep:
        retrieval = self.knn.retrieve(outputs.keys)
        votes = (retrieval.values >= 0).double()
        votes = votes / votes.sum(-1, keepdim=True).clamp(min=1)
        log_p_lm = outputs.log_p_lm.double().cpu()
        p_vote = knn_distribution(retrieval.values, votes, log_p_lm.shape[-1])
        weights = torch.full((log_p_lm.shape[0],), self.settings.weight, dtype=torch.float64)
        return MethodStep(interpolate(log_p_lm, p_vote, weights), (retrieval, votes, p_vote))

    def describe_step(self, step: MethodStep, row: int, context) -> dict:
        retrieval, votes, p_vote = step.details
        datastore = self.knn.datastore
        return {"neighbours": context.neighbours(retrieval, votes, datastore, row=row),
                "retrieval": RetrievalSettings(self.settings.k, float("inf"), self.knn.settings.distance, datastore.name),
                "p_knn": context.top(p_vote[row]), "lambda_": self.settings.weight}

"""SPALM (Yogatama et al. 2021, "Adaptive Semiparametric Language Models").

Short-term memory is the model's own key/value cache, bounded (`GenerationSettings.context_window`
in generation). Long-term memory is a kNN-LM datastore, searched with the core's `KnnLM`: for the
context's key it returns the k nearest entries and their next tokens y_1..y_k. Then, with h_t the
hidden state the model feeds to its output embedding W and e the token embedding:

    m_t = Σ_i softmax_i(e(y_i)ᵀ h_t) · e(y_i)
    g_t = σ(w_gᵀ h_t + b)
    z_t = (1 − g_t) · m_t + g_t · h_t
    p   = softmax(W z_t)

Distances do not enter the aggregation (they are kept for display). With g_t = 1, p is the model's
own distribution. Before any training w_g = 0 and b = ln 9, so g_t = 0.9 for every token: the model
keeps 90% of its hidden state and mixes in 10% of the memory summary — a visible but mild use of
retrieval, where 0 (g = 0.5) would replace half of h_t by a bag of embeddings and typically hurt.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..datastore.folder import Datastore
from .knnlm import KnnLM, KnnLmSettings, Retrieval, knn_distribution
from ..methods.base import MethodSettings, setting
from ..models import LoadedModel

INITIAL_GATE_BIAS = math.log(9.0)  # σ(ln 9) = 0.9


class SpalmError(Exception):
    """A model SPALM cannot be applied to; str() is a one-line reason."""


@dataclass(frozen=True)
class SpalmSettings(MethodSettings):
    k: int = setting(32, help="retrieved tokens mixed into the hidden state")
    exact_distances: bool = setting(True, flag="approximate", inverted=True,
                                    help="rank neighbours by the index's distances")

    def __post_init__(self):
        if self.k < 1:
            raise ValueError("k must be at least 1")

    @property
    def distance(self) -> str:
        return "exact" if self.exact_distances else "approximate"

    def describe(self) -> dict:
        return {"k": self.k, "distance": self.distance}


class SpalmGate(torch.nn.Module):
    """g_t = σ(w_gᵀ h_t + b): one scalar per token."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(dim))
        self.bias = torch.nn.Parameter(torch.tensor(INITIAL_GATE_BIAS))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(hidden.float() @ self.weight + self.bias)


@dataclass
class SpalmStep:
    log_p_final: torch.Tensor  # B×V, float64
    gates: torch.Tensor  # B
    attention: torch.Tensor  # B×k: each retrieved token's weight in m_t (0 where no neighbour)
    p_memory: torch.Tensor  # B×V: the attention weights summed per token (what the memory proposes)
    retrieval: Retrieval


class Spalm:
    def __init__(self, model: LoadedModel, datastore: Datastore, settings: SpalmSettings = SpalmSettings(),
                 gate: SpalmGate | None = None):
        self.model = model
        self.settings = settings
        self.knn = KnnLM(datastore, KnnLmSettings(k=settings.k, exact_distances=settings.exact_distances))
        self.embeddings = model.model.get_input_embeddings()
        self.output = model.model.get_output_embeddings()
        dim = self.output.weight.shape[1]
        if self.embeddings.weight.shape[1] != dim:
            raise SpalmError(f"SPALM needs token embeddings of the output layer's width ({dim}); this model's are "
                             f"{self.embeddings.weight.shape[1]} wide")
        self.gate = gate if gate is not None else SpalmGate(dim).to(self.output.weight.device)
        self.forced_gate: float | None = None  # set to force g_t (tests, "LM alone" comparisons)
        self.adapter = None  # the AdapterInfo of a loaded trained gate, if any

    @property
    def datastore(self) -> Datastore:
        return self.knn.datastore

    def combine(self, hidden: torch.Tensor, queries: torch.Tensor) -> SpalmStep:
        """SPALM's distribution for B contexts, from their final hidden states and kNN keys."""
        return self.combine_retrieved(hidden, self.knn.retrieve(queries))

    def combine_retrieved(self, hidden: torch.Tensor, retrieval: Retrieval) -> SpalmStep:
        """As `combine`, with the neighbours already retrieved (training reuses them); differentiable
        in the gate's parameters."""
        device = self.output.weight.device
        h = hidden.to(device=device, dtype=self.output.weight.dtype)
        tokens = retrieval.values.to(device)
        found = tokens >= 0
        embedded = self.embeddings(tokens.clamp(min=0)).to(h.dtype)  # B×k×d
        scores = (embedded @ h[..., None])[..., 0].float().masked_fill(~found, float("-inf"))
        attention = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no neighbour: all 0
        summary = (attention[..., None].to(h.dtype) * embedded).sum(1)
        summary = torch.where(found.any(-1, keepdim=True), summary, h)  # nothing retrieved: m_t = h_t
        gates = self.gate(h) if self.forced_gate is None else torch.full(h.shape[:1], self.forced_gate, device=device)
        g = gates[:, None].to(h.dtype)
        logits = self.output((1 - g) * summary + g * h)
        log_p = torch.log_softmax(logits.double(), dim=-1).cpu()
        p_memory = knn_distribution(tokens.cpu(), attention.detach().double().cpu(), log_p.shape[-1])
        return SpalmStep(log_p, gates.cpu(), attention.cpu(), p_memory, retrieval)

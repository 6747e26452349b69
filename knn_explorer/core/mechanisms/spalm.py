"""SPALM (Yogatama et al. 2021, "Adaptive Semiparametric Language Models").

Short-term memory is Transformer-XL's: the cached hidden states (the key/value cache) of the
previous segment, bounded (`mechanisms/short_term_memory.py`; in generation, the generator's cache
bounded by `GenerationSettings.context_window`). Long-term memory is a kNN-LM datastore, searched
with the core's `KnnLM`: for the context's key it returns the k nearest entries and their next
tokens y_1..y_k. Then, with h_t the hidden state the model feeds to its output embedding W and e
the token embedding (W itself when they are tied):

    m_t = Σ_i softmax_i(e(y_i)ᵀ h_t) · e(y_i)
    g_t = σ(w_gᵀ h_t + b)
    z_t = (1 − g_t) · m_t + g_t · h_t
    p   = softmax(W z_t)

Distances do not enter the aggregation (they are kept for display). With g_t = 1, p is the model's
own distribution. Before any training w_g = 0 and b = ln 9, so g_t = 0.9 for every token: the model
keeps 90% of its hidden state and mixes in 10% of the memory summary — a visible but mild use of
retrieval, where 0 (g = 0.5) would replace half of h_t by a bag of embeddings and typically hurt.

Trained as the paper trains it, w_g and the word embeddings W are learned together (the datastore's
keys stay as built; `training/spalm_training.py`). The trained W is SPALM's, not the model's: it
replaces the model's embeddings only inside SPALM's own forward passes (`in_model`) and in the
mix itself, and the model's own tensor is put back afterwards, bit for bit.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
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
    log_p_mem: torch.Tensor | None = None  # B×V float32: log softmax(W m_t), the memory alone (g = 0)
    log_p_hidden: torch.Tensor | None = None  # B×V float32: log softmax(W h_t), SPALM without memory (g = 1)


@dataclass
class Mixed:
    """The differentiable part of SPALM for B contexts (training uses it directly)."""

    summary: torch.Tensor  # B×d: m_t
    hidden: torch.Tensor  # B×d: h_t
    gates: torch.Tensor  # B: g_t
    attention: torch.Tensor  # B×k
    tokens: torch.Tensor  # B×k retrieved next tokens (−1: none)
    w_out: torch.Tensor  # V×d: the output embedding W
    bias: torch.Tensor | None  # V: its bias, if any

    def z(self) -> torch.Tensor:
        g = self.gates[:, None].to(self.hidden.dtype)
        return (1 - g) * self.summary + g * self.hidden

    def logits(self) -> torch.Tensor:
        """W z_t (+ b)."""
        return torch.nn.functional.linear(self.z(), self.w_out, self.bias)

    def logits_memory(self) -> torch.Tensor:
        """W m_t (+ b): the memory alone (g = 0)."""
        return torch.nn.functional.linear(self.summary, self.w_out, self.bias)

    def logits_hidden(self) -> torch.Tensor:
        """W h_t (+ b): SPALM without its memory (g = 1)."""
        return torch.nn.functional.linear(self.hidden, self.w_out, self.bias)


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
        self.trained_input: torch.Tensor | None = None  # SPALM's W for the input embedding (None: the model's)
        self.trained_output: torch.Tensor | None = None  # ... and for the output embedding (the same when tied)
        self.input_delta: torch.Tensor | None = None  # what was trained: W − the model's W (as loaded or trained)
        self.output_delta: torch.Tensor | None = None

    @property
    def datastore(self) -> Datastore:
        return self.knn.datastore

    @property
    def tied(self) -> bool:
        """Whether the model's input and output embeddings are one matrix (the demo's, and the paper's W)."""
        return self.embeddings.weight is self.output.weight

    @property
    def has_trained_embeddings(self) -> bool:
        return self.trained_input is not None

    def input_weight(self) -> torch.Tensor:
        return self.embeddings.weight if self.trained_input is None else self.trained_input

    def output_weight(self) -> torch.Tensor:
        return self.output.weight if self.trained_output is None else self.trained_output

    @torch.no_grad()
    def set_trained_embeddings(self, input_delta: torch.Tensor | None, output_delta: torch.Tensor | None = None) -> None:
        """SPALM's W = the model's W + delta (None: the model's own, untrained). A tied model takes one delta."""
        self.input_delta, self.output_delta = input_delta, None if self.tied else output_delta
        if input_delta is None:
            self.trained_input = self.trained_output = None
            return
        base_in = self.embeddings.weight
        self.trained_input = (base_in.detach().float() + input_delta.to(base_in.device).float()).to(base_in.dtype)
        if self.tied:
            self.trained_output = self.trained_input
        else:
            base_out = self.output.weight
            delta = torch.zeros_like(base_out) if output_delta is None else output_delta.to(base_out.device)
            self.trained_output = (base_out.detach().float() + delta.float()).to(base_out.dtype)

    @contextmanager
    def in_model(self) -> Iterator[None]:
        """Inside the block the model runs with SPALM's W (if trained); afterwards the model holds
        its own tensors again — the very same objects, so bit for bit what it had."""
        if self.trained_input is None:
            yield
            return
        swapped = [(self.embeddings.weight, self.trained_input)]
        if not self.tied:
            swapped.append((self.output.weight, self.trained_output))
        own = [parameter.data for parameter, _ in swapped]
        try:
            for parameter, trained in swapped:
                parameter.data = trained
            yield
        finally:
            for (parameter, _), tensor in zip(swapped, own):
                parameter.data = tensor

    def combine(self, hidden: torch.Tensor, queries: torch.Tensor) -> SpalmStep:
        """SPALM's distribution for B contexts, from their final hidden states and kNN keys."""
        return self.combine_retrieved(hidden, self.knn.retrieve(queries))

    def mix(self, hidden: torch.Tensor, retrieval: Retrieval) -> Mixed:
        """m_t, g_t and the logits of m_t and h_t for B contexts; differentiable in the gate and,
        while they are trained (the model's own embedding parameters, unfrozen), in W."""
        w_in, w_out = self.input_weight(), self.output_weight()
        device = w_out.device
        h = hidden.to(device=device, dtype=w_out.dtype)
        tokens = retrieval.values.to(device)
        found = tokens >= 0
        embedded = torch.nn.functional.embedding(tokens.clamp(min=0), w_in).to(h.dtype)  # B×k×d
        scores = (embedded @ h[..., None])[..., 0].float().masked_fill(~found, float("-inf"))
        attention = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no neighbour: all 0
        summary = (attention[..., None].to(h.dtype) * embedded).sum(1)
        summary = torch.where(found.any(-1, keepdim=True), summary, h)  # nothing retrieved: m_t = h_t
        if self.forced_gate is None:
            gates = self.gate(h)
        else:
            gates = torch.full(h.shape[:1], self.forced_gate, device=device)
        return Mixed(summary, h, gates, attention, tokens, w_out, getattr(self.output, "bias", None))

    def combine_retrieved(self, hidden: torch.Tensor, retrieval: Retrieval) -> SpalmStep:
        """As `combine`, with the neighbours already retrieved."""
        mixed = self.mix(hidden, retrieval)
        log_p = torch.log_softmax(mixed.logits().double(), dim=-1).cpu()
        attention = mixed.attention.detach()
        p_memory = knn_distribution(mixed.tokens.cpu(), attention.double().cpu(), log_p.shape[-1])
        with torch.no_grad():
            log_p_mem = torch.log_softmax(mixed.logits_memory().float(), dim=-1).cpu()
            log_p_hidden = torch.log_softmax(mixed.logits_hidden().float(), dim=-1).cpu()
        return SpalmStep(log_p, mixed.gates.detach().cpu(), attention.cpu(), p_memory, retrieval, log_p_mem,
                         log_p_hidden)


def gate_statistics(gates, log_p_mem, log_p_hidden) -> dict:
    """How g_t varies over scored tokens, and whether it tracks the usefulness of the retrieval.

    Usefulness of token t: u_t = log p_mem(y_t) − log p_h(y_t), with p_mem = softmax(W m_t) (the
    memory alone, g = 0) and p_h = softmax(W h_t) (SPALM without memory, g = 1): how much better
    the retrieved tokens' summary predicts the token that followed than the hidden state does.
    Since 1 − g_t is the memory's weight, a gate that tracks usefulness correlates *negatively*
    with u_t. Pearson's r, and Spearman's ρ (ranks: not swayed by a few extreme u_t)."""
    import numpy as np

    g, u = np.asarray(gates, dtype=np.float64), np.asarray(log_p_mem, np.float64) - np.asarray(log_p_hidden, np.float64)
    finite = np.isfinite(u) & np.isfinite(g)
    g, u = g[finite], u[finite]
    if len(g) == 0:
        return {}

    def pearson(a, b) -> float | None:
        if len(a) < 2 or a.std() == 0 or b.std() == 0:
            return None
        return float(np.corrcoef(a, b)[0, 1])

    def ranks(a):
        order = np.argsort(a, kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a))
        return r

    return {"tokens": int(len(g)), "gate_mean": float(g.mean()), "gate_std": float(g.std()),
            "gate_min": float(g.min()), "gate_max": float(g.max()), "usefulness_mean": float(u.mean()),
            "memory_better_share": float((u > 0).mean()),
            "gate_usefulness_pearson": pearson(g, u), "gate_usefulness_spearman": pearson(ranks(g), ranks(u))}

"""The per-token record: what the core produces for every generated token.

One `TokenRecord` per step. The GUI renders it, the CLI prints it as one JSON line (`--json`).
Field names follow ../shared/DESIGN.md; `to_json` is the wire format.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TokenProb:
    token: str
    token_id: int
    prob: float


@dataclass(frozen=True)
class Neighbour:
    """One retrieved datastore entry: its next token, where it came from, and its weight in p_kNN."""

    rank: int
    token: str
    token_id: int
    distance: float
    weight: float  # kNN-LM: its share of p_kNN (softmax of -distance / T); SPALM: its attention weight in m_t
    document: str  # path of the source document
    offset: int  # character offset of the neighbour's next token in the document text
    context: str  # passage around the offset
    highlight: tuple[int, int]  # [start, end) of the next token inside `context`
    knn_weight: float | None = None  # SPALM records: its kNN-LM weight (softmax of −distance / T), to compare
    shard: int | None = None  # which shard of a sharded datastore (on a Ray cluster) answered with it


@dataclass(frozen=True)
class MemoryHit:
    """A memory entry one head of the Memorizing Transformer's memory layer drew on: an earlier
    token of the same text (prompt and output), with a few tokens around it."""

    position: int  # token position in the text
    token: str
    weight: float  # its share of the head's output (gate × attention weight, or joint-softmax mass)
    context: str
    highlight: tuple[int, int]  # [start, end) of the token inside `context`
    similarity: float | None = None  # cosine of the head's query and the entry's key (what the lookup ranks by)


@dataclass(frozen=True)
class RetrievalSettings:
    """Shown with every record: results that differ silently by T or distance mode are the
    most common reproduction complaint of kNN-LM users."""

    k: int
    temperature: float
    distance: str  # "exact" (recomputed from stored keys) or "approximate" (from the index)
    datastore: str | None


@dataclass(frozen=True)
class TokenRecord:
    step: int
    token_id: int
    token: str
    method: str  # none | knnlm | spalm | memtrf
    p_lm: list[TokenProb]
    p_knn: list[TokenProb] | None
    p_final: list[TokenProb]
    chosen_prob_lm: float
    chosen_prob_final: float
    lambda_: float | None = None  # kNN-LM interpolation weight actually used at this step
    gate: float | None = None  # SPALM gate
    # SPALM: the retrieval's usefulness for the chosen token, log p_mem(y) − log p_h(y) in nats, with
    # p_mem = softmax(W m_t) (the memory alone) and p_h = softmax(W h_t) (no memory); a working gate
    # is low (lets the memory in) where this is high
    memory_usefulness: float | None = None
    head_gates: list[float] | None = None  # Memorizing Transformer, one per head
    # Memorizing Transformer, per head: the share of its output that came from memory at this token
    # (gated: ‖g·mem‖ / (‖g·mem‖ + ‖(1 − g)·local‖); joint: the softmax mass on memory keys)
    memory_attention: list[float] | None = None
    memory_hits: list[list[MemoryHit]] | None = None  # per head, the memory entries it drew on most
    neighbours: list[Neighbour] = field(default_factory=list)
    retrieval: RetrievalSettings | None = None

    @property
    def gain(self) -> float:
        """Retrieval gain of the chosen token: log p_final − log p_LM in nats (±inf when exactly one
        of the two is 0, 0 when both are)."""
        p_final, p_lm = self.chosen_prob_final, self.chosen_prob_lm
        if p_final <= 0 or p_lm <= 0:
            return 0.0 if p_final <= 0 and p_lm <= 0 else (math.inf if p_lm <= 0 else -math.inf)
        return math.log(p_final) - math.log(p_lm)

    def to_json(self) -> dict:
        data = asdict(self)
        data["lambda"] = data.pop("lambda_")
        for n in data["neighbours"]:
            n["highlight"] = list(n["highlight"])
        for hits in data["memory_hits"] or []:
            for hit in hits:
                hit["highlight"] = list(hit["highlight"])
        return data

"""The step generator: one forward pass, one retrieval, one `TokenRecord` per token.

`StepGenerator` keeps the model's key/value cache between steps, so each step costs one token's
forward pass; past the model's maximum length it restarts on the most recent half window.
`step()` may be told which token to take (branching: "continue from this
alternative"); iterating it yields records until `max_new_tokens` or end-of-text. Pausing is simply
not asking for the next record; cancelling is dropping the generator.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import torch

from .datastore import Datastore
from .knnlm import KnnLM, KnnStep, Retrieval
from .memorizing import MemorizingRetrofit
from .methods import METHODS
from .models import LoadedModel, capture_output_input
from .records import MemoryHit, Neighbour, RetrievalSettings, TokenProb, TokenRecord
from .spalm import Spalm, SpalmStep



@dataclass(frozen=True)
class GenerationSettings:
    method: str = "knnlm"
    max_new_tokens: int = 40
    greedy: bool = True
    seed: int = 0
    top_shown: int = 10  # entries of each distribution in the record
    neighbours_shown: int = 16  # neighbours described in full (all k enter p_kNN)
    stop_at_eos: bool = True
    context_window: int | None = None  # tokens local attention sees (default: the model's maximum)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.context_window is not None and self.context_window < 2:
            raise ValueError("the context window must hold at least 2 tokens")


class StepGenerator:
    def __init__(self, model: LoadedModel, prompt: str | list[int], settings: GenerationSettings = GenerationSettings(),
                 knn: KnnLM | None = None, first_step: int = 0, memorizing: MemorizingRetrofit | None = None,
                 spalm: Spalm | None = None):
        """`first_step` numbers the records of a branch that continues another run at that step.
        `memorizing` (method "memtrf") is reset: its memory belongs to this generator's text."""
        if settings.method == "knnlm" and knn is None:
            raise ValueError("kNN-LM generation needs a datastore")
        if settings.method == "spalm" and spalm is None:
            raise ValueError("SPALM generation needs a datastore")
        if settings.method == "memtrf" and memorizing is None:
            raise ValueError("Memorizing Transformer generation needs a memory retrofit")
        self.model = model
        self.settings = settings
        self.knn = knn if settings.method == "knnlm" else None
        self.memory = memorizing if settings.method == "memtrf" else None
        self.spalm = spalm if settings.method == "spalm" else None
        if self.memory is not None:
            self.memory.reset()
        self._base_cache = None  # memtrf: the same text without memory, for p_LM
        self._memory_filled_to = 0  # memtrf: text before this position has passed the memory layer
        ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"] if isinstance(prompt, str) else list(prompt)
        if not ids:  # an empty prompt starts from end-of-text, the usual document separator
            ids = [model.tokenizer.eos_token_id if model.tokenizer.eos_token_id is not None else 0]
        self.prompt_ids: list[int] = list(ids)
        self.ids: list[int] = list(ids)
        self.step_number = first_step
        self.steps_taken = 0
        self._cache = None
        self._cache_tokens = 0  # tokens the cache holds
        self._cache_end = 0  # self.ids[:_cache_end] have been fed to the model
        self._generator = torch.Generator().manual_seed(settings.seed)
        self._decode = lru_cache(maxsize=65536)(lambda token_id: model.tokenizer.decode([token_id]))

    @property
    def generated_ids(self) -> list[int]:
        return self.ids[len(self.prompt_ids):]

    def text(self) -> str:
        return self.model.tokenizer.decode(self.ids)

    def __iter__(self) -> Iterator[TokenRecord]:
        while self.steps_taken < self.settings.max_new_tokens:
            record = self.step()
            yield record
            if self.settings.stop_at_eos and record.token_id == self.model.tokenizer.eos_token_id:
                return

    @torch.inference_mode()
    def step(self, forced_token: int | None = None) -> TokenRecord:
        log_p_lm, query, log_p_model, hidden = self._next_distribution()
        knn_step: KnnStep | None = None
        spalm_step: SpalmStep | None = None
        if self.knn is not None:
            knn_step = self.knn.combine(log_p_lm[None], query[None])
            log_p_final = knn_step.log_p_final[0]
        elif self.spalm is not None:
            spalm_step = self.spalm.combine(hidden[None], query[None])
            log_p_final = spalm_step.log_p_final[0]
        else:
            log_p_final = log_p_model.double()
        token_id = forced_token if forced_token is not None else self._choose(log_p_final)
        record = self._record(token_id, log_p_lm, log_p_final, knn_step, spalm_step)
        self.ids.append(token_id)
        self.step_number += 1
        self.steps_taken += 1
        return record

    def _next_distribution(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """LM log-probabilities for the next token, the kNN key of the current context, the
        model's log-probabilities with its memory (memtrf; otherwise the LM's again), and the
        hidden state fed to the output embedding (SPALM's h_t; None for the other methods)."""
        limit = min(self.model.max_positions, self.settings.context_window or self.model.max_positions)
        pending = len(self.ids) - self._cache_end
        if self._cache is not None and self._cache_tokens + pending <= limit:
            new_ids = self.ids[self._cache_end:]
            window_start = self._cache_end - self._cache_tokens
        else:  # (re)start the cache: the whole sequence if it fits, else its most recent half window
            new_ids = self.ids if len(self.ids) <= limit else self.ids[-(limit // 2):]
            self._cache, self._base_cache, self._cache_tokens = None, None, 0
            window_start = len(self.ids) - len(new_ids)
        input_ids = torch.tensor([new_ids], device=self.model.device)
        input_start = len(self.ids) - len(new_ids)
        base = None
        if self.memory is not None and self._memory_filled_to < window_start:
            self._fill_memory(window_start, limit)
        if self.memory is not None:  # the same step without memory: p_LM, and what the gain is against
            self.memory.enabled = False
            self.memory.set_window(window_start, input_start)
            base = self.model.forward(input_ids, cache=self._base_cache, use_cache=True, last_logits_only=True)
            self._base_cache = base.past_key_values
            self.memory.enabled = True
            self.memory.set_window(window_start, input_start)
        # h_t is only SPALM's: no hook on the output embedding for the other methods' per-token path.
        hidden_capture = capture_output_input(self.model) if self.spalm is not None else nullcontext([None])
        with self.model.capture_keys() as captured, hidden_capture as hidden:
            out = self.model.forward(input_ids, cache=self._cache, use_cache=True, last_logits_only=True)
        self._cache = out.past_key_values
        self._cache_tokens += len(new_ids)
        self._cache_end = len(self.ids)
        self._memory_filled_to = max(self._memory_filled_to, self._cache_end)
        log_p = torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu()
        log_p_lm = log_p if base is None else torch.log_softmax(base.logits[0, -1].float(), dim=-1).cpu()
        return log_p_lm, captured[-1][0, -1].float().cpu(), log_p, None if self.spalm is None else hidden[-1][0, -1]

    def _fill_memory(self, end: int, window: int) -> None:
        """Run text that never passed through the model (a prompt longer than the window) through it,
        a window at a time, so the memory holds it. The memory layer's keys do not depend on the
        memory, so it is off meanwhile."""
        self.memory.enabled = False
        for start in range(self._memory_filled_to, end, window):
            chunk = self.ids[start:min(start + window, end)]
            self.memory.set_window(start, start)
            self.model.forward(torch.tensor([chunk], device=self.model.device), last_logits_only=True)
        self.memory.enabled = True
        self._memory_filled_to = end

    def _choose(self, log_p: torch.Tensor) -> int:
        if self.settings.greedy:
            return int(torch.argmax(log_p))
        return int(torch.multinomial(log_p.exp().float(), 1, generator=self._generator))

    def _top(self, probs: torch.Tensor) -> list[TokenProb]:
        values, ids = torch.topk(probs, min(self.settings.top_shown, probs.shape[-1]))
        return [TokenProb(self._decode(int(i)), int(i), float(v)) for v, i in zip(values, ids) if v > 0]

    def _record(self, token_id: int, log_p_lm: torch.Tensor, log_p_final: torch.Tensor,
                knn_step: KnnStep | None, spalm_step: SpalmStep | None = None) -> TokenRecord:
        p_lm, p_final = log_p_lm.exp(), log_p_final.exp()
        neighbours, retrieval, p_knn, lam, gate = [], None, None, None, None
        if knn_step is not None:
            s = self.knn.settings
            neighbours = self._neighbours(knn_step.retrieval, knn_step.retrieval.weights, self.knn.datastore)
            retrieval = RetrievalSettings(s.k, s.temperature, s.distance, self.knn.datastore.name)
            p_knn = self._top(knn_step.p_knn[0])
            lam = float(knn_step.lambdas[0])
        if spalm_step is not None:  # neighbours weighted by their attention in m_t; T plays no part
            s = self.spalm.settings
            neighbours = self._neighbours(spalm_step.retrieval, spalm_step.attention, self.spalm.datastore,
                                          knn_weights=spalm_step.retrieval.weights)
            retrieval = RetrievalSettings(s.k, 1.0, s.distance, self.spalm.datastore.name)
            p_knn = self._top(spalm_step.p_memory[0])
            gate = float(spalm_step.gates[0])
        head_gates = memory_attention = memory_hits = None
        if self.memory is not None and self.memory.last_step is not None:
            last = self.memory.last_step
            head_gates, memory_attention = last.head_gates, last.memory_attention
            memory_hits = [[self._memory_hit(position, weight) for position, weight in head] for head in last.hits]
        return TokenRecord(
            step=self.step_number,
            token_id=token_id,
            token=self._decode(token_id),
            method=self.settings.method,
            p_lm=self._top(p_lm),
            p_knn=p_knn,
            p_final=self._top(p_final),
            chosen_prob_lm=float(p_lm[token_id]),
            chosen_prob_final=float(p_final[token_id]),
            lambda_=lam,
            gate=gate,
            head_gates=head_gates,
            memory_attention=memory_attention,
            memory_hits=memory_hits,
            neighbours=neighbours,
            retrieval=retrieval,
        )

    def _memory_hit(self, position: int, weight: float) -> MemoryHit:
        before = self.model.tokenizer.decode(self.ids[max(0, position - 8):position])
        token = self._decode(self.ids[position])
        after = self.model.tokenizer.decode(self.ids[position + 1:position + 5])
        return MemoryHit(position, token, weight, before + token + after, (len(before), len(before) + len(token)))

    def _neighbours(self, r: Retrieval, weights: torch.Tensor, datastore: Datastore,
                    knn_weights: torch.Tensor | None = None) -> list[Neighbour]:
        out = []
        for rank in range(min(self.settings.neighbours_shown, r.ids.shape[1])):
            entry = int(r.ids[0, rank])
            if entry < 0:
                break
            token_id = int(r.values[0, rank])
            token = self._decode(token_id)
            document, offset, context, highlight = datastore.passage(entry, len(token))
            out.append(Neighbour(rank=rank + 1, token=token, token_id=token_id, distance=float(r.distances[0, rank]),
                                 weight=float(weights[0, rank]), document=document.path, offset=offset,
                                 context=context, highlight=highlight,
                                 knn_weight=None if knn_weights is None else float(knn_weights[0, rank])))
        return out


def warm_up(model: LoadedModel) -> None:
    """One cached step of the LM alone: the first forward pass triggers transformers' lazy imports
    and torch's kernel choices (~100 ms). Loaders call this off the UI thread, so the first
    generated token does not pay it where a user would see the app stall."""
    StepGenerator(model, "Hello", GenerationSettings(method="none", max_new_tokens=1)).step()

"""The step generator: one forward pass, one method step, one `TokenRecord` per token.

`StepGenerator` keeps the model's key/value cache between steps, so each step costs one token's
forward pass (two for a method with a pass of its own); past the model's maximum length it
restarts on the most recent half window. It knows no method by name: the `Method` it is given
(`core/methods`) turns the shared pass into p_final and fills its own record fields. `step()` may be
told which token to take (branching: "continue from this alternative"); iterating it yields
records until `max_new_tokens` or end-of-text. Pausing is simply not asking for the next record;
cancelling is dropping the generator.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import torch

from ..datastore.folder import Datastore
from ..mechanisms.knnlm import Retrieval
from ..methods import Method, MethodStep, PassOutputs
from ..methods.lm_alone import LmAlone
from ..models import LoadedModel, capture_output_input
from ..records import MemoryHit, Neighbour, TokenProb, TokenRecord


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 40
    greedy: bool = True
    seed: int = 0
    top_shown: int = 10  # entries of each distribution in the record
    neighbours_shown: int = 256  # neighbours described in full, nearest first (all k enter p_kNN)
    stop_at_eos: bool = True
    context_window: int | None = None  # tokens local attention sees (default: the model's maximum)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.context_window is not None and self.context_window < 2:
            raise ValueError("the context window must hold at least 2 tokens")


class StepGenerator:
    def __init__(self, model: LoadedModel, prompt: str | list[int], settings: GenerationSettings = GenerationSettings(),
                 method: Method | None = None, first_step: int = 0):
        """`method` (default: the LM alone) starts a new text: whatever it remembered is forgotten.
        `first_step` numbers the records of a branch that continues another run at that step."""
        self.model = model
        self.settings = settings
        self.method = method if method is not None else LmAlone(model)
        self.method.start_text()
        ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"] if isinstance(prompt, str) else list(prompt)
        if not ids:  # an empty prompt starts from end-of-text, the usual document separator
            ids = [model.tokenizer.eos_token_id if model.tokenizer.eos_token_id is not None else 0]
        self.prompt_ids: list[int] = list(ids)
        self.ids: list[int] = list(ids)
        self.step_number = first_step
        self.steps_taken = 0
        self._cache = None  # the shared pass's
        self._own_cache = None  # the method's own pass's, if it has one
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
        return self.records()

    def records(self, first_token: int | None = None) -> Iterator[TokenRecord]:
        """The generation loop every front end uses (CLI, app, side by side): one record per step
        until `max_new_tokens` or, if `stop_at_eos`, end-of-text. `first_token` forces the first
        step's token (a branch from an alternative). Each step runs when its record is asked for,
        so a consumer pauses or stops simply by not asking."""
        forced = first_token
        while self.steps_taken < self.settings.max_new_tokens:
            record = self.step(forced)
            forced = None
            yield record
            if self.settings.stop_at_eos and record.token_id == self.model.tokenizer.eos_token_id:
                return

    @torch.inference_mode()
    def step(self, forced_token: int | None = None) -> TokenRecord:
        outputs = self._forward()
        method_step = self.method.combine(outputs)
        log_p_final = method_step.log_p_final[0]
        token_id = forced_token if forced_token is not None else self._choose(log_p_final)
        record = self._record(token_id, outputs.log_p_lm[0], log_p_final, method_step)
        self.ids.append(token_id)
        self.step_number += 1
        self.steps_taken += 1
        return record

    def _forward(self) -> PassOutputs:
        """The shared pass over the tokens not yet fed (log p_LM, the kNN key, h_t if the method
        wants it), and the method's own pass if it has one, for the last position."""
        method = self.method
        limit = min(self.model.max_positions, self.settings.context_window or self.model.max_positions)
        pending = len(self.ids) - self._cache_end
        if self._cache is not None and self._cache_tokens + pending <= limit:
            new_ids = self.ids[self._cache_end:]
            window_start = self._cache_end - self._cache_tokens
        else:  # (re)start the cache: the whole sequence if it fits, else its most recent half window
            new_ids = self.ids if len(self.ids) <= limit else self.ids[-(limit // 2):]
            self._cache, self._own_cache, self._cache_tokens = None, None, 0
            window_start = len(self.ids) - len(new_ids)
        input_ids = torch.tensor([new_ids], device=self.model.device)
        input_start = len(self.ids) - len(new_ids)
        method.catch_up(self.ids, window_start, limit)
        # h_t only when the method asks: the hook on the output embedding copies every pass's states.
        hidden_capture = capture_output_input(self.model) if method.uses_hidden else nullcontext([None])
        with method.shared_pass(window_start, input_start), self.model.capture_keys() as keys, \
                hidden_capture as hidden:
            out = self.model.forward(input_ids, cache=self._cache, use_cache=True, last_logits_only=True)
        self._cache = out.past_key_values
        own_logits = None
        if method.own_pass:
            with method.method_pass(window_start, input_start):
                own = self.model.forward(input_ids, cache=self._own_cache, use_cache=True, last_logits_only=True)
            self._own_cache, own_logits = own.past_key_values, own.logits[:, -1]
        self._cache_tokens += len(new_ids)
        self._cache_end = len(self.ids)
        return PassOutputs(
            log_p_lm=torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu(),
            keys=keys[-1][:, -1].float().cpu(),
            hidden=None if hidden[-1] is None else hidden[-1][:, -1],
            own_logits=own_logits,
        )

    def _choose(self, log_p: torch.Tensor) -> int:
        if self.settings.greedy:
            return int(torch.argmax(log_p))
        return int(torch.multinomial(log_p.exp().float(), 1, generator=self._generator))

    def _record(self, token_id: int, log_p_lm: torch.Tensor, log_p_final: torch.Tensor,
                method_step: MethodStep) -> TokenRecord:
        p_lm, p_final = log_p_lm.exp(), log_p_final.exp()
        self.chosen = token_id  # RecordContext.chosen
        method_fields = {"p_knn": None, **self.method.describe_step(method_step, 0, self)}
        return TokenRecord(
            step=self.step_number,
            token_id=token_id,
            token=self._decode(token_id),
            method=self.method.name,
            p_lm=self.top(p_lm),
            p_final=self.top(p_final),
            chosen_prob_lm=float(p_lm[token_id]),
            chosen_prob_final=float(p_final[token_id]),
            **method_fields,
        )

    # ---- what a method may use to describe its step (methods.base.RecordContext) ------------------
    def top(self, probs: torch.Tensor) -> list[TokenProb]:
        values, ids = torch.topk(probs, min(self.settings.top_shown, probs.shape[-1]))
        return [TokenProb(self._decode(int(i)), int(i), float(v)) for v, i in zip(values, ids) if v > 0]

    def memory_hit(self, position: int, weight: float, similarity: float | None = None) -> MemoryHit:
        before = self.model.tokenizer.decode(self.ids[max(0, position - 8):position])
        token = self._decode(self.ids[position])
        after = self.model.tokenizer.decode(self.ids[position + 1:position + 5])
        return MemoryHit(position, token, weight, before + token + after, (len(before), len(before) + len(token)),
                         similarity)

    def neighbours(self, r: Retrieval, weights: torch.Tensor, datastore: Datastore,
                   knn_weights: torch.Tensor | None = None, row: int = 0) -> list[Neighbour]:
        out = []
        for rank in range(min(self.settings.neighbours_shown, r.ids.shape[1])):
            entry = int(r.ids[row, rank])
            if entry < 0:
                break
            token_id = int(r.values[row, rank])
            token = self._decode(token_id)
            document, offset, context, highlight = datastore.passage(entry, len(token))
            out.append(Neighbour(rank=rank + 1, token=token, token_id=token_id, distance=float(r.distances[row, rank]),
                                 weight=float(weights[row, rank]), document=document.path, offset=offset,
                                 context=context, highlight=highlight,
                                 knn_weight=None if knn_weights is None else float(knn_weights[row, rank]),
                                 shard=datastore.shard_of(entry)))
        return out


def warm_up(model: LoadedModel) -> None:
    """One cached step of the LM alone: the first forward pass triggers transformers' lazy imports
    and torch's kernel choices (~100 ms). Loaders call this off the UI thread, so the first
    generated token does not pay it where a user would see the app stall."""
    StepGenerator(model, "Hello", GenerationSettings(max_new_tokens=1)).step()

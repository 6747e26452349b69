"""Several methods — the LM alone and any from the registry — on the very same targets.

One set of sliding windows (`core/windows.py`, as `evaluate` and the datastore build use) scores
every token of the held-out text once. Per window, one shared forward pass gives the LM's
log-probabilities and the kNN keys and h_t from which retrieval methods combine theirs; a method
that changes the model (the Memorizing Transformer) gets a second pass over the same window, its
memory holding the text *before the window* (what local attention no longer sees). So every
method is scored on the same tokens with the same local context, and the differences between
their numbers are the methods'.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..generation.step_generator import GenerationSettings, StepGenerator
from ..methods import Method, PassOutputs
from ..methods.lm_alone import LM_ALONE, LmAlone
from ..models import LoadedModel, capture_output_input
from ..progress import Cancelled, PhaseMeter, ProgressCallback
from ..records import TokenRecord
from ..windows import Span, sliding_windows


def padded_windows(tokens: torch.Tensor, batch: list[Span]) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows' tokens as one right-padded batch, and its attention mask."""
    longest = max(s.end - s.begin for s in batch)
    input_ids = torch.zeros((len(batch), longest), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, s in enumerate(batch):
        input_ids[row, : s.end - s.begin] = tokens[s.begin : s.end]
        mask[row, : s.end - s.begin] = 1
    return input_ids, mask


def perplexity(log_probs: np.ndarray) -> float:
    return math.exp(-float(np.mean(log_probs)))


@dataclass
class Comparison:
    """Per target token of the held-out text: log p under the LM alone and under each method."""

    token_ids: np.ndarray  # the whole text's tokens
    positions: np.ndarray  # index in token_ids of each target
    log_p_lm: np.ndarray  # natural log, float64
    log_p: dict[str, np.ndarray] = field(default_factory=dict)  # method → per-target log p
    context_length: int = 256
    stride: int = 128
    document_starts: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))  # token indices
    keys: np.ndarray | None = None  # per target, the kNN key of its context (only if asked: n × dim floats)

    @property
    def tokens(self) -> int:
        return len(self.positions)

    @property
    def methods(self) -> list[str]:
        return [LM_ALONE, *self.log_p]

    def log_probs(self, method: str) -> np.ndarray:
        return self.log_p_lm if method == LM_ALONE else self.log_p[method]

    def ppl(self, method: str) -> float:
        return perplexity(self.log_probs(method))

    def gains(self, method: str) -> np.ndarray:
        """log p_method − log p_LM per target: > 0 where the method helped."""
        return self.log_probs(method) - self.log_p_lm

    def to_json(self) -> dict:
        """Strict JSON (an infinite perplexity is null)."""
        ppl_lm = self.ppl(LM_ALONE)
        methods = {}
        for method in self.methods:
            ppl = self.ppl(method)
            methods[method] = {"ppl": ppl if math.isfinite(ppl) else None,
                               "relative_change": ppl / ppl_lm - 1.0 if math.isfinite(ppl) else None}
        return {"tokens": self.tokens, "ppl_lm": ppl_lm, "context": self.context_length, "stride": self.stride,
                "methods": methods}

    def document_start(self, position: int) -> int:
        """The first token of the document that token `position` belongs to."""
        return int(self.document_starts[np.searchsorted(self.document_starts, position, side="right") - 1])

    def window_of(self, index: int) -> Span:
        """The window that scored target `index` (its context starts at the window's first token)."""
        position = int(self.positions[index])
        for span in sliding_windows(len(self.token_ids), self.context_length, self.stride):
            if span.first_target <= position < span.end:
                return span
        raise IndexError(f"no window scores token {position}")


@dataclass(frozen=True)
class TokenChange:
    """One target where a method's probability differs from the LM's."""

    index: int  # into Comparison.positions
    position: int  # into Comparison.token_ids
    token_id: int
    gain: float  # log p_method − log p_LM
    p_lm: float
    p: float


def most_changed(comparison: Comparison, method: str, count: int = 20) -> tuple[list[TokenChange], list[TokenChange]]:
    """The `count` targets the method helped most and the `count` it hurt most (gain ≤ 0 excluded from
    the first list and ≥ 0 from the second, so a method that never hurts lists nothing there)."""
    gains = comparison.gains(method)
    order = np.argsort(gains, kind="stable")

    def change(i: int) -> TokenChange:
        return TokenChange(int(i), int(comparison.positions[i]), int(comparison.token_ids[comparison.positions[i]]),
                           float(gains[i]), math.exp(comparison.log_p_lm[i]), math.exp(comparison.log_probs(method)[i]))

    helped = [change(i) for i in order[::-1][:count] if gains[i] > 0]
    hurt = [change(i) for i in order[:count] if gains[i] < 0]
    return helped, hurt


DOCUMENT_SEPARATOR = "\n\n"


def encode_documents(tokenizer, text: str | list[str]) -> tuple[list[int], list[int]]:
    """The documents joined by a blank line, as token ids, and the token index where each starts.

    The LM reads them as one stream (a window may cross from one document into the next, as
    `evaluate` always has); the starts let the Memorizing Transformer's memory hold one document at a
    time, as in the paper. A tokenizer without offsets (a slow one) gives one document."""
    documents = [text] if isinstance(text, str) else list(text)
    joined = DOCUMENT_SEPARATOR.join(documents)
    char_starts, offset = [], 0
    for document in documents:
        char_starts.append(offset)
        offset += len(document) + len(DOCUMENT_SEPARATOR)
    try:
        encoded = tokenizer(joined, add_special_tokens=False, verbose=False, return_offsets_mapping=True)
        token_chars = [start for start, _end in encoded["offset_mapping"]]
    except (NotImplementedError, ValueError, KeyError):  # slow tokenizers have no offsets
        encoded, token_chars = tokenizer(joined, add_special_tokens=False, verbose=False), None
    ids = list(encoded["input_ids"])
    if token_chars is None or len(documents) == 1:
        return ids, [0]
    starts = sorted({int(np.searchsorted(token_chars, c, side="left")) for c in char_starts})
    return ids, [s for s in starts if s < len(ids)] or [0]


@torch.inference_mode()
def compare(model: LoadedModel, text: str | list[str], methods: Sequence[Method] = (), context_length: int = 256,
            stride: int = 128, batch_size: int = 8, on_progress: ProgressCallback | None = None,
            should_stop: Callable[[], bool] | None = None, keep_keys: bool = False,
            on_method: Callable[[str, Comparison], None] | None = None) -> Comparison:
    """Score the LM and each of `methods` on one text's targets (see the module docstring). `text`
    may be a list of documents: a method that remembers earlier text then holds only the current
    document's. `keep_keys` also returns each target's kNN key (what a sweep retrieves with).

    Without `on_method`, one shared pass scores every method (the cheapest: one forward pass). With
    it, the methods are scored one after another, each in a pass of its own (the first together with
    the LM alone), and `on_method(name, partial)` is called as each is done — the LM alone first —
    with a `Comparison` of those done so far, so a person sees each result as soon as it exists
    rather than all of them at the end. It costs one more forward pass per method after the first;
    the LM's numbers are those of the first pass. Meanwhile the other methods are `set_aside` (a
    memory layer is the plain layer), and only a pass with a method that reads earlier text runs one
    window at a time."""
    ids, document_starts = encode_documents(model.tokenizer, text)
    if len(ids) < 2:
        raise ValueError("the evaluation text is too short (it needs at least 2 tokens)")
    methods = [m for m in methods if not isinstance(m, LmAlone)]  # the LM alone is always scored
    tokens = torch.tensor(ids, dtype=torch.long)
    length = min(context_length, model.max_positions)
    spans = list(sliding_windows(len(ids), length, stride))
    rounds = ([[m] for m in methods] if on_method is not None else [methods]) or [[]]
    result: Comparison | None = None
    for number, group in enumerate(rounds, 1):
        phase = _phase(group, number, len(rounds))
        meter = PhaseMeter(phase, len(ids) - 1, "tokens", on_progress)
        with ExitStack() as aside:  # the other rounds' methods leave the model plain (a memory: off)
            for method in methods:
                if method not in group:
                    aside.enter_context(method.set_aside())
            positions, log_p_lm, log_p, keys = _score(model, tokens, spans, document_starts, group, batch_size,
                                                      meter, should_stop, keep_keys and result is None)
        if result is None:
            result = Comparison(token_ids=np.asarray(ids), positions=positions, log_p_lm=log_p_lm,
                                context_length=length, stride=stride,
                                document_starts=np.asarray(document_starts, dtype=np.int64), keys=keys)
            if on_method is not None:
                on_method(LM_ALONE, replace(result, log_p={}))
        for method in group:
            result.log_p[method.name] = log_p[method.name]
            if on_method is not None:
                on_method(method.name, replace(result, log_p=dict(result.log_p)))
    return result


def _phase(group: Sequence[Method], number: int, rounds: int) -> str:
    """What a progress bar says a pass is doing: "forward pass", "scoring kNN-LM (2/4)", ..."""
    if not group:
        phase = "forward pass"
    elif len(group) == 1:
        phase = f"scoring {group[0].label}"
    else:
        phase = f"scoring {len(group)} methods"
    return f"{phase} ({number}/{rounds})" if rounds > 1 else phase


def _score(model: LoadedModel, tokens: torch.Tensor, spans: list[Span], document_starts: list[int],
           methods: list[Method], batch_size: int, meter: PhaseMeter, should_stop: Callable[[], bool] | None,
           keep_keys: bool) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """One pass over every window with `methods`: (positions, log p_LM, log p per method, keys or None)."""
    remembering = [m for m in methods if m.reads_earlier_text]
    carrying = [m for m in methods if m.carries_cache]
    if remembering or carrying:
        batch_size = 1  # the memory reads one window of one document at a time; a carried cache, one window
    for method in methods:
        method.start_text()
    meter.start()
    lm_parts: list[torch.Tensor] = []
    parts: dict[str, list[torch.Tensor]] = {m.name: [] for m in methods}
    positions, keys, done, document = [], [], 0, 0
    wants_hidden = any(m.uses_hidden for m in methods)
    try:
        for start in range(0, len(spans), batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled("evaluation cancelled")
            batch = spans[start: start + batch_size]
            input_ids, mask = padded_windows(tokens, batch)
            input_ids, mask = input_ids.to(model.device), mask.to(model.device)
            begin = batch[0].begin
            now = int(np.searchsorted(document_starts, batch[0].first_target, side="right")) - 1
            if remembering and now != document:  # the window's targets are in the next document
                document = now
                for method in remembering:
                    method.start_document(document_starts[document])
            # h_t only when a method asks: the hook on the output embedding copies every pass's states
            hidden_capture = capture_output_input(model) if wants_hidden else nullcontext([None])
            with ExitStack() as around:
                for method in methods:
                    around.enter_context(method.shared_pass(begin, begin))
                captured = around.enter_context(model.capture_keys())
                hidden = around.enter_context(hidden_capture)
                logits = model.forward(input_ids, mask).logits
            own_logits = {}
            for method in methods:
                if method.carries_cache:  # its own pass, after the cache it carried from the previous window
                    own_logits[method.name] = method.own_window(tokens, batch[0])
                elif method.own_pass:  # the same window, with the method's change to the model
                    with method.method_pass(begin, begin):
                        own_logits[method.name] = model.forward(input_ids, mask).logits
            for row, s in enumerate(batch):
                scored = slice(s.first_target - 1 - s.begin, s.end - 1 - s.begin)
                targets = tokens[s.first_target: s.end]
                outputs = PassOutputs(
                    log_p_lm=torch.log_softmax(logits[row, scored].float(), dim=-1).cpu(),
                    keys=captured[-1][row, scored],
                    hidden=None if hidden[-1] is None else hidden[-1][row, scored],
                    targets=targets,
                )
                lm_parts.append(_gather(outputs.log_p_lm, targets))
                for method in methods:
                    if method.carries_cache:
                        outputs.own_logits = own_logits[method.name]
                    elif method.own_pass:
                        outputs.own_logits = own_logits[method.name][row, scored]
                    parts[method.name].append(_gather(method.combine(outputs).log_p_final, targets))
                positions.append(torch.arange(s.first_target, s.end))
                if keep_keys:
                    keys.append(captured[-1][row, scored].float().cpu())
                done += len(targets)
            meter.update(done)
    finally:
        for method in remembering + carrying:
            method.start_text()  # what it read of this text is no one else's business
    meter.update(done, force=True)
    return (torch.cat(positions).numpy(), torch.cat(lm_parts).numpy(),
            {name: torch.cat(p).numpy() for name, p in parts.items()},
            torch.cat(keys).numpy() if keep_keys else None)


def _gather(log_p: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return log_p.gather(1, targets[:, None])[:, 0].double()


def token_record(model: LoadedModel, comparison: Comparison, index: int, method: Method | None = None
                 ) -> tuple[list[int], TokenRecord]:
    """Target `index` as the token inspector shows a generated token: its context and full record
    (neighbours, distributions, λ or gates), the step forced to the held-out token.

    The context is the window that scored it, so for methods that do not remember earlier text the
    record's probabilities are the comparison's. A method that does (the Memorizing Transformer)
    re-reads the text before the window into its memory in non-overlapping chunks (not `compare`'s
    overlapping windows), and, for a window that starts before half the token's position, its local
    attention sees the whole text before the token (the generator's restart rule): its numbers can
    differ slightly from the comparison's."""
    position = int(comparison.positions[index])
    span = comparison.window_of(index)
    ids = [int(t) for t in comparison.token_ids]
    remembers = method is not None and method.reads_earlier_text
    if remembers:  # the whole text before it; local attention sees exactly the window's part
        prompt, window = ids[:position], 2 * (position - span.begin)
    else:
        prompt, window = ids[span.begin:position], None
    generator = StepGenerator(model, prompt, GenerationSettings(max_new_tokens=1, context_window=window), method)
    if remembers:
        method.start_document(comparison.document_start(position))  # as `compare` did
    return prompt, generator.step(forced_token=ids[position])

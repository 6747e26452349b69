"""Perplexity of the LM alone and of a retrieval method, over the very same tokens and windows.

Both numbers come from one forward pass per window: the LM's log-probabilities of each target,
and the method's, computed from the same logits and the kNN keys of the same contexts. So the
difference between them is the method's effect and nothing else (no tokenization or windowing
differences).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .knnlm import KnnLM
from .models import LoadedModel
from .progress import Cancelled, PhaseMeter, ProgressCallback
from .windows import sliding_windows


@dataclass
class EvalResult:
    method: str
    tokens: int
    ppl_lm: float
    ppl: float
    log_p_lm: np.ndarray = field(repr=False)  # per target token, natural log
    log_p: np.ndarray = field(repr=False)
    target_ids: np.ndarray = field(repr=False)

    def to_json(self) -> dict:
        return {"method": self.method, "tokens": self.tokens, "ppl_lm": self.ppl_lm, "ppl": self.ppl,
                "relative_change": self.ppl / self.ppl_lm - 1.0}


def perplexity(log_probs: np.ndarray) -> float:
    return math.exp(-float(np.mean(log_probs)))


@torch.inference_mode()
def evaluate(
    model: LoadedModel,
    text: str,
    knn: KnnLM | None = None,
    context_length: int = 256,
    stride: int = 128,
    batch_size: int = 8,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EvalResult:
    ids = model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < 2:
        raise ValueError("the evaluation text is too short (it needs at least 2 tokens)")
    tokens = torch.tensor(ids, dtype=torch.long)
    length = min(context_length, model.max_positions)
    spans = list(sliding_windows(len(ids), length, stride))
    meter = PhaseMeter("evaluating", len(ids) - 1, "tokens", on_progress)
    lm_parts, final_parts, done = [], [], 0
    for start in range(0, len(spans), batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled("evaluation cancelled")
        batch = spans[start : start + batch_size]
        longest = max(s.end - s.begin for s in batch)
        input_ids = torch.zeros((len(batch), longest), dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, s in enumerate(batch):
            input_ids[row, : s.end - s.begin] = tokens[s.begin : s.end]
            mask[row, : s.end - s.begin] = 1
        with model.capture_keys() as captured:
            logits = model.forward(input_ids.to(model.device), mask.to(model.device)).logits
        keys = captured[-1]
        for row, s in enumerate(batch):
            positions = slice(s.first_target - 1 - s.begin, s.end - 1 - s.begin)
            targets = tokens[s.first_target : s.end]
            log_p_lm = torch.log_softmax(logits[row, positions].float(), dim=-1).cpu()
            lm_parts.append(log_p_lm.gather(1, targets[:, None])[:, 0].double())
            if knn is not None:
                log_p = knn.combine(log_p_lm, keys[row, positions]).log_p_final
                final_parts.append(log_p.gather(1, targets[:, None])[:, 0])
            done += len(targets)
        meter.update(done)
    meter.update(done, force=True)
    log_p_lm = torch.cat(lm_parts).numpy()
    log_p = torch.cat(final_parts).numpy() if knn is not None else log_p_lm
    return EvalResult(
        method="knnlm" if knn is not None else "none",
        tokens=len(log_p_lm),
        ppl_lm=perplexity(log_p_lm),
        ppl=perplexity(log_p),
        log_p_lm=log_p_lm,
        log_p=log_p,
        target_ids=np.asarray(ids[1:]),
    )

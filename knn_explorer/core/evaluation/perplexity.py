"""Perplexity of the LM alone and of a retrieval method, over the very same tokens and windows.

Both numbers come from one forward pass per window: the LM's log-probabilities of each target,
and the method's, computed from the same logits and the kNN keys of the same contexts. So the
difference between them is the method's effect and nothing else (no tokenization or windowing
differences).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .comparison import compare, perplexity
from ..mechanisms.memorizing import MemorizingRetrofit
from ..methods import Method
from ..methods.lm_alone import LM_ALONE
from ..methods.memorizing import MemorizingTransformerMethod
from ..models import LoadedModel
from ..progress import Cancelled, PhaseMeter, ProgressCallback


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


def read_heldout(path: Path) -> list[str]:
    """The texts of a held-out document or folder; a ValueError says why there are none."""
    from ..datastore.documents import Document, iter_documents, path_text

    read = list(iter_documents([Path(path)]))
    texts = [d.text for d in read if isinstance(d, Document)]
    if not texts:
        reasons = "; ".join(f"{path_text(d.path.name)}: {d.reason}" for d in read) or "nothing to read"
        raise ValueError(f"no readable text in {path} ({reasons})")
    return texts


def evaluate(
    model: LoadedModel,
    text: str,
    method: Method | None = None,
    context_length: int = 256,
    stride: int = 128,
    batch_size: int = 8,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """`method` compared with the LM (none: the LM alone). One method's view of `comparison.compare`."""
    c = compare(model, text, [method] if method is not None else [], context_length=context_length, stride=stride,
                batch_size=batch_size, on_progress=on_progress, should_stop=should_stop)
    name = method.name if method is not None else LM_ALONE
    log_p = c.log_probs(name)
    return EvalResult(method=name, tokens=c.tokens, ppl_lm=perplexity(c.log_p_lm), ppl=perplexity(log_p),
                      log_p_lm=c.log_p_lm, log_p=log_p, target_ids=c.token_ids[c.positions])


@torch.inference_mode()
def evaluate_memorizing(
    model: LoadedModel,
    retrofit: MemorizingRetrofit,
    documents: list[str],
    segment_length: int = 128,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Perplexity with and without the retrofit's memory, segment by segment, as in the paper.

    Each document is cut into segments of `segment_length` tokens that local attention sees one at
    a time; the memory holds the document's earlier segments (reset between documents). The LM
    number is the same model on the same segments with the memory switched off, so the context it
    lacks is exactly what the memory could supply; it is not comparable to `evaluate`'s
    sliding-window perplexity. A retrofit fine-tuned with its memory is compared with its own
    fine-tuned layers without lookups (the paper's "same model without memory"); the base model's
    number is `evaluate`'s.
    """
    length = max(2, min(segment_length, model.max_positions))
    encoded = [model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] for text in documents]
    encoded = [ids for ids in encoded if len(ids) >= 2]
    if not encoded:
        raise ValueError("the evaluation text is too short (it needs at least 2 tokens)")
    meter = PhaseMeter("evaluating", sum(len(ids) - 1 for ids in encoded), "tokens", on_progress)
    lm_parts, memory_parts, targets_all, done = [], [], [], 0
    was_enabled = retrofit.enabled
    try:
        for ids in encoded:
            retrofit.reset()
            tokens = torch.tensor(ids, dtype=torch.long)
            for start in range(0, len(ids) - 1, length):
                if should_stop is not None and should_stop():
                    raise Cancelled("evaluation cancelled")
                end = min(start + length, len(ids) - 1)
                input_ids = tokens[None, start:end].to(model.device)
                targets = tokens[start + 1 : end + 1]
                for with_memory, parts in ((False, lm_parts), (True, memory_parts)):
                    retrofit.enabled = True
                    retrofit.set_window(start, start)
                    # Without memory: the same model (its fine-tuned layers, if any) with no lookups.
                    with nullcontext() if with_memory else retrofit.filling():
                        logits = model.model(input_ids=input_ids).logits[0]
                    log_p = torch.log_softmax(logits.float(), dim=-1).cpu()
                    parts.append(log_p.gather(1, targets[:, None])[:, 0].double())
                targets_all.append(targets)
                done += len(targets)
                meter.update(done)
    finally:
        retrofit.enabled = was_enabled
        retrofit.reset()
    meter.update(done, force=True)
    log_p_lm, log_p = torch.cat(lm_parts).numpy(), torch.cat(memory_parts).numpy()
    return EvalResult(method=MemorizingTransformerMethod.name, tokens=len(log_p), ppl_lm=perplexity(log_p_lm), ppl=perplexity(log_p),
                      log_p_lm=log_p_lm, log_p=log_p, target_ids=torch.cat(targets_all).numpy())

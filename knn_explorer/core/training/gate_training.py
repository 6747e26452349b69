"""Fine-tuning the Memorizing Transformer's per-head gates on the user's documents.

Only the gate biases b_h learn; the model is frozen. Documents are read segment by segment as in
`evaluate_memorizing` (memory = the document's earlier segments); the language-modelling losses of
`segments_per_step` segments with a non-empty memory make one update.

The gates start at σ(-16) ≈ 1e-7, where dσ/db is ≈ 1e-7 too: plain SGD would not move them.
Adam divides by the gradient's running scale, so the first steps move b by ≈ the learning rate
whatever the scale; its epsilon is set far below 1e-7 so it does not swamp those gradients.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapters import save_memorizing_adapter
from ..mechanisms.memorizing import MemorizingRetrofit
from ..models import LoadedModel
from ..progress import Cancelled, ProgressCallback
from .update_loop import GateTrainingResult, TrainingStep, UpdateLoop, frozen


@dataclass(frozen=True)
class GateTrainingSettings:
    epochs: int = 1
    segment_length: int = 128
    learning_rate: float = 0.05
    segments_per_step: int = 8  # gradients of this many segments are summed per update: less noise
    checkpoint_every: int = 50  # steps; 0 = only at the end


def memory_documents(model: LoadedModel, retrofit: MemorizingRetrofit, documents: list[str] | list[list[int]],
                     segment_length: int) -> tuple[int, list[list[int]]]:
    """The segment length the model allows and the documents (texts, or token ids already) as token
    ids, those longer than one segment (a shorter one has nothing to remember); refuses a retrofit
    without gates, or documents that leave nothing to train on."""
    if retrofit.settings.mode != "gated":
        raise ValueError("only the gated mode has gates to train")
    length = max(2, min(segment_length, model.max_positions))
    encoded = [list(d) if not isinstance(d, str) else
               model.tokenizer(d, add_special_tokens=False, verbose=False)["input_ids"] for d in documents]
    docs = [ids for ids in encoded if len(ids) > length + 1]
    if not docs:
        raise ValueError(f"no document is longer than one segment ({length} tokens): there is nothing to remember")
    return length, docs


def train_memorizing_gates(
    model: LoadedModel,
    retrofit: MemorizingRetrofit,
    documents: list[str],
    settings: GateTrainingSettings = GateTrainingSettings(),
    checkpoint: Path | None = None,
    on_step: Callable[[TrainingStep], None] | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GateTrainingResult:
    length, docs = memory_documents(model, retrofit, documents, settings.segment_length)
    segments_per_epoch = sum(math.ceil((len(ids) - 1) / length) - 1 for ids in docs)
    per_update = max(1, settings.segments_per_step)
    optimiser = torch.optim.Adam([retrofit.gate_bias], lr=settings.learning_rate, eps=1e-20)
    save = None if checkpoint is None else (lambda summary: save_memorizing_adapter(checkpoint, retrofit, summary))
    loop = UpdateLoop(optimiser, per_update, math.ceil(segments_per_epoch * settings.epochs / per_update),
                      lambda: retrofit.gates().tolist(), on_step, on_progress, settings.checkpoint_every, save)
    model.model.eval()
    try:
        with frozen(model.model):
            for _epoch in range(settings.epochs):
                for ids in docs:
                    retrofit.reset()
                    tokens = torch.tensor(ids, dtype=torch.long, device=model.device)
                    for start in range(0, len(ids) - 1, length):
                        if should_stop is not None and should_stop():
                            raise Cancelled("gate training cancelled")
                        end = min(start + length, len(ids) - 1)
                        retrofit.set_window(start, start)
                        has_memory = retrofit.memory_tokens() > 0
                        with torch.set_grad_enabled(has_memory):
                            logits = model.model(input_ids=tokens[None, start:end]).logits[0]
                        if has_memory:  # the first segment only fills the memory
                            loop.add(torch.nn.functional.cross_entropy(logits.float(), tokens[start + 1 : end + 1]))
            return loop.finish()
    finally:
        retrofit.reset()

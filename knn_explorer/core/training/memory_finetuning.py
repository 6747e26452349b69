"""Fine-tuning a model with its Memorizing Transformer memory present, as Wu et al. (2022) do.

The gates alone cannot teach a pretrained model to use a memory it never had: its layers above
the memory were trained on local attention's outputs only. The paper fine-tunes the model with
the memory in place ("fine-tuning a vanilla Transformer to use memory is competitive with training
from scratch"). Here:

- What learns: the per-head gate biases b_h and trained copies (`MemorizingRetrofit.tune_layers`)
  of the memory layer and every layer above it (attention, feed-forward, norms) and of the final
  norm. The layers below the memory and the (tied) embeddings stay frozen: the memory layer's
  input, hence the text its keys and queries are made from, is the base model's, so what was
  stored a few thousand tokens ago was made by the same function as what looks it up now, up to
  the memory layer's own projections (trained slowly, as the paper's stale keys are).
- How: documents are read in consecutive segments of `segment_length` tokens; local attention
  sees one segment, the memory holds the document's earlier segments (FIFO, the retrofit's size),
  and every segment's language-modelling loss (the first, with an empty memory, included, so the
  trained model still works without memory) is backpropagated. `segments_per_step` segments make
  one AdamW update (weights: `learning_rate` with warm-up and cosine decay to a tenth; gates:
  `gate_learning_rate`), gradients clipped to norm 1.
- Deterministic: the documents in the order given, no sampling, no dropout.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..mechanisms.memorizing import MemorizingRetrofit
from ..models import LoadedModel
from ..progress import Cancelled, ProgressCallback
from .gate_training import memory_documents
from .update_loop import GateTrainingResult, TrainingStep, UpdateLoop, frozen


@dataclass(frozen=True)
class FineTuneSettings:
    segment_length: int = 256
    segments_per_step: int = 4
    steps: int | None = None  # updates; None: one pass over the documents
    learning_rate: float = 1e-3  # the trained layers' weights
    gate_learning_rate: float = 0.05
    initial_gate_bias: float = -2.0  # σ(-2) ≈ 0.12: the memory starts as a small part of each head
    warmup_steps: int = 10
    clip_norm: float = 1.0
    tune_from: int | None = None  # first fine-tuned layer (default: the memory layer)

    def __post_init__(self):
        if self.segment_length < 2:
            raise ValueError("a segment needs at least 2 tokens")
        if self.segments_per_step < 1:
            raise ValueError("an update needs at least one segment")
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be at least 1")


def _segments(documents: list[list[int]], length: int):
    """(document index, start, end) of every segment, documents in order, each cut from its start."""
    for number, ids in enumerate(documents):
        for start in range(0, len(ids) - 1, length):
            yield number, start, min(start + length, len(ids) - 1)


def train_with_memory(
    model: LoadedModel,
    retrofit: MemorizingRetrofit,
    documents: list[str] | list[list[int]],
    settings: FineTuneSettings = FineTuneSettings(),
    on_step: Callable[[TrainingStep], None] | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GateTrainingResult:
    """Fine-tune `retrofit` (gated mode) and the layers from the memory up, on `documents`; the
    retrofit keeps what was learned (`save_memorizing_adapter` writes it)."""
    length, docs = memory_documents(model, retrofit, documents, settings.segment_length)
    segments = list(_segments(docs, length))
    per_step = settings.segments_per_step
    steps = settings.steps or math.ceil(len(segments) / per_step)
    weights = list(retrofit.tune_layers(retrofit.tunable_modules(settings.tune_from)).values())
    with torch.no_grad():
        retrofit.gate_bias.fill_(settings.initial_gate_bias)
    retrofit.gate_bias.requires_grad_(True)
    optimiser = torch.optim.AdamW([{"params": weights, "lr": settings.learning_rate, "weight_decay": 0.0},
                                   {"params": [retrofit.gate_bias], "lr": settings.gate_learning_rate,
                                    "weight_decay": 0.0, "eps": 1e-20}], betas=(0.9, 0.95))

    def scale(step: int) -> float:  # warm-up, then cosine to a tenth
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = (step - settings.warmup_steps) / max(1, steps - settings.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, [scale, lambda _step: 1.0])
    loop = UpdateLoop(optimiser, per_step, steps, lambda: retrofit.gates().tolist(), on_step, on_progress,
                      clip_norm=settings.clip_norm, schedule=schedule, phase="fine-tuning")
    model.model.eval()  # no dropout: deterministic
    was_enabled = retrofit.enabled
    retrofit.enabled = True
    try:
        with frozen(model.model):
            document, position = None, 0
            while len(loop.result.steps) < steps:
                number, start, end = segments[position % len(segments)]
                position += 1
                if should_stop is not None and should_stop():
                    raise Cancelled("fine-tuning cancelled")
                if number != document or start == 0:  # a new document (or the same one, read again)
                    retrofit.reset()
                    document = number
                tokens = torch.tensor(docs[number][start:end + 1], dtype=torch.long, device=model.device)
                retrofit.set_window(start, start)
                logits = model.model(input_ids=tokens[None, :-1], use_cache=False).logits[0]
                loop.add(torch.nn.functional.cross_entropy(logits.float(), tokens[1:]))
        return loop.finish()
    finally:
        retrofit.gate_bias.requires_grad_(True)
        for p in weights:
            p.grad = None
        retrofit.gate_bias.grad = None
        retrofit.enabled = was_enabled
        retrofit.reset()

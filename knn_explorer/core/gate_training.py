"""Fine-tuning the Memorizing Transformer's per-head gates on the user's documents.

Only the gate biases b_h learn; the model is frozen. Documents are read segment by segment as in
`evaluate_memorizing` (memory = the document's earlier segments), and every segment with a
non-empty memory is one optimisation step on its language-modelling loss.

The gates start at σ(-16) ≈ 1e-7, where dσ/db is ≈ 1e-7 too: plain SGD would not move them.
Adam divides by the gradient's running scale, so the first steps move b by ≈ the learning rate
whatever the scale; its epsilon is set far below 1e-7 so it does not swamp those gradients.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .adapters import save_memorizing_adapter
from .memorizing import MemorizingRetrofit
from .models import LoadedModel
from .progress import Cancelled, PhaseMeter, ProgressCallback


@dataclass(frozen=True)
class GateTrainingSettings:
    epochs: int = 1
    segment_length: int = 128
    learning_rate: float = 0.05
    segments_per_step: int = 8  # gradients of this many segments are summed per update: less noise
    checkpoint_every: int = 50  # steps; 0 = only at the end


@dataclass
class TrainingStep:
    step: int
    loss: float
    gates: list[float]


@dataclass
class GateTrainingResult:
    steps: list[TrainingStep] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_gates(self) -> list[float]:
        return self.steps[-1].gates if self.steps else []

    def summary(self) -> dict:
        losses = [s.loss for s in self.steps]
        head = losses[: max(1, len(losses) // 10)]
        tail = losses[-max(1, len(losses) // 10):]
        return {"steps": len(self.steps), "seconds": round(self.seconds, 1),
                "loss_first": sum(head) / len(head) if head else None,
                "loss_last": sum(tail) / len(tail) if tail else None, "gates": self.final_gates}


def _segments(model: LoadedModel, documents: list[str], length: int) -> list[list[int]]:
    encoded = [model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] for text in documents]
    return [ids for ids in encoded if len(ids) > length]  # one segment only: nothing to remember


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
    if retrofit.settings.mode != "gated":
        raise ValueError("only the gated mode has gates to train")
    length = max(2, min(settings.segment_length, model.max_positions))
    docs = _segments(model, documents, length)
    if not docs:
        raise ValueError(f"no document is longer than one segment ({length} tokens): there is nothing to remember")
    segments_per_epoch = sum(math.ceil((len(ids) - 1) / length) - 1 for ids in docs)
    per_step = max(1, settings.segments_per_step)
    meter = PhaseMeter("training", math.ceil(segments_per_epoch * settings.epochs / per_step), "steps", on_progress)
    frozen = [(p, p.requires_grad) for p in model.model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    optimiser = torch.optim.Adam([retrofit.gate_bias], lr=settings.learning_rate, eps=1e-20)
    result, started = GateTrainingResult(), time.monotonic()
    model.model.eval()
    accumulated, losses = 0, []
    optimiser.zero_grad()

    def update() -> None:
        nonlocal accumulated
        optimiser.step()
        optimiser.zero_grad()
        step = TrainingStep(len(result.steps) + 1, sum(losses) / len(losses), retrofit.gates().tolist())
        accumulated = 0
        losses.clear()
        result.steps.append(step)
        if on_step is not None:
            on_step(step)
        meter.update(step.step)
        if checkpoint is not None and settings.checkpoint_every and step.step % settings.checkpoint_every == 0:
            save_memorizing_adapter(checkpoint, retrofit, result.summary())

    try:
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
                    if not has_memory:  # the first segment only fills the memory
                        continue
                    loss = torch.nn.functional.cross_entropy(logits.float(), tokens[start + 1 : end + 1])
                    loss.backward()
                    losses.append(float(loss.detach()))
                    accumulated += 1
                    if accumulated == per_step:
                        update()
        if accumulated:
            update()
    finally:
        for p, requires_grad in frozen:
            p.requires_grad_(requires_grad)
        retrofit.reset()
        result.seconds = time.monotonic() - started
    meter.update(len(result.steps), force=True)
    if checkpoint is not None:
        save_memorizing_adapter(checkpoint, retrofit, result.summary())
    return result

"""What every gate training shares: a frozen model, gradient accumulation, one `TrainingStep` per
update, progress, checkpoints, and the result."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..progress import PhaseMeter, ProgressCallback


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


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """The model's own parameters take no gradient inside the block (restored after)."""
    before = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in before:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, requires_grad in before:
            p.requires_grad_(requires_grad)


class UpdateLoop:
    """Sums the gradients of `per_update` pieces (segments, windows), then steps the optimiser."""

    def __init__(self, optimiser: torch.optim.Optimizer, per_update: int, updates: int,
                 gates: Callable[[], list[float]], on_step: Callable[[TrainingStep], None] | None = None,
                 on_progress: ProgressCallback | None = None, checkpoint_every: int = 0,
                 save: Callable[[dict], None] | None = None, clip_norm: float | None = None,
                 schedule: torch.optim.lr_scheduler.LRScheduler | None = None, phase: str = "training"):
        self.optimiser, self.per_update, self.gates = optimiser, max(1, per_update), gates
        self.clip_norm, self.schedule = clip_norm, schedule
        self.on_step, self.checkpoint_every, self.save = on_step, checkpoint_every, save
        self.meter = PhaseMeter(phase, updates, "steps", on_progress)
        self.result = GateTrainingResult()
        self._losses: list[float] = []
        self._started = time.monotonic()
        optimiser.zero_grad()

    def add(self, loss: torch.Tensor) -> None:
        """One piece's loss: backpropagate it, and update once `per_update` pieces are in."""
        (loss / self.per_update).backward()
        self._losses.append(float(loss.detach()))
        if len(self._losses) == self.per_update:
            self._update()

    def finish(self) -> GateTrainingResult:
        if self._losses:
            self._update()
        self.meter.update(len(self.result.steps), force=True)
        self.result.seconds = time.monotonic() - self._started
        if self.save is not None:
            self.save(self.result.summary())
        return self.result

    def _update(self) -> None:
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for group in self.optimiser.param_groups for p in group["params"]],
                                           self.clip_norm)
        self.optimiser.step()
        if self.schedule is not None:
            self.schedule.step()
        self.optimiser.zero_grad()
        step = TrainingStep(len(self.result.steps) + 1, sum(self._losses) / len(self._losses), self.gates())
        self._losses.clear()
        self.result.steps.append(step)
        if self.on_step is not None:
            self.on_step(step)
        self.meter.update(step.step)
        if self.save is not None and self.checkpoint_every and step.step % self.checkpoint_every == 0:
            self.result.seconds = time.monotonic() - self._started
            self.save(self.result.summary())

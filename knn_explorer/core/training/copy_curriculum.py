"""Teaching a model to copy from its own context, before it learns to use a memory.

A Memorizing Transformer's memory hands a layer the keys and values of text read long ago; only
a model that already attends to "what followed this the last time" (induction heads) has a use
for them. Every pretrained LM a user brings has such heads. A briefly trained small model may not:
the demo model, after its 30 minutes of training, predicts the second copy of a repeated passage
no better than the first (resources/demo/README.md). Fine-tuning with the memory cannot create the
circuit either: the memory's top-k choice passes no gradient to the entries it did not choose.

So the demo's adapter is trained in two stages. This is the first: the retrofit's trained copies
(`MemorizingRetrofit.tune_layers`, the layers from `tune_from` up; the model's own weights are
never written) learn, without the memory, on windows of the model's training text of which most
hold a repeat: a span of the window copied later in it, or a run of random tokens repeated to the
window's end (which only copying can predict). Local attention's gradient is dense, so the
induction heads form within a few hundred updates; the memory layer's queries and keys are then
the ones a lookup needs. `memory_finetuning.train_with_memory` is the second stage.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..mechanisms.memorizing import MemorizingRetrofit
from ..models import LoadedModel
from ..progress import Cancelled
from .update_loop import GateTrainingResult, TrainingStep, UpdateLoop, frozen


@dataclass(frozen=True)
class CopyCurriculum:
    steps: int = 800  # updates
    batch: int = 16  # windows per update
    window: int = 256  # tokens per window (at most the model's positions)
    learning_rate: float = 2e-3
    repeated_share: float = 0.8  # windows that hold a repeat ...
    random_share: float = 0.3  # ... of which this share are random tokens repeated
    tune_from: int | None = None  # first trained layer (default: the memory layer)
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch < 1:
            raise ValueError("steps and batch must be at least 1")
        if self.window < 32:
            raise ValueError("a window needs at least 32 tokens to hold a repeat")
        if not (0 <= self.repeated_share <= 1 and 0 <= self.random_share <= 1):
            raise ValueError("shares are between 0 and 1")


class RepeatSampler:
    """Windows of `stream` (a 1-D tensor of token ids), most of them holding a repeat."""

    def __init__(self, stream: torch.Tensor, vocab_size: int, settings: CopyCurriculum):
        length = settings.window + 1
        if len(stream) < 2 * length:
            raise ValueError(f"the training text has {len(stream)} tokens; the curriculum needs at least {2 * length}")
        self.stream, self.vocab, self.settings, self.length = stream, vocab_size, settings, length
        self.rng = random.Random(settings.seed)
        self.generator = torch.Generator().manual_seed(settings.seed)

    def window(self) -> torch.Tensor:
        s, n_all, rng = self.settings, self.length, self.rng
        draw = rng.random()
        if draw < s.repeated_share * s.random_share:  # random tokens, repeated to the window's end
            n = rng.randint(8, min(128, n_all // 2))  # at least two copies in the window
            tokens = torch.randint(0, self.vocab, (n,), generator=self.generator)
            return tokens.repeat(n_all // n + 1)[:n_all]
        start = rng.randrange(0, len(self.stream) - n_all)
        x = self.stream[start:start + n_all].clone()
        if draw < s.repeated_share:  # a span of the text copied later in the same window
            n = rng.randint(16, min(100, n_all // 3))
            a = rng.randrange(0, n_all - 2 * n)
            b = rng.randrange(a + n, n_all - n + 1)
            x[b:b + n] = x[a:a + n]
        return x

    def batch(self) -> torch.Tensor:
        return torch.stack([self.window() for _ in range(self.settings.batch)])


def teach_copying(
    model: LoadedModel,
    retrofit: MemorizingRetrofit,
    stream: torch.Tensor,
    settings: CopyCurriculum = CopyCurriculum(),
    on_step: Callable[[TrainingStep], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GateTrainingResult:
    """Train the retrofit's copies of the layers from `settings.tune_from` up (memory off) on
    repeat-bearing windows of `stream`; the copies keep what was learned."""
    settings = replace(settings, window=min(settings.window, model.max_positions))
    sampler = RepeatSampler(stream, model.model.config.vocab_size, settings)
    weights = list(retrofit.tune_layers(retrofit.tunable_modules(settings.tune_from)).values())
    optimiser = torch.optim.AdamW(weights, lr=settings.learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    loop = UpdateLoop(optimiser, 1, settings.steps, lambda: retrofit.gates().tolist(), on_step, clip_norm=1.0,
                      phase="copy curriculum")
    model.model.eval()  # no dropout: deterministic
    try:
        with frozen(model.model), retrofit.filling():  # the trained copies, no lookups
            for _step in range(settings.steps):
                if should_stop is not None and should_stop():
                    raise Cancelled("training cancelled")
                x = sampler.batch().to(model.device)
                logits = model.model(input_ids=x[:, :-1], use_cache=False).logits
                loop.add(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                           x[:, 1:].reshape(-1)))
        return loop.finish()
    finally:
        for p in weights:
            p.grad = None
        retrofit.reset()

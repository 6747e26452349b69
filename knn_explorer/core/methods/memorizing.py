"""The Memorizing Transformer as a method: a kNN memory of the text's own earlier tokens inside one
attention layer (the mechanism is `core/memorizing.py`; trained gates, `core/adapters.py`).

The method changes the model, so it has a forward pass of its own: the shared pass runs the plain
layer (p_LM, and it queues the window's keys for the memory); the method's pass runs the same
tokens with the memory on."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..mechanisms.memorizing import MemorizingRetrofit, MemorizingSettings
from .base import Method, MethodStep, PassOutputs, RecordContext, Resources, Trained, Trainer, TrainingSettings
from .sweep_names import KeptAs


class MemorizingTransformerMethod(Method):
    name = "memtrf"
    label = "Memorizing Transformer"
    short_label = "MemTrf"
    summary = "attention over a kNN memory of the text's earlier tokens, per-head gates (Wu et al. 2022)"
    Settings = MemorizingSettings
    own_pass = True
    reads_earlier_text = True
    record_fields = ("head_gates", "memory_attention", "memory_hits")
    # the memory's size, kept (and `sweep --param`) as "memory"
    sweeps = {"memory": KeptAs("memory size (tokens)", (0, 1024, 4096, 16384, 65536))}
    trainer = Trainer("per-head gates", learns_from="documents", learning_rate=0.05, default_name="memtrf-gates",
                      settings=("layer", "memory_size", "k"), gates_title="Gates g<sub>h</sub>",
                      segment_help="Tokens local attention sees per segment; earlier segments are the memory")

    def __init__(self, model, settings: MemorizingSettings | None = None, resources: Resources = Resources(),
                 retrofit: MemorizingRetrofit | None = None):
        """`retrofit`: a memory already in the model to run; otherwise one is made (with the
        resources' adapter, or the demo model's shipped gates)."""
        from ..training.adapters import memorizing_with_gates

        super().__init__(model, settings if settings is not None or retrofit is None else retrofit.settings, resources)
        self.retrofit = retrofit or memorizing_with_gates(model, self.settings, resources.adapter)
        self._filled_to = 0  # text before this position has passed through the memory layer

    # ---- lifecycle ---------------------------------------------------------------------------
    def start_text(self) -> None:
        self.retrofit.reset()
        self._filled_to = 0

    def start_document(self, position: int) -> None:
        self.retrofit.start_document(position)

    def close(self) -> None:
        self.retrofit.remove()

    def set_aside(self):
        return self.retrofit.set_aside()

    # ---- one step ----------------------------------------------------------------------------
    def shared_pass(self, window_start: int, input_start: int):
        """The plain layer; the pass's keys queue for the memory."""
        return self._pass(False, window_start, input_start)

    def method_pass(self, window_start: int, input_start: int):
        return self._pass(True, window_start, input_start)

    @contextmanager
    def _pass(self, memory_on: bool, window_start: int, input_start: int):
        memory = self.retrofit
        was = memory.enabled
        memory.enabled = memory_on
        memory.set_window(window_start, input_start)
        try:
            yield
        finally:
            memory.enabled = was

    @torch.inference_mode()
    def catch_up(self, ids: list[int], window_start: int, window: int) -> None:
        """Run text that never passed through the model (a prompt longer than the window) through
        it, a window at a time, so the memory holds it. The memory layer's keys do not depend on the
        memory, so lookups are off meanwhile (`filling`: fine-tuned layers, whose keys the memory
        holds, without lookups). The step that follows passes the rest of `ids`."""
        if self._filled_to < window_start:
            memory, model = self.retrofit, self.model
            with memory.filling():
                for start in range(self._filled_to, window_start, window):
                    chunk = ids[start:min(start + window, window_start)]
                    memory.set_window(start, start)
                    model.forward(torch.tensor([chunk], device=model.device), last_logits_only=True)
        self._filled_to = max(self._filled_to, len(ids))

    def combine(self, outputs: PassOutputs) -> MethodStep:
        return MethodStep(torch.log_softmax(outputs.own_logits.float(), dim=-1).cpu().double(),
                          self.retrofit.last_step)

    def describe_step(self, step: MethodStep, row: int, context: RecordContext) -> dict:
        last = step.details
        if last is None:
            return {}
        return {
            "head_gates": last.head_gates,
            "memory_attention": last.memory_attention,
            "memory_hits": [[context.memory_hit(position, weight, similarity) for position, weight, similarity in head]
                            for head in last.hits],
        }

    def describe(self) -> dict:
        memory = self.retrofit
        return {"method": self.name, "memory_layer": memory.layer, "memory_mode": memory.settings.mode,
                "memory_size": memory.settings.memory_size, "k": memory.settings.k,
                "gates": memory.gates().tolist() if memory.settings.mode == "gated" else None,
                "fine_tuned": memory.tuned_modules()}

    def sweep(self, texts, param, values, context_length=256, stride=128, on_progress=None, should_stop=None):
        """Perplexity with memories of each size (`sweeps.sweep_memory_size`: one pass per size, the
        memory holding one document at a time); the memory's size is restored afterwards."""
        from ..evaluation.sweeps import sweep_memory_size

        self.check_sweep(param, values)
        return sweep_memory_size(self.model, self, texts, [int(v) for v in values], context_length, stride,
                                 on_progress=on_progress, should_stop=should_stop)

    @classmethod
    def train(cls, model, settings, resources, sources, training: TrainingSettings, checkpoint, on_step=None,
              on_progress=None, should_stop=None) -> Trained:
        """The memory layer's per-head gates, learned on the documents (`core/training/gate_training.py`)."""
        from ..training.gate_training import GateTrainingSettings, train_memorizing_gates

        options = {"segments_per_step": training.segments_per_step} if training.segments_per_step else {}
        gate_settings = GateTrainingSettings(epochs=training.epochs, segment_length=training.segment,
                                             learning_rate=training.learning_rate or cls.trainer.learning_rate,
                                             **options)
        retrofit = MemorizingRetrofit(model, settings)
        try:
            result = train_memorizing_gates(model, retrofit, list(sources), gate_settings, checkpoint=checkpoint,
                                            on_step=on_step, on_progress=on_progress, should_stop=should_stop)
            return Trained(result.summary(), {"layer": retrofit.layer}, f"{len(sources)} documents")
        finally:
            retrofit.remove()

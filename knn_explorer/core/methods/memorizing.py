"""The Memorizing Transformer as a method: a kNN memory of the text's own earlier tokens inside one
attention layer (the mechanism is `core/memorizing.py`; trained gates, `core/adapters.py`).

The method changes the model, so it has a forward pass of its own: the shared pass runs the plain
layer (p_LM, and it queues the window's keys for the memory); the method's pass runs the same
tokens with the memory on."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..mechanisms.memorizing import MemorizingRetrofit, MemorizingSettings
from .base import Method, MethodStep, PassOutputs, RecordContext, Resources


class MemorizingTransformerMethod(Method):
    name = "memtrf"
    label = "Memorizing Transformer"
    summary = "attention over a kNN memory of the text's earlier tokens, per-head gates (Wu et al. 2022)"
    Settings = MemorizingSettings
    own_pass = True
    reads_earlier_text = True
    record_fields = ("head_gates", "memory_attention", "memory_hits")

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
        memory, so it is off meanwhile. The step that follows passes the rest of `ids`."""
        if self._filled_to < window_start:
            memory, model = self.retrofit, self.model
            was = memory.enabled
            memory.enabled = False
            try:
                for start in range(self._filled_to, window_start, window):
                    chunk = ids[start:min(start + window, window_start)]
                    memory.set_window(start, start)
                    model.forward(torch.tensor([chunk], device=model.device), last_logits_only=True)
            finally:
                memory.enabled = was
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
            "memory_hits": [[context.memory_hit(position, weight) for position, weight in head] for head in last.hits],
        }

    def describe(self) -> dict:
        memory = self.retrofit
        return {"method": self.name, "memory_layer": memory.layer, "memory_mode": memory.settings.mode,
                "memory_size": memory.settings.memory_size, "k": memory.settings.k,
                "gates": memory.gates().tolist() if memory.settings.mode == "gated" else None}

"""SPALM as a method: retrieved next tokens' embeddings mixed into h_t through a learned gate, after
Transformer-XL's short-term memory (the mechanism is `mechanisms/spalm.py`; training,
`training/spalm_training.py`).

Its own pass. With trained word embeddings W, h_t and the context's key come from the model run
with SPALM's W (`Spalm.in_model`; the model has its own W back afterwards), while the shared pass
(p_LM, the LM alone's numbers) runs the model as it is. In `compare` SPALM reads the text with its
short-term memory (`carries_cache`): each window runs only the tokens the previous window did not
have, after the key/value cache of the window's earlier tokens carried from that window — so it
sees the same tokens as the LM alone on the same window, their states computed once, with their own
memory. In generation the short-term memory is the generator's cache (bounded by the context
window); without trained W the shared pass already is SPALM's and there is no second pass.

The query is the key of SPALM's own pass (the model with SPALM's W), as the paper's h_t; the
datastore's keys are those it was built with.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from ..mechanisms.short_term_memory import ShortTermMemory
from ..mechanisms.spalm import Spalm, SpalmSettings, SpalmStep, gate_statistics
from ..models import capture_output_input
from ..records import RetrievalSettings
from .base import Method, MethodStep, PassOutputs, RecordContext, Resources, Trained, Trainer, TrainingSettings

QUERIES = ("own", "shared")


class SpalmMethod(Method):
    name = "spalm"
    label = "SPALM"
    summary = "a gate mixes the retrieved tokens' embeddings into the hidden state (Yogatama et al. 2021)"
    Settings = SpalmSettings
    needs_datastore = True
    uses_hidden = True
    carries_cache = True
    record_fields = ("p_knn", "gate", "memory_usefulness", "neighbours", "retrieval")
    trainer = Trainer("context gate and word embeddings", learns_from="datastore", learning_rate=0.01,
                      default_name="spalm", settings=("k",), gates_title="Mean gate g",
                      segment_help="Tokens per segment; the previous segment's cached states are its memory")

    def __init__(self, model, settings: SpalmSettings | None = None, resources: Resources = Resources(),
                 spalm: Spalm | None = None):
        """`spalm`: an existing SPALM (its datastore, gate and W) to run; otherwise one is made with
        the resources' adapter, or the demo model's shipped one, or the initial gate."""
        from ..training.spalm_training import spalm_with_adapter

        super().__init__(model, settings if settings is not None or spalm is None else spalm.settings,
                         resources if spalm is None else Resources(spalm.datastore, resources.adapter))
        self.spalm = spalm or spalm_with_adapter(model, resources.datastore, self.settings, resources.adapter)
        self.queries = "own"  # "shared": the LM alone's keys (to measure what the trained W does to retrieval)
        self.memory = ShortTermMemory(model, model.max_positions)  # `compare`'s; bounded per window
        self._scored: list[torch.Tensor] = []  # per scored target: g_t, log p_mem(y), log p_h(y)
        self.start_text()

    @property
    def own_pass(self) -> bool:  # the generator's second pass: only SPALM's W makes it differ from the shared one
        return self.spalm.has_trained_embeddings

    # ---- lifecycle ---------------------------------------------------------------------------
    def start_text(self) -> None:
        self.memory.reset()
        self._fed = 0  # the text before this position has been through `own_window`
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # h_t and key of position _fed − 1
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # own pass: (h_t, keys) for `combine`

    def close(self) -> None:
        """SPALM's W is in the model only during SPALM's own passes: the model already has its own."""
        self.start_text()

    # ---- one step ----------------------------------------------------------------------------
    @contextmanager
    def method_pass(self, window_start: int, input_start: int):
        """The generator's own pass: the model with SPALM's W; its last position's h_t and key are kept."""
        with self.spalm.in_model(), self.model.capture_keys() as keys, capture_output_input(self.model) as hidden:
            yield
        self._pending = (hidden[-1][:, -1], keys[-1][:, -1].float())

    def own_window(self, tokens: torch.Tensor, span) -> None:
        """`compare`'s own pass over one window: the tokens after those already read, after the cache of
        the window's earlier tokens (Transformer-XL's memory, carried from the previous window)."""
        if not span.begin <= self._fed == span.first_target:  # not the next window of the same text: start over
            self.start_text()
            self._fed = span.begin
        device = self.model.device
        new = tokens[self._fed: span.end][None].to(device)
        with self.spalm.in_model(), self.model.capture_keys() as keys:
            hidden = self.memory.forward(new, keep=self._fed - span.begin).last_hidden_state[0]
        queries = keys[-1].reshape(-1, keys[-1].shape[-1])[-new.shape[1]:].float()
        first = self._fed  # position of hidden[0]
        if self._last is not None:
            hidden, queries, first = torch.cat([self._last[0], hidden]), torch.cat([self._last[1], queries]), first - 1
        rows = slice(span.first_target - 1 - first, span.end - 1 - first)  # the contexts of the span's targets
        self._pending = (hidden[rows], queries[rows])
        self._last = (hidden[-1:], queries[-1:])
        self._fed = span.end

    def combine(self, outputs: PassOutputs) -> MethodStep:
        if self._pending is not None:
            hidden, keys = self._pending
            self._pending = None
        else:
            hidden, keys = outputs.hidden, outputs.keys
        queries = keys if self.queries == "own" else outputs.keys
        step = self.spalm.combine(hidden, queries)
        if outputs.targets is not None:  # evaluation: keep what `results` reports per target
            rows, y = torch.arange(len(outputs.targets)), outputs.targets.cpu()
            self._scored.append(torch.stack([step.gates.double(), step.log_p_mem[rows, y].double(),
                                             step.log_p_hidden[rows, y].double()], dim=1))
        return MethodStep(step.log_p_final, step)

    def results(self) -> dict:
        """Over the targets scored so far: the gate's mean and spread, its correlation with the
        retrieval's usefulness (`mechanisms.spalm.gate_statistics`), and the perplexity SPALM would
        have without its memory (g = 1: its W and short-term memory alone)."""
        if not self._scored:
            return {}
        scored = torch.cat(self._scored).numpy()
        return {**gate_statistics(scored[:, 0], scored[:, 1], scored[:, 2]),
                "ppl_without_memory": math.exp(-float(scored[:, 2].mean()))}  # g = 1: its W, no retrieval

    @classmethod
    def results_note(cls, results: dict) -> str:
        """"g 0.93±0.06, r(g,u) −0.21": the gate's mean and spread over the tokens, and its correlation
        with the retrieval's usefulness u (`results`)."""
        if "gate_mean" not in results:
            return ""
        note = f"g {results['gate_mean']:.2f}±{results['gate_std']:.2f}"
        r = results.get("gate_usefulness_pearson")
        return note if r is None else f"{note}, r(g,u) {r:+.2f}".replace("-", "−")

    def describe_step(self, step: MethodStep, row: int, context: RecordContext) -> dict:
        spalm_step: SpalmStep = step.details  # neighbours weighted by their attention in m_t; T plays no part
        s, datastore = self.settings, self.spalm.datastore
        chosen = getattr(context, "chosen", None)
        usefulness = None if chosen is None or spalm_step.log_p_mem is None else \
            float(spalm_step.log_p_mem[row, chosen] - spalm_step.log_p_hidden[row, chosen])
        return {
            "neighbours": context.neighbours(spalm_step.retrieval, spalm_step.attention, datastore,
                                             knn_weights=spalm_step.retrieval.weights, row=row),
            "retrieval": RetrievalSettings(s.k, 1.0, s.distance, datastore.name),
            "p_knn": context.top(spalm_step.p_memory[row]),
            "gate": float(spalm_step.gates[row]),
            "memory_usefulness": usefulness,
        }

    def describe(self) -> dict:
        trained = self.spalm.adapter is not None
        adapter = str(self.resources.adapter or "shipped with the demo") if trained else "initial (w = 0, b = ln 9)"
        embeddings = "trained with the gate" if self.spalm.has_trained_embeddings else "the model's"
        return {**super().describe(), "gate": adapter, "word_embeddings": embeddings}

    @classmethod
    def train(cls, model, settings, resources, sources, training: TrainingSettings, checkpoint, on_step=None,
              on_progress=None, should_stop=None) -> Trained:
        """The context gate and the word embeddings W, learned together on the datastore's own
        documents in segments with Transformer-XL's memory, each position's own document left out
        of its neighbours (`training/spalm_training.py`)."""
        from ..training.spalm_training import SpalmTrainingSettings, train_spalm

        options = {"streams": training.segments_per_step} if training.segments_per_step else {}
        spalm_settings = SpalmTrainingSettings(epochs=training.epochs, segment=training.segment,
                                               learning_rate=training.learning_rate or cls.trainer.learning_rate,
                                               **options)
        datastore = resources.datastore
        result = train_spalm(Spalm(model, datastore, settings), spalm_settings, checkpoint=checkpoint,
                             on_step=on_step, on_progress=on_progress, should_stop=should_stop)
        return Trained(result.summary(), {"datastore": datastore.name}, f"the documents of '{datastore.name}'")

"""SPALM as a method: retrieved next tokens' embeddings mixed into h_t through a learned gate (the
mechanism is `core/spalm.py`; the trained gate, `core/spalm_training.py`)."""
from __future__ import annotations

from ..records import RetrievalSettings
from ..mechanisms.spalm import Spalm, SpalmSettings, SpalmStep
from .base import Method, MethodStep, PassOutputs, RecordContext, Resources, Trained, Trainer, TrainingSettings


class SpalmMethod(Method):
    name = "spalm"
    label = "SPALM"
    summary = "a gate mixes the retrieved tokens' embeddings into the hidden state (Yogatama et al. 2021)"
    Settings = SpalmSettings
    needs_datastore = True
    uses_hidden = True
    record_fields = ("p_knn", "gate", "neighbours", "retrieval")
    trainer = Trainer("context gate", learns_from="datastore", learning_rate=0.01, default_name="spalm-gate",
                      settings=("k",), gates_title="Mean gate g")

    def __init__(self, model, settings: SpalmSettings | None = None, resources: Resources = Resources(),
                 spalm: Spalm | None = None):
        """`spalm`: an existing SPALM (its datastore and gate) to run; otherwise one is made with the
        resources' adapter, or the demo model's shipped gate, or the initial gate."""
        from ..training.spalm_training import spalm_with_gate

        super().__init__(model, settings if settings is not None or spalm is None else spalm.settings,
                         resources if spalm is None else Resources(spalm.datastore, resources.adapter))
        self.spalm = spalm or spalm_with_gate(model, resources.datastore, self.settings, resources.adapter)

    def combine(self, outputs: PassOutputs) -> MethodStep:
        step = self.spalm.combine(outputs.hidden, outputs.keys)
        return MethodStep(step.log_p_final, step)

    def describe_step(self, step: MethodStep, row: int, context: RecordContext) -> dict:
        spalm_step: SpalmStep = step.details  # neighbours weighted by their attention in m_t; T plays no part
        s, datastore = self.settings, self.spalm.datastore
        return {
            "neighbours": context.neighbours(spalm_step.retrieval, spalm_step.attention, datastore,
                                             knn_weights=spalm_step.retrieval.weights, row=row),
            "retrieval": RetrievalSettings(s.k, 1.0, s.distance, datastore.name),
            "p_knn": context.top(spalm_step.p_memory[row]),
            "gate": float(spalm_step.gates[row]),
        }

    def describe(self) -> dict:
        trained = self.spalm.adapter is not None
        gate = str(self.resources.adapter or "shipped with the demo") if trained else "initial (w = 0, b = ln 9)"
        return {**super().describe(), "gate": gate}

    @classmethod
    def train(cls, model, settings, resources, sources, training: TrainingSettings, checkpoint, on_step=None,
              on_progress=None, should_stop=None) -> Trained:
        """The context gate, learned on the datastore's own documents with each position's own entry
        left out of its neighbours (`core/training/spalm_training.py`)."""
        from ..training.spalm_training import SpalmTrainingSettings, train_spalm_gate

        options = {"windows_per_step": training.segments_per_step} if training.segments_per_step else {}
        gate_settings = SpalmTrainingSettings(epochs=training.epochs, context_length=training.segment,
                                              learning_rate=training.learning_rate or cls.trainer.learning_rate,
                                              **options)
        datastore = resources.datastore
        result = train_spalm_gate(Spalm(model, datastore, settings), gate_settings, checkpoint=checkpoint,
                                  on_step=on_step, on_progress=on_progress, should_stop=should_stop)
        return Trained(result.summary(), {"datastore": datastore.name}, f"the documents of '{datastore.name}'")

"""kNN-LM as a method: interpolate p_LM with p_kNN over the datastore's neighbours (the mechanism
is `core/knnlm.py`)."""
from __future__ import annotations

from ..mechanisms.knnlm import KnnLM, KnnLmSettings, KnnStep, Retrieval
from ..records import RetrievalSettings
from .base import Method, MethodStep, PassOutputs, RecordContext, Resources
from .sweep_names import KeptAs

# λ, k, T, the datastore's size and the distances: kept (and `sweep --param`) under these bare names
SWEEPS = {"lambda": ("λ", (0, 0.05, 0.1, 0.25, 0.4, 0.5, 0.65, 0.8, 0.95, 1)),
          "k": ("k (neighbours)", (1, 4, 8, 16, 32, 64, 128, 256)),
          "temperature": ("temperature T", (0.25, 0.5, 1, 2, 4, 8)),
          "size": ("datastore size (fraction of its entries)", (0.05, 0.1, 0.25, 0.5, 1)),
          "distance": ("distances (0 = index's, 1 = exact)", (0, 1))}


class KnnLmMethod(Method):
    name = "knnlm"
    label = "kNN-LM"
    summary = "λ·p_kNN + (1 − λ)·p_LM over the k nearest datastore entries (Khandelwal et al. 2020)"
    Settings = KnnLmSettings
    needs_datastore = True
    record_fields = ("p_knn", "lambda_", "neighbours", "retrieval")
    sweeps = {param: KeptAs(label, values) for param, (label, values) in SWEEPS.items()}

    def __init__(self, model, settings: KnnLmSettings | None = None, resources: Resources = Resources()):
        super().__init__(model, settings, resources)
        self.knn = KnnLM(resources.datastore, self.settings)

    def combine(self, outputs: PassOutputs) -> MethodStep:
        step = self.knn.combine(outputs.log_p_lm, outputs.keys)
        return MethodStep(step.log_p_final, step)

    def describe_step(self, step: MethodStep, row: int, context: RecordContext) -> dict:
        knn_step: KnnStep = step.details
        return retrieval_fields(self.knn, knn_step.retrieval, row, knn_step.p_knn[row], float(knn_step.lambdas[row]),
                                context)

    # ---- its sweeps (`core/evaluation/sweeps.py`: one forward pass, every point from it) --------
    def sweep(self, texts, param, values, context_length=256, stride=128, on_progress=None, should_stop=None):
        """kNN-LM (fixed λ) at each value of `param`, the other settings as they are: the values are
        checked against the datastore first, then one pass over the text collects what every point needs.
        Refusals are `SweepValueError`s (one line)."""
        from ..evaluation.sweeps import check_sweep_values, collect, sweep

        datastore = self.knn.datastore
        check_sweep_values(datastore, param, values, self.settings)  # before the model runs
        text = texts if isinstance(texts, str) else "\n\n".join(texts)  # one stream, as `evaluate` reads it
        collected = collect(self.model, text, context_length, stride, on_progress=on_progress, should_stop=should_stop)
        return sweep(datastore, collected, param, values, self.settings, should_stop=should_stop,
                     on_progress=on_progress)


def retrieval_fields(knn: KnnLM, retrieval: Retrieval, row: int, p_knn, lam: float, context: RecordContext) -> dict:
    """The record fields of a step that mixed in kNN-LM's p_kNN with weight `lam` (kNN-LM itself, and
    any method that retrieves as it does): row `row` of `retrieval`, its p_kNN, the settings used."""
    s, datastore = knn.settings, knn.datastore
    return {
        "neighbours": context.neighbours(retrieval, retrieval.weights, datastore, row=row),
        "retrieval": RetrievalSettings(s.k, s.temperature, s.distance, datastore.name),
        "p_knn": context.top(p_knn),
        "lambda_": lam,
    }

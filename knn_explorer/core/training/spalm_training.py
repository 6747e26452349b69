"""Training SPALM's gate (w_g, b) on a datastore's own documents, the model frozen.

The documents are read from the datastore (its `tokens.i32`), in windows of `context_length`
tokens. Every target token is itself a datastore entry — its own nearest neighbour, at distance 0,
whose next token is the answer. Left in, it would teach the gate to trust the memory blindly, so
each position retrieves k + 1 neighbours and drops itself (leave-one-out).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .adapters import AdapterError, read_adapter_info
from ..mechanisms.knnlm import Retrieval, neighbour_weights
from ..models import capture_output_input
from ..progress import Cancelled, ProgressCallback
from ..mechanisms.spalm import Spalm
from .update_loop import GateTrainingResult, TrainingStep, UpdateLoop, frozen

SPALM = "spalm"


@dataclass(frozen=True)
class SpalmTrainingSettings:
    epochs: int = 1
    context_length: int = 128
    learning_rate: float = 0.01
    windows_per_step: int = 4
    checkpoint_every: int = 50


def without_self(retrieval: Retrieval, own: np.ndarray, k: int, temperature: float = 1.0) -> Retrieval:
    """Keep each row's k nearest neighbours other than entry `own[row]`."""
    is_self = retrieval.ids == own[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # self (if found) moves past the k kept
    ids = np.take_along_axis(retrieval.ids, order, axis=1)
    distances = np.take_along_axis(retrieval.distances, order, axis=1)
    values = torch.from_numpy(np.take_along_axis(retrieval.values.numpy(), order, axis=1))
    weights = neighbour_weights(torch.from_numpy(distances).double(), temperature)
    return Retrieval(ids=ids, distances=distances, values=values, weights=weights)


def save_spalm_adapter(path: Path, spalm: Spalm, training: dict | None = None) -> Path:
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"kind": SPALM, "model_name": spalm.model.name, "model_fingerprint": spalm.model.model_fingerprint,
                "details": json.dumps({"datastore": spalm.datastore.name, "k": spalm.settings.k,
                                       "training": training or {}})}
    tensors = {"weight": spalm.gate.weight.detach().float().cpu().contiguous(),
               "bias": spalm.gate.bias.detach().float().cpu().reshape(1).contiguous()}
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    partial.replace(path)
    return path


def load_spalm_adapter(path: Path, spalm: Spalm):
    info = read_adapter_info(path)
    if info.kind != SPALM:
        raise AdapterError(f"{Path(path).name} is a {info.kind} adapter, not a SPALM gate")
    if info.model_fingerprint != spalm.model.model_fingerprint:
        raise AdapterError(f"{Path(path).name} was trained for model '{info.model_name}', not '{spalm.model.name}'")
    tensors = load_file(str(path))
    if tensors["weight"].shape != spalm.gate.weight.shape:
        raise AdapterError(f"{Path(path).name} gates {tensors['weight'].shape[0]}-wide hidden states; this model's "
                           f"are {spalm.gate.weight.shape[0]}")
    with torch.no_grad():
        spalm.gate.weight.copy_(tensors["weight"].to(spalm.gate.weight))
        spalm.gate.bias.copy_(tensors["bias"][0].to(spalm.gate.bias))
    return info


def train_spalm_gate(
    spalm: Spalm,
    settings: SpalmTrainingSettings = SpalmTrainingSettings(),
    checkpoint: Path | None = None,
    on_step: Callable[[TrainingStep], None] | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GateTrainingResult:
    model, datastore = spalm.model, spalm.datastore
    length = max(2, min(settings.context_length, model.max_positions))
    tokens = np.fromfile(datastore.folder / "tokens.i32", dtype=np.int32).astype(np.int64)
    documents = sorted(datastore.documents.values(), key=lambda d: d.id)
    windows = [(d, start) for d in documents for start in range(0, d.token_count - 1, length)]
    per_update = max(1, settings.windows_per_step)
    optimiser = torch.optim.Adam(spalm.gate.parameters(), lr=settings.learning_rate)
    gates: list[float] = []  # mean gate of each window since the last update

    def mean_gate() -> list[float]:
        value = [sum(gates) / len(gates)] if gates else []
        gates.clear()
        return value

    save = None if checkpoint is None else (lambda summary: save_spalm_adapter(checkpoint, spalm, summary))
    loop = UpdateLoop(optimiser, per_update, math.ceil(len(windows) * settings.epochs / per_update), mean_gate,
                      on_step, on_progress, settings.checkpoint_every, save)
    with frozen(model.model):
        for _epoch in range(settings.epochs):
            for document, start in windows:
                if should_stop is not None and should_stop():
                    raise Cancelled("gate training cancelled")
                end = min(start + length, document.token_count - 1)
                first = document.token_start
                ids = torch.from_numpy(tokens[first + start: first + end])[None].to(model.device)
                targets = torch.from_numpy(tokens[first + start + 1: first + end + 1])
                with torch.no_grad(), model.capture_keys() as keys, capture_output_input(model) as hidden:
                    model.forward(ids)
                own = document.entry_start + start + np.arange(end - start)  # each target's own entry
                retrieval = spalm.knn.retrieve(keys[-1][0], k=spalm.settings.k + 1)  # one more: itself goes
                kept = without_self(retrieval, own, spalm.settings.k)
                with torch.enable_grad():
                    step = spalm.combine_retrieved(hidden[-1][0], kept)
                    gates.append(float(step.gates.detach().mean()))
                    loop.add(-step.log_p_final.gather(1, targets[:, None]).mean())
        return loop.finish()


def spalm_with_gate(model, datastore, settings, adapter: Path | None = None) -> Spalm:
    """SPALM with a trained gate: `adapter` if given, the demo model's shipped gate for the demo
    model, otherwise the initial gate (g = 0.9)."""
    from ..home import DEMO_SPALM_GATE
    from ..models import DEMO_SPEC

    spalm = Spalm(model, datastore, settings)
    if adapter is None and model.spec == DEMO_SPEC and DEMO_SPALM_GATE.exists():
        adapter = DEMO_SPALM_GATE
    if adapter is not None:
        spalm.adapter = load_spalm_adapter(adapter, spalm)
    return spalm

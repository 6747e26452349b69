"""Small trained parts saved apart from the model: the Memorizing Transformer's gate biases and,
when the model was fine-tuned with its memory, the trained layers' weights.

An adapter is one safetensors file: the tensors, plus metadata (kind, the base model's name and
fingerprint, the layer and settings it was trained with). Loading checks it belongs to the model.

A Memorizing Transformer adapter holds `gate_bias` (one per head of the memory layer) and, if the
model was fine-tuned with its memory (`training/memory_finetuning.py`), one `delta.<parameter>`
tensor per trained parameter (e.g. `delta.model.layers.3.mlp.up_proj.weight`): trained minus base
weight, in float16 (a delta is small, so float16 keeps it to ~1e-3 of itself, far below the
weights' own scale). Loading adds them to the base weights in copies the memory's passes use
(`MemorizingRetrofit.apply_weight_deltas`); the model's own weights are never written. A delta
only means something against the weights it was trained from, hence the fingerprint check.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..home import DEMO_MEMTRF_ADAPTER
from ..mechanisms.memorizing import MemorizingError, MemorizingRetrofit, MemorizingSettings, default_layer, layer_count
from ..models import DEMO_SPEC, LoadedModel

MEMTRF = "memtrf"
DELTA = "delta."  # prefix of the trained weights' tensors in an adapter file


class AdapterError(Exception):
    """An adapter file that cannot be used; str() is a one-line reason."""


@dataclass(frozen=True)
class AdapterInfo:
    kind: str
    model_name: str
    model_fingerprint: str
    details: dict  # layer, mode, k, memory_size, heads, training summary


def save_memorizing_adapter(path: Path, retrofit: MemorizingRetrofit, training: dict | None = None) -> Path:
    """Write the retrofit's gate biases and, if it has fine-tuned layers, their weight deltas (float16);
    written to a temporary name first, so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    s = retrofit.settings
    tensors = {"gate_bias": retrofit.gate_bias.detach().float().cpu().contiguous()}
    tensors.update({DELTA + name: delta.half().contiguous() for name, delta in retrofit.weight_deltas().items()})
    details = {"layer": retrofit.layer, "mode": s.mode, "k": s.k, "memory_size": s.memory_size,
               "heads": retrofit.heads, "fine_tuned": retrofit.tuned_modules(), "training": training or {}}
    metadata = {"kind": MEMTRF, "model_name": retrofit.loaded.name,
                "model_fingerprint": retrofit.loaded.model_fingerprint, "details": json.dumps(details)}
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    partial.replace(path)
    return path


def read_adapter_info(path: Path) -> AdapterInfo:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise AdapterError(f"cannot read adapter {path}: {exc}") from exc
    if "kind" not in meta:
        raise AdapterError(f"{path} is not a kNN Explorer adapter (no 'kind' in its metadata)")
    return AdapterInfo(meta["kind"], meta.get("model_name", "?"), meta.get("model_fingerprint", ""),
                       json.loads(meta.get("details", "{}")))


def load_memorizing_adapter(path: Path, retrofit: MemorizingRetrofit) -> AdapterInfo:
    """Put the adapter's gate biases into `retrofit`, after checking it was trained for this model and layer."""
    info = read_adapter_info(path)
    if info.kind != MEMTRF:
        raise AdapterError(f"{Path(path).name} is a {info.kind} adapter, not a Memorizing Transformer one")
    if info.model_fingerprint != retrofit.loaded.model_fingerprint:
        raise AdapterError(f"{Path(path).name} was trained for model '{info.model_name}', not "
                           f"'{retrofit.loaded.name}' (weights differ)")
    if info.details.get("layer") != retrofit.layer:
        raise AdapterError(f"{Path(path).name} gates layer {info.details.get('layer')}, the memory is in layer "
                           f"{retrofit.layer}")
    tensors = load_file(str(path))
    if "gate_bias" not in tensors:
        raise AdapterError(f"{Path(path).name} has no gates (no 'gate_bias' tensor)")
    bias = tensors["gate_bias"]
    if bias.shape != retrofit.gate_bias.shape:
        raise AdapterError(f"{Path(path).name} has {bias.shape[0]} gates; this layer has {retrofit.heads} heads")
    deltas = {name[len(DELTA):]: t for name, t in tensors.items() if name.startswith(DELTA)}
    if deltas:
        try:
            retrofit.apply_weight_deltas(deltas)
        except MemorizingError as exc:
            raise AdapterError(f"{Path(path).name} does not fit this model: {exc}") from None
    with torch.no_grad():
        retrofit.gate_bias.copy_(bias.to(retrofit.gate_bias))
    return info


@dataclass(frozen=True)
class MemoryLayerPlan:
    """Which layer a memory with these settings goes into, why, and which gates it loads."""

    layer: int
    layers: int  # the model's layer count
    reason: str  # "chosen" | "trained gates" | "¾ of the depth"
    adapter: Path | None  # the gates loaded (the demo's shipped ones included); None: untrained

    def describe(self) -> str:
        """E.g. "layer 0 (from the trained gates)"."""
        why = {"chosen": "chosen", "trained gates": "from the trained gates"}.get(self.reason, self.reason)
        return f"layer {self.layer} ({why})"


def _trained_layer(adapter: Path) -> int | None:
    try:
        layer = read_adapter_info(adapter).details.get("layer")
    except AdapterError:  # unreadable: loading it says why
        return None
    return layer if isinstance(layer, int) else None


def plan_memory_layer(model: LoadedModel, settings: MemorizingSettings, adapter: Path | None = None) -> MemoryLayerPlan:
    """Where the memory goes. A chosen layer is used as it is; with none chosen ("auto"), gated
    gates decide — the adapter's, or for the demo model the gates shipped with it — and otherwise
    the layer at ¾ of the depth. The demo's gates are loaded whenever they fit the chosen layer.
    A `MemorizingError` for a model without a memory layer."""
    layers = layer_count(model)
    gated = settings.mode == "gated"
    if (gated and adapter is None and model.spec == DEMO_SPEC and DEMO_MEMTRF_ADAPTER.exists()
            and settings.layer in (None, _trained_layer(DEMO_MEMTRF_ADAPTER))):
        adapter = DEMO_MEMTRF_ADAPTER
    if not gated:
        adapter = None  # joint mode has no gates
    if settings.layer is not None:
        return MemoryLayerPlan(settings.layer, layers, "chosen", adapter)
    trained = None if adapter is None else _trained_layer(adapter)
    if trained is not None and 0 <= trained < layers:
        return MemoryLayerPlan(trained, layers, "trained gates", adapter)
    return MemoryLayerPlan(default_layer(layers), layers, "¾ of the depth", adapter)


def memorizing_with_gates(model: LoadedModel, settings: MemorizingSettings,
                          adapter: Path | None = None) -> MemorizingRetrofit:
    """A retrofit in the layer `plan_memory_layer` picks, with trained gates: `adapter` if given,
    for the demo model the gates shipped with it (in the layer they were trained for, unless
    another layer is chosen); otherwise untrained gates (the model unchanged)."""
    plan = plan_memory_layer(model, settings, adapter)
    adapter = plan.adapter
    settings = replace(settings, layer=plan.layer)
    retrofit = MemorizingRetrofit(model, settings)
    if settings.mode != "gated":
        return retrofit
    if adapter is not None:
        try:
            retrofit.adapter = load_memorizing_adapter(adapter, retrofit)
        except AdapterError:
            retrofit.remove()
            raise
    return retrofit

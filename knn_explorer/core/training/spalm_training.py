"""Training SPALM as the paper does: the gate (w_g, b) and the word embeddings W together, with the
datastore's keys frozen and Transformer-XL's short-term memory carried from segment to segment.

Data. The datastore's own documents (its `tokens.i32`), read as Transformer-XL reads a corpus: the
token stream cut into B equal parallel streams (`streams`), each read in consecutive segments of
`segment` tokens; each segment runs after the cached states of the tokens before it in its stream
(`ShortTermMemory`, at most `memory` tokens, detached). One update per B segments.

Retrieval. Every target token is itself a datastore entry — its own nearest neighbour at distance
0, whose next token is the answer — and the rest of its document often repeats its phrase, which
held-out text never finds. So by default (`leave_out="document"`) each position keeps the k
nearest entries of *other* documents (k × `candidates` searched); `leave_out="entry"` drops only
the position's own entry (what the gate-only training did). The query is the kNN key of the model
as it is being trained (W changes the input embeddings, hence the keys); the datastore keeps the
keys it was built with (the paper's frozen keys).

Trained. The gate and the model's own embedding parameter(s) — one matrix when input and output
embeddings are tied (the paper's W), both when they are not; everything else stays frozen. The
model's tensors are restored bit for bit at the end; SPALM keeps W as a delta (`Spalm.
set_trained_embeddings`), saved in the adapter in float16 (`save_spalm_adapter`). A learning
rate of 0 for W trains the gate alone (the old gate-only adapters, still loadable).

The loss is the mean −log p_SPALM(y) over the segments' targets (a target across a document
boundary is not a datastore entry and is not scored).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .adapters import AdapterError, AdapterInfo, read_adapter_info
from ..datastore.folder import Datastore
from ..mechanisms.knnlm import Retrieval, neighbour_weights
from ..mechanisms.short_term_memory import ShortTermMemory
from ..mechanisms.spalm import Spalm
from ..progress import Cancelled, ProgressCallback
from .update_loop import GateTrainingResult, TrainingStep, UpdateLoop, frozen

SPALM = "spalm"
LEAVE_OUT = ("document", "entry")


@dataclass(frozen=True)
class SpalmTrainingSettings:
    epochs: int = 1
    segment: int = 128  # tokens per segment (Transformer-XL's segment length)
    memory: int | None = None  # tokens of earlier segments cached (None: one segment; bounded by the positions)
    learning_rate: float = 0.01  # the gate's (Adam)
    embedding_learning_rate: float = 3e-3  # W's (Adam); 0 trains the gate alone
    streams: int = 4  # parallel streams: segments per update
    leave_out: str = "document"  # or "entry" (see the module docstring)
    candidates: int = 4  # leave_out="document": k × this many searched to keep k from other documents
    checkpoint_every: int = 50
    seed: int = 0
    max_updates: int | None = None  # stop (as if done) after this many updates
    warmup: float = 0.05  # share of the updates over which the learning rates rise linearly; then cosine to 0

    def __post_init__(self):
        if self.leave_out not in LEAVE_OUT:
            raise ValueError(f"leave_out is one of {', '.join(LEAVE_OUT)}, not {self.leave_out!r}")
        if self.segment < 1 or self.streams < 1 or self.epochs < 1 or self.candidates < 1:
            raise ValueError("segment, streams, epochs and candidates must be at least 1")

    def memory_tokens(self) -> int:
        return self.segment if self.memory is None else self.memory


def without_self(retrieval: Retrieval, own: np.ndarray, k: int, temperature: float = 1.0) -> Retrieval:
    """Keep each row's k nearest neighbours other than entry `own[row]`."""
    is_self = retrieval.ids == own[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # self (if found) moves past the k kept
    ids = np.take_along_axis(retrieval.ids, order, axis=1)
    distances = np.take_along_axis(retrieval.distances, order, axis=1)
    values = torch.from_numpy(np.take_along_axis(retrieval.values.numpy(), order, axis=1))
    weights = neighbour_weights(torch.from_numpy(distances).double(), temperature)
    return Retrieval(ids=ids, distances=distances, values=values, weights=weights)


def without_own_documents(retrieval: Retrieval, own_documents: np.ndarray, entry_documents: np.ndarray, k: int,
                          temperature: float = 1.0) -> Retrieval:
    """Keep each row's k nearest neighbours that are not in document `own_documents[row]` (fewer if
    the search found fewer: the rest get id −1, distance +inf, token −1)."""
    other = (retrieval.ids >= 0) & (entry_documents[np.maximum(retrieval.ids, 0)] != own_documents[:, None])
    order = np.argsort(~other, axis=1, kind="stable")[:, :k]  # other documents' first, nearest first
    kept = np.take_along_axis(other, order, axis=1)
    ids = np.where(kept, np.take_along_axis(retrieval.ids, order, axis=1), -1)
    distances = np.where(kept, np.take_along_axis(retrieval.distances, order, axis=1), np.inf).astype(np.float32)
    values = torch.from_numpy(np.where(kept, np.take_along_axis(retrieval.values.numpy(), order, axis=1), -1))
    return Retrieval(ids=ids, distances=distances, values=values,
                     weights=neighbour_weights(torch.from_numpy(distances).double(), temperature))


@dataclass
class TokenStream:
    """A datastore's documents as one token stream: per position p, the token, the entry whose
    context ends at p (its next token is p + 1; −1 at a document's last token) and p's document."""

    tokens: np.ndarray  # int64
    entries: np.ndarray  # int64
    documents: np.ndarray  # int64

    @classmethod
    def of(cls, datastore: Datastore) -> "TokenStream":
        datastore.require_entries_in_document_order()
        stored = np.fromfile(datastore.folder / "tokens.i32", dtype=np.int32).astype(np.int64)
        tokens, entries, documents = [], [], []
        for d in sorted(datastore.documents.values(), key=lambda d: d.id):
            if d.token_count < 1:
                continue
            tokens.append(stored[d.token_start: d.token_start + d.token_count])
            own = np.full(d.token_count, -1, dtype=np.int64)
            own[:-1] = d.entry_start + np.arange(d.token_count - 1)
            entries.append(own)
            documents.append(np.full(d.token_count, d.id, dtype=np.int64))
        if not tokens:
            raise ValueError(f"datastore '{datastore.name}' has no tokens to learn from")
        return cls(np.concatenate(tokens), np.concatenate(entries), np.concatenate(documents))

    def streams(self, count: int) -> "TokenStream":
        """Cut into `count` equal contiguous streams (rows; the remainder is dropped), as Transformer-XL batches a corpus."""
        width = len(self.tokens) // max(1, count)
        if width < 2:
            count, width = 1, len(self.tokens)
        cut = count * width
        return TokenStream(*(a[:cut].reshape(count, width) for a in (self.tokens, self.entries, self.documents)))


def train_spalm(
    spalm: Spalm,
    settings: SpalmTrainingSettings = SpalmTrainingSettings(),
    checkpoint: Path | None = None,
    on_step: Callable[[TrainingStep], None] | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GateTrainingResult:
    """Train SPALM's gate and (unless its learning rate is 0) its W on its datastore's own documents;
    afterwards the model is exactly as before and `spalm` holds the trained W as a delta."""
    model, datastore = spalm.model, spalm.datastore
    torch.manual_seed(settings.seed)
    streams = TokenStream.of(datastore).streams(settings.streams)
    segment = max(1, min(settings.segment, model.max_positions))
    width = streams.tokens.shape[1]
    starts = list(range(0, width - 1, segment))  # each segment's targets are its inputs' next tokens
    entry_documents = datastore.positions[:, 0]
    k = spalm.settings.k
    train_w = settings.embedding_learning_rate > 0
    embedding_parameters = [spalm.embeddings.weight] + ([] if spalm.tied else [spalm.output.weight])
    own = [p.detach().clone() for p in embedding_parameters]  # the model's: restored at the end
    if train_w and spalm.has_trained_embeddings:  # go on from the W it already has
        with torch.no_grad():
            for parameter, trained in zip(embedding_parameters, (spalm.trained_input, spalm.trained_output)):
                parameter.copy_(trained)
    spalm.set_trained_embeddings(None)  # while training, W is the model's own parameter
    groups = [{"params": list(spalm.gate.parameters()), "lr": settings.learning_rate}]
    if train_w:
        groups.append({"params": embedding_parameters, "lr": settings.embedding_learning_rate})
    optimiser = torch.optim.Adam(groups)
    gates: list[float] = []

    def mean_gate() -> list[float]:
        value = [sum(gates) / len(gates)] if gates else []
        gates.clear()
        return value

    def deltas() -> list[torch.Tensor] | None:
        return [p.detach() - base for p, base in zip(embedding_parameters, own)] if train_w else None

    def save(summary: dict) -> None:
        if checkpoint is not None:
            save_spalm_adapter(checkpoint, spalm, {**summary, "settings": asdict(settings)}, deltas())

    updates = len(starts) * settings.epochs
    if settings.max_updates is not None:
        updates = min(updates, settings.max_updates)
    loop = UpdateLoop(optimiser, 1, updates, mean_gate, on_step, on_progress, settings.checkpoint_every, save)
    rise = max(1, round(settings.warmup * updates))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda done: min(
        (done + 1) / rise, 0.5 * (1 + math.cos(math.pi * min(1.0, max(0, done + 1 - rise) / max(1, updates - rise))))))
    memory = ShortTermMemory(model, settings.memory_tokens())
    was_training = model.model.training
    model.model.eval()  # no dropout: deterministic
    try:
        with frozen(model.model):
            for parameter in embedding_parameters if train_w else []:
                parameter.requires_grad_(True)
            for start in [start for _epoch in range(settings.epochs) for start in starts][:updates]:
                if start == 0:
                    memory.reset()  # each epoch reads the streams from their start
                if should_stop is not None and should_stop():
                    raise Cancelled("SPALM training cancelled")
                end = min(start + segment, width - 1)
                ids = torch.from_numpy(streams.tokens[:, start:end]).to(model.device)
                targets = torch.from_numpy(streams.tokens[:, start + 1:end + 1]).reshape(-1)
                scored = torch.from_numpy(streams.entries[:, start:end] >= 0).reshape(-1)
                with torch.enable_grad(), model.capture_keys() as keys:
                    hidden = memory.forward(ids).last_hidden_state
                queries = keys[-1].reshape(-1, keys[-1].shape[-1])
                retrieval = _retrieve(spalm, queries, streams, start, end, entry_documents, k, settings)
                with torch.enable_grad():
                    mixed = spalm.mix(hidden.reshape(-1, hidden.shape[-1]), retrieval)
                    gates.append(float(mixed.gates.detach().mean()))
                    log_p = torch.log_softmax(mixed.logits().float(), dim=-1)
                    picked = log_p.gather(1, targets.to(log_p.device)[:, None])[:, 0]
                    loss = -picked[scored.to(log_p.device)].mean() if bool(scored.any()) else picked.sum() * 0
                    loop.add(loss)  # one update per segment of the streams
                schedule.step()
            result = loop.finish()
        trained = deltas()
    finally:
        with torch.no_grad():
            for parameter, base in zip(embedding_parameters, own):
                parameter.copy_(base)  # the model's own W, bit for bit
        model.model.train(was_training)
    if trained is not None:
        spalm.set_trained_embeddings(trained[0], trained[1] if len(trained) > 1 else None)
    return result


def _retrieve(spalm: Spalm, queries: torch.Tensor, streams: TokenStream, start: int, end: int,
              entry_documents: np.ndarray, k: int, settings: SpalmTrainingSettings) -> Retrieval:
    """The k neighbours of each position of the segment, without what held-out text would not find."""
    if settings.leave_out == "document":
        found = spalm.knn.retrieve(queries, k=k * settings.candidates)
        return without_own_documents(found, streams.documents[:, start:end].reshape(-1), entry_documents, k)
    return without_self(spalm.knn.retrieve(queries, k=k + 1), streams.entries[:, start:end].reshape(-1), k)


# ---- the adapter file ------------------------------------------------------------------------------
def save_spalm_adapter(path: Path, spalm: Spalm, training: dict | None = None,
                       deltas: list[torch.Tensor] | None = None) -> Path:
    """The gate, and SPALM's W as float16 deltas against the model's (`deltas`, default: the ones
    `spalm` holds; none: a gate-only adapter). Written to a temporary name first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if deltas is None and spalm.has_trained_embeddings:
        deltas = [spalm.input_delta] + ([] if spalm.tied else [spalm.output_delta])
    tensors = {"weight": spalm.gate.weight.detach().float().cpu().contiguous(),
               "bias": spalm.gate.bias.detach().float().cpu().reshape(1).contiguous()}
    trained = "gate"
    if deltas is not None:
        tensors["embedding_delta"] = deltas[0].detach().half().cpu().contiguous()
        if len(deltas) > 1 and deltas[1] is not None:
            tensors["output_delta"] = deltas[1].detach().half().cpu().contiguous()
        trained = "gate and word embeddings"
    metadata = {"kind": SPALM, "model_name": spalm.model.name, "model_fingerprint": spalm.model.model_fingerprint,
                "details": json.dumps({"datastore": spalm.datastore.name, "k": spalm.settings.k, "trained": trained,
                                       "tied": spalm.tied, "training": training or {}})}
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    partial.replace(path)
    return path


def load_spalm_adapter(path: Path, spalm: Spalm) -> AdapterInfo:
    """Put the adapter's gate (and W, if it has one) into `spalm`, after checking it was made for
    this model. Gate-only adapters (from before W was trained) load as they are."""
    name = Path(path).name
    info = read_adapter_info(path)
    if info.kind != SPALM:
        raise AdapterError(f"{name} is a {info.kind} adapter, not a SPALM one")
    if info.model_fingerprint != spalm.model.model_fingerprint:
        raise AdapterError(f"{name} was trained for model '{info.model_name}', not '{spalm.model.name}'")
    tensors = load_file(str(path))
    if "weight" not in tensors or "bias" not in tensors:
        raise AdapterError(f"{name} has no SPALM gate in it")
    if tensors["weight"].shape != spalm.gate.weight.shape:
        raise AdapterError(f"{name} gates {tensors['weight'].shape[0]}-wide hidden states; this model's "
                           f"are {spalm.gate.weight.shape[0]}")
    delta, output_delta = tensors.get("embedding_delta"), tensors.get("output_delta")
    if delta is not None and delta.shape != spalm.embeddings.weight.shape:
        raise AdapterError(f"{name} holds word embeddings of shape {tuple(delta.shape)}; this model's are "
                           f"{tuple(spalm.embeddings.weight.shape)}")
    if output_delta is not None and (spalm.tied or output_delta.shape != spalm.output.weight.shape):
        raise AdapterError(f"{name} holds output embeddings this model does not have apart from its input ones")
    with torch.no_grad():
        spalm.gate.weight.copy_(tensors["weight"].to(spalm.gate.weight))
        spalm.gate.bias.copy_(tensors["bias"][0].to(spalm.gate.bias))
    spalm.set_trained_embeddings(delta, output_delta)
    return info


def spalm_with_adapter(model, datastore, settings, adapter: Path | None = None) -> Spalm:
    """SPALM with trained parameters: `adapter` if given, the demo model's shipped adapter for the
    demo model, otherwise the initial gate (g = 0.9) and the model's own W."""
    from ..home import DEMO_SPALM_ADAPTER
    from ..models import DEMO_SPEC

    spalm = Spalm(model, datastore, settings)
    if adapter is None and model.spec == DEMO_SPEC and DEMO_SPALM_ADAPTER.exists():
        adapter = DEMO_SPALM_ADAPTER
    if adapter is not None:
        spalm.adapter = load_spalm_adapter(adapter, spalm)
    return spalm

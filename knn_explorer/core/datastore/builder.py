"""Build a datastore folder: documents -> tokens -> keys (model forward) -> FAISS index.

Three phases, each restartable:
  reading   documents are read and tokenized a piece at a time (a text file is never held whole);
            tokens, values and positions are appended to disk.
            Known before any model forward: values are next tokens, positions their offsets.
  encoding  sliding windows over each document's tokens run through the model in batches; the
            kNN key of every scored position is written into keys.f16 (plain writes, no mmap).
            progress.json records how many windows are safely on disk, so a killed build resumes.
  indexing  the FAISS index is trained on a sample and filled in chunks, then renamed into place.
The manifest's state moves reading -> encoding -> indexing -> complete; only the last is usable.
Memory stays flat as the corpus grows: everything per-entry lives in files, not lists.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import faiss
import numpy as np
import torch

from . import documents as docs
from .folder import (COMPLETE, FORMAT_VERSION, DatastoreError, KeyFile, read_documents, read_manifest,
                     write_json_atomic)
from .compress_phase import compress_folder
from .compression import Compression
from .index import IndexSpec, build_index, choose_index
from ..models import LoadedModel
from ..progress import Cancelled, PhaseMeter, ProgressCallback
from .tokenizing import tokenize_pieces
from ..windows import sliding_windows

CHECKPOINT_SECONDS = 2.0


@dataclass(frozen=True)
class BuildParameters:
    context_length: int = 256  # tokens per window (capped by the model's maximum)
    stride: int = 128  # window step; every position after the first window sees >= length - stride context
    batch_size: int = 8  # windows per forward pass
    index: str = "auto"  # auto | flat | ivfpq | hnsw
    device: str = "cpu"  # where the index is trained (the model's device is where it was loaded)
    max_file_bytes: int = docs.DEFAULT_MAX_BYTES
    pca_dim: int = 0  # keys reduced to this many dimensions by PCA before indexing (0: kept)
    prune_k: int = 0  # entries merged greedily with their k nearest same-token neighbours (0: not pruned)
    cluster: str = ""  # "" encodes in this process; "local" or a Ray address: on that cluster (core/cluster)
    shards: int = 1  # cluster builds: key shards, each searched by its own retrieval actor
    encoders: int = 0  # cluster builds: model actors (0: one per GPU, or one per CPU without GPUs)
    storage: str = ""  # cluster builds: the folder every node reaches, for the datastore (default: data home)

    @property
    def compression(self) -> Compression:
        return Compression(pca_dim=self.pca_dim, prune_k=self.prune_k)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class BuildReport:
    folder: Path
    manifest: dict
    documents: list[dict]
    skipped: list[dict]
    seconds: dict[str, float] = field(default_factory=dict)
    resumed_from: str | None = None


@dataclass(frozen=True)
class Window:
    doc_index: int
    begin: int  # first token of the window (document-relative)
    end: int  # one past the last token
    first_target: int  # first token whose prediction this window scores


class DatastoreBuilder:
    def __init__(
        self,
        folder: Path,
        name: str,
        model: LoadedModel,
        sources: list[str | Path],
        params: BuildParameters = BuildParameters(),
        on_progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        self.folder = Path(folder)
        self.name = name
        self.model = model
        self.sources = [str(Path(s).expanduser().resolve()) for s in sources]
        self.params = params
        self.on_progress = on_progress
        self.should_stop = should_stop or (lambda: False)
        self.context_length = min(params.context_length, model.max_positions)
        self.stride = max(1, min(params.stride, self.context_length - 1))

    # ---- orchestration -------------------------------------------------------------------
    def run(self) -> BuildReport:
        self.params.compression.check(self.model.key_site.dim, entries=2**62)  # refuse before encoding
        self.folder.mkdir(parents=True, exist_ok=True)
        seconds: dict[str, float] = {}
        resumed_from = self._resumable_state()
        if resumed_from is None:
            started = time.monotonic()
            self._read_documents()
            seconds["reading"] = time.monotonic() - started
        manifest = read_manifest(self.folder)
        if manifest["state"] == "encoding":
            started = time.monotonic()
            self._encode(manifest)
            manifest["state"] = "compressing" if self.params.compression else "indexing"
            write_json_atomic(self.folder / "manifest.json", manifest)
            seconds["encoding"] = time.monotonic() - started
        if manifest["state"] in ("compressing", "committing"):
            started = time.monotonic()
            manifest = compress_folder(self.folder, manifest, self.params.compression, self.on_progress,
                                       self.should_stop)
            seconds["compressing"] = time.monotonic() - started
        if manifest["state"] == "indexing":
            started = time.monotonic()
            self._index(manifest)
            seconds["indexing"] = time.monotonic() - started
        manifest = read_manifest(self.folder)
        return BuildReport(
            folder=self.folder,
            manifest=manifest,
            documents=[asdict(d) for d in read_documents(self.folder)],
            skipped=json.loads((self.folder / "skipped.json").read_text(encoding="utf-8")),
            seconds=seconds,
            resumed_from=resumed_from,
        )

    def _resumable_state(self) -> str | None:
        """The state a previous, interrupted build of the same thing reached, or None to start over."""
        try:
            manifest = read_manifest(self.folder)
        except DatastoreError:
            return None
        same = (
            manifest.get("model", {}).get("fingerprint") == self.model.model_fingerprint
            and manifest.get("tokenizer_fingerprint") == self.model.tokenizer_fingerprint
            and manifest.get("sources") == self._source_texts()
            and manifest.get("context_length") == self.context_length
            and manifest.get("stride") == self.stride
            and _compression_of(manifest) == self.params.compression
        )
        if same and manifest.get("state") in ("encoding", "compressing", "committing", "indexing", COMPLETE):
            return manifest["state"]
        return None

    def _check_stop(self) -> None:
        if self.should_stop():
            raise Cancelled("build cancelled")

    # ---- phase 1: reading ----------------------------------------------------------------
    def _read_documents(self) -> None:
        for stale in ("texts", "tokens.i32", "values.i32", "positions.i64", "keys.f16", "index.faiss", "progress.json"):
            path = self.folder / stale
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        manifest = self._base_manifest()
        manifest["state"] = "reading"
        write_json_atomic(self.folder / "manifest.json", manifest)

        candidates, skipped = docs.discover(self.sources)
        # Paths as text: file names need not be UTF-8, and these files are strict UTF-8 JSON.
        skipped_rows = [{"path": docs.path_text(s.path), "reason": s.reason} for s in skipped]
        (self.folder / "texts").mkdir()
        meter = PhaseMeter("reading", len(candidates), "files", self.on_progress)
        token_total = entry_total = 0
        with open(self.folder / "tokens.i32", "wb") as tokens_out, \
             open(self.folder / "values.i32", "wb") as values_out, \
             open(self.folder / "positions.i64", "wb") as positions_out, \
             open(self.folder / "documents.jsonl", "w", encoding="utf-8") as documents_out:
            outputs = (tokens_out, values_out, positions_out)
            for number, path in enumerate(candidates):
                self._check_stop()
                meter.update(number)
                doc_id = number
                text_path = self.folder / "texts" / f"{doc_id}.txt"
                marks = [out.tell() for out in outputs]
                try:
                    source = docs.open_document(path, self.params.max_file_bytes)
                    token_count, chars = self._append_document(doc_id, source, text_path, *outputs)
                    if token_count < 2:
                        raise docs.DocumentError("too short (fewer than 2 tokens)")
                except docs.DocumentError as exc:
                    # The text streams through: a document found bad halfway takes back what it wrote.
                    for out, mark in zip(outputs, marks):
                        out.seek(mark)
                        out.truncate()
                    text_path.unlink(missing_ok=True)
                    skipped_rows.append({"path": docs.path_text(path), "reason": exc.reason})
                    continue
                row = {
                    "id": doc_id, "path": docs.path_text(source.path), "sha256": source.sha256, "size": source.size,
                    "mtime": source.mtime, "kind": source.kind, "chars": chars,
                    "token_start": token_total, "token_count": token_count, "entry_start": entry_total,
                }
                documents_out.write(json.dumps(row, ensure_ascii=False) + "\n")
                token_total += token_count
                entry_total += token_count - 1
        meter.update(len(candidates), force=True)
        write_json_atomic(self.folder / "skipped.json", skipped_rows)
        if entry_total == 0:
            raise DatastoreError("no usable text in the given documents (every file was skipped or too short)")
        manifest.update(state="encoding", entries=entry_total, tokens=token_total)
        write_json_atomic(self.folder / "manifest.json", manifest)

    def _append_document(self, doc_id: int, source: docs.DocumentSource, text_path: Path,
                         tokens_out, values_out, positions_out) -> tuple[int, int]:
        """Stream one document into texts/<id>.txt and the token and entry files, a piece at a time
        (the whole text is never one string); returns (tokens, characters)."""
        tokens = chars = 0
        with open(text_path, "w", encoding="utf-8", newline="") as text_out:

            def written(pieces):
                nonlocal chars
                for piece in pieces:
                    text_out.write(piece)
                    chars += len(piece)
                    yield piece

            for ids, starts in tokenize_pieces(self.model.tokenizer, written(source.pieces())):
                self._check_stop()
                if not len(ids):
                    continue
                tokens_out.write(ids.astype(np.int32).tobytes())
                # Entry t predicts token t from the tokens before it: the document's first token has none.
                first = 1 if tokens == 0 else 0
                values_out.write(ids[first:].astype(np.int32).tobytes())
                positions = np.stack([np.full(len(ids) - first, doc_id, dtype=np.int64), starts[first:]], axis=1)
                positions_out.write(positions.tobytes())
                tokens += len(ids)
        return tokens, chars

    def _source_texts(self) -> list[str]:
        return [docs.path_text(s) for s in self.sources]

    def _base_manifest(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "model": {"name": self.model.name, "fingerprint": self.model.model_fingerprint},
            "tokenizer_fingerprint": self.model.tokenizer_fingerprint,
            "key_site": {"module": self.model.key_site.module_path, "description": self.model.key_site.description},
            "dim": self.model.key_site.dim,
            "sources": self._source_texts(),
            "context_length": self.context_length,
            "stride": self.stride,
            "parameters": self.params.to_json(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    # ---- phase 2: encoding ---------------------------------------------------------------
    def windows(self, documents: list) -> Iterator[Window]:
        """Every document's sliding windows, in a fixed order (progress counts them)."""
        return document_windows(documents, self.context_length, self.stride)

    def _encode(self, manifest: dict) -> None:
        documents = read_documents(self.folder)
        entries, dim = manifest["entries"], manifest["dim"]
        tokens = np.fromfile(self.folder / "tokens.i32", dtype=np.int32)
        keys_path = self.folder / "keys.f16"
        keys = KeyFile(keys_path, entries, dim) if keys_path.exists() else KeyFile.create(keys_path, entries, dim)
        progress = _read_progress(self.folder)
        windows_done, entries_done = progress["windows"], progress["entries"]

        meter = PhaseMeter("encoding", entries, "tokens", self.on_progress, start_done=entries_done)
        batch: list[Window] = []
        last_checkpoint = time.monotonic()
        for number, window in enumerate(self.windows(documents)):
            if number < windows_done:
                continue
            batch.append(window)
            if len(batch) < self.params.batch_size:
                continue
            entries_done += self._encode_batch(batch, documents, tokens, keys)
            windows_done = number + 1
            batch = []
            meter.update(entries_done)
            if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                _checkpoint(self.folder, windows_done, entries_done)
                last_checkpoint = time.monotonic()
            self._check_stop()
        if batch:
            entries_done += self._encode_batch(batch, documents, tokens, keys)
        _checkpoint(self.folder, windows_done + len(batch), entries_done)
        meter.update(entries_done, force=True)

    def _encode_batch(self, batch: list[Window], documents, tokens: np.ndarray, keys: KeyFile) -> int:
        return encode_window_batch(self.model, batch, documents, tokens, keys.write)

    # ---- phase 3: indexing ---------------------------------------------------------------
    def _index(self, manifest: dict) -> None:
        index_folder(self.folder, manifest, self.params.index, self.params.device, self.on_progress, self.should_stop)


def index_folder(folder: Path, manifest: dict, kind: str, device: str = "cpu",
                 on_progress: ProgressCallback | None = None, should_stop: Callable[[], bool] | None = None,
                 spec: IndexSpec | None = None, trained: faiss.Index | None = None) -> None:
    """Index the folder's keys (phase 3) and mark the datastore complete. `spec` and `trained`
    (an empty index trained elsewhere) come from a sharded build, where all shards share them."""
    entries, dim = manifest["entries"], manifest["dim"]
    spec = spec or choose_index(kind, entries, dim)
    keys = KeyFile(folder / "keys.f16", entries, dim)
    meter = PhaseMeter("indexing", entries, "keys", on_progress)
    meter.update(0, force=True)
    if spec.kind != "flat":  # flat datastores are searched exactly on keys.f16: no index file
        index = build_index(keys, spec, device=device, on_progress=lambda done, _total: meter.update(done),
                            should_stop=should_stop, trained=trained)
        tmp = folder / "index.faiss.tmp"
        faiss.write_index(index, str(tmp))
        os.replace(tmp, folder / "index.faiss")
    meter.update(entries, force=True)
    manifest.update(state=COMPLETE, index=spec.to_json(), index_description=spec.describe())
    write_json_atomic(folder / "manifest.json", manifest)


def _compression_of(manifest: dict) -> Compression:
    """The compression a build's manifest asked for (none, for builds older than compression)."""
    parameters = manifest.get("parameters") or {}
    return Compression(pca_dim=int(parameters.get("pca_dim", 0)), prune_k=int(parameters.get("prune_k", 0)))


def document_windows(documents: list, context_length: int, stride: int) -> Iterator[Window]:
    """Every document's sliding windows, in a fixed order: a build's entries follow it."""
    for doc_index, doc in enumerate(documents):
        for span in sliding_windows(doc.token_count, context_length, stride):
            yield Window(doc_index, *span)


def window_batches(documents: list, context_length: int, stride: int, batch_size: int) -> Iterator[list[Window]]:
    """The windows in batches of `batch_size` (the last may be smaller), as a fresh build runs them."""
    batch: list[Window] = []
    for window in document_windows(documents, context_length, stride):
        batch.append(window)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def window_entries(window: Window) -> int:
    """How many entries (scored next tokens) a window writes."""
    return window.end - window.first_target


@torch.inference_mode()
def encode_window_batch(model: LoadedModel, batch: list[Window], documents, tokens: np.ndarray,
                        write: Callable[[int, np.ndarray], None]) -> int:
    """Run one padded batch of windows through the model and hand each window's keys to
    `write(first entry, rows)`; returns how many entries were written."""
    longest = max(w.end - w.begin for w in batch)
    pad = model.tokenizer.pad_token_id
    ids = torch.full((len(batch), longest), pad if pad is not None else 0, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, w in enumerate(batch):
        start = documents[w.doc_index].token_start
        ids[row, : w.end - w.begin] = torch.from_numpy(tokens[start + w.begin : start + w.end].astype(np.int64))
        mask[row, : w.end - w.begin] = 1
    hidden = encode_keys(model, ids, mask)
    written = 0
    for row, w in enumerate(batch):
        doc = documents[w.doc_index]
        # The key predicting token t is the representation at position t - 1.
        rows = hidden[row, w.first_target - 1 - w.begin : w.end - 1 - w.begin]
        write(doc.entry_start + w.first_target - 1, rows)
        written += len(rows)
    return written


def encode_keys(model: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Run the model over a padded batch and return the kNN keys (B×L×d float16)."""
    device = model.device
    with model.capture_keys() as captured:
        # The key is captured before the output layer unless it *is* the output layer's input.
        model.forward(ids.to(device), mask.to(device), last_logits_only=model.key_site.module_path != "lm_head")
    return captured[-1].to(torch.float16).cpu().numpy()


def _read_progress(folder: Path) -> dict:
    try:
        return json.loads((folder / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"windows": 0, "entries": 0}


def _checkpoint(folder: Path, windows: int, entries: int) -> None:
    # Keys were written with write(): they are in the OS's page cache, which survives the process
    # being killed, so progress never claims more than a resumed build will find.
    write_json_atomic(folder / "progress.json", {"windows": windows, "entries": entries})

"""The datastore folder format and its reader.

    datastores/<id>/
      manifest.json     model + tokenizer fingerprints, key site, dim, N, index spec, build state
      documents.jsonl   one line per source document (id, path, hash, token/entry ranges)
      skipped.json      files that were not used, each with its reason
      texts/<id>.txt    the extracted text of each document (offsets point into it)
      tokens.i32        every document's tokens, concatenated
      values.i32        N next-token ids
      positions.i64     N×2: (document id, character offset of the next token)
      keys.f16          N×d float16, row-major, no header (memory-mapped for reading)
      index.faiss       the FAISS index over keys (IVF-PQ, HNSW; flat datastores search keys.f16 exactly)
      pca.f32           (PCA-reduced datastores) the projection queries go through: mean, then components
      counts.i32        (pruned datastores) how many original entries each entry stands for
      progress.json     how far encoding got (for resuming a killed build)

Entry i means: "after the context that ends just before positions[i], the next token was
values[i]"; its key is the model's representation of that context. Only a manifest whose state
is `complete` is usable.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import faiss
import numpy as np
import torch

from .compression import Projection
from .exact_search import ExactSearch, tensor_view
from .index import MAX_CANDIDATES, FaissSearch, IndexSpec
from .key_prefetch import prefetch_keys
from .query_chunks import neighbour_key_bytes, query_chunks

FORMAT_VERSION = 1
COMPLETE = "complete"
CONTEXT_CHARS = 160  # passage shown on each side of a neighbour


class DatastoreError(Exception):
    """A datastore that cannot be used; str() is a one-line reason."""


def write_json_atomic(path: Path, data) -> None:
    """Write-then-rename, so a kill never leaves a half-written JSON file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatastoreError(f"{folder} has no manifest.json (not a datastore, or its build never started)") from None
    except json.JSONDecodeError as exc:
        raise DatastoreError(f"{folder}/manifest.json is corrupt: {exc}") from None


ENTRY_FILES = {"keys.f16": None, "values.i32": 4, "positions.i64": 16}  # bytes per entry (keys: 2·dim)


def damage(folder: Path, manifest: dict) -> str | None:
    """What is wrong with a complete datastore's folder, in a few words, or None when its files
    agree with its manifest. Cheap enough for every `list`: it checks presence and sizes, and reads
    nothing but a sharded datastore's shard manifests."""
    dim, entries = manifest.get("dim"), manifest.get("entries")
    if not all(isinstance(v, int) and v > 0 for v in (dim, entries)) or not isinstance(manifest.get("index"), dict):
        return "its manifest.json lacks the key dimension, entry count or index"
    shards = manifest.get("shards")
    for name, per_entry in ENTRY_FILES.items():
        if shards and name == "keys.f16":  # a sharded datastore's keys live in its shards
            continue
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        expected = entries * (per_entry or 2 * dim)
        size = path.stat().st_size
        if size != expected:
            return f"{name} is {'shorter' if size < expected else 'longer'} than its manifest says"
    compression = manifest.get("compression") or {}
    if compression.get("pca_dim"):
        expected = (compression["pca_dim"] + 1) * compression.get("input_dim", 0) * 4
        if not (folder / "pca.f32").is_file() or (folder / "pca.f32").stat().st_size != expected:
            return "pca.f32 is missing or does not match its manifest"
    if compression.get("prune_k"):
        if not (folder / "counts.i32").is_file() or (folder / "counts.i32").stat().st_size != entries * 4:
            return "counts.i32 is missing or does not match its manifest"
    if not (folder / "documents.jsonl").is_file() or not (folder / "texts").is_dir():
        return "its document list or extracted texts are missing"
    if shards:
        return shards_damage(folder, shards)
    if manifest["index"].get("kind") != "flat":
        index = folder / "index.faiss"
        if not index.is_file() or index.stat().st_size == 0:
            return "index.faiss is missing or empty"
        with open(index, "rb") as f:
            if f.read(1) != b"I":  # every FAISS index file starts with its type's code: IwPQ, IHNf, IxF2…
                return "index.faiss is not a FAISS index"
    return None


def shards_damage(folder: Path, shards: list[dict]) -> str | None:
    """What is wrong with a sharded datastore's shards (each a complete datastore folder), or None."""
    for number, shard in enumerate(shards):
        try:
            manifest = read_manifest(folder / shard["folder"])
        except (DatastoreError, KeyError, TypeError) as exc:
            return f"shard {number} is unreadable ({exc})"
        if manifest.get("state") != COMPLETE:
            return f"shard {number} is not complete"
        if manifest.get("entries") != shard.get("entries"):
            return f"shard {number} holds other entries than the manifest says"
        reason = damage(folder / shard["folder"], manifest)
        if reason is not None:
            return f"shard {number}: {reason}"
    return None


def damaged_error(name: str, reason: str) -> "DatastoreError":
    return DatastoreError(f"datastore '{name}' is damaged ({reason}); remove it and build it again")


@dataclass(frozen=True)
class DocumentEntry:
    id: int
    path: str
    sha256: str
    size: int
    mtime: float
    kind: str
    chars: int
    token_start: int
    token_count: int
    entry_start: int  # first datastore entry of this document

    @property
    def entry_count(self) -> int:
        return max(0, self.token_count - 1)


def read_documents(folder: Path) -> list[DocumentEntry]:
    lines = (folder / "documents.jsonl").read_text(encoding="utf-8").splitlines()
    return [DocumentEntry(**json.loads(line)) for line in lines if line.strip()]


def check_compatible(manifest: dict, model_fingerprint: str, tokenizer_fingerprint: str, model_name: str) -> None:
    """Refuse a datastore whose keys came from another model or whose values from another tokenizer."""
    built_with = manifest["model"]["name"]
    if manifest["tokenizer_fingerprint"] != tokenizer_fingerprint:
        raise DatastoreError(
            f"datastore '{manifest['name']}' was built with the tokenizer of {built_with}; "
            f"{model_name} uses a different tokenizer, so its token ids would mean other words"
        )
    if manifest["model"]["fingerprint"] != model_fingerprint:
        if built_with == model_name:
            raise DatastoreError(
                f"datastore '{manifest['name']}' was built by {built_with} with other weights or config than "
                f"the ones loaded now; rebuild it for this model"
            )
        raise DatastoreError(
            f"datastore '{manifest['name']}' was built by {built_with}; its keys are not comparable "
            f"with {model_name}'s representations"
        )


class KeyFile:
    """keys.f16 read by slices with ordinary reads, not a memory map: pages of a mapped file count
    in the process's resident memory, so mapping a whole key file while indexing it would make the
    build's peak memory grow with the corpus."""

    def __init__(self, path: Path, entries: int, dim: int):
        self.path, self.shape, self.dtype = Path(path), (entries, dim), np.float16

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("KeyFile reads contiguous slices only")
        dim = self.shape[1]
        with open(self.path, "rb") as f:
            f.seek(start * dim * 2)
            return np.fromfile(f, dtype=np.float16, count=(stop - start) * dim).reshape(-1, dim)

    def write(self, first_row: int, rows: np.ndarray) -> None:
        with open(self.path, "r+b") as f:
            f.seek(first_row * self.shape[1] * 2)
            f.write(np.ascontiguousarray(rows, dtype=np.float16).tobytes())

    @classmethod
    def create(cls, path: Path, entries: int, dim: int) -> "KeyFile":
        with open(path, "wb") as f:
            f.truncate(entries * dim * 2)  # sparse until written
        return cls(path, entries, dim)


def gpu_can_hold(device: str, nbytes: int) -> bool:
    """Whether `device` is a CUDA device with room for `nbytes` and as much again to spare."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return False
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return 2 * nbytes <= free


class Datastore:
    """Read side of a complete datastore: search, exact distances, and neighbour sources."""

    def __init__(self, folder: Path, device: str = "cpu"):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if self.manifest.get("state") != COMPLETE:
            raise DatastoreError(
                f"datastore '{self.manifest.get('name', self.folder.name)}' is not complete "
                f"(state: {self.manifest.get('state')}); run the same build again to finish it"
            )
        self.name: str = self.manifest.get("name", self.folder.name)
        reason = damage(self.folder, self.manifest)
        if reason is not None:
            raise damaged_error(self.name, reason)
        self.dim: int = self.manifest["dim"]
        self.size: int = self.manifest["entries"]
        try:
            self.index_spec = IndexSpec.from_json(self.manifest["index"])
            self.documents = {d.id: d for d in read_documents(self.folder)}
        except (KeyError, TypeError, ValueError) as exc:
            raise damaged_error(self.name, f"its manifest or document list is unreadable: {exc!r}") from None
        # Mapped, not read: at 100M entries values and positions are 2 GB, of which a lookup touches k.
        self.values = np.memmap(self.folder / "values.i32", dtype=np.int32, mode="r", shape=(self.size,))
        self.positions = np.memmap(self.folder / "positions.i64", dtype=np.int64, mode="r", shape=(self.size, 2))
        compression = self.manifest.get("compression") or {}
        self.compression: dict = compression
        self.query_dim: int = compression.get("input_dim", self.dim)  # the model's key size
        self.projection = (Projection.load(self.folder / "pca.f32", self.query_dim, compression.get("explained", 0.0))
                           if compression.get("pca_dim") else None)
        self.counts = (np.memmap(self.folder / "counts.i32", dtype=np.int32, mode="r", shape=(self.size,))
                       if compression.get("prune_k") else None)
        self._open_keys(device)
        self._text = lru_cache(maxsize=64)(self._read_text)

    def _open_keys(self, device: str) -> None:
        """The keys and what searches them (a sharded datastore's live with its shards' actors)."""
        self.keys = np.memmap(self.folder / "keys.f16", dtype=np.float16, mode="r", shape=(self.size, self.dim))
        self.searcher = self._searcher(device)
        # An index's exact re-rank reads keys.f16 row by row: map it ahead (an exact search read it all)
        self.key_prefetch = prefetch_keys(self.keys) if isinstance(self.searcher, FaissSearch) else None
        self._key_rows = tensor_view(self.keys)  # the same mapped keys, for torch's row gathers

    def shard_of(self, entry: int) -> int | None:
        """Which shard holds `entry` (None: the datastore is not sharded)."""
        return None

    def _searcher(self, device: str):
        """Exact search for flat datastores, and on a GPU that can hold the keys (a scan at GPU
        memory bandwidth beats an approximate index there: 15 GB of keys in a few ms); otherwise
        the FAISS index (moved to the GPU when FAISS's GPU build is installed)."""
        if self.index_spec.kind == "flat" or gpu_can_hold(device, self.keys.nbytes):
            return ExactSearch(self.keys, device)
        try:
            index = faiss.read_index(str(self.folder / "index.faiss"))
        except RuntimeError:  # FAISS's own message is a multi-line C++ trace
            raise damaged_error(self.name, "index.faiss is not a readable FAISS index") from None
        if index.ntotal != self.size or index.d != self.dim:
            raise damaged_error(self.name, "index.faiss holds other entries than its manifest says")
        if device.startswith("cuda") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        search = FaissSearch(index)
        if self.index_spec.nprobe:  # the manifest's, not whatever the file was saved with
            search.set_nprobe(self.index_spec.nprobe)
        return search

    def check_compatible(self, model_fingerprint: str, tokenizer_fingerprint: str, model_name: str) -> None:
        check_compatible(self.manifest, model_fingerprint, tokenizer_fingerprint, model_name)

    def set_nprobe(self, nprobe: int) -> None:
        self.searcher.set_nprobe(nprobe)

    def search(self, queries: np.ndarray, k: int, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), each B×k, nearest first. Missing results (fewer than k found) get
        id -1 and distance +inf. `exact` recomputes squared L2 from the stored fp16 keys; an
        approximate index then returns `index_spec.rerank`·k candidates, of which the exact
        distances keep the k nearest (the re-rank is what lifts IVF-PQ's recall, docs/SCALE.md)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.projection is not None:  # stored keys live in the reduced space
            queries = np.ascontiguousarray(self.projection(queries), dtype=np.float32)
        k = min(k, self.size)
        approximate = not isinstance(self.searcher, ExactSearch)
        candidates = min(self.size, max(k, min(k * self.index_spec.rerank, MAX_CANDIDATES))) if exact and approximate else k
        distances, ids = self.searcher.search(queries, candidates)
        if exact and approximate:  # an exact search's distances are exact already
            distances = np.where(ids < 0, np.inf, self.exact_distances(queries, ids))  # missing ones sort last
            order = np.lexsort((ids, distances), axis=1)  # equal distances: the lower entry first
            distances = np.take_along_axis(distances, order, axis=1)
            ids = np.take_along_axis(ids, order, axis=1)
            distances, ids = distances[:, :k], ids[:, :k]
        distances = np.where(ids < 0, np.inf, distances).astype(np.float32)
        return distances, ids

    def require_entries_in_document_order(self) -> None:
        """Refuse what finds a document's own entries by number (SPALM's and adaptive retrieval's
        training): pruning merges entries across documents."""
        if self.counts is not None:
            raise ValueError(f"datastore '{self.name}' is pruned (entries merged across documents); "
                             "train on the datastore it was pruned from")

    def log_counts(self, ids: np.ndarray) -> np.ndarray | None:
        """log(how many original entries each found entry stands for), or None when unpruned."""
        if self.counts is None:
            return None
        return np.log(np.asarray(self.counts[np.maximum(ids, 0)], dtype=np.float64))

    def exact_distances(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Squared L2 from each query to its candidates' stored keys (B×k). The keys are gathered a
        chunk of queries at a time: all at once they would take B×k×d×4 bytes (9 GB for the demo's
        held-out text at k = 256). torch's gather reads the mapped rows without numpy's copies
        (1024 candidates: 0.6 ms against 2.2 ms, 1M × 768)."""
        out = np.empty(ids.shape, dtype=np.float32)
        keys = self._key_rows
        for rows in query_chunks(len(ids), neighbour_key_bytes(ids.shape[1], self.dim)):
            safe = torch.from_numpy(np.where(ids[rows] < 0, 0, ids[rows]).astype(np.int64))
            picked = keys.index_select(0, safe.reshape(-1)).to(torch.float32).view(*safe.shape, self.dim)
            picked -= torch.from_numpy(queries[rows])[:, None, :]  # in place: no second chunk×k×d array
            out[rows] = picked.square_().sum(dim=2).numpy()
        return out

    def source(self, entry: int) -> tuple[DocumentEntry, int]:
        doc_id, offset = self.positions[entry]
        return self.documents[int(doc_id)], int(offset)

    def passage(self, entry: int, token_chars: int,
                context_chars: int = CONTEXT_CHARS) -> tuple[DocumentEntry, int, str, tuple[int, int]]:
        """The entry's document and offset, the text around its next token, and where that token
        sits inside that text."""
        document, offset = self.source(entry)
        text = self._text(document.id)
        start = max(0, offset - context_chars)
        end = min(len(text), offset + max(token_chars, 1) + context_chars)
        return document, offset, text[start:end], (offset - start, min(end, offset + token_chars) - start)

    def _read_text(self, doc_id: int) -> str:
        with open(self.folder / "texts" / f"{doc_id}.txt", encoding="utf-8", newline="") as f:
            return f.read()  # newline="" keeps offsets exact

"""A sharded datastore, searched by one retrieval actor per shard.

Opening one joins its cluster and starts (or attaches to, by name) an actor per shard; the actor
opens its shard as an ordinary Datastore and answers with its k nearest, distances recomputed from
its own keys. The client merges the shards' answers into one top-k. Documents, texts, values and
positions are read here from the datastore's top folder, so passages, tokens and everything else a
method asks of a datastore work as for a local one. Ray restarts a retrieval actor that dies and
retries the call it was answering; a shard that still cannot answer is an error that names it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import ray

from ..datastore.folder import Datastore, DatastoreError
from .connection import connect, one_line
from .shard_plan import Shard

RESTARTS = 3  # times Ray restarts a dead retrieval actor (and retries the call it was answering)
ANSWER_SECONDS = 600.0  # a shard that has not answered by then is treated as gone
INLINE_QUERY_BYTES = 1 << 20


class ShardActor:
    """Holds one shard open and searches it (runs as a Ray actor)."""

    def __init__(self, folder: str, first_entry: int):
        self.datastore = Datastore(Path(folder))
        self.first_entry = first_entry

    def search(self, queries: np.ndarray, k: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        distances, ids = self.datastore.search(queries, k, exact=exact)
        return distances, np.where(ids >= 0, ids + self.first_entry, -1)

    def set_nprobe(self, nprobe: int) -> None:
        self.datastore.set_nprobe(nprobe)

    def process_id(self) -> int:
        return os.getpid()


class ShardedSearch:
    """Fans a search out to every shard's actor and keeps the k nearest of their answers."""

    def __init__(self, name: str, actors: list, shards: list[Shard]):
        self.name, self.actors, self.shards = name, actors, shards

    def _gather(self, calls: list) -> list:
        answers = []
        for shard, call in zip(self.shards, calls):
            try:
                answers.append(ray.get(call, timeout=ANSWER_SECONDS))
            except (ray.exceptions.RayError, TimeoutError) as exc:
                raise DatastoreError(f"shard {shard.number} of datastore '{self.name}' did not answer "
                                     f"({one_line(exc)})") from None
        return answers

    def search(self, queries: np.ndarray, k: int, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        # A batch (eval) goes into the object store once for every shard to read; one query is
        # small enough to travel inside each call.
        reference = ray.put(queries) if queries.nbytes > INLINE_QUERY_BYTES else queries
        answers = self._gather([actor.search.remote(reference, k, exact) for actor in self.actors])
        distances = np.concatenate([d for d, _ in answers], axis=1)
        ids = np.concatenate([i for _, i in answers], axis=1)
        order = np.lexsort((ids, distances), axis=1)[:, :k]  # equal distances: the lower entry first, as in one search
        return np.take_along_axis(distances, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def set_nprobe(self, nprobe: int) -> None:
        self._gather([actor.set_nprobe.remote(nprobe) for actor in self.actors])


class ShardedDatastore(Datastore):
    """A Datastore whose keys live in shards on a Ray cluster."""

    def _open_keys(self, device: str) -> None:
        self.cluster: str = self.manifest.get("cluster") or "local"
        connect(self.cluster)
        self.shards = [Shard.from_json(s) for s in self.manifest["shards"]]
        remote = ray.remote(ShardActor)
        tag = hashlib.sha1(str(self.folder.resolve()).encode()).hexdigest()[:12]
        self.actors = [
            remote.options(name=f"shard-{tag}-{s.number}", get_if_exists=True, max_restarts=RESTARTS,
                           max_task_retries=RESTARTS, num_cpus=0, scheduling_strategy="SPREAD")
            .remote(str(self.folder / s.folder), s.first_entry)
            for s in self.shards
        ]
        self.searcher = ShardedSearch(self.name, self.actors, self.shards)
        self.keys = ShardKeys(self.folder, self.shards, self.dim)
        self.key_prefetch = None

    def search(self, queries: np.ndarray, k: int, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
        return self.searcher.search(queries, min(k, self.size), exact)

    def shard_of(self, entry: int) -> int | None:
        return int(self.keys.shard_of(np.asarray(entry)))


class ShardKeys:
    """The shards' key files read as one N×d array by rows (the `size` sweep picks a subset)."""

    def __init__(self, folder: Path, shards: list[Shard], dim: int):
        self.parts = [np.memmap(folder / s.folder / "keys.f16", dtype=np.float16, mode="r", shape=(s.entries, dim))
                      for s in shards]
        self.starts = np.array([s.first_entry for s in shards], dtype=np.int64)
        self.shape, self.dtype = (sum(s.entries for s in shards), dim), np.dtype(np.float16)
        self.nbytes = self.shape[0] * dim * 2

    def __len__(self) -> int:
        return self.shape[0]

    def shard_of(self, rows: np.ndarray) -> np.ndarray:
        """The shard holding each of `rows` (entries of the whole datastore)."""
        return np.searchsorted(self.starts, rows, side="right") - 1

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.arange(self.shape[0])[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float16)
        shard = self.shard_of(rows)
        for number, part in enumerate(self.parts):
            here = shard == number
            if here.any():
                out[here] = part[rows[here] - self.starts[number]]
        return out

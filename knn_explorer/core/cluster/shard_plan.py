"""Which entries each shard holds, and the shard folders' single-machine format.

Shards are contiguous entry ranges cut at batch boundaries: every batch of windows writes its keys
into one shard, so a batch encodes exactly as in a single-machine build (same windows, same
padding) and a shard is finished when its batches are.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..datastore.folder import KeyFile, write_json_atomic

ENCODING, INDEXING, COMPLETE = "encoding", "indexing", "complete"
COPY_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Shard:
    number: int
    first_entry: int
    entries: int
    first_batch: int
    end_batch: int  # one past its last batch

    @property
    def folder(self) -> str:  # relative to the datastore folder
        return f"shards/{self.number:03d}"

    def to_json(self) -> dict:
        return {**asdict(self), "folder": self.folder}

    @classmethod
    def from_json(cls, data: dict) -> "Shard":
        return cls(*(int(data[k]) for k in ("number", "first_entry", "entries", "first_batch", "end_batch")))


def plan_shards(batch_entries: list[int], shards: int) -> list[Shard]:
    """Cut the batches into at most `shards` contiguous runs of about equal entries (fewer when
    there are fewer batches than shards; never an empty shard)."""
    if shards < 1:
        raise ValueError("a sharded datastore needs at least one shard")
    total = sum(batch_entries)
    ends = np.cumsum(batch_entries)
    plan, first_batch, first_entry = [], 0, 0
    for number in range(shards):
        if first_batch >= len(batch_entries):
            break
        target = total * (number + 1) / shards
        above = int(np.searchsorted(ends, target))  # the first batch whose end reaches the target
        nearer_below = above > 0 and target - ends[above - 1] <= ends[min(above, len(ends) - 1)] - target
        end_batch = len(batch_entries) if number == shards - 1 else above + (0 if nearer_below else 1)
        end_batch = max(first_batch + 1, min(end_batch, len(batch_entries)))
        entries = int(ends[end_batch - 1]) - first_entry
        plan.append(Shard(len(plan), first_entry, entries, first_batch, end_batch))
        first_batch, first_entry = end_batch, first_entry + entries
    return plan


def start_shard(folder: Path, shard: Shard, manifest: dict) -> None:
    """Create the shard's folder with an empty key file (sparse until written) and its manifest
    in state `encoding`; values, positions and documents are slices of the datastore's own."""
    target = folder / shard.folder
    if target.exists():
        shutil.rmtree(target)  # a shard never finished is encoded again from its start
    target.mkdir(parents=True)
    KeyFile.create(target / "keys.f16", shard.entries, manifest["dim"])
    for name, per_entry in (("values.i32", 4), ("positions.i64", 16)):
        with open(folder / name, "rb") as source, open(target / name, "wb") as out:
            source.seek(shard.first_entry * per_entry)
            left = shard.entries * per_entry
            while left:  # in pieces: a shard of 100M entries has 1.6 GB of positions
                piece = source.read(min(left, COPY_BYTES))
                if not piece:
                    break  # a short source: damage() then names the short shard file
                out.write(piece)
                left -= len(piece)
    shutil.copy2(folder / "documents.jsonl", target / "documents.jsonl")
    os.symlink(os.path.join("..", "..", "texts"), target / "texts")  # passages read the datastore's texts
    write_shard_manifest(folder, shard, manifest, ENCODING)


def write_shard_manifest(folder: Path, shard: Shard, manifest: dict, state: str, **extra) -> None:
    shard_manifest = {key: manifest[key] for key in ("format_version", "model", "tokenizer_fingerprint", "key_site",
                                                     "dim", "context_length", "stride", "parameters")}
    shard_manifest.update(name=f"{manifest['name']} · shard {shard.number}", state=state, entries=shard.entries,
                          shard=shard.to_json(), index=manifest.get("index", {"kind": "flat"}), **extra)
    write_json_atomic(folder / shard.folder / "manifest.json", shard_manifest)

"""The model actor of a cluster build: Ray Data hands it (shard, batch) pairs; it encodes the
batch's windows exactly as a single-machine build would and writes the keys into the shard's
key file on the shared storage. Each actor loads the model once."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..datastore.builder import encode_window_batch, window_batches
from ..datastore.folder import KeyFile, read_documents
from ..models import load_model
from ..runtime import configure_threads
from .shard_plan import Shard


class KeyEncoder:
    def __init__(self, folder: str, model_spec: str, model_fingerprint: str, device: str, context_length: int,
                 stride: int, batch_size: int, shards: list[dict], dim: int, threads: int = 1):
        configure_threads(threads)  # the actor's share of its node: Ray reserved `threads` CPUs for it
        self.model = load_model(model_spec, device)
        if self.model.model_fingerprint != model_fingerprint:
            raise RuntimeError(f"'{model_spec}' loads other weights on this node than on the machine that "
                               "started the build; give every node the same model files")
        self.folder = Path(folder)
        self.documents = read_documents(self.folder)
        self.tokens = np.memmap(self.folder / "tokens.i32", dtype=np.int32, mode="r")
        self.batches = list(window_batches(self.documents, context_length, stride, batch_size))
        self.shards = [Shard.from_json(s) for s in shards]
        self.dim = dim

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        written = []
        for shard_number, batch_number in zip(rows["shard"], rows["batch"]):
            shard = self.shards[int(shard_number)]
            written.append(encode_window_batch(self.model, self.batches[int(batch_number)], self.documents,
                                               self.tokens, self._writer(shard)))
        return {"shard": np.asarray(rows["shard"]), "entries": np.asarray(written, dtype=np.int64)}

    def _writer(self, shard: Shard):
        """write(datastore entry, rows) into the shard's own key file, whose row 0 is its first entry."""
        keys = KeyFile(self.folder / shard.folder / "keys.f16", shard.entries, self.dim)
        return lambda first_entry, rows: keys.write(first_entry - shard.first_entry, rows)

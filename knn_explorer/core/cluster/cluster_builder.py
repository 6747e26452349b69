"""A build whose encoding and indexing run on a Ray cluster.

Reading (documents → tokens, values, positions) runs here as in any build: it is cheap next to the
model and fixes the entry order. Encoding is a Ray Data pipeline over (shard, batch) pairs through a
pool of model actors (one GPU each when the cluster has GPUs); each batch is the same windows a
single-machine build would run together, so the keys match it. Indexing trains one IVF-PQ on a
sample from every shard and fills a copy per shard in parallel tasks: the shards share one coarse
quantizer and codebooks, so their distances compare. A killed build resumes shard by shard: a shard
whose manifest reached `indexing` is not encoded again, one at `complete` is not indexed again.
"""
from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np
import ray
import ray.data

from ..datastore.builder import DatastoreBuilder, index_folder, window_batches, window_entries
from ..datastore.folder import COMPLETE as DATASTORE_COMPLETE
from ..datastore.folder import DatastoreError, KeyFile, read_documents, read_manifest, write_json_atomic
from ..datastore.index import IndexSpec, choose_index, empty_index, sample_rows
from ..progress import Cancelled, PhaseMeter
from .connection import cluster_has_gpus, connect, default_encoders, one_line
from .key_encoder import KeyEncoder
from .shard_plan import COMPLETE, ENCODING, INDEXING, Shard, plan_shards, start_shard, write_shard_manifest

BLOCKS_PER_ENCODER = 16  # Ray Data blocks per model actor: small enough to spread the batches evenly


class ClusterBuilder(DatastoreBuilder):
    def run(self):  # the parameters were checked by library.check_parameters
        connect(self.params.cluster)
        return super().run()

    # ---- encoding --------------------------------------------------------------------------
    def _encode(self, manifest: dict) -> None:
        documents = read_documents(self.folder)
        batches = list(window_batches(documents, self.context_length, self.stride, self.params.batch_size))
        shards = self._shards(manifest, [sum(window_entries(w) for w in b) for b in batches])
        pending = [s for s in shards if shard_state(self.folder, s) == ENCODING]
        for shard in pending:
            start_shard(self.folder, shard, manifest)
        meter = PhaseMeter("encoding", manifest["entries"], "tokens", self.on_progress,
                           start_done=sum(s.entries for s in shards if s not in pending))
        meter.start()
        if pending:
            self._encode_on_cluster(manifest, shards, pending, meter)
        meter.update(manifest["entries"], force=True)

    def _shards(self, manifest: dict, batch_entries: list[int]) -> list[Shard]:
        """The shard plan: the manifest's, when a killed build recorded one; else a new one."""
        if manifest.get("shards"):
            return [Shard.from_json(s) for s in manifest["shards"]]
        shards = plan_shards(batch_entries, max(1, self.params.shards))
        manifest.update(shards=[s.to_json() for s in shards], cluster=self.params.cluster)
        write_json_atomic(self.folder / "manifest.json", manifest)
        return shards

    def _encode_on_cluster(self, manifest: dict, shards: list[Shard], pending: list[Shard], meter: PhaseMeter) -> None:
        gpus = cluster_has_gpus()
        encoders = self.params.encoders or default_encoders()
        items = [{"shard": s.number, "batch": b} for s in pending for b in range(s.first_batch, s.end_batch)]
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # per-dataset notices are not for users
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # progress is reported through on_progress
        context.print_on_execution_start = False
        encoded = ray.data.from_items(items, override_num_blocks=min(len(items), BLOCKS_PER_ENCODER * encoders)).map_batches(
            KeyEncoder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=encoders),
            num_gpus=1 if gpus else 0, num_cpus=1,
            fn_constructor_kwargs=dict(
                folder=str(self.folder), model_spec=self.model.spec, model_fingerprint=self.model.model_fingerprint,
                device="cuda" if gpus else "cpu", context_length=self.context_length, stride=self.stride,
                batch_size=self.params.batch_size, shards=[s.to_json() for s in shards], dim=manifest["dim"]))
        left = {s.number: s.entries for s in pending}
        done = meter.start_done
        try:
            for row in encoded.iter_rows():
                self._check_stop()
                number, entries = int(row["shard"]), int(row["entries"])
                left[number] -= entries
                done += entries
                meter.update(done)
                if left[number] == 0:  # every batch of it is on the storage: it need not be encoded again
                    write_shard_manifest(self.folder, shards[number], manifest, INDEXING)
        except ray.exceptions.RayError as exc:
            raise DatastoreError(f"encoding on the cluster failed: {one_line(exc)}") from None

    # ---- indexing --------------------------------------------------------------------------
    def _index(self, manifest: dict) -> None:
        shards = [Shard.from_json(s) for s in manifest["shards"]]
        spec = choose_index(self.params.index, manifest["entries"], manifest["dim"])
        pending = [s for s in shards if shard_state(self.folder, s) != COMPLETE]
        meter = PhaseMeter("indexing", manifest["entries"], "keys", self.on_progress,
                           start_done=sum(s.entries for s in shards if s not in pending))
        meter.start()
        trained = self._shared_training(manifest, shards, spec) if pending else None
        remote = ray.remote(num_cpus=1)(index_shard)
        running = {remote.remote(str(self.folder / s.folder), spec.to_json(), trained): s for s in pending}
        done = meter.start_done
        try:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.25)
                if self.should_stop():
                    for ref in running:
                        ray.cancel(ref, force=True)
                    raise Cancelled("build cancelled")
                for ref in ready:
                    ray.get(ref)
                    done += running.pop(ref).entries
                    meter.update(done, force=True)
        except ray.exceptions.RayError as exc:
            raise DatastoreError(f"indexing on the cluster failed: {one_line(exc)}") from None
        described = f"{spec.describe()} · {len(shards)} shard{'s' if len(shards) != 1 else ''}"
        manifest.update(state=DATASTORE_COMPLETE, index=spec.to_json(), index_description=described)
        write_json_atomic(self.folder / "manifest.json", manifest)

    def _shared_training(self, manifest: dict, shards: list[Shard], spec: IndexSpec) -> np.ndarray | None:
        """IVF-PQ trained once, on a sample drawn from every shard in proportion to its size, as
        FAISS's bytes; None for indexes with nothing to share (flat; HNSW builds per shard)."""
        if spec.kind != "ivfpq":
            return None
        dim, total = manifest["dim"], manifest["entries"]
        parts = [sample_rows(KeyFile(self.folder / s.folder / "keys.f16", s.entries, dim),
                             max(1, round(spec.train_size * s.entries / total)), seed=s.number) for s in shards]
        index = empty_index(spec, dim)
        index.train(np.concatenate(parts))
        return faiss.serialize_index(index)


def index_shard(folder: str, spec_json: dict, trained: np.ndarray | None) -> None:
    """A task on the cluster: index one shard's keys (filling the shared trained index) and mark the
    shard complete."""
    spec = IndexSpec.from_json(spec_json)
    index_folder(Path(folder), read_manifest(Path(folder)), spec.kind, spec=spec,
                 trained=faiss.deserialize_index(trained) if trained is not None else None)


def shard_state(folder: Path, shard: Shard) -> str:
    try:
        return read_manifest(folder / shard.folder).get("state", ENCODING)
    except DatastoreError:
        return ENCODING

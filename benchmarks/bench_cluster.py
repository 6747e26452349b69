#!/usr/bin/env python
"""Cluster builds and sharded retrieval on a local Ray cluster, against this machine alone.

Prints, on the demo documents (or --docs) with the demo model (or --model):

  - build throughput (tokens encoded per second of the encoding phase) with 1 and with 2 model
    actors on a local Ray cluster, their ratio, and the single-process build's for reference;
  - per-token retrieval latency (one query, k neighbours, as generation asks) of the sharded
    datastore against the same entries in one local datastore, and their ratio.

The cluster is a real local Ray cluster started in this process (`ray.init`, all CPUs). Every
build goes to a temporary data home. Progress to stderr; a table (or --json) to stdout.

    python benchmarks/bench_cluster.py
    python benchmarks/bench_cluster.py --shards 4 --queries 500 --json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--docs", default=None, help="documents to build from (default: the demo documents)")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--index", default="flat", choices=["auto", "flat", "ivfpq", "hnsw"])
    p.add_argument("--queries", type=int, default=300, help="single queries timed per datastore")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def encoding_rate(report) -> float:
    return report.manifest["entries"] / report.seconds["encoding"]


def per_query_ms(datastore, queries: np.ndarray, k: int) -> float:
    for q in queries[:20]:  # warm-up: actors started, pages mapped
        datastore.search(q[None], k)
    times = []
    for q in queries:
        started = time.perf_counter()
        datastore.search(q[None], k)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["KNN_EXPLORER_HOME"] = tempfile.mkdtemp(prefix="bench-cluster-")
    import ray

    from knn_explorer.core.datastore.builder import BuildParameters
    from knn_explorer.core.datastore.catalog import Catalog
    from knn_explorer.core.datastore.library import build_datastore, open_datastore
    from knn_explorer.core.home import DEMO_DOCS_DIR
    from knn_explorer.core.models import load_model
    from knn_explorer.core.runtime import configure_threads

    configure_threads()
    docs = [args.docs or str(DEMO_DOCS_DIR)]
    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, namespace="knn-explorer",
             logging_level="ERROR")
    model = load_model(args.model, device="cpu")
    catalog = Catalog()
    log(f"single-process build of {docs[0]}")
    local = build_datastore(catalog, "local", model, docs, BuildParameters(index=args.index))
    rates = {}
    for encoders in (1, 2):
        log(f"cluster build, {encoders} model actor(s), {args.shards} shards")
        report = build_datastore(catalog, f"ray-{encoders}", model, docs, BuildParameters(
            index=args.index, cluster="local", shards=args.shards, encoders=encoders))
        rates[encoders] = encoding_rate(report)
    one, sharded = open_datastore(catalog, "local", model), open_datastore(catalog, "ray-2", model)
    rows = np.linspace(0, one.size - 1, args.queries).astype(np.int64)
    queries = np.asarray(one.keys[rows], dtype=np.float32) + 0.01  # near, not on, stored keys
    log("timing single queries")
    local_ms, sharded_ms = per_query_ms(one, queries, args.k), per_query_ms(sharded, queries, args.k)
    result = {
        "entries": one.size, "dim": one.dim, "cpus": cpus, "shards": args.shards, "index": args.index,
        "encode_tokens_per_s_local": encoding_rate(local), "encode_tokens_per_s_1_actor": rates[1],
        "encode_tokens_per_s_2_actors": rates[2], "encode_ratio_2_over_1": rates[2] / rates[1],
        "retrieval_ms_local": local_ms, "retrieval_ms_sharded": sharded_ms,
        "retrieval_ratio_sharded_over_local": sharded_ms / local_ms, "k": args.k, "queries": len(queries),
    }
    ray.shutdown()
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['entries']:,} entries × {result['dim']}, {cpus} CPUs, {args.shards} shards, index {args.index}")
    print(f"encoding  one process       {result['encode_tokens_per_s_local']:9,.0f} tokens/s")
    print(f"encoding  1 model actor     {rates[1]:9,.0f} tokens/s")
    print(f"encoding  2 model actors    {rates[2]:9,.0f} tokens/s   2 ÷ 1 = {result['encode_ratio_2_over_1']:.2f}")
    print(f"retrieval local             {local_ms:9.2f} ms/token (median, k = {args.k})")
    print(f"retrieval sharded           {sharded_ms:9.2f} ms/token   sharded ÷ local = "
          f"{result['retrieval_ratio_sharded_over_local']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

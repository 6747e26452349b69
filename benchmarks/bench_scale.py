#!/usr/bin/env python
"""Retrieval at scale for a GPT-2-small-sized model: cost per token next to the LM step, recall,
perplexity, open time, memory, index build time and size.

For each datastore size N (--entries) and index kind (--indexes), it reports

  - retrieval_ms: one single-query `Datastore.search` (k neighbours) of a held-out key, averaged;
  - lm_step_ms: one cached single-token forward of the model; overhead = retrieval_ms / lm_step_ms;
  - recall_at_k: share of the exact k nearest neighbours (exact search over all keys) retrieved;
  - ppl_exact, ppl_index: kNN-LM perplexity of held-out text with exact search and with the index;
  - open_s, rss_mb, peak_mb: opening the datastore and searching it, in a fresh child process;
  - prefetch_s: how long after open the background mapping of an index's keys finished (the
    searches are timed from then on, as a generation session meets them);
  - build_s, index_mb, keys_file_mb: the index's build time and file size, the key file's size.

The model is GPT-2-small-shaped with random weights and the demo tokenizer. The keys of the large
datastores are tiles of a real build of resources/demo/docs (see benchmarks/README.md). Everything
built is cached in --work and reused. Progress goes to stderr; the table (or --json lines) to stdout.

    python benchmarks/bench_scale.py --entries 1000000 --indexes auto,flat,ivfpq
    python benchmarks/bench_scale.py --entries 200000 --queries 50 --heldout-tokens 500 --json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

DEMO_DIR = ROOT / "resources" / "demo"
DOCS = DEMO_DIR / "docs"
HELDOUT = DEMO_DIR / "heldout"
REAL_NAME = "scale-real"
NOISE = 0.1  # tile t >= 1: real keys + N(0, (NOISE · std of the dimension)²)
CHUNK_ROWS = 65_536  # rows synthesised and written at a time
CONTEXT, STRIDE = 256, 128
PROMPT_TOKENS, STEP_TOKENS, WARMUP_QUERIES = 128, 64, 5

_t0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _t0:7.1f}s] {message}", file=sys.stderr, flush=True)


def proc_status_kb(*fields: str) -> dict[str, int]:
    """Fields of /proc/self/status in kB (VmRSS, VmHWM, RssAnon...)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in fields:
                out[key] = int(line.split()[1])
    return out


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def file_mb(path: Path) -> float:
    return path.stat().st_size / 2**20 if path.exists() else 0.0


def progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="rows", unit_scale=True, file=sys.stderr, leave=False)


# ---------------------------------------------------------------------------------------------
# 1. model


def ensure_model(work: Path) -> Path:
    """GPT-2-small shape, random weights (seed 0), demo tokenizer; saved once."""
    folder = work / "model"
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    log("creating a GPT-2-small-shaped model with random weights")
    tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR / "model")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=len(tokenizer), n_positions=1024,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    tmp = work / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    GPT2LMHeadModel(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder


# ---------------------------------------------------------------------------------------------
# 2. the real datastore


def ensure_real(work: Path, model) -> Path:
    """A flat datastore of resources/demo/docs built by the project's builder, in its own data home."""
    record = work / "real.json"
    if record.exists():
        return Path(json.loads(record.read_text())["folder"])
    from knn_explorer.core.datastore.builder import BuildParameters
    from knn_explorer.core.datastore.catalog import Catalog
    from knn_explorer.core.datastore.library import build_datastore

    os.environ["KNN_EXPLORER_HOME"] = str(work / "home")
    catalog = Catalog()
    log(f"building the real datastore of {DOCS} (index flat; several minutes)")
    started = time.perf_counter()
    report = build_datastore(catalog, REAL_NAME, model, [DOCS],
                             BuildParameters(context_length=CONTEXT, stride=STRIDE, index="flat"))
    catalog.engine.dispose()
    seconds = time.perf_counter() - started
    log(f"  {report.manifest['entries']:,} entries in {seconds:.0f} s")
    record.write_text(json.dumps({"folder": str(report.folder), "seconds": seconds}))
    return Path(report.folder)


# ---------------------------------------------------------------------------------------------
# 3. synthetic datastores


def key_std(real_keys: np.ndarray) -> np.ndarray:
    return real_keys.astype(np.float32).std(axis=0)


def write_tiled_keys(path: Path, real_keys: np.ndarray, entries: int) -> None:
    """keys.f16 of `entries` rows: tile 0 = the real keys, tile t = real keys + seeded noise."""
    n0, _dim = real_keys.shape
    scale = NOISE * key_std(real_keys)
    bar = progress_bar(entries, f"keys {entries:,}")
    with open(path, "wb") as f:
        for tile_start in range(0, entries, n0):
            tile = tile_start // n0
            rng = np.random.default_rng(tile)  # seeded by the tile: the same N gives the same keys
            rows = min(n0, entries - tile_start)
            for start in range(0, rows, CHUNK_ROWS):
                chunk = real_keys[start : min(rows, start + CHUNK_ROWS)]
                if tile > 0:
                    noise = rng.standard_normal(chunk.shape, dtype=np.float32)
                    chunk = (chunk.astype(np.float32) + noise * scale).astype(np.float16)
                f.write(np.ascontiguousarray(chunk).tobytes())
                bar.update(len(chunk))
    bar.close()


def tiled(array: np.ndarray, entries: int) -> np.ndarray:
    reps = -(-entries // len(array))
    return np.concatenate([array] * reps)[:entries]


def link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def ensure_keys(work: Path, real: Path, entries: int) -> Path:
    """The key folder of N entries (data files and a template manifest); `done` marks it complete."""
    folder = work / f"keys-{entries}"
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    manifest = json.loads((real / "manifest.json").read_text(encoding="utf-8"))
    n0, dim = manifest["entries"], manifest["dim"]
    log(f"synthesising {entries:,} entries from {n0:,} real ones ({entries * dim * 2 / 2**30:.1f} GiB of keys)")
    real_keys = np.fromfile(real / "keys.f16", dtype=np.float16).reshape(n0, dim)
    write_tiled_keys(folder / "keys.f16", real_keys, entries)
    del real_keys
    tiled(np.fromfile(real / "values.i32", dtype=np.int32), entries).tofile(folder / "values.i32")
    positions = np.fromfile(real / "positions.i64", dtype=np.int64).reshape(-1, 2)
    tiled(positions, entries).tofile(folder / "positions.i64")
    for name in ("documents.jsonl", "tokens.i32", "skipped.json"):
        if (real / name).exists():
            link_or_copy(real / name, folder / name)
    shutil.copytree(real / "texts", folder / "texts", copy_function=link_or_copy)
    manifest.update(entries=entries, name=f"scale-{entries}", synthesised_from=str(real), noise=NOISE)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (folder / "done").touch()
    return folder


def index_folder_name(spec) -> str:
    """One folder per built index: nprobe and rerank are search-time settings, so auto and ivfpq
    share a folder when they resolve to the same index."""
    if spec.kind == "ivfpq":
        extras = ("-opq" if spec.opq else "") + ("-hnswq" if spec.coarse_hnsw else "")
        return f"ivfpq-nlist{spec.nlist}-m{spec.m}-nbits{spec.nbits}-train{spec.train_size}{extras}"
    if spec.kind == "hnsw":
        return f"hnsw-m{spec.hnsw_m}"
    return "flat"


def linked_copy(keys_folder: Path, folder: Path) -> dict:
    """A fresh `folder` sharing the key folder's files (hard links; texts/ as a link); returns the
    key folder's manifest for the caller to adapt."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("keys.f16", "values.i32", "positions.i64", "documents.jsonl", "tokens.i32", "skipped.json"):
        if (keys_folder / name).exists():
            os.link(keys_folder / name, folder / name)
    (folder / "texts").symlink_to(keys_folder / "texts", target_is_directory=True)
    return json.loads((keys_folder / "manifest.json").read_text(encoding="utf-8"))


def ensure_index(work: Path, keys_folder: Path, entries: int, spec) -> tuple[Path, dict]:
    """A datastore folder sharing the key folder's files, with its own manifest and index.faiss.
    Returns the folder and {build_s, index_mb} (build_s from when it was built)."""
    import faiss

    from knn_explorer.core.datastore.folder import COMPLETE, KeyFile, write_json_atomic
    from knn_explorer.core.datastore.index import build_index

    folder = work / f"n{entries}-{index_folder_name(spec)}"
    record = folder / "build.json"
    if record.exists():
        # Search-time settings (nprobe, rerank) follow the current choose_index, not the one of the build.
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        if manifest["index"] != spec.to_json():
            manifest.update(index=spec.to_json(), index_description=spec.describe())
            write_json_atomic(folder / "manifest.json", manifest)
        return folder, json.loads(record.read_text())
    manifest = linked_copy(keys_folder, folder)
    build_s = 0.0
    if spec.kind != "flat":
        log(f"building {spec.describe()} over {entries:,} keys")
        bar = progress_bar(entries, spec.kind)
        started = time.perf_counter()
        index = build_index(KeyFile(folder / "keys.f16", entries, manifest["dim"]), spec,
                            on_progress=lambda done, _total: bar.update(done - bar.n))
        build_s = time.perf_counter() - started
        bar.close()
        faiss.write_index(index, str(folder / "index.faiss"))
        del index
        log(f"  built in {build_s:.0f} s, {file_mb(folder / 'index.faiss'):.0f} MB")
    manifest.update(state=COMPLETE, index=spec.to_json(), index_description=spec.describe())
    write_json_atomic(folder / "manifest.json", manifest)
    result = {"build_s": round(build_s, 2), "index_mb": round(file_mb(folder / "index.faiss"), 1)}
    record.write_text(json.dumps(result))
    return folder, result


# ---------------------------------------------------------------------------------------------
# held-out text, exact neighbours, the LM step


def heldout_text(tokenizer, tokens: int) -> str:
    """The first `tokens` tokens of the demo's held-out documents, joined as `evaluate` joins them."""
    from knn_explorer.core.datastore.tokenizing import tokenize_with_offsets
    from knn_explorer.core.evaluation.perplexity import read_heldout

    text = "\n\n".join(read_heldout(HELDOUT))
    _ids, starts = tokenize_with_offsets(tokenizer, text)
    return text if tokens >= len(starts) else text[: int(starts[tokens])]


def ensure_heldout(work: Path, model, tokens: int) -> Path:
    """targets, log p_LM and keys of the held-out text (sweeps.collect), saved for the children."""
    path = work / f"heldout-{tokens}.npz"
    if path.exists():
        return path
    from knn_explorer.core.evaluation.sweeps import collect

    log(f"collecting log p_LM and keys of {tokens} held-out tokens")
    c = collect(model, heldout_text(model.tokenizer, tokens), context_length=CONTEXT, stride=STRIDE)
    np.savez(path, targets=c.targets, log_p_lm=c.log_p_lm, keys=c.keys.astype(np.float32))
    return path


def ensure_exact(work: Path, keys_folder: Path, entries: int, dim: int, heldout: dict, k: int, tokens: int) -> Path:
    """Exact k nearest neighbours of every held-out key over all N keys (the ground truth)."""
    path = work / f"exact-{entries}-k{k}-h{tokens}.npz"
    if path.exists():
        return path
    from knn_explorer.core.datastore.exact_search import ExactSearch

    keys = np.memmap(keys_folder / "keys.f16", dtype=np.float16, mode="r", shape=(entries, dim))
    log(f"exact search of {len(heldout['keys'])} held-out keys over {entries:,} keys")
    started = time.perf_counter()
    distances, ids = ExactSearch(keys).search(heldout["keys"], k)
    log(f"  {time.perf_counter() - started:.0f} s")
    np.savez(path, distances=distances, ids=ids)
    return path


def lm_step_ms(model, prompt_ids: np.ndarray) -> float:
    """Mean ms of one cached single-token forward (as StepGenerator runs it), after a warm-up."""
    import torch

    def run(steps: int) -> float:
        with torch.inference_mode():
            ids = torch.from_numpy(prompt_ids.astype(np.int64))[None].to(model.device)
            out = model.forward(ids, use_cache=True, last_logits_only=True)
            started = time.perf_counter()
            for _ in range(steps):
                token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
                out = model.forward(token, cache=out.past_key_values, use_cache=True, last_logits_only=True)
            return (time.perf_counter() - started) * 1000 / steps

    run(8)
    return run(STEP_TOKENS)


def knn_ppl(heldout: dict, values_of, distances: np.ndarray, ids: np.ndarray, k: int,
            log_counts: np.ndarray | None = None) -> float:
    """kNN-LM perplexity at KnnLmSettings' default λ and temperature (a pruned datastore's
    entries weighted by their counts)."""
    from knn_explorer.core.evaluation.sweeps import mixed_log_probs, target_knn_probs
    from knn_explorer.core.mechanisms.knnlm import KnnLmSettings

    settings = KnnLmSettings()
    values = np.where(ids >= 0, values_of(np.maximum(ids, 0)), -1)
    distances = np.where(ids >= 0, distances, np.inf)
    p_knn = target_knn_probs(values, distances, heldout["targets"], k, settings.temperature, log_counts)
    return float(np.exp(-mixed_log_probs(heldout["log_p_lm"], p_knn, settings.lambda_).mean()))


def query_rows(available: int, count: int) -> np.ndarray:
    """Evenly spaced held-out positions used as single queries."""
    return np.unique(np.linspace(0, available - 1, min(count, available)).round().astype(np.int64))


# ---------------------------------------------------------------------------------------------
# 5. measurement, in a fresh child


def child(args) -> None:
    """--child FOLDER: open, search, print one JSON line. Memory is this process's, from /proc."""
    from knn_explorer.core.datastore.folder import Datastore
    from knn_explorer.core.runtime import configure_threads

    configure_threads(args.threads)
    heldout = dict(np.load(args.heldout_file))
    exact = dict(np.load(args.exact_file))
    rows = query_rows(len(heldout["keys"]), args.queries)
    queries = heldout["keys"][rows]
    before = proc_status_kb("VmRSS", "RssAnon")
    started = time.perf_counter()
    datastore = Datastore(Path(args.child))
    open_s = time.perf_counter() - started
    after_open = proc_status_kb("VmRSS", "RssAnon")
    # An index's keys are mapped in the background after open (key_prefetch.py); a generation
    # session searches once that is done, so the timing starts then, and the wait is reported.
    started = time.perf_counter()
    if datastore.key_prefetch is not None:
        datastore.key_prefetch.done.wait()
    prefetch_s = time.perf_counter() - started if datastore.key_prefetch is not None else 0.0
    if args.nprobe:
        datastore.set_nprobe(args.nprobe)
        if datastore.index_spec.kind == "ivfpq":  # only so that describe() says what was searched
            datastore.index_spec = dataclasses.replace(datastore.index_spec, nprobe=args.nprobe)
    if args.rerank:
        datastore.index_spec = dataclasses.replace(datastore.index_spec, rerank=args.rerank)
    k = args.k
    for q in queries[:WARMUP_QUERIES]:
        datastore.search(q[None], k)
    found, seconds = [], []
    for q in queries:
        started = time.perf_counter()
        _d, ids = datastore.search(q[None], k)
        seconds.append(time.perf_counter() - started)
        found.append(ids[0])
    truth = exact["ids"][rows]
    recall = float(np.mean([len(np.intersect1d(f[f >= 0], t)) / k for f, t in zip(found, truth)]))
    distances, ids = datastore.search(heldout["keys"], k)
    ppl = knn_ppl(heldout, lambda i: datastore.values[i], distances, ids, k, datastore.log_counts(ids))
    # Warm: the same queries again, now that the held-out search has mapped every key page they
    # touch; what a long-running app pays once its datastore's pages are in memory. The second of
    # two passes: the first still settles (CPU caches, allocator).
    for _settle in range(2):
        warm = []
        for q in queries:
            started = time.perf_counter()
            datastore.search(q[None], k)
            warm.append(time.perf_counter() - started)
    peak = proc_status_kb("VmHWM")["VmHWM"]
    print(json.dumps({
        "index": datastore.index_spec.describe(), "rerank": datastore.index_spec.rerank,
        "retrieval_ms": float(np.mean(seconds) * 1000), "retrieval_warm_ms": float(np.mean(warm) * 1000),
        "recall_at_k": recall, "ppl_index": ppl,
        "open_s": open_s, "prefetch_s": prefetch_s, "rss_mb": (after_open["VmRSS"] - before["VmRSS"]) / 1024,
        "rss_anon_mb": (after_open["RssAnon"] - before["RssAnon"]) / 1024,
        "peak_mb": (peak - before["VmRSS"]) / 1024, "queries": len(rows),
    }), flush=True)


def run_child(args, folder: Path, heldout_path: Path, exact_path: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(folder), "--heldout-file", str(heldout_path),
           "--exact-file", str(exact_path), "--k", str(args.k), "--queries", str(args.queries),
           "--threads", str(args.threads)]
    if args.nprobe:
        cmd += ["--nprobe", str(args.nprobe)]
    if args.rerank:
        cmd += ["--rerank", str(args.rerank)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # the child's stderr is ours
    if proc.returncode != 0:
        raise SystemExit(f"child failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# report

COLUMNS = (  # (key, header, width, format spec); text columns are left-aligned
    ("entries", "entries", 10, ","), ("requested", "requested", 9, "s"), ("index", "index", 36, "s"),
    ("build_s", "build_s", 7, ".0f"), ("index_mb", "index_mb", 8, ".0f"), ("keys_file_mb", "keys_mb", 7, ".0f"),
    ("open_s", "open_s", 6, ".2f"), ("rss_mb", "rss_mb", 6, ".0f"), ("peak_mb", "peak_mb", 7, ".0f"),
    ("lm_step_ms", "lm_ms", 6, ".1f"), ("retrieval_ms", "ret_ms", 7, ".2f"), ("overhead", "overhead", 8, ".3f"),
    ("recall_at_k", "recall", 6, ".3f"), ("ppl_exact", "ppl_exact", 9, ".2f"), ("ppl_index", "ppl_index", 9, ".2f"),
)


def cell(value, width: int, spec: str) -> str:
    return f"{value:<{width}{spec}}" if spec == "s" else f"{value:>{width}{spec}}"


def print_table(rows: list[dict], context: dict) -> None:
    print(f"kNN retrieval at scale: GPT-2-small shape (random weights), dim {context['dim']}, k={context['k']}, "
          f"{context['queries']} single queries, {context['heldout']} held-out targets (ppl of the LM alone "
          f"{context['ppl_lm']:.2f}), {context['threads']} threads, {os.cpu_count()} CPUs")
    print(" ".join(cell(h, w, "s") if spec == "s" else f"{h:>{w}}" for _k, h, w, spec in COLUMNS))
    for row in rows:
        if row.get("skipped"):
            print(f"{row['entries']:>10,} {row['requested']:<9} skipped: {row['skipped']}")
        else:
            print(" ".join(cell(row[key], w, spec) for key, _h, w, spec in COLUMNS))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", default="1000000,10000000", help="datastore sizes, comma-separated")
    p.add_argument("--indexes", default="auto,flat,ivfpq,hnsw", help="index kinds, comma-separated")
    p.add_argument("--work", default="/tmp/knn-scale", help="cache of everything built (default /tmp/knn-scale)")
    p.add_argument("--queries", type=int, default=200, help="single queries timed per configuration")
    p.add_argument("--k", type=int, default=32, help="neighbours per query (default 32)")
    p.add_argument("--heldout-tokens", type=int, default=2000, help="held-out tokens for perplexity")
    p.add_argument("--threads", type=int, default=None, help="torch/FAISS threads (default: configure_threads())")
    p.add_argument("--nprobe", type=int, default=None, help="override the IVF index's nprobe")
    p.add_argument("--rerank", type=int, default=None, help="exact re-rank of rerank·k index candidates")
    p.add_argument("--json", action="store_true", help="one JSON object per configuration per line")
    p.add_argument("--pca", type=int, default=0, metavar="DIM",
                   help="also measure each size with its keys reduced to DIM dimensions by PCA (indexed with auto)")
    p.add_argument("--prune", type=int, default=0, metavar="K",
                   help="also measure each size pruned by greedy merging over K neighbours (with --pca: both)")
    p.add_argument("--child", metavar="FOLDER", help=argparse.SUPPRESS)
    p.add_argument("--heldout-file", help=argparse.SUPPRESS)
    p.add_argument("--exact-file", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def ensure_compressed(work: Path, keys_folder: Path, entries: int, compression) -> tuple[Path, dict]:
    """A copy of the key folder with `compression` applied by the project's own compressing phase
    and indexed with `auto`; returns the folder and {build_s (compress + index), index_mb}."""
    from knn_explorer.core.datastore.builder import index_folder
    from knn_explorer.core.datastore.compress_phase import compress_folder
    from knn_explorer.core.datastore.folder import write_json_atomic

    folder = work / f"n{entries}-pca{compression.pca_dim}-prune{compression.prune_k}"
    record = folder / "build.json"
    if record.exists():
        return folder, json.loads(record.read_text())
    manifest = linked_copy(keys_folder, folder)
    manifest.update(state="compressing", parameters={**manifest.get("parameters", {}), **compression.to_json()})
    write_json_atomic(folder / "manifest.json", manifest)
    log(f"compressing {entries:,} entries: {compression}")
    started = time.perf_counter()
    manifest = compress_folder(folder, manifest, compression)
    compressed_s = time.perf_counter() - started
    index_folder(folder, manifest, "auto")
    result = {"compress_s": round(compressed_s, 2), "build_s": round(time.perf_counter() - started, 2),
              "index_mb": round(file_mb(folder / "index.faiss"), 1) if (folder / "index.faiss").exists() else 0.0}
    record.write_text(json.dumps(result))
    return folder, result


def finished_row(args, row: dict, recall_of: str = "") -> dict:
    """The row with its overheads, logged, and printed as a JSON line with --json."""
    row["overhead"] = row["retrieval_ms"] / row["lm_step_ms"]
    row["overhead_warm"] = row["retrieval_warm_ms"] / row["lm_step_ms"]
    log(f"  {row['retrieval_ms']:.2f} ms/query ({row['retrieval_warm_ms']:.2f} warm), recall "
        f"{row['recall_at_k']:.3f}{recall_of}, ppl {row['ppl_index']:.2f} (exact {row['ppl_exact']:.2f})")
    if args.json:
        print(json.dumps(row), flush=True)
    return row


def measure_size(args, work: Path, real: Path, entries: int, dim: int, heldout_path: Path, heldout: dict,
                 common: dict) -> list[dict]:
    from knn_explorer.core.datastore.index import choose_index

    keys_folder = ensure_keys(work, real, entries)
    exact_path = ensure_exact(work, keys_folder, entries, dim, heldout, args.k, args.heldout_tokens)
    exact = dict(np.load(exact_path))
    values = np.fromfile(keys_folder / "values.i32", dtype=np.int32)
    ppl_exact = knn_ppl(heldout, lambda i: values[i], exact["distances"], exact["ids"], args.k)
    rows = []
    for requested in [s.strip() for s in args.indexes.split(",") if s.strip()]:
        spec = choose_index(requested, entries, dim)
        base = {"entries": entries, "dim": dim, "requested": requested, "index": spec.describe(),
                "k": args.k, "ppl_exact": ppl_exact, **common,
                "keys_file_mb": round(file_mb(keys_folder / "keys.f16"), 1)}
        hnsw_bytes = entries * dim * 4
        if spec.kind == "hnsw" and hnsw_bytes > available_bytes() / 2:
            why = (f"HNSW needs {hnsw_bytes / 2**30:.1f} GiB of float32 vectors, more than half of the "
                   f"{available_bytes() / 2**30:.1f} GiB available")
            log(f"skipping {requested} at {entries:,}: {why}")
            rows.append({**base, "skipped": why})
            continue
        folder, built = ensure_index(work, keys_folder, entries, spec)
        log(f"measuring {entries:,} {requested} ({spec.describe()}) in a fresh process")
        measured = run_child(args, folder, heldout_path, exact_path)
        rows.append(finished_row(args, {**base, **built, **measured}))
    if args.pca or args.prune:
        from knn_explorer.core.datastore.compression import Compression

        compression = Compression(pca_dim=args.pca, prune_k=args.prune)
        folder, built = ensure_compressed(work, keys_folder, entries, compression)
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        log(f"measuring {entries:,} compressed ({manifest['index_description']}) in a fresh process")
        measured = run_child(args, folder, heldout_path, exact_path)
        row = {"entries": entries, "dim": manifest["dim"], "requested": f"auto, {compression.to_json()}",
               "k": args.k, "ppl_exact": ppl_exact, **common, "compression": manifest["compression"],
               "keys_file_mb": round(file_mb(folder / "keys.f16"), 1), **built, **measured}
        rows.append(finished_row(args, row, " (of the uncompressed exact neighbours)"))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0

    from knn_explorer.core.models import load_model
    from knn_explorer.core.runtime import configure_threads

    args.threads = configure_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["KNN_EXPLORER_HOME"] = str(work / "home")
    model = load_model(str(ensure_model(work)), device="cpu")
    real = ensure_real(work, model)
    heldout_path = ensure_heldout(work, model, args.heldout_tokens)
    heldout = dict(np.load(heldout_path))
    dim = int(heldout["keys"].shape[1])
    step_ms = lm_step_ms(model, np.fromfile(real / "tokens.i32", dtype=np.int32)[:PROMPT_TOKENS])
    log(f"LM step: {step_ms:.1f} ms per token")
    ppl_lm = float(np.exp(-heldout["log_p_lm"].mean()))
    common = {"lm_step_ms": step_ms, "ppl_lm": ppl_lm, "threads": args.threads,
              "nprobe_override": args.nprobe, "load_average": [round(x, 2) for x in os.getloadavg()]}
    del model  # the children do not need it, nor does anything below
    rows = []
    for entries in [int(s) for s in args.entries.split(",") if s.strip()]:
        rows += measure_size(args, work, real, entries, dim, heldout_path, heldout, common)
    if not args.json:
        print_table(rows, {"dim": dim, "k": args.k, "queries": min(args.queries, len(heldout["keys"])),
                           "heldout": len(heldout["targets"]), "ppl_lm": ppl_lm, "threads": args.threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())

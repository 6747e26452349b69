#!/usr/bin/env python
"""Core performance benchmark for knn_explorer: datastore build and step generation.

Measures, on the CPU (or --device), with nothing but perf_counter, getrusage, numpy and torch:

  1. build throughput / bare-model encoding throughput on a corpus of >= --tokens tokens
     (target >= 0.8). Build = the whole build_datastore(...) call (reading, encoding, indexing,
     catalog). Bare = the same documents read and tokenized, then run through LoadedModel.forward
     (full forward) in the same sliding windows and batches, with no key capture and no writes.
  2. peak RSS of a build at two corpus sizes, each in a fresh child process
     (target: large / small <= 1.15, i.e. memory does not grow with the corpus).
  3. generation tokens/s (StepGenerator, greedy, 64 new tokens) without retrieval and with kNN-LM
     over a datastore of resources/demo/docs (target: >= 50 tokens/s without retrieval).

It reports timings; it never fails because of them (exit status 0 unless something crashes).
Human-readable output by default, one JSON object on stdout with --json. Progress goes to stderr.

    python benchmarks/bench_core.py                      # full run, demo model, 200k tokens
    python benchmarks/bench_core.py --tokens 20000 --model /tmp/some_model --json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

DEMO_DIR = ROOT / "resources" / "demo"
CORPUS_SOURCES = (DEMO_DIR / "docs", DEMO_DIR / "heldout")

TARGET_BUILD_RATIO = 0.8  # build tokens/s >= 0.8 x bare encoding tokens/s
TARGET_MEMORY_RATIO = 1.15  # peak RSS(large corpus) <= 1.15 x peak RSS(small corpus)
TARGET_GEN_TOKENS_PER_S = 50.0  # demo model, no retrieval

PROMPT = "A Flask application is an instance of the Flask class. To register a view function, use the"

_t0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _t0:7.1f}s] {message}", file=sys.stderr, flush=True)


def maxrss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size in MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    value = resource.getrusage(who).ru_maxrss
    return value / (1024 * 1024) if sys.platform == "darwin" else value / 1024


def peak_rss_self_mb() -> tuple[float, str]:
    """This process's own peak RSS in MB, and where it was read.

    Linux: VmHWM of /proc/self/status, the high-water mark of this process's address space since
    its exec. ru_maxrss is not used there because a child started with fork/vfork + exec inherits
    its parent's peak: a child of a 600 MB parent reports ru_maxrss >= 600 MB however small it is.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "VmHWM"
    except OSError:
        pass
    return maxrss_mb(), "ru_maxrss"


def _load_average() -> list[float] | None:
    """1/5/15-minute load averages: other work on the machine makes every timing here slower."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def status(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# ---------------------------------------------------------------------------------------------
# corpus


def source_files() -> list[tuple[Path, Path]]:
    """(source root, file) for every document the builder would read in the demo folders."""
    from knn_explorer.core.datastore import documents as docs

    out = []
    for root in CORPUS_SOURCES:
        files, _skipped = docs.discover([root])
        out += [(root.resolve(), f) for f in files]
    return out


def count_tokens(tokenizer, path: Path) -> int:
    from knn_explorer.core.datastore import documents as docs

    try:
        text = docs.read_document(path).text
    except docs.DocumentError:
        return 0
    n = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    return n if n >= 2 else 0  # the builder skips documents shorter than 2 tokens


def write_corpus(folder: Path, target_tokens: int, sources: list[tuple[Path, Path, int]]) -> dict:
    """Copy the demo documents into folder/copyNN/<docs|heldout>/... until >= target_tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    total = files = copy = 0
    per_copy = sum(n for _r, _f, n in sources)
    if per_copy == 0:
        raise SystemExit("the demo documents contain no tokens")
    while total < target_tokens:
        for root, path, n in sources:
            if total >= target_tokens:
                break
            dest = folder / f"copy{copy:03d}" / root.name / path.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            total += n
            files += 1
        copy += 1
    return {"folder": str(folder), "tokens": total, "files": files, "copies": copy}


# ---------------------------------------------------------------------------------------------
# 1. build vs bare encoding


def bare_encode(model, folder: Path, params, last_logits_only: bool = False) -> dict:
    """Read + tokenize every document of `folder`, then run the model over the builder's windows
    and batches. No key capture, nothing written."""
    import numpy as np
    import torch

    from knn_explorer.core.datastore import documents as docs
    from knn_explorer.core.datastore.tokenizing import tokenize_with_offsets
    from knn_explorer.core.windows import sliding_windows

    context_length = min(params.context_length, model.max_positions)
    stride = max(1, min(params.stride, context_length - 1))
    pad = model.tokenizer.pad_token_id
    pad = pad if pad is not None else 0

    cpu_started = cpu_seconds()
    started = time.perf_counter()
    candidates, _skipped = docs.discover([folder])
    token_lists = []
    for path in candidates:
        try:
            text = docs.read_document(path, params.max_file_bytes).text
        except docs.DocumentError:
            continue
        ids, _starts = tokenize_with_offsets(model.tokenizer, text)
        if len(ids) >= 2:
            token_lists.append(ids)
    tokenized = time.perf_counter()

    def run(batch):
        longest = max(len(w) for w in batch)
        ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, w in enumerate(batch):
            ids[row, : len(w)] = torch.from_numpy(w.astype(np.int64))
            mask[row, : len(w)] = 1
        out = model.forward(ids.to(model.device), mask.to(model.device), last_logits_only=last_logits_only)
        _ = out.logits  # the output exists; nothing is kept

    windows = 0
    batch: list = []
    with torch.inference_mode():
        for ids in token_lists:
            for span in sliding_windows(len(ids), context_length, stride):
                batch.append(ids[span.begin : span.end])
                windows += 1
                if len(batch) == params.batch_size:
                    run(batch)
                    batch = []
        if batch:
            run(batch)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
    finished = time.perf_counter()
    cpu = cpu_seconds() - cpu_started
    tokens = int(sum(len(t) for t in token_lists))
    return {
        "tokens": tokens,
        "documents": len(token_lists),
        "windows": windows,
        "seconds": finished - started,
        "tokenize_seconds": tokenized - started,
        "forward_seconds": finished - tokenized,
        "tokens_per_s": tokens / (finished - started),
        "forward_tokens_per_s": tokens / (finished - tokenized),
        "cpu_seconds": cpu,
    }


def timed_build(model, folder: Path, home: Path, index: str, params_kwargs: dict) -> dict:
    """build_datastore in its own data home; wall time of the whole call."""
    from knn_explorer.core.datastore.catalog import Catalog
    from knn_explorer.core.datastore.builder import BuildParameters
    from knn_explorer.core.datastore.library import build_datastore

    os.environ["KNN_EXPLORER_HOME"] = str(home)
    catalog = Catalog()
    params = BuildParameters(index=index, **params_kwargs)
    cpu_started = cpu_seconds()
    started = time.perf_counter()
    report = build_datastore(catalog, "bench", model, [folder], params)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_started
    catalog.engine.dispose()
    manifest = report.manifest
    return {
        "tokens": int(manifest["tokens"]),
        "entries": int(manifest["entries"]),
        "documents": len(report.documents),
        "skipped": len(report.skipped),
        "index": manifest.get("index_description"),
        "seconds": seconds,
        "phase_seconds": {k: round(v, 3) for k, v in report.seconds.items()},
        "tokens_per_s": int(manifest["tokens"]) / seconds,
        "cpu_seconds": cpu,
    }


def warm_up(model, params) -> None:
    import torch

    length = min(params.context_length, model.max_positions)
    ids = torch.randint(0, model.vocab_size, (params.batch_size, length), device=model.device)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        for last in (False, True):
            model.forward(ids, mask, last_logits_only=last)


def bench_build_vs_bare(model, corpus: dict, index: str, params_kwargs: dict, trunk: bool, tmp: Path,
                        repeat: int = 1) -> dict:
    """Bare pass and build, alternated `repeat` times; the fastest of each is compared."""
    from knn_explorer.core.datastore.builder import BuildParameters

    params = BuildParameters(index=index, **params_kwargs)
    folder = Path(corpus["folder"])
    warm_up(model, params)
    bares, builds, trunks = [], [], []
    for i in range(repeat):
        log(f"[{i + 1}/{repeat}] bare encoding of {corpus['tokens']:,} tokens (full forward)")
        bares.append(bare_encode(model, folder, params))
        log(f"  {bares[-1]['tokens_per_s']:,.0f} tokens/s in {bares[-1]['seconds']:.1f}s")
        if trunk:
            log("bare encoding, last_logits_only=True (the forward the builder runs)")
            trunks.append(bare_encode(model, folder, params, last_logits_only=True))
            log(f"  {trunks[-1]['tokens_per_s']:,.0f} tokens/s in {trunks[-1]['seconds']:.1f}s")
        log(f"[{i + 1}/{repeat}] build_datastore(index={index}) of the same folder")
        builds.append(timed_build(model, folder, tmp / f"home-build-{i}", index, params_kwargs))
        log(f"  {builds[-1]['tokens_per_s']:,.0f} tokens/s in {builds[-1]['seconds']:.1f}s {builds[-1]['phase_seconds']}")
    fastest = lambda runs: max(runs, key=lambda r: r["tokens_per_s"])  # noqa: E731
    bare, build = fastest(bares), fastest(builds)
    trunk_run = fastest(trunks) if trunks else None
    ratio = build["tokens_per_s"] / bare["tokens_per_s"]
    result = {
        "repeat": repeat,
        "bare_runs_seconds": [r["seconds"] for r in bares],
        "build_runs_seconds": [r["seconds"] for r in builds],
        "cpu_time_ratio": bare["cpu_seconds"] / build["cpu_seconds"],
        "corpus": corpus,
        "index_kind": index,
        "context_length": params.context_length,
        "stride": params.stride,
        "batch_size": params.batch_size,
        "bare": bare,
        "build": build,
        "ratio": ratio,
        "target": f">= {TARGET_BUILD_RATIO}",
        "status": status(ratio >= TARGET_BUILD_RATIO),
        "same_tokens": bare["tokens"] == build["tokens"],
    }
    if trunk_run is not None:
        result["bare_last_logits_only"] = trunk_run
        result["ratio_vs_last_logits_only"] = build["tokens_per_s"] / trunk_run["tokens_per_s"]
    return result


# ---------------------------------------------------------------------------------------------
# 2. peak memory, each build in a fresh process


class RssSampler:
    """Peak RssAnon / RssFile from /proc/self/status, sampled (Linux only; informational)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = Path("/proc/self/status").exists()

    def _sample(self) -> None:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(line.split()[1]))  # kB

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.available:
            self._stop.set()
            self._thread.join()
            self._sample()

    def peaks_mb(self) -> dict | None:
        return {k: v / 1024 for k, v in self.peak.items()} if self.available else None


def child_build(args) -> None:
    """--child-build FOLDER: load the model, build, print one JSON line with this process's peak RSS."""
    from knn_explorer.core.models import load_model
    from knn_explorer.core.runtime import configure_threads

    configure_threads(args.threads)
    model = load_model(args.model, device=args.device)
    before, source = peak_rss_self_mb()
    with RssSampler() as sampler:
        build = timed_build(model, Path(args.child_build), Path(args.home), args.index, build_kwargs(args))
    peak, source = peak_rss_self_mb()
    build.update(peak_rss_mb=peak, peak_rss_source=source, peak_rss_before_build_mb=before,
                 ru_maxrss_mb=maxrss_mb(), sampled_peaks_mb=sampler.peaks_mb())
    print(json.dumps(build), flush=True)


def run_child(args, folder: Path, home: Path) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child-build", str(folder), "--home", str(home),
        "--model", args.model, "--device", args.device, "--index", args.index,
        "--context-length", str(args.context_length), "--stride", str(args.stride),
        "--batch-size", str(args.batch_size),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child build failed (exit {proc.returncode}): {' '.join(cmd)}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["child_wall_seconds"] = time.perf_counter() - started
    # Informational: the largest ru_maxrss of any child so far. Like the child's own ru_maxrss it
    # includes this (parent) process's peak, inherited across fork + exec, so it is not the build's.
    result["rusage_children_max_mb"] = maxrss_mb(resource.RUSAGE_CHILDREN)
    result["parent_peak_rss_mb"] = peak_rss_self_mb()[0]
    return result


def bench_memory(args, small: dict, large: dict, tmp: Path) -> dict:
    runs = {}
    for label, corpus in (("small", small), ("large", large)):
        log(f"child build ({label}, {corpus['tokens']:,} tokens, index={args.index})")
        runs[label] = run_child(args, Path(corpus["folder"]), tmp / f"home-mem-{label}")
        log(f"  peak RSS {runs[label]['peak_rss_mb']:.0f} MB ({runs[label]['seconds']:.1f}s build)")
    ratio = runs["large"]["peak_rss_mb"] / runs["small"]["peak_rss_mb"]
    growth = {  # informational: what the build itself added over the loaded model
        label: run["peak_rss_mb"] - run["peak_rss_before_build_mb"] for label, run in runs.items()
    }
    return {
        "small": runs["small"],
        "large": runs["large"],
        "ratio": ratio,
        "target": f"<= {TARGET_MEMORY_RATIO}",
        "status": status(ratio <= TARGET_MEMORY_RATIO),
        "build_growth_mb": growth,
    }


# ---------------------------------------------------------------------------------------------
# 3. generation


def generate_seconds(model, method, n: int) -> float:
    """`method`: a registered Method instance, or None for the LM alone."""
    from knn_explorer.core.generation.step_generator import GenerationSettings, StepGenerator

    settings = GenerationSettings(max_new_tokens=n, greedy=True, stop_at_eos=False)
    started = time.perf_counter()
    records = list(StepGenerator(model, PROMPT, settings, method))
    seconds = time.perf_counter() - started
    if len(records) != n:  # correctness, not timing
        raise RuntimeError(f"{records[0].method}: expected {n} generated tokens, got {len(records)}")
    return seconds


def bench_generation(model, args, tmp: Path) -> dict:
    from knn_explorer.core.datastore.catalog import Catalog
    from knn_explorer.core.datastore.builder import BuildParameters
    from knn_explorer.core.mechanisms.knnlm import KnnLmSettings
    from knn_explorer.core.datastore.library import build_datastore, open_datastore
    from knn_explorer.core.methods import Resources
    from knn_explorer.core.methods.knnlm import KnnLmMethod

    os.environ["KNN_EXPLORER_HOME"] = str(tmp / "home-gen")
    catalog = Catalog()
    docs_folder = Path(args.gen_docs).resolve()
    log(f"building the generation datastore from {docs_folder} (index=auto)")
    started = time.perf_counter()
    report = build_datastore(catalog, "demo-docs", model, [docs_folder], BuildParameters(**build_kwargs(args)))
    build_seconds = time.perf_counter() - started
    datastore = open_datastore(catalog, "demo-docs", model)
    knn = KnnLmMethod(model, KnnLmSettings(), Resources(datastore))
    n = args.new_tokens
    out = {"new_tokens": n, "repeats": args.gen_repeats, "prompt": PROMPT,
           "datastore": {"documents": str(docs_folder), "entries": int(report.manifest["entries"]), "index": report.manifest.get("index_description"),
                         "build_seconds": build_seconds},
           "knn_settings": {"k": knn.settings.k, "lambda": knn.settings.lambda_,
                            "exact_distances": knn.settings.exact_distances}}
    for method, runs in (("none", None), ("knnlm", knn)):
        generate_seconds(model, runs, 8)  # warm-up
        times = [generate_seconds(model, runs, n) for _ in range(args.gen_repeats)]
        median = statistics.median(times)
        out[method] = {"seconds": times, "median_seconds": median, "tokens_per_s": n / median}
        log(f"generation {method}: {n / median:.1f} tokens/s (runs: {', '.join(f'{t:.2f}s' for t in times)})")
    out["slowdown"] = out["none"]["tokens_per_s"] / out["knnlm"]["tokens_per_s"]
    out["target"] = f"none >= {TARGET_GEN_TOKENS_PER_S:g} tokens/s"
    out["status"] = status(out["none"]["tokens_per_s"] >= TARGET_GEN_TOKENS_PER_S)
    catalog.engine.dispose()
    return out


# ---------------------------------------------------------------------------------------------
# report


def print_report(res: dict) -> None:
    env = res["environment"]
    print(f"knn_explorer core benchmark — model {env['model']} on {env['device']}, {env['threads']} threads, "
          f"{env['cpu_count']} CPUs, torch {env['torch']}, faiss {env['faiss']}, python {env['python']}")
    if "build_vs_bare" in res:
        r = res["build_vs_bare"]
        b, bare = r["build"], r["bare"]
        print(f"\n1. Build throughput vs bare encoding  ({r['corpus']['tokens']:,} tokens in {bare['documents']} documents, "
              f"{bare['windows']:,} windows; context {r['context_length']}, stride {r['stride']}, batch {r['batch_size']})")
        print(f"   bare forward (full)     {bare['tokens_per_s']:>10,.0f} tokens/s   {bare['seconds']:7.1f} s "
              f"(read+tokenize {bare['tokenize_seconds']:.1f} s, forward {bare['forward_seconds']:.1f} s)")
        if "bare_last_logits_only" in r:
            t = r["bare_last_logits_only"]
            print(f"   bare, last logits only  {t['tokens_per_s']:>10,.0f} tokens/s   {t['seconds']:7.1f} s  (info)")
        phases = ", ".join(f"{k} {v:.1f}" for k, v in b["phase_seconds"].items())
        print(f"   build_datastore         {b['tokens_per_s']:>10,.0f} tokens/s   {b['seconds']:7.1f} s "
              f"({phases}; {b['index']})")
        print(f"   ratio build / bare      {r['ratio']:>10.2f}   target {r['target']:<8} {r['status']}")
        print(f"   CPU seconds: bare {bare['cpu_seconds']:.1f}, build {b['cpu_seconds']:.1f} -> ratio {r['cpu_time_ratio']:.2f} "
              f"(info: less sensitive to other load than wall time)")
        if r["repeat"] > 1:
            print(f"   runs (s): bare {', '.join(f'{t:.1f}' for t in r['bare_runs_seconds'])}; "
                  f"build {', '.join(f'{t:.1f}' for t in r['build_runs_seconds'])}  (fastest of each compared)")
        if "ratio_vs_last_logits_only" in r:
            print(f"   ratio build / bare(last logits only) {r['ratio_vs_last_logits_only']:.2f}  (info)")
        if not r["same_tokens"]:
            print(f"   note: token counts differ (bare {bare['tokens']:,}, build {b['tokens']:,})")
    if "memory" in res:
        m = res["memory"]
        source = m["large"]["peak_rss_source"]
        print(f"\n2. Peak RSS of a build (fresh process each, index {res['config']['index']}; peak = the child's {source})")
        for label in ("small", "large"):
            run = m[label]
            extra = ""
            if run.get("sampled_peaks_mb"):
                s = run["sampled_peaks_mb"]
                extra = f"; sampled peak anon {s['RssAnon']:.0f} MB, file-backed {s['RssFile']:.0f} MB"
            phases = ", ".join(f"{k} {v:.1f}" for k, v in run["phase_seconds"].items())
            print(f"   {label:<5} {run['tokens']:>9,} tokens   peak {run['peak_rss_mb']:7.0f} MB "
                  f"(after model load {run['peak_rss_before_build_mb']:.0f} MB, build +{m['build_growth_mb'][label]:.0f} MB{extra}); "
                  f"build {run['seconds']:.1f} s ({phases})")
        print(f"   ratio large / small     {m['ratio']:>10.2f}   target {m['target']:<8} {m['status']}")
        if source == "VmHWM":
            print(f"   (the children's ru_maxrss reads {m['small']['ru_maxrss_mb']:.0f} / {m['large']['ru_maxrss_mb']:.0f} MB: "
                  f"it includes this parent's peak, {m['large']['parent_peak_rss_mb']:.0f} MB, inherited across fork+exec)")
    if "generation" in res:
        g = res["generation"]
        print(f"\n3. Generation, {g['new_tokens']} new tokens, greedy, median of {g['repeats']} "
              f"(datastore: {g['datastore']['documents']}, {g['datastore']['entries']:,} entries, {g['datastore']['index']}, "
              f"k={g['knn_settings']['k']})")
        print(f"   without retrieval       {g['none']['tokens_per_s']:>10.1f} tokens/s   target >= "
              f"{TARGET_GEN_TOKENS_PER_S:g}   {g['status']}")
        print(f"   with kNN-LM             {g['knnlm']['tokens_per_s']:>10.1f} tokens/s")
        for method in ("none", "knnlm"):
            print(f"   ({method} runs: {', '.join(f'{t:.2f} s' for t in g[method]['seconds'])})")
        print(f"   slowdown none / knnlm   {g['slowdown']:>10.2f}x")
    print(f"\ntotal {res['total_seconds']:.0f} s; load average (1/5/15 min) at start {env['load_average_start']}, "
          f"at end {env['load_average_end']} — a busy machine slows every number above")


def build_kwargs(args) -> dict:
    return {"context_length": args.context_length, "stride": args.stride, "batch_size": args.batch_size}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="demo (default), or a local model folder")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--threads", type=int, default=None, help="torch/FAISS threads (default: configure_threads())")
    p.add_argument("--tokens", type=int, default=200_000, help="corpus size for measurements 1 and 2 (default 200000)")
    p.add_argument("--small-tokens", type=int, default=None, help="smaller corpus for measurement 2 (default tokens/2)")
    p.add_argument("--index", default="ivfpq", help="index kind for measurements 1 and 2 (default ivfpq)")
    p.add_argument("--context-length", type=int, default=256)
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per run in measurement 3")
    p.add_argument("--gen-docs", default=str(DEMO_DIR / "docs"),
                   help="documents of the kNN-LM datastore for measurement 3 (default resources/demo/docs)")
    p.add_argument("--gen-repeats", type=int, default=3, help="generation runs per method (median reported)")
    p.add_argument("--only", default="1,2,3", help="which measurements to run, e.g. 1,3 (default all)")
    p.add_argument("--repeat", type=int, default=1,
                   help="measurement 1: alternate bare pass and build this many times, compare the fastest of each")
    p.add_argument("--trunk-baseline", action="store_true",
                   help="also time a bare pass with last_logits_only=True, the forward the builder runs (info)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (its path goes to stderr)")
    p.add_argument("--child-build", metavar="FOLDER", help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child_build:
        child_build(args)
        return 0

    import faiss
    import torch

    from knn_explorer.core.models import load_model
    from knn_explorer.core.runtime import configure_threads

    only = {s.strip() for s in args.only.split(",") if s.strip()}
    threads = configure_threads(args.threads)
    args.threads = threads
    log(f"loading model {args.model} on {args.device} ({threads} threads)")
    model = load_model(args.model, device=args.device)

    tmp = Path(tempfile.mkdtemp(prefix="knn-bench-"))
    log(f"temporary folder {tmp}")
    started = time.perf_counter()
    res: dict = {
        "environment": {"model": model.name, "device": str(model.device), "threads": threads,
                        "cpu_count": os.cpu_count(), "torch": torch.__version__, "faiss": faiss.__version__,
                        "python": platform.python_version(), "platform": platform.platform(),
                        "load_average_start": _load_average(),
                        "omp_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}},
        "config": {"tokens": args.tokens, "index": args.index, **build_kwargs(args),
                   "new_tokens": args.new_tokens},
    }
    try:
        if only & {"1", "2"}:
            sources = [(root, path, count_tokens(model.tokenizer, path)) for root, path in source_files()]
            log(f"demo documents: {len(sources)} files, {sum(n for *_x, n in sources):,} tokens per copy")
            large = write_corpus(tmp / "corpus-large", args.tokens, sources)
            log(f"corpus: {large['tokens']:,} tokens, {large['files']} files, {large['copies']} copies")
        if "1" in only:
            res["build_vs_bare"] = bench_build_vs_bare(model, large, args.index, build_kwargs(args),
                                                       args.trunk_baseline, tmp, max(1, args.repeat))
        if "2" in only:
            small_target = args.small_tokens or args.tokens // 2
            small = write_corpus(tmp / "corpus-small", small_target, sources)
            log(f"small corpus: {small['tokens']:,} tokens, {small['files']} files")
            res["memory"] = bench_memory(args, small, large, tmp)
        if "3" in only:
            res["generation"] = bench_generation(model, args, tmp)
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    res["total_seconds"] = time.perf_counter() - started
    res["environment"]["load_average_end"] = _load_average()
    if args.json:
        print(json.dumps(res, indent=2, default=str))
    else:
        print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())

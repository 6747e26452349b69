#!/usr/bin/env python
"""Peak memory of reading one huge single-line text file into a datastore, at 5 MB and 50 MB.

Target: the 50 MB file builds within the peak memory of the 5 MB one, ±20% (peak 50 / peak 5 <=
1.2). Before text was streamed, the 50 MB file took 7.9 GB: the tokenizer was asked for the
offsets of every token of the whole document at once.

Each size runs in a fresh child process that loads the model, then runs the build:
  --phase reading (default)  the reading phase only: read, decode, tokenize, write tokens,
                             values, positions and texts/<id>.txt. The model's forward passes
                             are not needed to measure it, and 12M tokens would take an hour on
                             two CPU cores.
  --phase build              the whole build (reading, encoding, indexing, catalog), e.g. on a GPU
                             with --device cuda. Encoding reads tokens.i32 whole (4 bytes a token:
                             ~50 MB for the 50 MB file), which this ratio then includes.
Peak = the child's VmHWM (Linux; ru_maxrss elsewhere), also shown after the model load so what
the build itself added can be read off.

    python benchmarks/bench_reading_memory.py                   # 5 MB and 50 MB, reading phase
    python benchmarks/bench_reading_memory.py --sizes 1,10 --json
    python benchmarks/bench_reading_memory.py --phase build --device cuda --index flat
It reports; it never fails because of a number (exit status 0 unless something crashes).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from bench_core import peak_rss_self_mb as peak_rss_mb  # noqa: E402  (VmHWM, not a forked child's ru_maxrss)

TARGET_RATIO = 1.2
MB = 1024 * 1024
WORDS = (
    "the datastore maps each context to the token that followed it retrieval helps when test text "
    "resembles stored text a flask application registers view functions with the route decorator "
    "keys are hidden states values are next tokens neighbours vote with weights from their distances "
    "interpolation mixes the language model with the nearest neighbour distribution lambda temperature"
).split()

_t0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _t0:7.1f}s] {message}", file=sys.stderr, flush=True)


def write_single_line(path: Path, size_bytes: int, seed: int = 0) -> None:
    """Words separated by spaces and no newline at all, written a megabyte at a time."""
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="ascii") as f:
        while written < size_bytes:
            chunk = " ".join(rng.choices(WORDS, k=MB // 6)) + " "
            chunk = chunk[: size_bytes - written]
            f.write(chunk)
            written += len(chunk)


# ---------------------------------------------------------------------------------------------
# the child: one build in a fresh process


def child(args) -> None:
    from knn_explorer.core.datastore.catalog import Catalog
    from knn_explorer.core.datastore.builder import BuildParameters, DatastoreBuilder
    from knn_explorer.core.datastore.library import build_datastore
    from knn_explorer.core.models import load_model
    from knn_explorer.core.runtime import configure_threads

    configure_threads(args.threads)
    model = load_model(args.model, device=args.device)
    before, _ = peak_rss_mb()
    params = BuildParameters(index=args.index, device=args.device, batch_size=args.batch_size)
    source = Path(args.child)
    started = time.perf_counter()
    if args.phase == "reading":
        folder = Path(args.home) / "datastore"
        folder.mkdir(parents=True)
        DatastoreBuilder(folder, "reading", model, [source], params)._read_documents()
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    else:
        os.environ["KNN_EXPLORER_HOME"] = args.home
        manifest = build_datastore(Catalog(), "memory", model, [source], params).manifest
    seconds = time.perf_counter() - started
    peak, where = peak_rss_mb()
    print(json.dumps({"bytes": source.stat().st_size, "tokens": manifest["tokens"], "seconds": seconds,
                      "peak_rss_mb": peak, "peak_source": where, "after_model_load_mb": before}), flush=True)


def run_child(args, text_file: Path, home: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(text_file), "--home", str(home),
           "--model", args.model, "--device", args.device, "--phase", args.phase, "--index", args.index,
           "--batch-size", str(args.batch_size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="5,50", help="two file sizes in MB, small first (default 5,50)")
    p.add_argument("--phase", choices=("reading", "build"), default="reading")
    p.add_argument("--model", default="demo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--index", default="flat")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    small_mb, large_mb = (float(s) for s in args.sizes.split(","))
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-reading-") as tmp:
        for label, size_mb in (("small", small_mb), ("large", large_mb)):
            text_file = Path(tmp) / f"{label}-single-line.txt"
            write_single_line(text_file, int(size_mb * MB))
            log(f"{label}: {size_mb:g} MB single line, phase {args.phase}, fresh process")
            runs[label] = run_child(args, text_file, Path(tmp) / f"home-{label}")
            log(f"  peak {runs[label]['peak_rss_mb']:.0f} MB ({runs[label]['tokens']:,} tokens, "
                f"{runs[label]['seconds']:.1f} s)")
            text_file.unlink()
    ratio = runs["large"]["peak_rss_mb"] / runs["small"]["peak_rss_mb"]
    result = {"phase": args.phase, "model": args.model, "device": args.device, **runs, "ratio": ratio,
              "target": f"<= {TARGET_RATIO}", "status": "PASS" if ratio <= TARGET_RATIO else "MISS"}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"Peak RSS, one single-line text file per fresh process ({args.phase} phase, model {args.model}, "
          f"peak = the child's {runs['large']['peak_source']})")
    for label in ("small", "large"):
        run = runs[label]
        growth = run["peak_rss_mb"] - run["after_model_load_mb"]
        print(f"  {run['bytes'] / MB:6.1f} MB  {run['tokens']:>11,} tokens  peak {run['peak_rss_mb']:7.0f} MB "
              f"(after model load {run['after_model_load_mb']:.0f} MB, +{growth:.0f} MB)  {run['seconds']:.1f} s")
    print(f"  ratio large / small = {ratio:.3f}   target {result['target']}   {result['status']}")


if __name__ == "__main__":
    main()

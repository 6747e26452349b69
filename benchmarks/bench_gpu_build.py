"""GPU build benchmark: encoding and IVF-PQ training on CUDA vs CPU, same model, same corpus.

    python benchmarks/bench_gpu_build.py [--tokens 200000] [--json]

Uses a randomly initialised GPT-2-small-sized model (12 layers, 768 dims; throughput does not
depend on the weights) so it runs offline anywhere. Prints tokens/s per phase and the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def make_corpus(folder: Path, tokens: int, tokenizer) -> int:
    texts = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "resources/demo/docs").rglob("*.rst"))]
    total, copy = 0, 0
    while total < tokens:
        for i, text in enumerate(texts):
            (folder / f"copy{copy}-{i}.txt").write_text(text, encoding="utf-8")
            total += len(tokenizer(text)["input_ids"])
            if total >= tokens:
                break
        copy += 1
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from tiny_models import tiny_tokenizer
    from knn_explorer.core.datastore.catalog import Catalog
    from knn_explorer.core.datastore.builder import BuildParameters
    from knn_explorer.core.datastore.library import build_datastore
    from knn_explorer.core.models import load_model
    from knn_explorer.core.runtime import configure_threads

    configure_threads()
    work = Path(tempfile.mkdtemp())
    tokenizer = tiny_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_layer=12, n_embd=768, n_head=12)
    GPT2LMHeadModel(config).save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    (work / "docs").mkdir()
    tokens = make_corpus(work / "docs", args.tokens, tokenizer)

    results = {"tokens": tokens, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    for device in (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]:
        os.environ["KNN_EXPLORER_HOME"] = str(work / f"home-{device}")
        model = load_model(str(work / "model"), device=device)
        params = BuildParameters(context_length=256, stride=128, batch_size=32 if device == "cuda" else 8,
                                 index="ivfpq", device=device)
        started = time.perf_counter()
        report = build_datastore(Catalog(), device, model, [work / "docs"], params)
        total = time.perf_counter() - started
        results[device] = {"seconds": report.seconds, "total_seconds": total,
                           "encode_tokens_per_s": report.manifest["entries"] / report.seconds["encoding"],
                           "index": report.manifest["index_description"]}
        del model
    if "cuda" in results:
        results["encode_speedup_cuda_over_cpu"] = results["cuda"]["encode_tokens_per_s"] / results["cpu"]["encode_tokens_per_s"]
        results["index_seconds_cuda_vs_cpu"] = [results["cuda"]["seconds"]["indexing"], results["cpu"]["seconds"]["indexing"]]
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=None if args.json else 2))


if __name__ == "__main__":
    main()

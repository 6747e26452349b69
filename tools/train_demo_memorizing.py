"""Fine-tune the demo model with its Memorizing Transformer memory: the recipe for the demo's adapter.

Not shipped yet: the demo model cannot copy from its own context, so on it no variant of this
recipe has made the memory help (resources/demo/README.md, "Fine-tuning with the memory"). With
`--out` elsewhere it is the experiment; with the default it would replace the gate-only adapter.

    nice -n 15 .venv/bin/python tools/train_demo_memorizing.py [--layer 3] [--steps 240]
        [--out resources/demo/memtrf-adapter.safetensors]

As the paper (Wu et al. 2022) fine-tunes a pretrained model to use its memory:

- **Memory**: a kNN memory in one attention layer (`--layer`, default 3 of 0–3: see
  resources/demo/README.md for the measurement that chose it over layer 2, the ¾-depth layer),
  keys and queries normalised for the lookup, keys stored before the rotary embedding, a FIFO of
  `--memory` tokens of the same document, k = 32 entries per head, per-head learned gates.
- **What is trained**: the gate biases and the memory layer and every layer above it (attention,
  SwiGLU feed-forward, both RMSNorms) plus the final norm; the layers below and the tied
  embeddings stay frozen, so the memory layer's input — what its keys are made from — is the base
  model's (`core/training/memory_finetuning.py`). AdamW, lr `--lr` (warm-up 10 updates, cosine to
  a tenth), gates lr 0.05 from σ(−2); `--per-step` segments per update, gradients clipped to 1.
- **Training text**: the long files of the Python 3.11 documentation the demo model was trained on
  (Debian's python3.11-doc, the same training split as tools/train_demo_model.py; files of at
  least `--min-tokens` tokens, longest first), read as documents in consecutive `--segment`-token
  segments with the memory carried across a document's segments. The model's own training text, so
  fine-tuning teaches it to use the memory, not a new domain: the fine-tuned model without memory
  stays close to the base model on the Flask text (the sweep's 0 point says how close).
- **Held-out text**: resources/demo/heldout (Flask documentation, never seen) read as ONE document
  in path order (31k tokens; each file alone is at most ~6k tokens, too short for a memory sweep
  past 4k). Printed: perplexity of the LM alone, and of the Memorizing Transformer with memories
  of 0 (the fine-tuned model alone), 1k, 4k, 16k and 32k tokens, on windows of 256 tokens every
  128 (`knn-explorer eval --methods none,memtrf --one-document` and `sweep --param memory
  --one-document` give the same numbers once the adapter is in place).

Deterministic (fixed document order, no sampling or dropout, 2 threads). About 12 minutes on 2 CPU
cores for the defaults. Writes the adapter: gate biases + float16 weight deltas (trained − base)
of the fine-tuned layers, and the training summary in its metadata.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from knn_explorer.core.evaluation.comparison import DOCUMENT_SEPARATOR, compare  # noqa: E402
from knn_explorer.core.evaluation.perplexity import read_heldout  # noqa: E402
from knn_explorer.core.evaluation.sweeps import sweep_memory_size  # noqa: E402
from knn_explorer.core.home import DEMO_DOCS_DIR, DEMO_MEMTRF_ADAPTER, RESOURCES  # noqa: E402
from knn_explorer.core.mechanisms.memorizing import MemorizingRetrofit, MemorizingSettings  # noqa: E402
from knn_explorer.core.methods.lm_alone import LM_ALONE  # noqa: E402
from knn_explorer.core.methods.memorizing import MemorizingTransformerMethod  # noqa: E402
from knn_explorer.core.models import load_model  # noqa: E402
from knn_explorer.core.runtime import configure_threads  # noqa: E402
from knn_explorer.core.training.adapters import save_memorizing_adapter  # noqa: E402
from knn_explorer.core.training.memory_finetuning import FineTuneSettings, train_with_memory  # noqa: E402

HELDOUT = RESOURCES / "demo" / "heldout"
SWEEP = (0, 1024, 4096, 16384, 32768)


def python_documents(model, min_tokens: int, max_tokens: int) -> list[list[int]]:
    """The training split of the Python documentation (as tools/train_demo_model.py splits it):
    the files of at least `min_tokens` tokens, each cut to its first `max_tokens` (so no few long
    files fill the budget), in a fixed shuffled order (seed 0)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from train_demo_model import load_documents

    train, _held_out = load_documents()
    encoded = [model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] for text in train]
    long = [ids[:max_tokens] for ids in encoded if len(ids) >= min_tokens]
    random.Random(0).shuffle(long)
    return long


def flask_documents(model) -> list[list[int]]:
    """resources/demo/docs as one document (path order): the datastore's text."""
    text = DOCUMENT_SEPARATOR.join(read_heldout(DEMO_DOCS_DIR))
    return [model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]]


def evaluate(model, retrofit, heldout: list[str], context: int, stride: int, sizes: list[int]) -> dict:
    method = MemorizingTransformerMethod(model, retrofit=retrofit)
    started = time.monotonic()
    c = compare(model, heldout, [method], context_length=context, stride=stride)
    sweep = sweep_memory_size(model, method, heldout, sizes, context_length=context, stride=stride)
    return {"tokens": c.tokens, "ppl_lm": c.ppl(LM_ALONE), "ppl_memory": c.ppl(method.name),
            "memory": retrofit.settings.memory_size, "context": context, "stride": stride,
            "sweep": {str(p["value"]): p["ppl"] for p in sweep.results}, "seconds": round(time.monotonic() - started)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--memory", type=int, default=8192, help="memory (tokens) during training")
    parser.add_argument("--segment", type=int, default=256)
    parser.add_argument("--per-step", type=int, default=4, help="segments per update")
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--text", choices=["python", "flask"], default="python")
    parser.add_argument("--min-tokens", type=int, default=4096, help="shortest training document (tokens)")
    parser.add_argument("--max-tokens", type=int, default=16384, help="training documents are cut to this many tokens")
    parser.add_argument("--context", type=int, default=256, help="evaluation windows")
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--out", type=Path, default=DEMO_MEMTRF_ADAPTER)
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--eval-chars", type=int, default=0, help="evaluate on the held-out text's first N characters "
                                                                  "(quick trials; default: all of it)")
    parser.add_argument("--sweep", default=",".join(map(str, SWEEP)), help="memory sizes (tokens) to evaluate")
    args = parser.parse_args()
    configure_threads()
    torch.manual_seed(0)
    model = load_model(args.model, device="cpu")
    docs = python_documents(model, args.min_tokens, args.max_tokens) if args.text == "python" else flask_documents(model)
    heldout = DOCUMENT_SEPARATOR.join(read_heldout(HELDOUT))
    heldout = [heldout[: args.eval_chars] if args.eval_chars else heldout]
    print(f"{len(docs)} training documents, {sum(map(len, docs)):,} tokens (longest {len(docs[0]):,}); "
          f"{args.steps} updates read {args.steps * args.per_step * args.segment:,}", flush=True)
    retrofit = MemorizingRetrofit(model, MemorizingSettings(layer=args.layer, memory_size=args.memory))
    settings = FineTuneSettings(segment_length=args.segment, segments_per_step=args.per_step, steps=args.steps,
                                learning_rate=args.lr)
    started = time.monotonic()

    def report(step):
        if step.step % 20 == 0 or step.step == args.steps:
            gates = " ".join(f"{g:.2f}" for g in step.gates)
            print(f"step {step.step:4d}  loss {step.loss:.3f}  gates {gates}  {time.monotonic() - started:5.0f} s",
                  flush=True)

    result = train_with_memory(model, retrofit, docs, settings, on_step=report)
    summary = {**result.summary(), "text": args.text, "documents": len(docs), "segment": args.segment,
               "segments_per_step": args.per_step, "learning_rate": args.lr, "memory": args.memory,
               "fine_tuned": retrofit.tuned_modules()}
    print(f"fine-tuned {', '.join(retrofit.tuned_modules())} in {result.seconds / 60:.1f} min; loss "
          f"{summary['loss_first']:.3f} → {summary['loss_last']:.3f}", flush=True)
    if not args.no_eval:
        retrofit.resize_memory(65_536)
        measured = evaluate(model, retrofit, heldout, args.context, args.stride, [int(v) for v in args.sweep.split(",")])
        summary["heldout"] = measured
        print(f"held-out: {measured['tokens']:,} tokens of {HELDOUT.name}/ as one document, windows "
              f"{args.context}/{args.stride}: LM alone {measured['ppl_lm']:.3f}, Memorizing Transformer "
              f"{measured['ppl_memory']:.3f} ({measured['ppl_memory'] / measured['ppl_lm'] - 1:+.1%})")
        for size, ppl in measured["sweep"].items():
            print(f"  memory {int(size):6,} tokens: perplexity {ppl:.3f}")
    save_memorizing_adapter(args.out, retrofit, summary)
    retrofit.remove()
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the demo's Memorizing Transformer adapter: a copy curriculum, then fine-tuning with the memory.

    .venv/bin/python tools/train_demo_memorizing.py [--copy-steps 1500] [--steps 300]
        [--out resources/demo/memtrf.safetensors]      (output: tools/train_demo_memorizing.log)

- **Memory**: a kNN memory in layer `--layer` (default 3 of 0–3), keys and queries normalised
  for the lookup, keys stored before the rotary embedding, a FIFO of `--memory` tokens of the
  same document, k = 32 entries per head, per-head learned gates. Layer 3 rather than 2 (¾ of the
  depth) because the lookup is an induction step: it needs a previous-token head below it, and
  the demo's forms in layer 2 (resources/demo/README.md).
- **What is trained**: trained copies (`MemorizingRetrofit.tune_layers`) of the layers from
  `--tune-from` (2) up — attention, SwiGLU feed-forward, both RMSNorms — and the final norm, plus
  the gate biases; layers 0–1 and the tied embeddings stay frozen. The model's own weights are never
  written: the adapter holds float16 deltas, used by the memory's passes only.
- **Stage 1, copying** (`core/training/copy_curriculum.py`, `--copy-steps` updates of 16 windows of
  256 tokens, lr `--copy-lr`, no memory): the demo model, after its 30-minute training, cannot copy
  from its own context, and a memory is useless to a model that cannot use what it brings back.
  Windows of the training text, most holding a repeated span or repeated random tokens, teach
  layers 2–3 to copy (a previous-token head in layer 2, an induction head in layer 3).
- **Stage 2, the paper's fine-tuning** (`core/training/memory_finetuning.py`): the long files of the
  Python 3.11 documentation the model was trained on (the training split of
  tools/train_demo_model.py; files of at least `--min-tokens` tokens cut to `--max-tokens`, in a
  fixed shuffled order) read in consecutive `--segment`-token segments, the memory holding each
  document's earlier segments; AdamW lr `--lr` (warm-up 10, cosine to a tenth), gates lr 0.05 from
  σ(−2), `--per-step` segments per update, gradients clipped to 1.
- **Held-out text**: resources/demo/heldout (Flask documentation, never seen) read as ONE document in
  path order (31k tokens; each file alone is at most ~6k tokens, too short for a memory sweep past
  4k). Printed: the LM alone, and the Memorizing Transformer with memories of 0 (the fine-tuned
  model alone), 1k, 4k, 16k and 32k tokens, on windows of 256 tokens every 128 — what
  `knn-explorer eval --methods none,memtrf --one-document` and `sweep --param memory
  --one-document` print with the adapter in place.

Deterministic (seeded curriculum, fixed document order, no dropout, 2 threads). About 30 minutes on
2 CPU cores. Writes the gate biases, the float16 weight deltas and the training summary (metadata).
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
from knn_explorer.core.training.copy_curriculum import CopyCurriculum, teach_copying  # noqa: E402
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


def python_stream(model) -> torch.Tensor:
    """All of the training split, documents joined by the end-of-text token: the copy curriculum's text."""
    sys.path.insert(0, str(ROOT / "tools"))
    from train_demo_model import load_documents

    train, _held_out = load_documents()
    eos = model.tokenizer.eos_token_id or 0
    ids = []
    for text in train:
        ids += model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + [eos]
    return torch.tensor(ids)


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


def repeat_test(model, retrofit, tokens: int = 120) -> dict:
    """Perplexity of a held-out passage's first `tokens` tokens and of their repeat right after, in
    one window, with the retrofit's trained layers (memory empty): does the model copy?"""
    text = (HELDOUT / "tutorial" / "blog.rst").read_text(encoding="utf-8")
    ids = model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"][:tokens]
    x = torch.tensor([ids + ids], device=model.device)
    with torch.no_grad(), retrofit.filling():
        logits = model.model(input_ids=x[:, :-1]).logits[0].float()
    retrofit.reset()
    nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="none")
    return {"first": round(float(nll[: tokens - 1].mean().exp()), 2), "repeat": round(float(nll[tokens - 1:].mean().exp()), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--memory", type=int, default=16384, help="memory (tokens) during training")
    parser.add_argument("--segment", type=int, default=256)
    parser.add_argument("--per-step", type=int, default=4, help="segments per update")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--tune-from", type=int, default=2, help="first trained layer (both stages)")
    parser.add_argument("--copy-steps", type=int, default=1500, help="stage 1: copy-curriculum updates (0: none)")
    parser.add_argument("--copy-lr", type=float, default=2e-3)
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
                                learning_rate=args.lr, tune_from=args.tune_from)
    started = time.monotonic()
    copying = {}
    if args.copy_steps:
        curriculum = CopyCurriculum(steps=args.copy_steps, learning_rate=args.copy_lr, tune_from=args.tune_from)

        def copy_report(step):
            if step.step % 50 == 0 or step.step == args.copy_steps:
                print(f"copy {step.step:4d}  loss {step.loss:.3f}  {time.monotonic() - started:5.0f} s", flush=True)

        copied = teach_copying(model, retrofit, python_stream(model), curriculum, on_step=copy_report)
        copying = {"steps": args.copy_steps, "learning_rate": args.copy_lr, "seconds": round(copied.seconds),
                   "repeat": repeat_test(model, retrofit)}
        print(f"stage 1: {copied.seconds / 60:.1f} min; a repeated passage: {copying['repeat']}", flush=True)

    def report(step):
        if step.step % 20 == 0 or step.step == args.steps:
            gates = " ".join(f"{g:.2f}" for g in step.gates)
            print(f"step {step.step:4d}  loss {step.loss:.3f}  gates {gates}  {time.monotonic() - started:5.0f} s",
                  flush=True)

    result = train_with_memory(model, retrofit, docs, settings, on_step=report)
    summary = {**result.summary(), "copy_curriculum": copying, "text": args.text, "documents": len(docs), "segment": args.segment,
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

"""Train the Memorizing Transformer gates shipped with the demo model, and report what they do.

    .venv/bin/python tools/train_demo_gates.py [--layer 0] [--out resources/demo/memtrf-gates.safetensors]

Trains the per-head gate biases of one layer of the demo model (model frozen) on
resources/demo/docs in segments of 64 tokens with a 4,096-token memory, then prints held-out
perplexity (resources/demo/heldout) with and without memory, and a memory-size sweep. Takes
about 4 minutes on 2 cores. Deterministic: the gates depend only on the documents and settings.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from knn_explorer.core.training.adapters import save_memorizing_adapter  # noqa: E402
from knn_explorer.core.evaluation.perplexity import evaluate_memorizing  # noqa: E402
from knn_explorer.core.training.gate_training import GateTrainingSettings, train_memorizing_gates  # noqa: E402
from knn_explorer.core.home import DEMO_DOCS_DIR, DEMO_MEMTRF_ADAPTER, RESOURCES  # noqa: E402
from knn_explorer.core.mechanisms.memorizing import MemorizingRetrofit, MemorizingSettings  # noqa: E402
from knn_explorer.core.models import load_model  # noqa: E402
from knn_explorer.core.runtime import configure_threads  # noqa: E402

HELDOUT = RESOURCES / "demo" / "heldout"


def texts(folder: Path) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*.rst"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--segment", type=int, default=64)
    parser.add_argument("--memory", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEMO_MEMTRF_ADAPTER)
    args = parser.parse_args()
    configure_threads()
    model = load_model("demo", device="cpu")
    train, heldout = texts(DEMO_DOCS_DIR), texts(HELDOUT)
    retrofit = MemorizingRetrofit(model, MemorizingSettings(layer=args.layer, memory_size=args.memory))
    started = time.monotonic()
    result = train_memorizing_gates(model, retrofit, train,
                                    GateTrainingSettings(epochs=args.epochs, segment_length=args.segment))
    summary = result.summary()
    after = evaluate_memorizing(model, retrofit, heldout, segment_length=args.segment)
    summary["heldout"] = {"tokens": after.tokens, "ppl_lm": after.ppl_lm, "ppl_memory": after.ppl,
                          "segment": args.segment, "memory": args.memory}
    save_memorizing_adapter(args.out, retrofit, summary)
    print(f"trained {summary['steps']} steps in {time.monotonic() - started:.0f} s; gates of layer {retrofit.layer}: "
          + " ".join(f"{g:.4f}" for g in summary["gates"]))
    print(f"held-out ({after.tokens:,} tokens, segments of {args.segment}): LM {after.ppl_lm:.3f} → "
          f"with memory {after.ppl:.3f} ({after.ppl / after.ppl_lm - 1:+.2%})")
    bias = retrofit.gate_bias.detach().clone()
    retrofit.remove()
    for size in (0, 1024, 4096, 16384):
        sized = MemorizingRetrofit(model, MemorizingSettings(layer=args.layer, memory_size=size))
        sized.gate_bias.data.copy_(bias)
        res = evaluate_memorizing(model, sized, heldout, segment_length=args.segment)
        print(f"  memory {size:6,} tokens: perplexity {res.ppl:.3f}")
        sized.remove()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

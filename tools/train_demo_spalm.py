"""Train the demo model's SPALM adapter — the gate and the word embeddings W together, with
Transformer-XL's short-term memory — and measure it on the demo's held-out text.

    .venv/bin/python tools/train_demo_spalm.py [--out resources/demo/spalm.safetensors] [--ablations]

1. The demo datastore (`demo-docs`, from resources/demo/docs) is built in a temporary data home,
   or the one in $KNN_EXPLORER_HOME is used if it is there (`--home` names another).
2. `core/training/spalm_training.py` trains g_t = σ(w_gᵀh_t + b) and W (tied: the model's input and
   output embeddings) with Adam on the datastore's own documents, read as Transformer-XL reads a
   corpus: `--streams` parallel streams, segments of `--segment` tokens, each after the cached
   states of the previous `--memory` tokens. Each position's neighbours (k = 32) come from the
   datastore's *other* documents (its own document left out: held-out text never finds itself);
   the query is the key of the model being trained, the datastore's keys stay as built.
3. The adapter (the gate, and W − the model's W in float16) is written to `--out`.
4. It is read back and scored on resources/demo/heldout exactly as
   `knn-explorer eval --methods none,spalm --context 256 --stride 128` scores it (`compare`: the LM
   alone on sliding windows, SPALM on the same windows with its cache carried from window to window),
   printing the perplexities, SPALM without its memory (g = 1: its W and short-term memory only),
   the gate's statistics and its correlation with the retrieval's usefulness
   (`mechanisms.spalm.gate_statistics`).

`--without-memory` is the control for what W learns on its own: the same recipe with the gate held
at 1, so W is fine-tuned on the same documents without retrieval. `--ablations` adds: the untrained SPALM and the model with only the short-term memory (the model's
W, g = 1), SPALM querying with the LM alone's keys instead of its own (what a trained W does to the
queries: the share of neighbours that change and the perplexity), and W in float32 against the
float16 file. Deterministic (seed 0, fixed order, the thread count of `configure_threads`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="adapter file (default: the demo's)")
    parser.add_argument("--home", type=Path, default=None, help="data home holding (or to hold) demo-docs")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--segment", type=int, default=128)
    parser.add_argument("--memory", type=int, default=128)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01, help="the gate's learning rate")
    parser.add_argument("--w-lr", type=float, default=3e-3, help="W's learning rate (0: the gate alone)")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--leave-out", choices=("document", "entry"), default="document")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many updates (experiments)")
    parser.add_argument("--heldout-files", type=int, default=None, help="score only the first N held-out files")
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument("--without-memory", action="store_true",
                        help="the control: W trained by the same recipe with the gate held at 1 (no retrieval), "
                             "written to --out and scored like SPALM (its 'without memory' line is the number)")
    args = parser.parse_args()
    if args.home is not None:
        os.environ["KNN_EXPLORER_HOME"] = str(args.home)
    elif "KNN_EXPLORER_HOME" not in os.environ:
        os.environ["KNN_EXPLORER_HOME"] = tempfile.mkdtemp(prefix="knn-explorer-spalm-")

    import torch

    from knn_explorer.core.datastore.catalog import Catalog
    from knn_explorer.core.datastore.library import build_datastore, open_datastore
    from knn_explorer.core.evaluation.comparison import compare
    from knn_explorer.core.evaluation.perplexity import read_heldout
    from knn_explorer.core.home import DEMO_DOCS_DIR, DEMO_SPALM_ADAPTER, RESOURCES
    from knn_explorer.core.mechanisms.spalm import Spalm, SpalmSettings
    from knn_explorer.core.methods.spalm import SpalmMethod
    from knn_explorer.core.models import load_model
    from knn_explorer.core.runtime import configure_threads
    from knn_explorer.core.training.spalm_training import (SpalmTrainingSettings, load_spalm_adapter,
                                                            save_spalm_adapter, train_spalm)

    out = args.out or DEMO_SPALM_ADAPTER
    threads = configure_threads()
    torch.manual_seed(0)
    model = load_model("demo", device="cpu")
    catalog = Catalog()
    if catalog.datastore("demo-docs") is None:
        build_datastore(catalog, "demo-docs", model, [DEMO_DOCS_DIR])
    datastore = open_datastore(catalog, "demo-docs", model)
    print(f"model {model.name} ({model.model.config.model_type}), {threads} threads; datastore demo-docs: "
          f"{datastore.size:,} entries from {len(datastore.documents)} documents", flush=True)

    settings = SpalmTrainingSettings(epochs=args.epochs, segment=args.segment, memory=args.memory,
                                     learning_rate=args.lr, embedding_learning_rate=args.w_lr, streams=args.streams,
                                     leave_out=args.leave_out, max_updates=args.max_steps)
    spalm = Spalm(model, datastore, SpalmSettings(k=args.k))
    if args.without_memory:
        spalm.forced_gate = 1.0
    started = time.monotonic()

    def show(step) -> None:
        if step.step % 10 == 0 or step.step == 1:
            print(f"step {step.step:4d}  loss {step.loss:.3f}  mean gate {step.gates[0]:.3f}  "
                  f"{time.monotonic() - started:5.0f} s", flush=True)

    summary = train_spalm(spalm, settings, on_step=show).summary()
    trained_seconds = time.monotonic() - started
    print(f"trained {summary['steps']} updates in {trained_seconds:.0f} s; loss {summary['loss_first']:.3f} → "
          f"{summary['loss_last']:.3f}; mean gate {summary['gates'][0]:.3f}", flush=True)
    training = {**summary, "settings": {key: getattr(settings, key) for key in settings.__dataclass_fields__}}
    save_spalm_adapter(out, spalm, training)

    texts = read_heldout(RESOURCES / "demo" / "heldout")[: args.heldout_files]
    shipped = Spalm(model, datastore, SpalmSettings(k=args.k))
    load_spalm_adapter(out, shipped)  # measured as shipped: W from the float16 file

    def score(spalm_: Spalm, queries: str = "own"):
        method = SpalmMethod(model, spalm=spalm_)
        method.queries = queries
        began = time.monotonic()
        c = compare(model, texts, [method], context_length=256, stride=128)
        return c, method.results(), time.monotonic() - began

    c, stats, seconds = score(shipped)
    ppl_lm, ppl = c.ppl("none"), c.ppl("spalm")
    heldout = {"tokens": c.tokens, "windows": "256 / 128", "ppl_lm": ppl_lm, "ppl_spalm": ppl,
               "ppl_spalm_without_memory": stats.get("ppl_without_memory"), "gate": stats}
    print(f"\nheld-out perplexity ({c.tokens:,} tokens, windows 256 / 128, {seconds:.0f} s):")
    print(f"  LM alone                                   {ppl_lm:9.3f}")
    print(f"  SPALM                                      {ppl:9.3f}  ({ppl / ppl_lm - 1:+.2%})")
    print(f"  SPALM without its memory (g = 1)           {stats['ppl_without_memory']:9.3f}  "
          f"({stats['ppl_without_memory'] / ppl_lm - 1:+.2%})")
    print(f"gate g_t over the {stats['tokens']:,} held-out tokens: mean {stats['gate_mean']:.4f}, "
          f"std {stats['gate_std']:.4f}, min {stats['gate_min']:.4f}, max {stats['gate_max']:.4f}")
    def r(value) -> str:
        return "n/a (the gate does not vary)" if value is None else f"{value:+.3f}"

    print(f"usefulness u_t = log p_mem(y) − log p_h(y): mean {stats['usefulness_mean']:.3f}, memory better on "
          f"{stats['memory_better_share']:.1%} of tokens; corr(g_t, u_t): Pearson "
          f"{r(stats['gate_usefulness_pearson'])}, Spearman {r(stats['gate_usefulness_spearman'])} "
          f"(negative: the gate lets the memory in where it helps)")

    if args.ablations:
        ablations = {}
        untrained = Spalm(model, datastore, SpalmSettings(k=args.k))
        c2, s2, _ = score(untrained)
        ablations["untrained (g = 0.9, the model's W)"] = c2.ppl("spalm")
        ablations["the model with the short-term memory only (the model's W, g = 1)"] = s2["ppl_without_memory"]
        c3, _, _ = score(shipped, queries="shared")
        ablations["SPALM querying with the LM alone's keys"] = c3.ppl("spalm")
        full = Spalm(model, datastore, SpalmSettings(k=args.k))
        load_spalm_adapter(out, full)
        full.gate.load_state_dict(spalm.gate.state_dict())
        full.set_trained_embeddings(spalm.input_delta)  # float32, as trained
        c4, _, _ = score(full)
        ablations["SPALM with W in float32 (as trained)"] = c4.ppl("spalm")
        overlap = neighbour_overlap(model, shipped, texts)
        ablations["neighbours shared by the two queries (share of k)"] = overlap
        heldout["ablations"] = ablations
        for name, value in ablations.items():
            print(f"  {name:<66} {value:9.4f}")

    training["heldout"] = heldout
    save_spalm_adapter(out, shipped, training)  # the same tensors, the measurements in the metadata
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); {time.monotonic() - started:.0f} s in all")
    print(json.dumps({"heldout": heldout}, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    return 0


def neighbour_overlap(model, spalm, texts) -> float:
    """Mean share of the k neighbours found both with SPALM's own query (its W) and with the LM
    alone's key of the same context, over the held-out targets."""
    import numpy as np

    from knn_explorer.core.evaluation.comparison import compare
    from knn_explorer.core.methods.spalm import SpalmMethod

    shares = []

    class Both(SpalmMethod):
        def combine(self, outputs):
            own = self._pending[1]
            a = self.spalm.knn.retrieve(own).ids
            b = self.spalm.knn.retrieve(outputs.keys).ids
            shares.extend(len(set(x) & set(y)) / len(x) for x, y in zip(a.tolist(), b.tolist()))
            return super().combine(outputs)

    compare(model, texts, [Both(model, spalm=spalm)], context_length=256, stride=128)
    return float(np.mean(shares))


if __name__ == "__main__":
    sys.exit(main())

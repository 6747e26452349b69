"""Train the adaptive-retrieval λ predictor shipped with the demo model, and measure what it trades.

    .venv/bin/python tools/train_demo_adaptive.py [--out resources/demo/adaptive-retrieval.safetensors]

Builds the demo datastore from resources/demo/docs in a temporary data home, trains the predictor
on those documents with leave-one-out retrieval (model frozen), writes it, then prints held-out
perplexity (resources/demo/heldout) with 25/50/75/100% of the tokens retrieving, beside the LM
alone and kNN-LM, and generation tokens/s of the LM alone, kNN-LM and adaptive retrieval. About
5 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--speed-tokens", type=int, default=96, help="tokens generated per prompt when timing")
    args = parser.parse_args()
    os.environ["KNN_EXPLORER_HOME"] = tempfile.mkdtemp(prefix="knn-explorer-adaptive-")

    from knn_explorer.core.datastore.catalog import Catalog
    from knn_explorer.core.evaluation.perplexity import read_heldout
    from knn_explorer.core.home import DEMO_DOCS_DIR, RESOURCES
    from knn_explorer.core.mechanisms.knnlm import KnnLmSettings
    from knn_explorer.core.datastore.library import build_datastore, open_datastore
    from knn_explorer.core.methods import Resources
    from knn_explorer.core.methods.adaptive import AdaptiveRetrievalMethod, AdaptiveRetrievalSettings
    from knn_explorer.core.methods.adaptive_predictor import DEMO_ADAPTIVE_PREDICTOR, save_predictor
    from knn_explorer.core.methods.adaptive_sweep import generation_speed, sweep_retrieved_fraction
    from knn_explorer.core.methods.adaptive_training import AdaptiveTrainingSettings, train_adaptive_predictor
    from knn_explorer.core.methods.knnlm import KnnLmMethod
    from knn_explorer.core.methods.lm_alone import LmAlone
    from knn_explorer.core.models import load_model
    from knn_explorer.core.runtime import configure_threads

    out = args.out or DEMO_ADAPTIVE_PREDICTOR
    configure_threads()
    model = load_model("demo", device="cpu")
    catalog = Catalog()
    build_datastore(catalog, "demo-docs", model, [DEMO_DOCS_DIR])
    datastore = open_datastore(catalog, "demo-docs", model)
    settings = AdaptiveTrainingSettings(k=args.k, epochs=args.epochs)
    predictor, report = train_adaptive_predictor(model, datastore, settings, out)
    print(f"collected {report.tokens + report.validation_tokens:,} tokens in {report.seconds_collecting:.0f} s, "
          f"fitted in {report.seconds_fitting:.0f} s (best epoch {report.best_epoch}); training loss "
          f"{report.loss_before:.4f} → {report.loss_after:.4f}; held-out windows: {report.validation}")

    texts = read_heldout(RESOURCES / "demo" / "heldout")
    method = AdaptiveRetrievalMethod(model, AdaptiveRetrievalSettings(k=args.k, retrieve_fraction=1.0),
                                     Resources(datastore, out))
    sweep = sweep_retrieved_fraction(model, method, texts, fractions=(0.25, 0.5, 0.75, 1.0))
    print(f"\nheld-out perplexity ({sweep.tokens:,} tokens, windows 256 / 128, k = {args.k}, T = 1, exact distances)")
    print(f"LM alone {sweep.ppl_lm:.2f} · kNN-LM (λ {sweep.knn_lambda}) {sweep.ppl_knnlm:.2f}")
    print("| retrieved | λ̂ threshold | adaptive (λ̂) | same share at random (λ̂) | chosen tokens, λ 0.25 |")
    for p in sweep.points:
        print(f"| {p['fraction']:.0%} | {p['threshold']:.3f} | {p['ppl']:.2f} | {p['ppl_random']:.2f} | "
              f"{p['ppl_fixed_lambda']:.2f} |")

    prompts = [" ".join(text.split()[:40]) for text in texts[:6]]
    methods = [LmAlone(model), KnnLmMethod(model, KnnLmSettings(k=args.k), Resources(datastore))]
    methods += [AdaptiveRetrievalMethod(model, AdaptiveRetrievalSettings(k=args.k, retrieve_fraction=f),
                                        Resources(datastore, out)) for f in (1.0, 0.75, 0.5, 0.25)]
    speeds = generation_speed(model, methods, prompts, tokens=args.speed_tokens)
    print(f"\ngeneration, greedy, {len(prompts)} prompts × {args.speed_tokens} tokens")
    for s in speeds:
        share = f" (retrieved for {s['retrieved']:.0%}; asked {s['retrieve_fraction']:.0%})" if "retrieved" in s else ""
        print(f"  {s['label']:<20} {s['tokens_per_s']:7.1f} tokens/s{share}")

    details = {"datastore": datastore.name, "settings": asdict(settings), "training": report.summary(),
               "heldout": sweep.to_json(), "speed": speeds}
    save_predictor(out, predictor, model, details)  # the same predictor, with the numbers above
    print(f"\nwrote {out}")
    print(json.dumps({"heldout": sweep.to_json(), "speed": speeds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Memorizing Transformer generation speed: memory on vs off, with the memory holding N tokens.

    python benchmarks/bench_memorizing.py [--model demo] [--memory 16384] [--new-tokens 64]

"Off" is `StepGenerator` with method `none`; "on" is method `memtrf`, whose every step runs the
model twice (with and without memory: p_LM is part of each record) plus a top-k lookup per head
over the memory. Before timing, the memory is filled with N tokens of the demo documents (a
prompt longer than the local window is run through the model a window at a time). Prints
tokens/s of each and their ratio; uses only time.perf_counter and torch.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from knn_explorer.core.generation.step_generator import GenerationSettings, StepGenerator  # noqa: E402
from knn_explorer.core.home import DEMO_DOCS_DIR  # noqa: E402
from knn_explorer.core.mechanisms.memorizing import MemorizingRetrofit, MemorizingSettings  # noqa: E402
from knn_explorer.core.methods.memorizing import MemorizingTransformerMethod  # noqa: E402
from knn_explorer.core.models import load_model  # noqa: E402
from knn_explorer.core.runtime import configure_threads  # noqa: E402


def prompt_of(model, tokens: int) -> list[int]:
    ids: list[int] = []
    for path in sorted(DEMO_DOCS_DIR.rglob("*.rst")):
        ids += model.tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        if len(ids) >= tokens:
            break
    return ids[:tokens]


def tokens_per_second(model, prompt: list[int], settings: GenerationSettings, memory=None) -> tuple[float, int]:
    method = MemorizingTransformerMethod(model, retrofit=memory) if memory is not None else None
    generator = StepGenerator(model, prompt, settings, method)
    generator.step()  # the first step runs the prompt (and fills the memory): not generation speed
    start = time.perf_counter()
    for _ in range(settings.max_new_tokens - 1):
        generator.step()
    held = memory.memory_tokens() if memory is not None else 0
    return (settings.max_new_tokens - 1) / (time.perf_counter() - start), held


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--memory", type=int, default=16_384, help="tokens in memory while generating")
    parser.add_argument("--window", type=int, default=128, help="local attention window")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configure_threads()
    model = load_model(args.model, device="cpu")
    prompt = prompt_of(model, args.memory + args.window)
    common = dict(max_new_tokens=args.new_tokens, stop_at_eos=False, context_window=args.window)
    off, on, held = [], [], 0
    memory = MemorizingRetrofit(model, MemorizingSettings(memory_size=args.memory))
    for _ in range(args.repeats):
        memory.enabled = False
        off.append(tokens_per_second(model, prompt, GenerationSettings(**common))[0])
        memory.enabled = True
        rate, held = tokens_per_second(model, prompt, GenerationSettings(**common), memory)
        on.append(rate)
    result = {"model": args.model, "memory_tokens": held, "window": args.window, "layer": memory.layer,
              "off_tokens_per_s": statistics.median(off), "on_tokens_per_s": statistics.median(on)}
    result["slowdown"] = result["off_tokens_per_s"] / result["on_tokens_per_s"]
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.model}: memory in layer {memory.layer} holding {held:,} tokens, window {args.window}")
        print(f"  memory off  {result['off_tokens_per_s']:8.1f} tokens/s")
        print(f"  memory on   {result['on_tokens_per_s']:8.1f} tokens/s   (off ÷ on = {result['slowdown']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

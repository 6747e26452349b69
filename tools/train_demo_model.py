"""Train the embedded demo model: a small Llama-architecture model on the Python 3.11 documentation.

Rotary (relative) positions, RMSNorm and a SwiGLU feed-forward, as the Llama/Qwen/Mistral models
users bring: with rotary positions a memory's keys carry content rather than absolute place, which
is what the Memorizing Transformer's kNN attention needs (a GPT-2 with learned absolute positions
retrieves "same position" as much as "same content").

Reproducible recipe (fixed seed, fixed split, fixed step count). Runs on 2 CPU cores in well under
an hour and writes a Hugging Face model folder (config, safetensors, tokenizer) plus metrics.json:

    python tools/train_demo_model.py --out resources/demo/model

Source text: the reStructuredText sources in Debian's `python3.11-doc` (PSF License 2.0).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from debian_text import rst_sources, unpack_debian_package

SOURCE_PACKAGE = "python3.11-doc"
EOS = "<|endoftext|>"
HELD_OUT_EVERY = 25  # every 25th source file (sorted by path) is held out for evaluation


def load_documents() -> tuple[list[str], list[str]]:
    files = rst_sources(unpack_debian_package(SOURCE_PACKAGE))
    train, held_out = [], []
    for i, path in enumerate(files):
        text = path.read_text(encoding="utf-8", errors="replace")
        (held_out if i % HELD_OUT_EVERY == 0 else train).append(text)
    return train, held_out


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=256
    )


def encode_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def perplexity(model, stream: torch.Tensor, context: int) -> float:
    model.eval()
    nll, count = 0.0, 0
    for start in range(0, len(stream) - 1, context):
        chunk = stream[start : start + context + 1]
        if len(chunk) < 2:
            break
        logits = model(chunk[None, :-1]).logits[0]
        nll += torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum").item()
        count += len(chunk) - 1
    model.train()
    return math.exp(nll / count)


def unigram_perplexity(train: torch.Tensor, held_out: torch.Tensor, vocab_size: int) -> float:
    counts = Counter(train.tolist())
    total = len(train) + vocab_size  # add-one smoothing
    nll = -sum(math.log((counts[t] + 1) / total) for t in held_out[1:].tolist())
    return math.exp(nll / (len(held_out) - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("resources/demo/model"))
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    started = time.time()

    train_texts, held_out_texts = load_documents()
    tokenizer = train_tokenizer(train_texts, args.vocab)
    train_stream = encode_stream(tokenizer, train_texts)
    held_out_stream = encode_stream(tokenizer, held_out_texts)
    print(f"train tokens {len(train_stream):,}  held-out tokens {len(held_out_stream):,}", flush=True)

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=args.context,
        rms_norm_eps=1e-5, attention_dropout=0.0, tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # 688 = the SwiGLU width with the parameters of a 1024-wide GELU FFN (3·688 ≈ 2·1024)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)),
    )

    generator = torch.Generator().manual_seed(args.seed)
    span = args.context + 1
    for step in range(args.steps):
        starts = torch.randint(0, len(train_stream) - span, (args.batch,), generator=generator)
        batch = torch.stack([train_stream[s : s + span] for s in starts.tolist()])
        loss = model(batch[:, :-1], labels=batch[:, :-1].clone()).loss  # HF shifts labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps - 1:
            elapsed = time.time() - started
            print(f"step {step:5d}  loss {loss.item():.3f}  {elapsed/60:.1f} min", flush=True)

    metrics = {
        "source_package": SOURCE_PACKAGE,
        "train_tokens": len(train_stream),
        "held_out_tokens": len(held_out_stream),
        "held_out_perplexity": perplexity(model, held_out_stream, args.context),
        "unigram_held_out_perplexity": unigram_perplexity(train_stream, held_out_stream, len(tokenizer)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "training_minutes": (time.time() - started) / 60,
        "recipe": vars(args) | {"out": str(args.out)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    licence = next(unpack_debian_package(SOURCE_PACKAGE).rglob("copyright"))
    shutil.copyfile(licence, args.out / "SOURCE-LICENSE.txt")  # the PSF licence of the training text
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()

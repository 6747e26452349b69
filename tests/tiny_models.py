"""Tiny randomly-initialised causal LMs and a tiny trained tokenizer, built inside the tests.

No network: the tokenizer is trained on a few sentences, the weights are random.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A datastore maps each context to the token that followed it.",
    "Retrieval helps when the test text resembles the stored text.",
    "Flask routes map URLs to view functions with the route decorator.",
] * 5

# model_type -> config overrides for a tiny instance (2 layers, 32 dims).
TINY_CONFIGS = {
    "gpt2": dict(n_layer=2, n_embd=32, n_head=2, n_positions=64),
    "gpt_neox": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=64),
    "llama": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=64, max_position_embeddings=64),
    "mistral": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                    intermediate_size=64, max_position_embeddings=64),
    "qwen2": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=64, max_position_embeddings=64),
    "opt": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, ffn_dim=64, max_position_embeddings=64,
                word_embed_proj_dim=32),
    "phi": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=64),
    # Not in the adapter table: exercises the final-hidden-state fallback.
    "bloom": dict(n_layer=2, hidden_size=32, n_head=2),
}


def tiny_tokenizer(vocab_size: int = 120) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def save_tiny_model(folder: Path, model_type: str = "gpt2", seed: int = 0) -> Path:
    """Write a tiny random model of `model_type` with the tiny tokenizer to `folder`."""
    tokenizer = tiny_tokenizer()
    eos = tokenizer.eos_token_id
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos,
                                  pad_token_id=eos, **TINY_CONFIGS[model_type])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

"""Load a causal LM + tokenizer from a model spec, and find where its kNN key lives.

Model spec: `demo` (the embedded model), a local folder, or a Hugging Face hub id.

The kNN key (Khandelwal et al. 2020, their best variant) is the input of the last transformer
layer's feed-forward block, after that block's layer norm. Where that input is depends on the
architecture, so each supported `model_type` names the module whose *input* is the key. Any other
architecture falls back to the final hidden state (the input of the output embedding), which is
after the final norm and exists in every causal LM.
"""
from __future__ import annotations

import hashlib
import json
import socket
from urllib.parse import urlparse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from .home import DEMO_MODEL_DIR

DEMO_SPEC = "demo"

# model_type -> path (from the model's decoder-layer list) to the module whose input is the key.
# "{last}" is the last decoder layer.
FFN_INPUT_MODULES = {
    "gpt2": "transformer.h.{last}.mlp",  # mlp(ln_2(x))
    "gpt_neox": "gpt_neox.layers.{last}.mlp",  # mlp(post_attention_layernorm(x))
    "llama": "model.layers.{last}.mlp",  # mlp(post_attention_layernorm(x))
    "mistral": "model.layers.{last}.mlp",
    "qwen2": "model.layers.{last}.mlp",
    "phi": "model.layers.{last}.mlp",  # parallel block: mlp(input_layernorm(x))
    "opt": "model.decoder.layers.{last}.fc1",  # fc2(act(fc1(final_layer_norm(x))))
}
FINAL_HIDDEN = "final hidden state (input of the output embedding)"


class ModelLoadError(Exception):
    """A model spec that cannot be loaded; str() is a one-line reason for the user."""


@dataclass(frozen=True)
class KeySite:
    """Which module's input is captured as the kNN key, in words and as a module path."""

    module_path: str
    description: str
    dim: int


@dataclass
class LoadedModel:
    spec: str
    name: str  # what the user sees and what a datastore manifest records
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    key_site: KeySite
    model_fingerprint: str
    tokenizer_fingerprint: str

    @property
    def max_positions(self) -> int:
        config = self.model.config
        for attr in ("n_positions", "max_position_embeddings"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    def key_module(self) -> torch.nn.Module:
        if self.key_site.module_path == "lm_head":
            return self.model.get_output_embeddings()
        return self.model.get_submodule(self.key_site.module_path)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, cache=None,
                use_cache: bool = False, last_logits_only: bool = False):
        """One forward pass. `last_logits_only` skips the vocabulary projection for all but the
        last position (most of the cost of a small model with a large vocabulary)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache}
        if cache is not None:
            kwargs["cache"] = cache
        if last_logits_only:
            try:
                return self.model(**kwargs, logits_to_keep=1)
            except TypeError:  # architectures whose forward has no logits_to_keep
                pass
        return self.model(**kwargs)

    @contextmanager
    def capture_keys(self):
        """Record the kNN key of every position of every forward pass inside the block.

        Yields a list; each forward pass appends a (batch, seq, dim) tensor. A forward *pre*-hook
        only reads the module's input, so the model's outputs are untouched.
        """
        captured: list[torch.Tensor] = []
        batch_shape: list[tuple[int, int]] = []

        def remember_shape(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                batch_shape.append(tuple(ids.shape[:2]))

        def hook(_module, args):
            key = args[0].detach()
            if key.dim() == 2 and batch_shape:  # OPT flattens (batch, seq) before its FFN
                key = key.reshape(*batch_shape[-1], key.shape[-1])
            captured.append(key)

        handles = [
            self.model.register_forward_pre_hook(remember_shape, with_kwargs=True),
            self.key_module().register_forward_pre_hook(hook),
        ]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def capture_output_input(model: LoadedModel):
    """Record the hidden states fed to the output embedding (h_t) in every forward pass inside the block."""
    captured: list[torch.Tensor] = []
    handle = model.model.get_output_embeddings().register_forward_pre_hook(
        lambda _module, args: captured.append(args[0].detach()))
    try:
        yield captured
    finally:
        handle.remove()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was requested but no CUDA device is available (torch sees none)")
    if device not in ("cpu", "cuda"):
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda or auto")
    return torch.device(device)


def _resolve_source(spec: str) -> tuple[str, str, bool]:
    """(what from_pretrained gets, display name, whether it is a hub id)."""
    if spec == DEMO_SPEC:
        if not (DEMO_MODEL_DIR / "config.json").is_file():
            raise ModelLoadError(f"the embedded demo model is missing from {DEMO_MODEL_DIR}")
        return str(DEMO_MODEL_DIR), DEMO_SPEC, False
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path.resolve()), str(path.resolve()), False
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"no such model folder: {spec}")
    return spec, spec, True


def locate_key_site(model: torch.nn.Module) -> KeySite:
    config = model.config
    template = FFN_INPUT_MODULES.get(config.model_type)
    if template is not None:
        last = config.num_hidden_layers - 1
        path = template.format(last=last)
        try:
            module = model.get_submodule(path)
        except AttributeError:
            module = None
        if module is not None:
            dim = module.in_features if isinstance(module, torch.nn.Linear) else config.hidden_size
            return KeySite(path, f"input of layer {last}'s feed-forward block, after its norm", dim)
    lm_head = model.get_output_embeddings()
    return KeySite("lm_head", FINAL_HIDDEN, lm_head.weight.shape[1])


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode())
    digest.update(json.dumps(sorted(map(str, tokenizer.all_special_tokens))).encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> str:
    """Config plus statistics of a sample of the weights (mean magnitude and spread, 3 significant digits): the same weights
    loaded in float32, float16 or bfloat16 give the same fingerprint, other weights do not."""
    config = model.config.to_dict()
    volatile = ("dtype", "torch_dtype", "transformers_version", "_name_or_path", "use_cache")
    stable = {k: v for k, v in config.items() if k not in volatile}
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode())
    params = list(model.parameters())
    for p in (params[0], params[len(params) // 2], params[-1]):
        sample = p.detach().flatten()[:4096].to("cpu", torch.float64)
        digest.update(f"{sample.abs().mean():.3g} {sample.std():.3g}".encode())
    return digest.hexdigest()[:16]


def import_model_stack() -> None:
    """Import the parts of transformers that every model class needs, if not yet imported.

    That takes ~1.5 s, much of it in C calls that hold the GIL for 100–400 ms at a time (unmarshalling
    large modules, torch.distributed registering its ops). Left to the first `load_model` in a worker
    thread, it would freeze the UI thread that long; the app calls this at startup instead.
    """
    import transformers.activations  # noqa: F401
    import transformers.generation.utils  # noqa: F401
    import transformers.modeling_utils  # noqa: F401


def load_model(spec: str, device: str = "auto", trust_remote_code: bool = False, dtype: str = "auto") -> LoadedModel:
    """Load model + tokenizer. Never runs remote code unless `trust_remote_code` is set."""
    source, name, from_hub = _resolve_source(spec)
    hf_logging.disable_progress_bar()  # the app and CLI report progress their own way
    hf_logging.set_verbosity_error()
    target = resolve_device(device)
    torch_dtype = _choose_dtype(dtype, target)
    if from_hub and not _in_local_cache(spec) and not _hub_reachable():
        raise ModelLoadError(
            f"could not load '{spec}': it is not a local folder nor in the Hugging Face cache, "
            f"and the hub cannot be reached (offline?)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=None
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_explain_load_failure(spec, exc)) from exc
    model.to(target).eval()
    return LoadedModel(
        spec=spec,
        name=name,
        model=model,
        tokenizer=tokenizer,
        device=target,
        key_site=locate_key_site(model),
        model_fingerprint=model_fingerprint(model),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
    )


def _in_local_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # malformed ids and the like: let from_pretrained explain
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Fail fast offline instead of sitting through the hub client's retries (~50 s)."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _choose_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # Half precision is slow or unsupported for many CPU kernels; on a GPU it halves memory.
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use auto, float32, float16 or bfloat16") from None


def _explain_load_failure(spec: str, exc: Exception) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "trust_remote_code" in str(exc):
        return f"{spec} needs custom code from its repository; allow remote code to load it"
    if isinstance(exc, OSError) and not Path(spec).exists():
        return (
            f"could not load '{spec}': not a local folder, and the Hugging Face hub could not provide it "
            f"(offline, or no such model): {first_line}"
        )
    return f"could not load '{spec}': {first_line}"

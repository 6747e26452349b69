"""The λ predictor of adaptive retrieval (He, Neubig & Berg-Kirkpatrick 2021, "Efficient Nearest
Neighbor Language Models"): a small network that, from what the LM already computed for a token,
predicts the weight λ that p_kNN should get — before anything is retrieved.

Features, per position (all from the shared forward pass, so predicting costs no retrieval):

    lm_entropy          H(p_LM), in nats
    lm_top_log_probs    the four largest log p_LM, largest first (the paper's `lm_max`, widened)
    key                 the context's kNN key f(x) (the paper's `ctxt`), optional

The paper also counts how often the context's last n-grams occur in the training data and how many
different tokens follow them (`freq`, `fert`); those need the token ids and n-gram tables the
shared pass does not carry, and are left out.

Network: features, standardised with the training rows' mean and spread, → Linear(F, 32) → ReLU →
Linear(32, 32) → ReLU → Linear(32, 1) → σ = λ. It starts at λ = 0.25 everywhere (kNN-LM's default).
Tokens whose predicted λ is below a threshold skip retrieval; the file keeps the quantiles of λ over
the training tokens, so "retrieve for half the tokens" becomes a threshold (the paper's cut-off ratio).

Saved as one safetensors file (kind "adaptive") with the base model's name and fingerprint, like the
other adapters (`core/adapters.py`); the demo model's is shipped in resources/demo/.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..training.adapters import AdapterError, read_adapter_info
from ..home import RESOURCES

ADAPTIVE = "adaptive"  # the adapter kind in the file's metadata
DEMO_ADAPTIVE_PREDICTOR = RESOURCES / "demo" / "adaptive-retrieval.safetensors"  # tools/train_demo_adaptive.py
TOP_LOG_PROBS = 4
INITIAL_LAMBDA = 0.25


def lm_features(log_p_lm: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
    """B×F float32 features of B positions: entropy of p_LM, its top log-probabilities, and the key."""
    log_p = log_p_lm.float()
    entropy = torch.special.entr(log_p.exp()).sum(dim=-1, keepdim=True)  # entr(0) = 0: no 0·(−inf)
    top = torch.topk(log_p, min(TOP_LOG_PROBS, log_p.shape[-1]), dim=-1).values.clamp(min=-100.0)
    parts = [entropy, top] + ([keys.float().to(log_p.device)] if keys is not None else [])
    return torch.cat(parts, dim=-1)


class RetrievalPredictor(torch.nn.Module):
    """features -> λ in (0, 1). `key_dim` = 0: the LM's confidence alone, no key."""

    def __init__(self, key_dim: int, hidden: int = 32):
        super().__init__()
        self.key_dim, self.hidden = key_dim, hidden
        width = 1 + TOP_LOG_PROBS + key_dim
        self.register_buffer("feature_mean", torch.zeros(width))
        self.register_buffer("feature_std", torch.ones(width))
        # quantiles 0%, 1%, ..., 100% of λ over the training tokens: fraction retrieved -> threshold
        self.register_buffer("lambda_quantiles", torch.linspace(0.0, 1.0, 101))
        self.net = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, 1))
        with torch.no_grad():
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.fill_(math.log(INITIAL_LAMBDA / (1 - INITIAL_LAMBDA)))

    @property
    def uses_key(self) -> bool:
        return self.key_dim > 0

    def features(self, log_p_lm: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return lm_features(log_p_lm, keys if self.uses_key else None)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """B logits of λ (σ of them is λ), from unstandardised features."""
        return self.net((features - self.feature_mean) / self.feature_std)[:, 0]

    @torch.no_grad()
    def predict(self, log_p_lm: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """λ of each of B positions (float64, CPU)."""
        return torch.sigmoid(self.logits(self.features(log_p_lm, keys)).double())

    def threshold(self, fraction: float) -> float:
        """The λ above which about `fraction` of the training tokens lie: 0 for 1 (retrieve always),
        +inf for 0 (never)."""
        if fraction >= 1.0:
            return 0.0
        if fraction <= 0.0:
            return math.inf
        position = (1.0 - fraction) * (len(self.lambda_quantiles) - 1)
        low = int(math.floor(position))
        high = min(low + 1, len(self.lambda_quantiles) - 1)
        q = self.lambda_quantiles.double()
        return float(q[low] + (q[high] - q[low]) * (position - low))


def save_predictor(path: Path, predictor: RetrievalPredictor, model, details: dict) -> Path:
    """Write the predictor (written under a temporary name, then renamed: never a half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"kind": ADAPTIVE, "model_name": model.name, "model_fingerprint": model.model_fingerprint,
                "details": json.dumps({**details, "key_dim": predictor.key_dim, "hidden": predictor.hidden})}
    tensors = {name: t.detach().float().cpu().contiguous() for name, t in predictor.state_dict().items()}
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    partial.replace(path)
    return path


def load_predictor(path: Path, model) -> tuple[RetrievalPredictor, dict]:
    """The predictor in `path` and its details (settings and training it was made with), after
    checking it was trained for `model`."""
    info = read_adapter_info(path)
    name = Path(path).name
    if info.kind != ADAPTIVE:
        raise AdapterError(f"{name} is a {info.kind} adapter, not an adaptive-retrieval λ predictor")
    if info.model_fingerprint != model.model_fingerprint:
        raise AdapterError(f"{name} was trained for model '{info.model_name}', not '{model.name}'")
    predictor = RetrievalPredictor(int(info.details["key_dim"]), int(info.details.get("hidden", 32)))
    try:
        predictor.load_state_dict(load_file(str(path)))
    except RuntimeError as exc:
        raise AdapterError(f"{name} does not hold an adaptive-retrieval predictor: {str(exc).splitlines()[0]}") from None
    return predictor.eval(), info.details


def predictor_for(model, adapter: Path | None) -> tuple[RetrievalPredictor, Path, dict]:
    """`adapter` if given, else the one shipped with the demo model; there is no untrained default
    (an untrained network would pick tokens at random)."""
    from ..models import DEMO_SPEC
    from .base import MethodError

    if adapter is None and model.spec == DEMO_SPEC and DEMO_ADAPTIVE_PREDICTOR.exists():
        adapter = DEMO_ADAPTIVE_PREDICTOR
    if adapter is None:
        raise MethodError(f"adaptive retrieval needs a λ predictor trained for '{model.name}': "
                          "python -m knn_explorer.core.methods.adaptive_training --model SPEC --datastore NAME "
                          "--out FILE.safetensors, then pass it with --adapter FILE")
    predictor, details = load_predictor(adapter, model)
    return predictor, Path(adapter), details

"""Training adaptive retrieval's λ predictor on a datastore's own documents, the model frozen.

1. Collect. The documents are read from the datastore (`tokens.i32`) in the windows its build used,
   so each target's query key is the key stored for it. Per target: the predictor's features (from
   the LM's distribution and the key), log p_LM(target), and p_kNN(target) from its k nearest
   entries — leaving out what held-out text would not find:
   - `leave_out="document"` (default): every entry of the target's own document. Held-out text's
     document is not in the datastore; the rest of a datastore document often repeats the target's
     phrase, and a predictor trained with it learns too large a λ. k × `candidates` neighbours are
     searched and the k nearest from other documents kept (fewer if there are not that many).
   - `leave_out="entry"`: only the target's own entry (`spalm_training.without_self`, as SPALM's
     gate is trained): left in, it would be its own nearest neighbour, at distance 0, with the
     right answer.
   On the demo, document-out gives held-out perplexity 64.1 with every token retrieving and 69.5
   with half, against 67.2 and 71.1 for entry-out (kNN-LM: 68.2).
2. Fit. The network is trained on those rows (no model in the loop: seconds per epoch) to minimise

       −log(λ̂ · p_kNN(y) + (1 − λ̂) · p_LM(y))

   the paper's objective. Every 10th window is held out; the epoch with the lowest held-out loss is
   kept. The quantiles of λ̂ over all rows are stored with it (fraction retrieved -> threshold).

    python -m knn_explorer.core.methods.adaptive_training --model SPEC --datastore NAME --out FILE.safetensors
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..evaluation.comparison import padded_windows
from ..datastore.folder import Datastore, DocumentEntry
from ..mechanisms.knnlm import KnnLM, KnnLmSettings, Retrieval
from ..models import LoadedModel
from ..progress import Cancelled, PhaseMeter, ProgressCallback
from ..training.spalm_training import without_own_documents, without_self
from ..windows import Span, sliding_windows
from .adaptive_predictor import RetrievalPredictor, save_predictor


LEAVE_OUT = ("document", "entry")


@dataclass(frozen=True)
class AdaptiveTrainingSettings:
    k: int = 32
    temperature: float = 1.0
    exact_distances: bool = True
    leave_out: str = "document"  # or "entry" (see the module docstring)
    candidates: int = 4  # leave_out="document": search k × this many to keep k from other documents
    use_key: bool = True  # the context's key as a feature (the paper's `ctxt`), besides the LM's confidence
    hidden: int = 32
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3
    max_tokens: int = 250_000  # a larger datastore gives windows spread evenly over its documents
    validation_every: int = 10  # every n-th window is held out to choose the epoch
    windows_per_pass: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.leave_out not in LEAVE_OUT:
            raise ValueError(f"leave_out is one of {', '.join(LEAVE_OUT)}, not {self.leave_out!r}")
        if self.k < 1 or self.candidates < 1 or self.epochs < 1:
            raise ValueError("k, candidates and epochs must be at least 1")

    def knn_settings(self) -> KnnLmSettings:
        return KnnLmSettings(k=self.k, temperature=self.temperature, exact_distances=self.exact_distances)


@dataclass
class TrainingRows:
    """One row per target token of the collected windows."""

    features: torch.Tensor  # n×F float32
    log_p_lm: torch.Tensor  # n float64: log p_LM(target)
    p_knn: torch.Tensor  # n float64: p_kNN(target), leave-one-out
    window: torch.Tensor  # n long: the window it came from

    def __len__(self) -> int:
        return len(self.log_p_lm)

    def subset(self, mask: torch.Tensor) -> "TrainingRows":
        return TrainingRows(self.features[mask], self.log_p_lm[mask], self.p_knn[mask], self.window[mask])


@dataclass
class PredictorTraining:
    """What training did, kept in the file's metadata."""

    tokens: int
    validation_tokens: int
    seconds_collecting: float = 0.0
    seconds_fitting: float = 0.0
    epochs: list[dict] = field(default_factory=list)  # {"epoch", "loss", "validation_loss"}
    best_epoch: int = 0
    loss_before: float = math.nan  # training rows, the initial network
    loss_after: float = math.nan
    validation: dict = field(default_factory=dict)  # held-out rows: perplexity of LM, λ 0.25, λ̂

    def summary(self) -> dict:
        return asdict(self)


def without_own_document(retrieval: Retrieval, own_document: int, entry_documents: np.ndarray, k: int,
                         temperature: float = 1.0) -> Retrieval:
    """`without_own_documents` with one document left out for every row."""
    own = np.full(len(retrieval.ids), own_document)
    return without_own_documents(retrieval, own, entry_documents, k, temperature)


def document_windows(datastore: Datastore, length: int, stride: int, max_tokens: int) -> list[tuple[Span, DocumentEntry]]:
    """The build's windows over each document, as spans of the datastore's token stream, with their
    document; if they score more than `max_tokens` targets, every n-th of them."""
    spans = []
    for document in sorted(datastore.documents.values(), key=lambda d: d.id):
        first = document.token_start
        spans += [(Span(first + s.begin, first + s.end, first + s.first_target), document)
                  for s in sliding_windows(document.token_count, length, stride)]
    targets = sum(s.end - s.first_target for s, _ in spans)
    step = max(1, math.ceil(targets / max(1, max_tokens)))
    return spans[::step]


@torch.no_grad()  # not inference mode: the rows are a training set
def collect_rows(model: LoadedModel, datastore: Datastore, settings: AdaptiveTrainingSettings = AdaptiveTrainingSettings(),
                 on_progress: ProgressCallback | None = None,
                 should_stop: Callable[[], bool] | None = None) -> TrainingRows:
    """Features, log p_LM(target) and p_kNN(target) without what is left out, for the datastore's own tokens."""
    datastore.require_entries_in_document_order()
    length = min(int(datastore.manifest.get("context_length", 256)), model.max_positions)
    stride = int(datastore.manifest.get("stride", length // 2))
    spans = document_windows(datastore, length, stride, settings.max_tokens)
    tokens = torch.from_numpy(np.fromfile(datastore.folder / "tokens.i32", dtype=np.int32).astype(np.int64))
    knn = KnnLM(datastore, settings.knn_settings())
    entry_documents = datastore.positions[:, 0]
    predictor = RetrievalPredictor(datastore.query_dim if settings.use_key else 0)
    meter = PhaseMeter("collecting", sum(s.end - s.first_target for s, _ in spans), "tokens", on_progress)
    features, log_p_lm, p_knn, window, done = [], [], [], [], 0
    for start in range(0, len(spans), settings.windows_per_pass):
        if should_stop is not None and should_stop():
            raise Cancelled("predictor training cancelled")
        batch = spans[start: start + settings.windows_per_pass]
        input_ids, mask = padded_windows(tokens, [s for s, _ in batch])
        with model.capture_keys() as captured:
            logits = model.forward(input_ids.to(model.device), mask.to(model.device)).logits
        for row, (s, document) in enumerate(batch):
            scored = slice(s.first_target - 1 - s.begin, s.end - 1 - s.begin)
            targets = tokens[s.first_target: s.end]
            log_p = torch.log_softmax(logits[row, scored].float(), dim=-1).cpu()
            keys = captured[-1][row, scored].float().cpu()
            if settings.leave_out == "document":
                found = knn.retrieve(keys, k=settings.k * settings.candidates)
                kept = without_own_document(found, document.id, entry_documents, settings.k, settings.temperature)
            else:  # the target at stream position p is entry p − token_start − 1 + entry_start
                own = np.arange(s.first_target, s.end) + document.entry_start - document.token_start - 1
                kept = without_self(knn.retrieve(keys, k=settings.k + 1), own, settings.k, settings.temperature)
            features.append(predictor.features(log_p, keys))
            log_p_lm.append(log_p.gather(1, targets[:, None])[:, 0].double())
            p_knn.append((kept.weights * (kept.values == targets[:, None])).sum(dim=1))
            window.append(torch.full((len(targets),), start + row))
            done += len(targets)
        meter.update(done)
    meter.update(done, force=True)
    return TrainingRows(torch.cat(features), torch.cat(log_p_lm), torch.cat(p_knn), torch.cat(window))


def mixture_loss(logits: torch.Tensor, log_p_lm: torch.Tensor, p_knn: torch.Tensor) -> torch.Tensor:
    """Mean −log(λ p_kNN + (1 − λ) p_LM) with λ = σ(logits)."""
    log_lambda, log_rest = torch.nn.functional.logsigmoid(logits.double()), torch.nn.functional.logsigmoid(-logits.double())
    return -torch.logaddexp(log_lambda + torch.log(p_knn.clamp(min=1e-300)), log_rest + log_p_lm).mean()


def fit_predictor(rows: TrainingRows, key_dim: int, settings: AdaptiveTrainingSettings = AdaptiveTrainingSettings(),
                  on_progress: ProgressCallback | None = None,
                  should_stop: Callable[[], bool] | None = None) -> tuple[RetrievalPredictor, PredictorTraining]:
    """Train a predictor on collected rows; the epoch with the lowest held-out loss is kept."""
    torch.manual_seed(settings.seed)
    every = max(2, settings.validation_every)
    held_out = (rows.window % every) == every - 1
    if held_out.all() or not held_out.any():  # too few windows to hold any out: validate on the training rows
        held_out = torch.zeros(len(rows), dtype=torch.bool)
    train, validation = rows.subset(~held_out), rows.subset(held_out) if held_out.any() else rows
    predictor = RetrievalPredictor(key_dim, settings.hidden)
    predictor.feature_mean.copy_(train.features.mean(dim=0))
    predictor.feature_std.copy_(train.features.std(dim=0).nan_to_num(1.0).clamp(min=1e-6))
    report = PredictorTraining(tokens=len(train), validation_tokens=len(validation) if held_out.any() else 0)
    started = time.monotonic()

    def loss_on(part: TrainingRows) -> float:
        with torch.no_grad():
            return float(mixture_loss(predictor.logits(part.features), part.log_p_lm, part.p_knn))

    report.loss_before = loss_on(train)
    optimiser = torch.optim.Adam(predictor.parameters(), lr=settings.learning_rate)
    best, best_state = math.inf, copy.deepcopy(predictor.state_dict())
    meter = PhaseMeter("training", settings.epochs, "epochs", on_progress)
    generator = torch.Generator().manual_seed(settings.seed)
    for epoch in range(1, settings.epochs + 1):
        if should_stop is not None and should_stop():
            raise Cancelled("predictor training cancelled")
        order, total = torch.randperm(len(train), generator=generator), 0.0
        for begin in range(0, len(train), settings.batch_size):
            picked = order[begin: begin + settings.batch_size]
            loss = mixture_loss(predictor.logits(train.features[picked]), train.log_p_lm[picked], train.p_knn[picked])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(picked)
        validation_loss = loss_on(validation)
        report.epochs.append({"epoch": epoch, "loss": total / len(train), "validation_loss": validation_loss})
        if validation_loss < best:
            best, best_state, report.best_epoch = validation_loss, copy.deepcopy(predictor.state_dict()), epoch
        meter.update(epoch)
    predictor.load_state_dict(best_state)
    report.loss_after = loss_on(train)
    with torch.no_grad():
        lambdas = torch.sigmoid(predictor.logits(rows.features).double())
        predictor.lambda_quantiles.copy_(torch.quantile(lambdas, torch.linspace(0, 1, 101, dtype=torch.float64)))
        fixed = torch.logit(torch.tensor(0.25, dtype=torch.float64))
        report.validation = {
            "ppl_lm": math.exp(-float(validation.log_p_lm.mean())),
            "ppl_knnlm_lambda_0.25": math.exp(float(mixture_loss(fixed.expand(len(validation)), validation.log_p_lm,
                                                                 validation.p_knn))),
            "ppl_adaptive_all_retrieved": math.exp(loss_on(validation)),
        }
    report.seconds_fitting = time.monotonic() - started
    return predictor.eval(), report


def train_adaptive_predictor(model: LoadedModel, datastore: Datastore,
                             settings: AdaptiveTrainingSettings = AdaptiveTrainingSettings(), out: Path | None = None,
                             on_progress: ProgressCallback | None = None,
                             should_stop: Callable[[], bool] | None = None) -> tuple[RetrievalPredictor, PredictorTraining]:
    """Collect, fit, and (with `out`) save the predictor with what it was trained on."""
    started = time.monotonic()
    rows = collect_rows(model, datastore, settings, on_progress, should_stop)
    collecting = time.monotonic() - started
    predictor, report = fit_predictor(rows, datastore.query_dim if settings.use_key else 0, settings, on_progress,
                                      should_stop)
    report.seconds_collecting = collecting
    if out is not None:
        save_predictor(out, predictor, model, {"datastore": datastore.name, "settings": asdict(settings),
                                               "training": report.summary()})
    return predictor, report


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Train adaptive retrieval's λ predictor on a datastore's documents")
    parser.add_argument("--model", required=True, help="demo, a local model folder, or a hub id")
    parser.add_argument("--datastore", required=True, help="datastore name (see `knn-explorer list`)")
    parser.add_argument("--out", required=True, type=Path, help="the predictor file to write (.safetensors)")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--approximate", action="store_true", help="the index's distances")
    parser.add_argument("--no-key", action="store_true", help="the LM's confidence only, not the context's key")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    args = parser.parse_args(argv)
    from ..datastore.catalog import Catalog
    from ..datastore.library import open_datastore
    from ..models import load_model
    from ..runtime import configure_threads

    configure_threads()
    model = load_model(args.model, device=args.device)
    datastore = open_datastore(Catalog(), args.datastore, model)
    settings = AdaptiveTrainingSettings(k=args.k, temperature=args.temperature, exact_distances=not args.approximate,
                                        use_key=not args.no_key, epochs=args.epochs)
    _predictor, report = train_adaptive_predictor(model, datastore, settings, args.out)
    print(json.dumps({"out": str(args.out), **report.summary()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

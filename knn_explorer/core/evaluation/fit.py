"""Fitting kNN-LM's λ and T: the pair with the lowest perplexity on held-out text, from one pass.

T = 1 (the paper's value) suits the paper's keys; squared L2 distances between this project's keys
are often in the tens or hundreds (the demo's nearest neighbours lie 10–90 apart), so at T = 1
p_kNN is all-or-nothing: the nearest neighbour gets everything. λ and T interact (a flatter p_kNN
earns a larger λ), so they are fitted together, on a grid.

As a sweep does (`sweeps.py`), one forward pass over the held-out text keeps log p_LM(target) and
the kNN key per target (`collect`), and one retrieval of k neighbours per target (a chunk of
targets at a time) serves every grid point:

    p_kNN(target) = Σ_{i ≤ k} softmax_i(−d_i / T) · 1[v_i = target]      once per T
    log p(target) = log(λ p_kNN + (1 − λ) p_LM)                            every λ at once

Each point is exactly `evaluate` with those settings (tested). The default grid: λ from 0.05 to
0.95 in steps of 0.05; T in half-octaves (×√2) from 0.5 to 64 when the median nearest-neighbour
distance (of the first chunk of targets) is about 32, as the demo's is, shifted by whole octaves
with that median, so a model whose keys lie thousands apart is not fitted on a grid that ends
too soon. The defaults (λ 0.25, T 1)
are scored beside the grid as the "before". The best pair is the grid's argmin (ties: the
smaller T, then the smaller λ).

`remember_fit` keeps a fit in the catalog (table `fitted_settings`), per datastore; the app and
the CLI's `generate`/`eval` then start kNN-LM from the datastore's latest fit. The demo datastore
comes with the fit measured when the demo was made (`DEMO_FIT`, recorded by `remember_demo_fit`).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..datastore.catalog import Catalog, FittedSettingsRow, utcnow
from ..datastore.folder import Datastore
from ..datastore.query_chunks import neighbour_key_bytes, query_chunks
from ..home import DEMO_DOCS_DIR, RESOURCES
from ..mechanisms.knnlm import KnnLmSettings
from ..models import LoadedModel
from ..progress import Cancelled, PhaseMeter, ProgressCallback
from .sweeps import Collected, _retriever, collect, target_knn_probs

DEFAULT_LAMBDAS = [round(0.05 * i, 2) for i in range(1, 20)]  # 0.05 … 0.95
BASE_T_RANGE = (0.5, 64.0)  # the T grid for nearest-neighbour distances around DISTANCE_SCALE
DISTANCE_SCALE = 32.0  # the demo's median nearest-neighbour distance is 27.7 (squared L2)
DEMO_FIT = RESOURCES / "demo" / "knnlm-fit.json"  # `knn-explorer fit --json` on the demo, kept with it
DEMO_HELDOUT = RESOURCES / "demo" / "heldout"
DEMO_WINDOWS = (256, 128)  # the windows the demo datastore is built with (the build's defaults)


class FitError(ValueError):
    """A grid that cannot be fitted; str() is one line."""


def half_octaves(low: float, high: float) -> list[float]:
    """Powers of √2 from the largest one ≤ `low` to the smallest one ≥ `high`, to 3 significant
    digits and at most 2 decimals from 0.05 up (0.5, 0.71, 1, 1.41, 2, 2.83, 4, …: values a person
    can type and the app's T box holds exactly)."""
    first = math.floor(2 * math.log2(low) + 1e-9)
    last = math.ceil(2 * math.log2(high) - 1e-9)
    values = [float(f"{2 ** (i / 2):.3g}") for i in range(first, last + 1)]
    return [round(v, 2) if v >= 0.05 else v for v in values]


def default_temperatures(nearest: np.ndarray) -> list[float]:
    """The 15 half-octaves from 0.5 to 64 when the median nearest-neighbour distance is about 32 (the
    demo's scale), shifted by whole octaves as that median is: T only matters relative to the
    distances, so keys that lie thousands apart get a grid in the thousands."""
    finite = nearest[np.isfinite(nearest) & (nearest > 0)]
    median = float(np.median(finite)) if len(finite) else DISTANCE_SCALE
    shift = 2.0 ** round(math.log2(median / DISTANCE_SCALE))
    return half_octaves(BASE_T_RANGE[0] * shift, BASE_T_RANGE[1] * shift)


def check_grid(lambdas: list[float] | None, temperatures: list[float] | None) -> None:
    """Refuse, in one line, values no grid can hold: before the model's forward pass."""
    if lambdas is not None:
        if not lambdas:
            raise FitError("give at least one λ")
        bad = [v for v in lambdas if not 0 < v < 1]
        if bad:
            raise FitError(f"λ values must lie strictly between 0 and 1 (0 is the LM alone), not {bad[0]:g}")
    if temperatures is not None:
        if not temperatures:
            raise FitError("give at least one temperature")
        bad = [v for v in temperatures if not 0 < v < math.inf]
        if bad:
            raise FitError(f"temperatures must be > 0 and finite, not {bad[0]:g}")


@dataclass
class FitResult:
    """Perplexity of kNN-LM at every (T, λ) of a grid, and the best pair."""

    lambdas: list[float]
    temperatures: list[float]
    ppl: np.ndarray  # len(temperatures) × len(lambdas)
    k: int
    distance: str  # exact | approximate
    tokens: int
    ppl_lm: float
    baseline: dict  # {"lambda", "temperature", "ppl"}: the defaults, scored on the same targets
    median_nearest_distance: float
    seconds: dict = field(default_factory=dict)

    @property
    def best(self) -> tuple[float, float, float]:
        """(λ, T, perplexity) of the grid's lowest perplexity (ties: smaller T, then smaller λ)."""
        row, column = np.unravel_index(int(np.argmin(self.ppl)), self.ppl.shape)
        return self.lambdas[column], self.temperatures[row], float(self.ppl[row, column])

    @property
    def settings(self) -> KnnLmSettings:
        lam, temperature, _ = self.best
        return KnnLmSettings(k=self.k, lambda_=lam, temperature=temperature,
                             exact_distances=self.distance == "exact")

    def to_json(self) -> dict:
        lam, temperature, ppl = self.best
        return {"lambda": lam, "temperature": temperature, "ppl": ppl, "k": self.k, "distance": self.distance,
                "tokens": self.tokens, "ppl_lm": self.ppl_lm, "baseline": self.baseline,
                "median_nearest_distance": self.median_nearest_distance,
                "grid": {"lambdas": self.lambdas, "temperatures": self.temperatures,
                         "ppl": [[_finite(v) for v in row] for row in self.ppl.tolist()]},
                "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict) -> "FitResult":
        grid = data["grid"]
        ppl = np.array([[math.inf if v is None else v for v in row] for row in grid["ppl"]], dtype=float)
        return cls(list(grid["lambdas"]), list(grid["temperatures"]), ppl, int(data["k"]), data["distance"],
                   int(data["tokens"]), float(data["ppl_lm"]), dict(data["baseline"]),
                   float(data.get("median_nearest_distance", math.nan)), dict(data.get("seconds", {})))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _log_mix(log_p_lm: np.ndarray, p_knn: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """n × len(lambdas): log(λ p_kNN + (1 − λ) p_LM) per target and λ (as `sweeps.mixed_log_probs`)."""
    with np.errstate(divide="ignore"):
        return np.logaddexp(np.log(lambdas)[None, :] + np.log(p_knn)[:, None],
                            np.log1p(-lambdas)[None, :] + log_p_lm[:, None])


def fit(datastore: Datastore, collected: Collected, lambdas: list[float] | None = None,
        temperatures: list[float] | None = None, settings: KnnLmSettings = KnnLmSettings(),
        baseline: KnnLmSettings = KnnLmSettings(), should_stop: Callable[[], bool] | None = None,
        on_progress: ProgressCallback | None = None) -> FitResult:
    """kNN-LM perplexity on `collected` for every (λ, T) of the grid, k and distances as in `settings`.

    The targets are searched a chunk at a time, k neighbours each, once: every grid point (and the
    `baseline` λ and T) is scored from that chunk's neighbours before they are dropped, so memory
    stays bounded however long the text is. Without `temperatures`, the grid is chosen from the first
    chunk's nearest-neighbour distances (`default_temperatures`; one chunk is 2,048 targets at k = 32
    and 256 dimensions). Progress is the phase "retrieving" (targets searched and scored)."""
    started = time.monotonic()
    check_grid(lambdas, temperatures)
    lam = np.asarray(lambdas if lambdas is not None else DEFAULT_LAMBDAS, dtype=float)
    c, k = collected, min(settings.k, datastore.size)
    if len(c.targets) == 0:
        raise FitError("the held-out text has no targets to fit on")
    retrieve = _retriever(datastore, settings.exact_distances)
    base_lam = np.asarray([baseline.lambda_], dtype=float)
    sums = base_sum = None
    nearest: list[np.ndarray] = []
    meter = PhaseMeter("retrieving", len(c.targets), "targets", on_progress)
    meter.update(0, force=True)
    for rows in query_chunks(len(c.targets), neighbour_key_bytes(k, datastore.dim)):
        if should_stop is not None and should_stop():
            raise Cancelled("fit cancelled")
        values, distances, log_counts = retrieve(c.keys[rows], k)  # the one retrieval every point shares
        nearest.append(distances[:, 0])
        if temperatures is None:
            temperatures = default_temperatures(distances[:, 0])
        if sums is None:
            sums = np.zeros((len(temperatures), len(lam)))
            base_sum = 0.0
        targets, log_p_lm = c.targets[rows], c.log_p_lm[rows]
        for i, temperature in enumerate(temperatures):
            p_knn = target_knn_probs(values, distances, targets, k, float(temperature), log_counts)
            sums[i] += _log_mix(log_p_lm, p_knn, lam).sum(axis=0)
        p_base = target_knn_probs(values, distances, targets, k, baseline.temperature, log_counts)
        base_sum += float(_log_mix(log_p_lm, p_base, base_lam).sum() if baseline.lambda_ > 0 else log_p_lm.sum())
        meter.update(rows.stop)
    n = len(c.targets)
    with np.errstate(over="ignore"):
        ppl = np.exp(-sums / n)
    all_nearest = np.concatenate(nearest)
    finite = all_nearest[np.isfinite(all_nearest)]
    return FitResult(
        lambdas=[float(v) for v in lam], temperatures=[float(t) for t in temperatures], ppl=ppl, k=k,
        distance=settings.distance, tokens=n, ppl_lm=math.exp(-float(np.mean(c.log_p_lm))),
        baseline={"lambda": baseline.lambda_, "temperature": baseline.temperature,
                  "ppl": _finite(math.exp(-base_sum / n))},
        median_nearest_distance=float(np.median(finite)) if len(finite) else math.nan,
        seconds={"grid": round(time.monotonic() - started, 3)})


def fit_heldout(model: LoadedModel, datastore: Datastore, texts: str | list[str], lambdas: list[float] | None = None,
                temperatures: list[float] | None = None, settings: KnnLmSettings = KnnLmSettings(),
                context_length: int = 256, stride: int = 128, on_progress: ProgressCallback | None = None,
                should_stop: Callable[[], bool] | None = None) -> FitResult:
    """Check the grid, collect the held-out text (one forward pass; a folder's documents joined by a
    blank line, as `evaluate` reads them), then `fit`."""
    check_grid(lambdas, temperatures)
    started = time.monotonic()
    text = texts if isinstance(texts, str) else "\n\n".join(texts)
    collected = collect(model, text, context_length, stride, on_progress=on_progress, should_stop=should_stop)
    collected_at = time.monotonic()
    result = fit(datastore, collected, lambdas, temperatures, settings, should_stop=should_stop,
                 on_progress=on_progress)
    result.seconds = {"forward": round(collected_at - started, 3), "grid": result.seconds["grid"],
                      "total": round(time.monotonic() - started, 3)}
    return result


# ---- remembered per datastore ----------------------------------------------------------------
def fit_fields(model_name: str, result: FitResult, heldout: str, origin: str = "fit") -> dict:
    """A fit as the catalog's `fitted_settings` columns (all but the datastore's)."""
    lam, temperature, ppl = result.best
    return dict(model_name=model_name, lambda_=lam, temperature=temperature, k=result.k, distance=result.distance,
                tokens=result.tokens, ppl_lm=result.ppl_lm, ppl_before=result.baseline["ppl"], ppl_after=_finite(ppl),
                lambda_before=result.baseline["lambda"], temperature_before=result.baseline["temperature"],
                heldout=heldout, origin=origin, grid=result.to_json()["grid"])


def remember_fit(catalog: Catalog, datastore: str, model_name: str, result: FitResult, heldout: str,
                 origin: str = "fit") -> FittedSettingsRow:
    """Keep `result` as `datastore`'s fitted λ and T (a `CatalogError` if the catalog cannot take it)."""
    return catalog.record_fit(datastore, **fit_fields(model_name, result, heldout, origin))


def unkept_fit(datastore: str, model_name: str, result: FitResult, heldout: str) -> FittedSettingsRow:
    """The row `remember_fit` would have kept, in memory only (the catalog refused it; the fit still applies)."""
    return FittedSettingsRow(datastore=datastore, created=utcnow(), **fit_fields(model_name, result, heldout))


def fitted_settings(row: FittedSettingsRow, settings: KnnLmSettings = KnnLmSettings()) -> KnnLmSettings:
    """`settings` with the fit's λ and T."""
    return replace(settings, lambda_=row.lambda_, temperature=row.temperature)


def describe_fit(row: FittedSettingsRow) -> str:
    """"λ=0.35, T=16 fitted on heldout (2024-05-01)": what the status bar and the CLI say."""
    where = Path(row.heldout).name or row.heldout
    shipped = ", shipped with the demo" if row.origin == "shipped" else ""
    return (f"λ={row.lambda_:g}, T={row.temperature:g} fitted on {where} "
            f"({row.created:%Y-%m-%d}{shipped}; k={row.k}, perplexity {_ppl(row.ppl_before)} → {_ppl(row.ppl_after)})")


def _ppl(value: float | None) -> str:
    return "∞" if value is None else f"{value:.2f}"


def fit_result_of(row: FittedSettingsRow) -> FitResult:
    """A kept fit as a `FitResult` (for the heatmap)."""
    grid = row.grid or {"lambdas": [row.lambda_], "temperatures": [row.temperature], "ppl": [[row.ppl_after]]}
    return FitResult.from_json({"grid": grid, "k": row.k, "distance": row.distance, "tokens": row.tokens,
                                "ppl_lm": row.ppl_lm, "baseline": {"lambda": row.lambda_before,
                                                                    "temperature": row.temperature_before,
                                                                    "ppl": row.ppl_before}})


def is_demo_build(model_spec: str, sources: list, context_length: int, stride: int) -> bool:
    """Whether a build is the demo datastore: the demo model on exactly the demo documents, in the
    demo's windows — the datastore `DEMO_FIT` was measured on."""
    from ..models import DEMO_SPEC

    try:
        same_docs = [Path(s).resolve() for s in sources] == [DEMO_DOCS_DIR.resolve()]
    except OSError:
        return False
    return model_spec == DEMO_SPEC and same_docs and (context_length, stride) == DEMO_WINDOWS


def remember_demo_fit(catalog: Catalog, datastore: str, model_name: str) -> FittedSettingsRow | None:
    """Give a freshly built demo datastore the fit measured on it when the demo was made
    (`knn-explorer fit --model demo --datastore demo-docs --heldout resources/demo/heldout --json`,
    kept as `DEMO_FIT`): the same model, documents and windows make the same datastore, so the
    same grid gives the same numbers; refitting would cost a minute on a first launch. None if
    the file is missing or unreadable."""
    try:
        result = FitResult.from_json(json.loads(DEMO_FIT.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return remember_fit(catalog, datastore, model_name, result, str(DEMO_HELDOUT), origin="shipped")

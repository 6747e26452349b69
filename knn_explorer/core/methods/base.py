"""The method protocol: what a way of forming the next-token distribution is, for everyone who runs one.

The step generator, the evaluator (`compare`), side by side, the CLI and the app never ask a
method's name: they read a `Method` subclass from the registry (`methods.registry`), make its
settings, open what it `needs`, and call the hooks below. One forward pass of the plain model is
shared by every method (it gives log p_LM, the kNN key of each position, and — if a method asks —
the hidden state fed to the output embedding); a method that changes the model itself (a memory
inside a layer) declares `own_pass` and gets a second pass of its own, with its context managers
around both.

A new method is one module with a `Method` subclass, registered under the entry-point group
`knn_explorer.methods` (see examples/ and docs/ARCHITECTURE.md, "How to add a method").
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:  # nothing heavy at import: the CLI reads the registry's names for --help
    import torch

    from ..datastore.folder import Datastore
    from ..evaluation.sweeps import SweepResult
    from ..models import LoadedModel
    from ..progress import ProgressCallback


class MethodError(ValueError):
    """A method that cannot run as asked; str() is a one-line reason."""


def setting(default, *, flag: str | None = None, dest: str | None = None, inverted: bool = False, help: str = "",
            choices: tuple | list | None = None, minimum: float | None = None, maximum: float | None = None):
    """A settings field with what the CLI (and a generated panel) need to offer it: its flag
    (default: the field's name with dashes), the argparse destination if it differs, and whether
    the flag says the opposite of the field (`--approximate` for `exact_distances`); optionally the
    values it may take (`choices`) and its bounds (`minimum`, `maximum`), which the app's generated
    panel offers (validation stays in the dataclass's `__post_init__`)."""
    return field(default=default, metadata={"flag": flag, "dest": dest, "inverted": inverted, "help": help,
                                            "choices": tuple(choices) if choices is not None else None,
                                            "minimum": minimum, "maximum": maximum})


@dataclass(frozen=True)
class MethodSettings:
    """Base of every method's settings: a frozen dataclass that validates itself in __post_init__.
    Field metadata may carry `help` (one line), `minimum`/`maximum` and `choices`: the CLI and the
    app's generated panel read them."""

    def describe(self) -> dict:
        """As kept with evaluations and printed as JSON."""
        return asdict(self)

    @classmethod
    def from_options(cls, options) -> "MethodSettings":
        """Settings from an object whose attributes are the CLI's parsed flags (argparse's
        namespace): each field takes the attribute its flag names, where there is one and it is set."""
        values = {}
        for f in fields(cls):
            flag = f.metadata.get("flag") or f.name.replace("_", "-")
            value = getattr(options, f.metadata.get("dest") or flag.replace("-", "_"), None)
            if value is not None:
                values[f.name] = (not value) if f.metadata.get("inverted") else value
        return cls(**values)


@dataclass(frozen=True)
class Resources:
    """What a method may need, opened by the caller: a datastore (`needs_datastore`) and a trained
    adapter file (optional; a method may know a default, e.g. the demo model's)."""

    datastore: "Datastore | None" = None
    adapter: Path | None = None


@dataclass
class PassOutputs:
    """What the shared forward pass gave for B positions (rows), and the method's own pass if it has one."""

    log_p_lm: torch.Tensor  # B×V, float32, on the CPU
    keys: torch.Tensor  # B×d: the kNN key of each position's context
    hidden: torch.Tensor | None = None  # B×d: input of the output embedding (if `uses_hidden`)
    own_logits: torch.Tensor | None = None  # B×V: the method's own pass (if `own_pass`)
    targets: torch.Tensor | None = None  # B: the tokens that did follow (evaluation only; None in generation)


@dataclass
class MethodStep:
    """A method's distribution for B positions, and whatever it wants to show per position."""

    log_p_final: torch.Tensor  # B×V, float64, on the CPU
    details: Any = None


@dataclass(frozen=True)
class Sweepable:
    """A setting a method sweeps itself (`Method.sweep`): what a person reads, and the values proposed."""

    label: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class Trainer:
    """What a trainable method (`Method.train`) learns, and what the CLI and the app offer for it."""

    label: str  # what is trained, as a person reads it after the method's label ("per-head gates")
    learns_from: str  # "documents" (files the person names) or "datastore" (the datastore's own documents)
    learning_rate: float  # the default Adam learning rate
    default_name: str  # the adapter's default name in the catalog
    settings: tuple[str, ...] = ()  # fields of the method's `Settings` the training uses (e.g. "layer", "k")
    segment_help: str = "Tokens per training window"
    gates_title: str = "Gates"  # what the app's gate plot shows (rich text)


@dataclass(frozen=True)
class TrainingSettings:
    """How to train, whatever the method: None takes the method's own default."""

    epochs: int = 1
    segment: int = 128  # tokens per segment / window
    learning_rate: float | None = None
    segments_per_step: int | None = None  # segments (windows) whose gradients make one update


@dataclass(frozen=True)
class Trained:
    """What `Method.train` gives back: the training's summary (steps, seconds, loss_first, loss_last,
    gates), what the adapter was trained with (kept in the catalog), and what it learned from, in words."""

    summary: dict
    details: dict
    source: str


class RecordContext:
    """What a method may use to describe one step in its record (given by the generator)."""

    top: Callable[[torch.Tensor], list]  # probabilities (V) -> the record's top-k TokenProb list
    neighbours: Callable[..., list]  # (retrieval, weights, datastore, knn_weights=None) -> [Neighbour]
    memory_hit: Callable[..., Any]  # (text position, weight, similarity=None) -> MemoryHit
    chosen: int  # the token this step took (chosen or forced)


class Method:
    """One way of forming p_final. Subclasses set the class attributes and implement `combine`."""

    name: ClassVar[str]  # short, stable: CLI values, JSON, the catalog
    label: ClassVar[str]  # what a person reads
    summary: ClassVar[str] = ""  # one line for help texts and tooltips
    short_label: ClassVar[str] = ""  # where the label does not fit (a bar chart's tick); default: the label
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    needs_datastore: ClassVar[bool] = False
    uses_hidden: ClassVar[bool] = False  # capture the output embedding's input on the shared pass
    own_pass: ClassVar[bool] = False  # run a second forward pass with the method's change to the model
    reads_earlier_text: ClassVar[bool] = False  # remembers text before the window (one document at a time)
    carries_cache: ClassVar[bool] = False  # `compare` runs its own pass with `own_window`, one window at a time
    record_fields: ClassVar[tuple[str, ...]] = ()  # TokenRecord fields it fills (the rest stay null)
    sweeps: ClassVar[dict[str, Sweepable]] = {}  # settings fields `sweep` runs over held-out text (default: none)
    trainer: ClassVar[Trainer | None] = None  # set by a method whose adapter `train` learns (default: none)

    def __init__(self, model: "LoadedModel", settings: MethodSettings | None = None,
                 resources: Resources = Resources()):
        self.model = model
        self.settings = settings if settings is not None else self.Settings()
        self.resources = resources
        if self.needs_datastore and resources.datastore is None:
            raise MethodError(f"{self.label} needs a datastore")

    # ---- lifecycle (all optional) ------------------------------------------------------------
    def start_text(self) -> None:
        """A new text starts (a generation, an evaluation): forget what an earlier one left."""

    def start_document(self, position: int) -> None:
        """A new document of the text being read starts at token `position`."""

    def close(self) -> None:
        """Undo whatever the method did to the model (the app calls this when it switches away)."""

    def set_aside(self) -> AbstractContextManager:
        """Forward passes of *another* text inside the block must not disturb this method's state
        (side by side runs several texts through one model)."""
        return nullcontext()

    # ---- one step ----------------------------------------------------------------------------
    def shared_pass(self, window_start: int, input_start: int) -> AbstractContextManager:
        """Around the shared forward pass, whose first input token is at `input_start` and whose
        local attention starts at `window_start` (absolute positions in the text)."""
        return nullcontext()

    def method_pass(self, window_start: int, input_start: int) -> AbstractContextManager:
        """Around the method's own forward pass (only if `own_pass`)."""
        return nullcontext()

    def catch_up(self, ids: list[int], window_start: int, window: int) -> None:
        """Before a step whose local attention starts at `window_start`: text before it that never
        went through the model (a long prompt) can be read now (only if `reads_earlier_text`)."""

    def own_window(self, tokens: torch.Tensor, span) -> torch.Tensor | None:
        """Only if `carries_cache`: `compare`'s own pass for this method over the window `span`
        (a `windows.Span`) of `tokens` (the whole text's ids), called after the shared pass, the
        windows in order after `start_text`. The method may run only the tokens the previous window
        did not have, after the key/value cache it carried from it (Transformer-XL's short-term
        memory, SPALM). Returns what `PassOutputs.own_logits` holds for the span's targets (their
        contexts: positions first_target − 1 … end − 2), or None."""
        raise NotImplementedError

    def combine(self, outputs: PassOutputs) -> MethodStep:
        raise NotImplementedError

    def describe_step(self, step: MethodStep, row: int, context: RecordContext) -> dict:
        """The TokenRecord fields this method fills for position `row` of `step` (`record_fields`)."""
        return {}

    def results(self) -> dict:
        """Numbers the method measured on the targets it has scored since it was made, besides their
        probabilities (e.g. SPALM's gate statistics), for reports; default none."""
        return {}

    @classmethod
    def results_note(cls, results: dict) -> str:
        """`results()` in a few words, shown beside the method's perplexity (default: nothing)."""
        return ""

    def describe(self) -> dict:
        """The settings and resources behind its numbers, for JSON, CSV and kept runs."""
        out = {"method": self.name, **self.settings.describe()}
        if self.resources.datastore is not None:
            out["datastore"] = self.resources.datastore.name
        return out

    # ---- its own sweeps (optional) -----------------------------------------------------------
    @classmethod
    def check_sweep(cls, param: str, values: list[float]) -> None:
        """Refuse, in one line (`MethodError`), a sweep of `param` this method does not offer or
        values its `Settings` refuse: before anyone runs the model."""
        if param not in cls.sweeps:
            offered = ", ".join(cls.sweeps) or "none"
            raise MethodError(f"{cls.label} has no sweep of {param!r} (it offers: {offered})")
        from .sweep_names import KeptAs

        if isinstance(cls.sweeps[param], KeptAs):  # a sweep kept under its bare name: the core's checks and words
            from ..evaluation.sweeps import SweepValueError, check_sweep_values

            try:
                check_sweep_values(None, param, values)
            except SweepValueError as exc:
                raise MethodError(str(exc)) from None
            return
        if not values:
            raise MethodError("give at least one value to sweep")
        for value in values:
            try:
                replace(cls.Settings(), **{param: value})
            except (TypeError, ValueError) as exc:
                raise MethodError(f"{cls.label}, {cls.sweeps[param].label} {value:g}: {exc}") from None

    def sweep(self, texts: list[str], param: str, values: list[float], context_length: int = 256,
              stride: int = 128, on_progress: "ProgressCallback | None" = None,
              should_stop: Callable[[], bool] | None = None) -> "SweepResult":
        """Held-out perplexity at each value of `param` (one of `sweeps`), the other settings as they
        are: a `SweepResult` whose `param` is "<name>.<param>", with optional `references` (a
        label → perplexity to draw beside the LM alone's). Only methods with `sweeps` implement it."""
        raise MethodError(f"{self.label} has no sweep of {param!r}")

    # ---- training its adapter (optional) -----------------------------------------------------
    @classmethod
    def train(cls, model: "LoadedModel", settings: MethodSettings, resources: Resources, sources: list[str],
              training: TrainingSettings, checkpoint: Path, on_step: Callable | None = None,
              on_progress: "ProgressCallback | None" = None,
              should_stop: Callable[[], bool] | None = None) -> Trained:
        """Train the method's adapter and write it to `checkpoint` (.safetensors), calling `on_step`
        with each update's `TrainingStep`. `sources` are the documents' texts when the `trainer`
        learns from documents; the datastore (`resources.datastore`) when it learns from a datastore.
        Only methods with a `trainer` implement it."""
        raise MethodError(f"{cls.label} has nothing to train")

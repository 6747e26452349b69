"""Generation runs and their branches, as the main window keeps them (records only; no Qt)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..core.records import TokenRecord


@dataclass
class Run:
    label: str
    prompt: str
    prompt_ids: list[int]  # the tokens before this run's step 0
    settings: dict
    records: list[TokenRecord] = field(default_factory=list)
    compare: list[TokenRecord] = field(default_factory=list)  # the same prompt with the LM alone
    branch_step: int | None = None  # a branch: the step whose token was chosen by hand
    model: str | None = None  # the model that generated it
    datastore: str | None = None  # the datastore its method read, if it needs one

    def context_ids(self, step: int) -> list[int]:
        """Prompt plus the tokens generated before `step`: where a branch at `step` continues from."""
        return self.prompt_ids + [r.token_id for r in self.records[:step]]

    def branch(self, step: int, token: str) -> "Run":
        return Run(label=f"branch at step {step}: {token!r}", prompt=self.prompt, prompt_ids=list(self.prompt_ids),
                   settings=dict(self.settings), records=list(self.records[:step]), branch_step=step,
                   model=self.model, datastore=self.datastore)

    def export_context(self) -> dict:
        """What an exported run carries beside its tokens: the model, the datastore and every
        setting it was generated with (nested ones as "a.b"; the prompt is the JSON's own field)."""
        out = {"model": self.model, "datastore": self.datastore}
        _flatten(self.settings, "", out)
        return out


def _flatten(settings: dict, prefix: str, out: dict) -> None:
    for key, value in settings.items():
        if key == "prompt" and not prefix:
            continue
        if isinstance(value, dict):
            _flatten(value, f"{prefix}{key}.", out)
        else:
            out[f"{prefix}{key}"] = value

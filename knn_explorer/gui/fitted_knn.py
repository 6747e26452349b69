"""kNN-LM's λ and T in the app follow the chosen datastore's fit (`core/evaluation/fit.py`).

The rule, kept simple so it is predictable:
- choosing a datastore that has a fit sets the kNN-LM panel's λ and T to the fitted pair, unless
  the user moved λ or T by hand in this session (values restored from the last session do not
  count); either way the status bar says what happened;
- fitting (the Evaluate page's "Fit λ and T") always applies its pair, and the panel then counts as
  following fits again;
- a freshly built demo datastore gets the fit measured on it when the demo was made.
"""
from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject

from ..core.datastore.catalog import Catalog, CatalogError, FittedSettingsRow
from ..core.evaluation.fit import describe_fit, remember_demo_fit
from .widgets.generation_controls import KnnLmPanel


class FittedKnnSettings(QObject):
    def __init__(self, panel: KnnLmPanel, catalog: Catalog, say: Callable[[str], None], parent=None):
        super().__init__(parent)
        self.panel, self.catalog, self.say = panel, catalog, say
        self.by_hand = False  # λ or T moved by the user in this session
        self._applying = False
        panel.lambda_slider.valueChanged.connect(self._changed)
        panel.temperature.valueChanged.connect(self._changed)

    def _changed(self) -> None:
        if not self._applying:
            self.by_hand = True

    def values(self) -> tuple[float, float]:
        return self.panel.lambda_slider.value() / 100, self.panel.temperature.value()

    def datastore_chosen(self, name: str) -> FittedSettingsRow | None:
        """Apply `name`'s latest fit unless λ or T were set by hand; the fit applied, or None."""
        try:
            row = self.catalog.fitted(name)
        except CatalogError:  # the fit is a convenience: a catalog that cannot say costs only it
            return None
        if row is None:
            return None
        if self.by_hand:
            lam, temperature = self.values()
            self.say(f"'{name}' has λ={row.lambda_:g}, T={row.temperature:g} fitted on held-out text; "
                     f"kept your λ={lam:g}, T={temperature:g} set by hand")
            return None
        self.apply(row)
        return row

    def apply(self, row: FittedSettingsRow, asked: bool = False) -> None:
        """Set the panel's λ and T to the fit's (`asked`: the user fitted them just now)."""
        self._applying = True
        try:
            self.panel.lambda_slider.setValue(round(row.lambda_ * 100))
            box = self.panel.temperature  # a fit for keys thousands apart may go beyond the box's range
            box.setMaximum(max(box.maximum(), row.temperature))
            box.setValue(row.temperature)
        finally:
            self._applying = False
        if asked:
            self.by_hand = False
        self.say(f"kNN-LM for '{row.datastore}': {describe_fit(row)}")

    def demo_built(self, name: str, model_name: str) -> None:
        """The demo datastore was just built: give it the fit shipped with the demo."""
        try:
            remember_demo_fit(self.catalog, name, model_name)
        except CatalogError as exc:
            self.say(f"The demo's fitted λ and T were not kept: {exc}")

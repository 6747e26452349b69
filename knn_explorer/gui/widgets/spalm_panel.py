"""SPALM's parameters: k, the short-term memory and the distance mode (the gate and W are learned;
distances only rank neighbours)."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QCheckBox, QFormLayout, QLabel, QSpinBox, QWidget

from ...core.mechanisms.spalm import SpalmSettings
from .path_field import PathField


class SpalmPanel(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.k = QSpinBox(minimum=1, maximum=1024, value=32)
        self.k.setToolTip("Neighbours retrieved per token; their next tokens' embeddings are averaged into m_t")
        self.short_term = QSpinBox(minimum=0, maximum=1 << 20, value=0, singleStep=64)
        self.short_term.setSpecialValueText("the model's maximum")
        self.short_term.setSuffix(" tokens")
        self.short_term.setToolTip("Short-term memory (Transformer-XL's): how many recent tokens the key/value cache "
                                   "keeps; when full, generation continues from its most recent half")
        self.exact = QCheckBox("exact distances")
        self.exact.setChecked(True)
        self.exact.setToolTip("Rank neighbours by distances recomputed from the stored keys (else the index's)")
        self.adapter = PathField("A SPALM adapter", "the demo's trained gate and W with the demo model, else untrained",
                                 "A trained adapter: the gate, and the word embeddings W trained with it "
                                 "(.safetensors from Train gates / train-gates --method spalm; gate-only files "
                                 "keep the model's W)", file_filter="Adapters (*.safetensors)")
        note = QLabel("z = (1 − g)·m + g·h, g = σ(w·h + b): g per token is the chip colour under “λ / gate” and "
                      "the inspector's history plot. Untrained: g = 0.9, the model's W.")
        note.setWordWrap(True)
        note.setStyleSheet("color: #868e96")
        form.addRow("k", self.k)
        form.addRow("short-term", self.short_term)
        form.addRow("", self.exact)
        form.addRow("gate", self.adapter)
        form.addRow(note)

    def values(self) -> dict:
        return {"spalm_k": self.k.value(), "spalm_exact": self.exact.isChecked(),
                "spalm_gate": self.adapter.text().strip(), "spalm_short_term": self.short_term.value() or None}

    @staticmethod
    def settings_from(values: dict) -> tuple[SpalmSettings, Path | None]:
        """SPALM's settings and gate file from the controls' values."""
        return (SpalmSettings(k=values["spalm_k"], exact_distances=values["spalm_exact"]),
                Path(values["spalm_gate"]) if values["spalm_gate"] else None)

    @staticmethod
    def context_window(values: dict) -> int | None:
        """The short-term memory (None: the model's maximum)."""
        return values["spalm_short_term"]

    def apply(self, values: dict) -> None:
        self.k.setValue(int(values.get("spalm_k", self.k.value())))
        self.exact.setChecked(bool(values.get("spalm_exact", True)))
        self.adapter.setText(str(values.get("spalm_gate", "")))
        self.short_term.setValue(int(values.get("spalm_short_term") or 0))

"""The Memorizing Transformer's parameters: memory layer, size, k, mode, local window, gates."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QComboBox, QFormLayout, QGridLayout, QLabel, QSpinBox, QWidget

from ...core.mechanisms.memorizing import MAX_MEMORY, MemorizingSettings
from .path_field import PathField

AUTO_LAYER = -1


class MemorizingPanel(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.layer = QSpinBox(minimum=AUTO_LAYER, maximum=255, value=AUTO_LAYER)
        self.layer.setSpecialValueText("auto (¾ of the depth)")
        self.layer.setToolTip("0-based layer whose attention also looks up the memory (the paper: layer 9 of 12)")
        self.size = QSpinBox(minimum=0, maximum=MAX_MEMORY, value=65_536, singleStep=1024)
        self.size.setGroupSeparatorShown(True)
        self.size.setSuffix(" tokens")
        self.size.setToolTip("How many earlier tokens the memory keeps (FIFO); 0 turns it off")
        self.k = QSpinBox(minimum=1, maximum=1024, value=32)
        self.k.setToolTip("Memory entries each head retrieves per token (top-k by cosine similarity)")
        self.mode = QComboBox()
        self.mode.addItem("gated (learned per-head gates)", "gated")
        self.mode.addItem("joint softmax (no training)", "joint")
        self.mode.setToolTip("Gated: out = g·memory + (1−g)·local per head, g learned (train-gates).\n"
                             "Joint: one softmax over local and retrieved keys, as in Extended Mind Transformers.")
        self.window = QSpinBox(minimum=0, maximum=1 << 20, value=128)
        self.window.setSpecialValueText("the model's maximum")
        self.window.setSuffix(" tokens")
        self.window.setToolTip("Tokens local attention sees; text older than this goes to the memory")
        self.adapter = PathField("A gate adapter", "demo gates with the demo model, else untrained",
                                 "Trained gates (.safetensors from Train memory gates / train-gates); empty: the demo "
                                 "model's shipped gates, or untrained gates (σ(−16): the model unchanged)",
                                 file_filter="Adapters (*.safetensors)")
        # Two columns, so the panel is no taller than kNN-LM's.
        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        for row, pairs in enumerate(((("layer", self.layer), ("k", self.k)),
                                     (("memory", self.size), ("window", self.window)))):
            for column, (label, widget) in enumerate(pairs):
                grid.addWidget(QLabel(label), row, column * 2)
                grid.addWidget(widget, row, column * 2 + 1)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        form.addRow(grid)
        form.addRow("mode", self.mode)
        form.addRow("gates", self.adapter)

    def values(self) -> dict:
        return {"memory_layer": None if self.layer.value() == AUTO_LAYER else self.layer.value(),
                "memory_size": self.size.value(), "memory_k": self.k.value(), "memory_mode": self.mode.currentData(),
                "memory_window": self.window.value() or None, "adapter": self.adapter.text().strip()}

    @staticmethod
    def settings_from(values: dict) -> tuple[MemorizingSettings, Path | None]:
        """The memory's settings and gate file from the controls' values."""
        return (MemorizingSettings(layer=values["memory_layer"], k=values["memory_k"],
                                   memory_size=values["memory_size"], mode=values["memory_mode"]),
                Path(values["adapter"]) if values["adapter"] else None)

    @staticmethod
    def context_window(values: dict) -> int | None:
        """The local attention window (None: the model's maximum)."""
        return values["memory_window"]

    def apply(self, values: dict) -> None:
        layer = values.get("memory_layer")
        self.layer.setValue(AUTO_LAYER if layer is None else int(layer))
        self.size.setValue(int(values.get("memory_size", self.size.value())))
        self.k.setValue(int(values.get("memory_k", self.k.value())))
        self.mode.setCurrentIndex(max(0, self.mode.findData(values.get("memory_mode", "gated"))))
        self.window.setValue(int(values.get("memory_window") or 0))
        self.adapter.setText(str(values.get("adapter", "")))

"""The Memorizing Transformer's parameters: memory layer, size, k, mode, local window, gates.

Once a model is loaded (`set_model`), "auto" in the layer box names the layer it stands for, and a
note beside the mode says which layer the memory will be in and why (chosen, the trained gates'
layer, ¾ of the depth), with the gates it will use: the same decision the run makes
(`core.training.adapters.plan_memory_layer`).

The local window is remembered on its own (`AppSettings.memory_window`) the moment it changes;
until the user chooses one it is `DEFAULT_WINDOW` tokens, small enough that a typed prompt reaches
the memory (see that constant for why).
"""
from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QComboBox, QFormLayout, QGridLayout, QHBoxLayout, QLabel, QSpinBox, QWidget

from ...core.mechanisms.memorizing import DEFAULT_WINDOW, MAX_MEMORY, MemorizingError, MemorizingSettings
from ..settings import AppSettings
from .path_field import PathField

AUTO_LAYER = -1
AUTO_TEXT = "auto (¾ of the depth)"  # before a model is loaded


class MemorizingPanel(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.model = None  # the LoadedModel the note describes (set_model)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.layer = QSpinBox(minimum=AUTO_LAYER, maximum=255, value=AUTO_LAYER)
        self.layer.setSpecialValueText(AUTO_TEXT)
        self.layer.setToolTip("0-based layer whose attention also looks up the memory (the paper: layer 9 of 12).\n"
                              "auto: the layer the trained gates were made for, else ¾ of the depth")
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
        remembered = AppSettings().memory_window
        self.window = QSpinBox(minimum=0, maximum=1 << 20, value=DEFAULT_WINDOW if remembered is None else remembered)
        self.window.setSpecialValueText("the model's maximum")
        self.window.setSuffix(" tokens")
        self.window.setToolTip(
            "Tokens local attention sees; text older than this goes into the memory.\n"
            f"The window restarts on its most recent half when full, so local attention sees W/2 to W tokens and the "
            f"memory is first used once the text passes W tokens.\n{DEFAULT_WINDOW} (the default) shows the memory "
            "at work on a typed prompt; use a few hundred for long documents. The model's maximum: a short text "
            "never reaches the memory.")
        self.window.valueChanged.connect(self._window_changed)
        self.adapter = PathField("A gate adapter", "the demo's adapter with the demo model, else untrained",
                                 "Trained gates (.safetensors from Train memory gates / train-gates; an adapter may "
                                 "also carry layers fine-tuned with the memory); empty: the demo model's shipped "
                                 "gates, or untrained gates (σ(−16): the model unchanged)",
                                 file_filter="Adapters (*.safetensors)")
        self.layer_note = QLabel("")
        self.layer_note.setObjectName("MemoryLayerNote")
        self.layer_note.setStyleSheet("color: #495057;")
        self.layer_note.setWordWrap(False)
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
        mode_row = QHBoxLayout()  # the note beside the mode: the panel gets no taller
        mode_row.setContentsMargins(0, 0, 0, 0)
        mode_row.addWidget(self.mode)
        mode_row.addWidget(self.layer_note, 1)
        form.addRow("mode", mode_row)
        form.addRow("gates", self.adapter)
        self.layer.valueChanged.connect(self._describe_layer)
        self.mode.currentIndexChanged.connect(self._describe_layer)
        self.adapter.edit.textChanged.connect(self._describe_layer)
        self._describe_layer()

    # ---- the model the layer box describes -----------------------------------------------------
    def set_model(self, model) -> None:
        """The loaded model (a `LoadedModel`, or None): bounds the layer box and names the layer used."""
        self.model = model
        self._describe_layer()

    def layer_plan(self):
        """Where the memory goes with the panel's settings (a `MemoryLayerPlan`), or None without a
        model or for a model that has no memory layer."""
        if self.model is None:
            return None
        from ...core.training.adapters import plan_memory_layer

        settings, adapter = self.settings_from(self.values())
        try:
            return plan_memory_layer(self.model, settings, adapter)
        except (MemorizingError, ValueError, OSError):
            return None

    def _describe_layer(self) -> None:
        plan = self.layer_plan()
        if plan is None:
            self.layer.setSpecialValueText(AUTO_TEXT)
            if self.model is None:
                self.layer_note.setText("")
            else:
                self.layer_note.setText(self._unsupported())
            self.layer_note.setToolTip(self.layer_note.text())
            return
        self.layer.setSpecialValueText(f"auto (layer {plan.layer})")
        if not plan.layer < plan.layers:  # kept as chosen (another model's), refused when a run starts
            self.layer_note.setText(f"layer {plan.layer} does not exist: the model has layers 0–{plan.layers - 1}")
            self.layer_note.setToolTip(self.layer_note.text())
            return
        note = f"memory in {plan.describe()}"
        gated = self.mode.currentData() == "gated"
        if gated and plan.adapter is None:
            note += " · untrained gates: the model's own output"
        self.layer_note.setText(note)
        gates = "no gates (joint softmax)" if not gated else (
            f"gates: {plan.adapter.name}" if plan.adapter is not None else "gates untrained (σ(−16) ≈ 1e-7)")
        self.layer_note.setToolTip(f"The memory goes into layer {plan.layer} of 0–{plan.layers - 1} "
                                   f"({plan.reason}); {gates}.")

    def _unsupported(self) -> str:
        from ...core.mechanisms.memorizing import layer_count

        try:
            layer_count(self.model)
        except MemorizingError as exc:
            return str(exc)
        return ""

    def _window_changed(self, tokens: int) -> None:
        AppSettings().memory_window = tokens

    # ---- values ----------------------------------------------------------------------------
    def values(self) -> dict:
        return {"memory_layer": None if self.layer.value() == AUTO_LAYER else self.layer.value(),
                "memory_size": self.size.value(), "memory_k": self.k.value(), "memory_mode": self.mode.currentData(),
                "memory_window": self.window.value(), "adapter": self.adapter.text().strip()}

    @staticmethod
    def settings_from(values: dict) -> tuple[MemorizingSettings, Path | None]:
        """The memory's settings and gate file from the controls' values."""
        return (MemorizingSettings(layer=values["memory_layer"], k=values["memory_k"],
                                   memory_size=values["memory_size"], mode=values["memory_mode"]),
                Path(values["adapter"]) if values["adapter"] else None)

    @staticmethod
    def context_window(values: dict) -> int | None:
        """The local attention window (None: the model's maximum)."""
        return values.get("memory_window") or None

    def apply(self, values: dict) -> None:
        layer = values.get("memory_layer")
        self.layer.setValue(AUTO_LAYER if layer is None else int(layer))
        self.size.setValue(int(values.get("memory_size", self.size.value())))
        self.k.setValue(int(values.get("memory_k", self.k.value())))
        self.mode.setCurrentIndex(max(0, self.mode.findData(values.get("memory_mode", "gated"))))
        window = values.get("memory_window")
        # A number is a choice (0: the model's maximum); a missing or null one (settings saved by a
        # version that wrote null for "never set") keeps the remembered or default window.
        if isinstance(window, int) and not isinstance(window, bool):
            self.window.setValue(window)
        self.adapter.setText(str(values.get("adapter", "")))

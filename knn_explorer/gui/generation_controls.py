"""Prompt editor, method and retrieval parameters, and the Generate / Step / Pause / Stop buttons.

A method is a panel of its own parameters (kNN-LM: k, λ, λ mode, T, distance mode); SPALM and
the Memorizing Transformer add their panels to `method_panels` the same way.
"""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                               QPlainTextEdit, QPushButton, QSlider, QSpinBox, QStackedWidget, QVBoxLayout, QWidget)

from ..core.methods import METHOD_LABELS
from .memorizing_panel import MemorizingPanel
from .spalm_panel import SpalmPanel

DEFAULT_PROMPT = "To register a view function for a URL, use the"


class KnnLmPanel(QWidget):
    """kNN-LM's parameters: p = λ p_kNN + (1 − λ) p_LM, p_kNN = softmax(−d/T) over k neighbours."""

    def __init__(self, parent=None):
        super().__init__(parent)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.k = QSpinBox(minimum=1, maximum=1024, value=32)
        self.k.setToolTip("Number of neighbours retrieved per token (the paper uses 1024; 8 already helps)")
        self.lambda_slider = QSlider(Qt.Orientation.Horizontal, minimum=0, maximum=100, value=25)
        self.lambda_slider.setToolTip("λ: weight of p_kNN in p = λ·p_kNN + (1−λ)·p_LM (0.25 in domain, ~0.65 across domains)")
        self.lambda_label = QLabel("0.25")
        self.lambda_label.setMinimumWidth(32)
        self.lambda_slider.valueChanged.connect(lambda v: self.lambda_label.setText(f"{v / 100:.2f}"))
        lam_row = QHBoxLayout()
        lam_row.addWidget(self.lambda_slider)
        lam_row.addWidget(self.lambda_label)
        self.lambda_mode = QComboBox()
        self.lambda_mode.addItem("fixed", "fixed")
        self.lambda_mode.addItem("adaptive (entropy)", "entropy")
        self.lambda_mode.setToolTip("Adaptive: λ·(1 − H(p_kNN)/log k) — full λ when neighbours agree, none when they scatter")
        self.temperature = QDoubleSpinBox(minimum=0.01, maximum=1000.0, value=1.0, singleStep=0.5, decimals=2)
        self.temperature.setToolTip("T in softmax(−distance / T): larger spreads p_kNN over more neighbours")
        self.exact = QCheckBox("exact distances")
        self.exact.setChecked(True)
        self.exact.setToolTip("Recompute distances from the stored keys (better) instead of the index's estimates (faster)")
        form.addRow("k", self.k)
        form.addRow("λ", lam_row)
        form.addRow("λ mode", self.lambda_mode)
        form.addRow("T", self.temperature)
        form.addRow("", self.exact)

    def values(self) -> dict:
        return {"k": self.k.value(), "lambda": self.lambda_slider.value() / 100, "temperature": self.temperature.value(),
                "lambda_mode": self.lambda_mode.currentData(), "exact": self.exact.isChecked()}

    def apply(self, values: dict) -> None:
        self.k.setValue(int(values.get("k", self.k.value())))
        self.lambda_slider.setValue(round(float(values.get("lambda", self.lambda_slider.value() / 100)) * 100))
        self.temperature.setValue(float(values.get("temperature", self.temperature.value())))
        index = self.lambda_mode.findData(values.get("lambda_mode", "fixed"))
        self.lambda_mode.setCurrentIndex(max(0, index))
        self.exact.setChecked(bool(values.get("exact", True)))


class GenerationControls(QWidget):
    generate_requested = Signal()
    step_requested = Signal()
    pause_toggled = Signal()
    stop_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.prompt = QPlainTextEdit(DEFAULT_PROMPT)
        self.prompt.setPlaceholderText("Type a prompt…")
        self.prompt.setToolTip("The text generation continues from")
        self.prompt.setMaximumHeight(64)
        layout.addWidget(self.prompt)

        row = QHBoxLayout()
        settings = QGroupBox("Generation")
        form = QFormLayout(settings)
        self.method = QComboBox()
        for key, label in METHOD_LABELS.items():
            self.method.addItem(label, key)
        self.method.setCurrentIndex(1)
        self.method.setToolTip("How the next-token distribution is formed")
        self.compare = QCheckBox("compare with LM alone")
        self.compare.setToolTip("Generate the same prompt with the LM alone in a second strip, step by step")
        self.max_tokens = QSpinBox(minimum=1, maximum=2048, value=40)
        self.max_tokens.setToolTip("How many tokens to generate")
        self.greedy = QCheckBox("greedy")
        self.greedy.setChecked(True)
        self.greedy.setToolTip("Always take the most probable token; untick to sample from p_final")
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        self.seed.setToolTip("Random seed for sampling (the same seed gives the same text)")
        self.seed.setEnabled(False)
        self.greedy.toggled.connect(lambda on: self.seed.setEnabled(not on))
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.greedy)
        seed_row.addWidget(QLabel("seed"))
        seed_row.addWidget(self.seed)
        form.addRow("method", self.method)
        form.addRow("", self.compare)
        form.addRow("max tokens", self.max_tokens)
        form.addRow("decoding", seed_row)
        row.addWidget(settings)

        self.method_box = QGroupBox("kNN-LM")
        box_layout = QVBoxLayout(self.method_box)
        self.method_panels = QStackedWidget()
        self.knnlm = KnnLmPanel()
        self.method_panels.addWidget(QLabel("The model's own distribution, no retrieval."))
        self.method_panels.addWidget(self.knnlm)
        self.spalm = SpalmPanel()
        self.method_panels.addWidget(self.spalm)
        self.memorizing = MemorizingPanel()
        self.method_panels.addWidget(self.memorizing)
        box_layout.addWidget(self.method_panels)
        row.addWidget(self.method_box, 1)
        self.method.currentIndexChanged.connect(self._method_changed)
        self._method_changed()
        layout.addLayout(row)

        buttons = QHBoxLayout()
        self.generate = QPushButton("Generate")
        self.step = QPushButton("Step")
        self.pause = QPushButton("Pause")
        self.stop = QPushButton("Stop")
        for button, tip, keys in (
            (self.generate, "Generate up to max tokens", "Ctrl+Return"),
            (self.step, "Generate one token (continues the current run, or starts one)", "Ctrl+Right"),
            (self.pause, "Pause or resume the running generation", "Ctrl+P"),
            (self.stop, "Stop the running generation", "Escape"),
        ):
            button.setToolTip(f"{tip} ({keys})")
            # Window-wide, so the keys work wherever focus is in the main window but not in dialogs.
            QShortcut(QKeySequence(keys), self, activated=button.click, context=Qt.ShortcutContext.WindowShortcut)
            buttons.addWidget(button)
        self.generate.clicked.connect(self.generate_requested)
        self.step.clicked.connect(self.step_requested)
        self.pause.clicked.connect(self.pause_toggled)
        self.stop.clicked.connect(self.stop_requested)
        self.set_running(False)
        layout.addLayout(buttons)

    def _method_changed(self) -> None:
        method = self.method.currentData()
        self.method_panels.setCurrentIndex(list(METHOD_LABELS).index(method))
        self.method_box.setTitle(METHOD_LABELS[method])
        self.compare.setEnabled(method != "none")

    def set_running(self, running: bool, paused: bool = False) -> None:
        self.generate.setEnabled(not running)
        self.pause.setEnabled(running)
        self.stop.setEnabled(running)
        self.pause.setText("Resume" if paused else "Pause")
        self.step.setEnabled(not running or paused)

    def values(self) -> dict:
        return {"method": self.method.currentData(), "compare": self.compare.isChecked(),
                "max_new_tokens": self.max_tokens.value(), "greedy": self.greedy.isChecked(), "seed": self.seed.value(),
                "prompt": self.prompt.toPlainText(), **self.knnlm.values(), **self.spalm.values(),
                **self.memorizing.values()}

    def apply(self, values: dict) -> None:
        index = self.method.findData(values.get("method", "knnlm"))
        self.method.setCurrentIndex(max(0, index))
        self.compare.setChecked(bool(values.get("compare", False)))
        self.max_tokens.setValue(int(values.get("max_new_tokens", self.max_tokens.value())))
        self.greedy.setChecked(bool(values.get("greedy", True)))
        self.seed.setValue(int(values.get("seed", 0)))
        if values.get("prompt"):
            self.prompt.setPlainText(values["prompt"])
        self.knnlm.apply(values)
        self.spalm.apply(values)
        self.memorizing.apply(values)

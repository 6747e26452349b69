"""Prompt editor, method and retrieval parameters, and the Generate / Step / Pause / Stop buttons.

The method list is the registry's (`core.methods`): every registered method, a plug-in's too. Each
method has a panel of its own parameters in `method_panels`: the hand-made ones named in
`HAND_MADE_PANELS` (kNN-LM's here, SPALM's and the Memorizing Transformer's in their modules), and
for every other method a panel generated from its `Settings` (`settings_panel.SettingsPanel`).
`method_settings(values, name)` turns the controls' remembered values into a method's settings,
whichever kind of panel it has.
"""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                               QPlainTextEdit, QPushButton, QSizePolicy, QSlider, QSpinBox, QStackedWidget, QVBoxLayout,
                               QWidget)

from ...core.mechanisms.knnlm import KnnLmSettings
from ...core.methods import MethodError, MethodSettings, get, labels
from ...core.methods.knnlm import KnnLmMethod
from ...core.methods.lm_alone import LM_ALONE
from ...core.methods.memorizing import MemorizingTransformerMethod
from ...core.methods.spalm import SpalmMethod
from .memorizing_panel import MemorizingPanel
from .settings_panel import SettingsPanel, settings_from_values
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
        self.temperature.setToolTip("T in softmax(−d / T), d the squared L2 distance between keys (the inspector's "
                                    "Distance column): with T much smaller than the gaps between distances the "
                                    "nearest neighbour takes all of p_kNN; larger T spreads it over more neighbours. "
                                    "Evaluate › Fit λ and T finds the best pair on held-out text.")
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

    @staticmethod
    def settings_from(values: dict) -> tuple[KnnLmSettings, Path | None]:
        """kNN-LM's settings from the controls' values (no adapter file)."""
        return KnnLmSettings(k=values["k"], lambda_=values["lambda"], temperature=values["temperature"],
                             exact_distances=values["exact"], lambda_mode=values["lambda_mode"]), None

    @staticmethod
    def context_window(values: dict) -> int | None:
        return None

    def apply(self, values: dict) -> None:
        self.k.setValue(int(values.get("k", self.k.value())))
        self.lambda_slider.setValue(round(float(values.get("lambda", self.lambda_slider.value() / 100)) * 100))
        self.temperature.setValue(float(values.get("temperature", self.temperature.value())))
        index = self.lambda_mode.findData(values.get("lambda_mode", "fixed"))
        self.lambda_mode.setCurrentIndex(max(0, index))
        self.exact.setChecked(bool(values.get("exact", True)))


# The methods whose panel is made by hand, and only they (name -> panel class). Such a class has
# values()/apply() (flat keys of the controls' values), and static settings_from(values) -> (settings,
# adapter file or None) and context_window(values) -> the local window (None: the model's maximum).
# Every other registered method gets a `SettingsPanel` generated from its Settings.
HAND_MADE_PANELS: dict[str, type[QWidget]] = {
    KnnLmMethod.name: KnnLmPanel, SpalmMethod.name: SpalmPanel, MemorizingTransformerMethod.name: MemorizingPanel}
DEFAULT_METHOD = KnnLmMethod.name  # chosen on a first launch (the app builds the demo datastore for it)
GENERATED = "method_settings"  # key of the controls' values: {method name: its generated panel's values}


def method_settings(values: dict, name: str) -> tuple[MethodSettings, Path | None]:
    """The settings (and adapter file) of method `name` as the controls' `values` hold them; no
    widget is read, so a job's thread may call it. A `MethodError` (one line) if they are refused."""
    panel = HAND_MADE_PANELS.get(name)
    if panel is not None:
        return panel.settings_from(values)
    method = get(name)
    return settings_from_values(method.Settings, values.get(GENERATED, {}).get(name), method.label), None


def context_window(values: dict, name: str) -> int | None:
    """The local window method `name`'s panel sets (None: the model's maximum)."""
    panel = HAND_MADE_PANELS.get(name)
    return panel.context_window(values) if panel is not None else None


def summary_note(method) -> str:
    """The method's one-line summary as a sentence under its generated panel ("kNN-LM …" keeps its case)."""
    summary = method.summary.strip()
    if not summary:
        return ""
    if summary.split()[0].islower():
        summary = summary[0].upper() + summary[1:]
    return summary if summary.endswith(".") else summary + "."


class ShortcutsBeforeEditing(QObject):
    """Lets the window's Ctrl+→ (Step) win over a text box's own use of it (move one word right):
    a QPlainTextEdit claims the key in its shortcut-override event unless it is refused there."""

    KEYS = ((Qt.Key.Key_Right, Qt.KeyboardModifier.ControlModifier),)

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.ShortcutOverride and (event.key(), event.modifiers()) in self.KEYS:
            event.ignore()
            return True
        return False


class GenerationControls(QWidget):
    generate_requested = Signal()
    step_requested = Signal()
    pause_toggled = Signal()
    stop_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.prompt = QPlainTextEdit(DEFAULT_PROMPT)
        self._prompt_keys = ShortcutsBeforeEditing(self)
        self.prompt.installEventFilter(self._prompt_keys)
        self.prompt.setPlaceholderText("Type a prompt…")
        self.prompt.setToolTip("The text generation continues from")
        self.prompt.setMaximumHeight(64)
        layout.addWidget(self.prompt)

        row = QHBoxLayout()
        settings = QGroupBox("Generation")
        form = QFormLayout(settings)
        self.method = QComboBox()
        for key, label in labels().items():
            self.method.addItem(label, key)
            self.method.setItemData(self.method.count() - 1, get(key).summary, Qt.ItemDataRole.ToolTipRole)
        self.method.setCurrentIndex(max(0, self.method.findData(DEFAULT_METHOD)))
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

        self.method_box = QGroupBox("")
        box_layout = QVBoxLayout(self.method_box)
        self.method_panels = QStackedWidget()
        self.panels: dict[str, QWidget] = {}  # method name -> its panel (hand-made or generated)
        for name in labels():
            method = get(name)
            hand_made = HAND_MADE_PANELS.get(name)
            panel = hand_made() if hand_made is not None else SettingsPanel(method.Settings, method.label,
                                                                             summary_note(method))
            self.panels[name] = panel
            self.method_panels.addWidget(panel)
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

    # The hand-made panels by the names the app and its tests use.
    @property
    def knnlm(self) -> KnnLmPanel:
        return self.panels[KnnLmMethod.name]

    @property
    def spalm(self) -> SpalmPanel:
        return self.panels[SpalmMethod.name]

    @property
    def memorizing(self) -> MemorizingPanel:
        return self.panels[MemorizingTransformerMethod.name]

    def set_model(self, model) -> None:
        """A model was loaded: panels that describe it (the memory panel's layer) are told."""
        for panel in self.panels.values():
            if hasattr(panel, "set_model"):
                panel.set_model(model)

    def generated_panels(self) -> dict[str, SettingsPanel]:
        return {name: panel for name, panel in self.panels.items() if isinstance(panel, SettingsPanel)}

    def _method_changed(self) -> None:
        method = self.method.currentData()
        # A stacked widget is as tall as its tallest page: only the shown panel may ask for room, so
        # the controls are no taller than the chosen method needs (a laptop screen has none to spare).
        for panel in self.panels.values():
            shown = panel is self.panels[method]
            policy = QSizePolicy.Policy.Preferred if shown else QSizePolicy.Policy.Ignored
            panel.setSizePolicy(policy, policy)
        self.method_panels.setCurrentWidget(self.panels[method])
        self.method_panels.adjustSize()
        self.method_box.setTitle(get(method).label)
        self.compare.setEnabled(method != LM_ALONE)  # the LM alone is what the second strip shows

    def problem(self) -> str | None:
        """Why the chosen method's settings are refused (one line), or None."""
        try:
            method_settings(self.values(), self.method.currentData())
        except (MethodError, ValueError) as exc:
            return str(exc)
        return None

    def set_running(self, running: bool, paused: bool = False) -> None:
        self.generate.setEnabled(not running)
        self.pause.setEnabled(running)
        self.stop.setEnabled(running)
        self.pause.setText("Resume" if paused else "Pause")
        self.step.setEnabled(not running or paused)

    def values(self) -> dict:
        """Everything the controls hold, as plain values (remembered in the settings file, kept with runs)."""
        out = {"method": self.method.currentData(), "compare": self.compare.isChecked(),
               "max_new_tokens": self.max_tokens.value(), "greedy": self.greedy.isChecked(), "seed": self.seed.value(),
               "prompt": self.prompt.toPlainText()}
        for name, panel in self.panels.items():
            if name in HAND_MADE_PANELS:
                out.update(panel.values())
        out[GENERATED] = {name: panel.values() for name, panel in self.generated_panels().items()}
        return out

    def apply(self, values: dict) -> None:
        index = self.method.findData(values.get("method", DEFAULT_METHOD))
        if index < 0:  # a plug-in that is not installed now
            index = self.method.findData(DEFAULT_METHOD)
        self.method.setCurrentIndex(max(0, index))
        self.compare.setChecked(bool(values.get("compare", False)))
        self.max_tokens.setValue(int(values.get("max_new_tokens", self.max_tokens.value())))
        self.greedy.setChecked(bool(values.get("greedy", True)))
        self.seed.setValue(int(values.get("seed", 0)))
        if values.get("prompt"):
            self.prompt.setPlainText(values["prompt"])
        generated = values.get(GENERATED) if isinstance(values.get(GENERATED), dict) else {}
        for name, panel in self.panels.items():
            if name in HAND_MADE_PANELS:
                panel.apply(values)
            elif isinstance(generated.get(name), dict):
                panel.apply(generated[name])

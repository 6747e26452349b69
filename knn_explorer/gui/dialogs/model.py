"""Choose a model: the embedded demo, a local folder, or a Hugging Face hub id; and a device."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLineEdit,
                               QListWidget, QRadioButton, QVBoxLayout)

from ...core.models import DEMO_SPEC
from ..widgets.path_field import PathField


@dataclass(frozen=True)
class ModelChoice:
    spec: str
    device: str
    trust_remote_code: bool


class LoadModelDialog(QDialog):
    def __init__(self, recent: list[str], device: str = "auto", parent=None):
        super().__init__(parent)
        self.setWindowTitle("Load model")
        self.setMinimumWidth(520)
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.demo = QRadioButton("Embedded demo model")
        self.demo.setToolTip("A 5M-parameter GPT-2 trained on the Python docs; works offline")
        self.folder = QRadioButton("Local folder")
        self.folder.setToolTip("A Hugging Face model folder (config.json, weights, tokenizer)")
        self.hub = QRadioButton("Hub id")
        self.hub.setToolTip("e.g. openai-community/gpt2 — needs a network unless already cached")
        group = QButtonGroup(self)
        for button in (self.demo, self.folder, self.hub):
            group.addButton(button)
        self.demo.setChecked(True)
        self.folder_path = PathField("A model folder", "/path/to/model", "Folder holding config.json")
        self.folder_path.picked.connect(lambda _path: self.folder.setChecked(True))
        self.hub_id = QLineEdit()
        self.hub_id.setPlaceholderText("organisation/model")
        self.hub_id.setToolTip("A Hugging Face hub model id")
        self.folder_path.textEdited.connect(lambda: self.folder.setChecked(True))
        self.hub_id.textEdited.connect(lambda: self.hub.setChecked(True))
        form.addRow(self.demo)
        form.addRow(self.folder, self.folder_path)
        form.addRow(self.hub, self.hub_id)
        self.recent = QListWidget()
        self.recent.addItems([r for r in recent if r])
        self.recent.setToolTip("Recently loaded models (double-click to load)")
        self.recent.itemDoubleClicked.connect(lambda item: (self.set_spec(item.text()), self.accept()))
        self.recent.setMaximumHeight(110)
        form.addRow("Recent", self.recent)
        self.device = QComboBox()
        self.device.addItem("auto", "auto")
        self.device.addItem("CPU", "cpu")
        self.device.addItem("CUDA (GPU)", "cuda")
        if not torch.cuda.is_available():
            cuda = self.device.model().item(2)
            cuda.setEnabled(False)
            cuda.setToolTip("No CUDA device: torch sees no GPU on this machine")
            self.device.setToolTip("Where the model runs. CUDA is unavailable: torch sees no GPU")
        else:
            self.device.setToolTip("Where the model runs")
        self.device.setCurrentIndex(max(0, self.device.findData(device)))
        form.addRow("Device", self.device)
        self.remote_code = QCheckBox("allow the model's own code to run (trust_remote_code)")
        self.remote_code.setToolTip("Only for models you trust: their repository's Python code runs on this machine")
        form.addRow(self.remote_code)
        layout.addLayout(form)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Load")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def set_spec(self, spec: str) -> None:
        if spec == DEMO_SPEC:
            self.demo.setChecked(True)
        elif not Path(spec).expanduser().exists():
            self.hub.setChecked(True)
            self.hub_id.setText(spec)
        else:
            self.folder.setChecked(True)
            self.folder_path.setText(spec)

    def choice(self) -> ModelChoice:
        if self.demo.isChecked():
            spec = DEMO_SPEC
        elif self.folder.isChecked():
            spec = self.folder_path.text().strip()
        else:
            spec = self.hub_id.text().strip()
        return ModelChoice(spec, self.device.currentData(), self.remote_code.isChecked())

"""Train gates — any trainable method's adapter (`Method.trainer`, `Method.train`): the Memorizing
Transformer's per-head gates on documents, SPALM's context gate on the datastore in use, a plug-in's —
watching the loss and the gates move.

The job runs the method's `train` off the UI thread; each update arrives as a `TrainingStep` and
extends the loss curve and the gate bars in place. Cancel stops at
the next segment and keeps the last checkpoint. The adapter is written under the data home's
`adapters/` folder and catalogued against the model; `adapter_ready(method, path)` tells the main window.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QProgressBar, QPushButton, QSpinBox, QVBoxLayout)

from ...core.datastore.catalog import Catalog
from ...core.datastore.documents import Document, iter_documents
from ...core.home import data_home
from ...core.mechanisms.memorizing import MAX_MEMORY
from ...core.datastore.library import open_datastore
from ...core.methods import Resources, TrainingSettings, registry
from ...core.models import LoadedModel
from ...core.training.update_loop import TrainingStep
from .. import colours, workers
from ..widgets.gate_bars import GateBars
from ..widgets.memorizing_panel import AUTO_LAYER
from ..widgets.path_field import PathField
from ..plot_style import style_plot

TREND = 10  # updates in the loss curve's moving mean


def _plot(title: str, left: str, bottom: str) -> pg.PlotWidget:
    plot = style_plot(pg.PlotWidget(), title, left, bottom, interactive=True)
    plot.setMinimumSize(260, 180)
    return plot


class GateTrainingDialog(QDialog):
    adapter_ready = Signal(str, str)  # the trained method's name, adapter path

    def __init__(self, catalog: Catalog, model: LoadedModel, folder: Path | None = None,
                 datastore: str | None = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Train gates")
        self.catalog, self.model, self.datastore = catalog, model, datastore
        self.job: workers.Job | None = None
        self.steps: list[TrainingStep] = []
        self.adapter_path: Path | None = None

        self.docs = PathField("The documents' folder", "a folder of documents",
                              "Documents to learn from; each is read segment by segment with its own memory")
        self.docs.setText(str(folder) if folder else "")
        self.name = QLineEdit()
        self.name.setToolTip("The adapter's name in the catalog (letters, digits, - and _)")
        self.layer = QSpinBox(minimum=AUTO_LAYER, maximum=255, value=AUTO_LAYER)
        self.layer.setSpecialValueText("auto (¾ of the depth)")
        self.layer.setToolTip("0-based layer whose gates are trained")
        self.segment = QSpinBox(minimum=8, maximum=4096, value=64)
        self.segment.setToolTip("Tokens local attention sees per segment; earlier segments are the memory")
        self.memory = QSpinBox(minimum=256, maximum=MAX_MEMORY, value=4096, singleStep=1024)
        self.memory.setToolTip("Memory size in tokens")
        self.epochs = QSpinBox(minimum=1, maximum=100, value=1)
        self.epochs.setToolTip("Passes over the documents")
        self.lr = QDoubleSpinBox(minimum=0.0001, maximum=10.0, value=0.05, decimals=4, singleStep=0.01)
        self.lr.setToolTip("Adam learning rate of the gate biases")
        self.method = QComboBox()
        # those that learn from documents first: they can always run (one that learns from a datastore needs one in use)
        self.methods = {method.name: method for method in sorted(registry.trainable(),
                                                                 key=lambda m: m.trainer.learns_from == "datastore")}
        for index, method in enumerate(self.methods.values()):
            self.method.addItem(f"{method.label}: {method.trainer.label}", method.name)
            if datastore is None and method.trainer.learns_from == "datastore":  # it learns from one, as memory
                self.method.model().item(index).setEnabled(False)
                self.method.setItemData(index, "Use a datastore first (double-click one in the library)",
                                        Qt.ToolTipRole)
        self.method.setToolTip("Which gates to train")
        self.datastore_label = QLabel(datastore or "—")
        self.datastore_label.setToolTip("Learned from this datastore's documents, leaving each position's own "
                                        "entry out of its neighbours")
        form = QFormLayout()
        form.addRow("train", self.method)
        form.addRow("documents", self.docs)
        form.addRow("datastore", self.datastore_label)
        form.addRow("name", self.name)
        self.form = form
        form.addRow("layer", self.layer)
        form.addRow("segment", self.segment)
        form.addRow("memory", self.memory)
        form.addRow("epochs", self.epochs)
        form.addRow("learning rate", self.lr)

        self.loss_plot = _plot("Training loss", "loss (nats)", "update")
        self.loss_curve = self.loss_plot.plot(pen=pg.mkPen(colours.P_LM, width=1))
        self.trend_curve = self.loss_plot.plot(pen=pg.mkPen(colours.GAIN, width=2.5))
        self.loss_plot.setToolTip("Mean language-modelling loss of the segments in each update (thin), and its "
                                  f"mean over the last {TREND} updates (thick)")
        self.gate_plot = GateBars("Gates g<sub>h</sub>", "σ(b_h) per head, as training moves them (from σ(−16) ≈ 1e-7)")
        plots = QHBoxLayout()
        plots.addWidget(self.loss_plot, 3)
        plots.addWidget(self.gate_plot, 2)

        self.progress = QProgressBar()
        self.progress.setToolTip("Updates done of all updates")
        self.status = QLabel("Choose documents and press Train.")
        self.status.setWordWrap(True)
        self.start_button = QPushButton("Train")
        self.start_button.setToolTip("Start training (Ctrl+Return)")
        self.start_button.setShortcut("Ctrl+Return")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop at the next segment; the last checkpoint stays (Escape)")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.status, 1)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)

        self.method.currentIndexChanged.connect(self._method_changed)
        self._method_changed()
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(plots, 1)
        layout.addWidget(self.progress)
        layout.addLayout(buttons)
        self.resize(820, 620)

    def _chosen(self):
        """The method chosen, or None (no trainable method is installed)."""
        return self.methods.get(self.method.currentData())

    def _method_changed(self) -> None:
        method = self._chosen()
        if method is None:
            return
        trainer = method.trainer
        from_datastore = trainer.learns_from == "datastore"
        self.form.setRowVisible(self.docs, not from_datastore)
        self.form.setRowVisible(self.datastore_label, from_datastore)
        self.form.setRowVisible(self.layer, "layer" in trainer.settings)
        self.form.setRowVisible(self.memory, "memory_size" in trainer.settings)
        if not self.name.text() or self.name.text() in {m.trainer.default_name for m in self.methods.values()}:
            self.name.setText(trainer.default_name)
        self.lr.setValue(trainer.learning_rate)
        self.segment.setToolTip(trainer.segment_help)
        self.gate_plot.setTitle(trainer.gates_title, color=colours.TEXT, size="10pt")

    # ---- actions -------------------------------------------------------------------------------
    def start(self) -> bool:
        problem = self._problem()
        if problem:
            self.status.setText(f"<span style='color:#c92a2a'>{problem}</span>")
            return False
        name = self.name.text().strip()
        path = data_home() / "adapters" / f"{name}.safetensors"
        method = self._chosen()
        trainer = method.trainer
        texts: list[str] = []
        if trainer.learns_from != "datastore":
            texts = [d.text for d in iter_documents([Path(self.docs.text())]) if isinstance(d, Document)]
            if not texts:
                self.status.setText("<span style='color:#c92a2a'>no readable documents in that folder</span>")
                return False
        values = {"layer": None if self.layer.value() == AUTO_LAYER else self.layer.value(),
                  "memory_size": self.memory.value()}
        try:
            settings = method.Settings(**{f: values[f] for f in trainer.settings if f in values})
        except ValueError as exc:
            self.status.setText(f"<span style='color:#c92a2a'>{exc}</span>")
            return False
        training = TrainingSettings(epochs=self.epochs.value(), segment=self.segment.value(),
                                    learning_rate=self.lr.value())
        model, catalog, datastore = self.model, self.catalog, self.datastore

        def body(control: workers.JobControl):
            resources = Resources(open_datastore(catalog, datastore, model) if trainer.learns_from == "datastore"
                                  else None)
            trained = method.train(model, settings, resources, texts, training, checkpoint=path,
                                   on_step=control.emit, on_progress=control.report, should_stop=control.should_stop)
            catalog.register_adapter(name, method.name, path, model.name, model.model_fingerprint,
                                     {**trained.details, **trained.summary})
            return path

        return self._start_job(body)

    def _start_job(self, body) -> bool:
        self.steps.clear()
        self.job = workers.Job(body, parent=self)
        self.job.item.connect(self._stepped)
        self.job.progress.connect(self._progressed)
        self.job.finished.connect(self._finished)
        self.job.failed.connect(lambda reason: self._ended(f"<span style='color:#c92a2a'>Failed: {reason}</span>"))
        self.job.cancelled.connect(lambda: self._ended("Cancelled; the last checkpoint (if any) was kept."))
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"Training the gates of {self.model.name}…")
        self.job.start()
        return True

    def cancel(self) -> None:
        if self.job is not None and self.job.is_running():
            self.job.stop()
            self.status.setText("Stopping after this segment…")

    def reject(self) -> None:  # Escape or closing: cancel a running job first
        if self.job is not None and self.job.is_running():
            self.cancel()
            return
        super().reject()

    # ---- progress ------------------------------------------------------------------------------
    def _problem(self) -> str | None:
        method = self._chosen()
        if method is None:
            return "no method here has gates to train"
        if method.trainer.learns_from == "datastore":
            if self.datastore is None:
                return f"{method.label} needs a datastore: use one in the library first"
        elif not self.docs.text().strip() or not Path(self.docs.text()).exists():
            return "choose a folder of documents that exists"
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name.text().strip()):
            return "the name may only hold letters, digits, - and _"
        return None

    def _stepped(self, step: TrainingStep) -> None:
        self.steps.append(step)
        steps, losses = [s.step for s in self.steps], np.array([s.loss for s in self.steps])
        self.loss_curve.setData(steps, losses)
        cumulative = np.concatenate(([0.0], np.cumsum(losses)))
        ends = np.arange(1, len(losses) + 1)
        window = np.minimum(ends, TREND)
        self.trend_curve.setData(steps, (cumulative[ends] - cumulative[ends - window]) / window)
        self.gate_plot.set_values(step.gates)

    def _progressed(self, progress) -> None:
        self.progress.setMaximum(max(1, progress.total))
        self.progress.setValue(progress.done)
        self.status.setText(progress.describe())

    def _finished(self, path: Path) -> None:
        self.adapter_path = Path(path)
        gates = " ".join(f"{g:.3f}" for g in self.steps[-1].gates) if self.steps else "—"
        self._ended(f"Done: {len(self.steps)} updates; gates {gates}. Saved as {Path(path).name}.")
        self.adapter_ready.emit(self.method.currentData(), str(path))

    def _ended(self, message: str) -> None:
        self.status.setText(message)
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

"""The main window. For now: the loaded model and the datastores of the catalog.

The desktop-explorer issue fills it with the generation and inspection views.
"""
from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QLabel, QMainWindow, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from ..core.catalog import Catalog
from ..core.models import DEMO_SPEC, LoadedModel, load_model
from . import workers


class MainWindow(QMainWindow):
    def __init__(self, catalog: Catalog | None = None, model_spec: str = DEMO_SPEC):
        super().__init__()
        self.setWindowTitle("kNN Explorer")
        self.resize(900, 560)
        self.catalog = catalog or Catalog()
        central = QWidget()
        layout = QVBoxLayout(central)
        self.model: LoadedModel | None = None
        self.model_label = QLabel(f"Model: loading {model_spec}…")
        layout.addWidget(self.model_label)
        layout.addWidget(QLabel("Datastores"))
        self.datastore_tree = QTreeWidget()
        self.datastore_tree.setHeaderLabels(["Name", "Entries", "Index", "Model", "Documents"])
        layout.addWidget(self.datastore_tree)
        self.setCentralWidget(central)
        self.refresh_datastores()
        self.statusBar().showMessage(f"Loading {model_spec}…")
        self._load_job = workers.run_job(lambda _control: load_model(model_spec), parent=self,
                                         finished=self._model_loaded, failed=self._model_failed)

    def _model_loaded(self, model: LoadedModel) -> None:
        self.model = model
        params = sum(p.numel() for p in model.model.parameters())
        self.model_label.setText(
            f"Model: {model.name} · {model.model.config.model_type} · {params / 1e6:.1f}M parameters · "
            f"{model.device.type} · kNN key: {model.key_site.description}"
        )
        self.statusBar().showMessage("Ready")

    def _model_failed(self, reason: str) -> None:
        self.model_label.setText(f"Model: not loaded — {reason}")
        self.statusBar().showMessage(reason)

    def refresh_datastores(self) -> None:
        self.datastore_tree.clear()
        for row in self.catalog.datastores():
            indexed = sum(d.status == "indexed" for d in row.documents)
            item = QTreeWidgetItem([row.name, f"{row.entries:,}", row.index_description, row.model_name,
                                    f"{indexed} indexed, {len(row.documents) - indexed} skipped"])
            for doc in row.documents:
                child = QTreeWidgetItem([Path(doc.path).name, f"{doc.tokens:,} tokens" if doc.tokens else "", "", "",
                                         doc.reason or doc.status])
                child.setToolTip(0, doc.path)
                item.addChild(child)
            self.datastore_tree.addTopLevelItem(item)
        self.datastore_tree.resizeColumnToContents(0)

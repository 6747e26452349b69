"""Build a datastore from files and folders: choose sources and settings, watch progress, read the outcome.

The build itself runs in a `BuildTracker` (`build_tracker.py`), which is *not* owned by the dialog:
closing the dialog never stops a build. Cancelling stops the build, and `build_datastore` then
discards the partial folder, so nothing is kept.
"""
from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import (
    QFont,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QStyle,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...core.datastore import build_lock
from ...core.datastore.catalog import Catalog
from ...core.datastore.builder import BuildParameters, BuildReport
from ...core.datastore.documents import SUPPORTED_SUFFIXES, path_text
from ...core.datastore.library import (LibraryError, UnfinishedBuild, check_parameters, resume_problem, unfinished_build,
                                      validate_name)
from ...core.models import LoadedModel
from ...core.progress import Progress, format_seconds
from ..build_tracker import BuildTracker, running_builds
from ..widgets.source_list import SourceList

RAY = "ray"  # the "Run on" choice that builds on a Ray cluster


def ray_installed() -> bool:
    """Whether the cluster extra is installed (found, not imported: Ray loads only when used)."""
    return importlib.util.find_spec("ray") is not None


INDEX_CHOICES = [  # (label, BuildParameters.index, tooltip)
    ("Auto", "auto", "Pick the index from the datastore size: exact (flat) when small, IVF-PQ when large"),
    ("Flat (exact)", "flat", "Exact search over every key: best quality, slower and larger for big datastores"),
    ("IVF-PQ", "ivfpq", "Approximate search with inverted lists and product quantisation: small and fast"),
    ("HNSW", "hnsw", "Approximate search with a navigable small-world graph: fast, more memory"),
]
PHASES = {  # phase -> (title, step, share of the overall bar: start, end)
    "reading": ("Reading documents", "reading", 0.0, 0.10),
    "encoding": ("Encoding contexts with the model", "encoding", 0.10, 0.85),
    "fitting PCA": ("Compressing: fitting the PCA", "compressing", 0.85, 0.86),
    "projecting keys": ("Compressing: projecting the keys", "compressing", 0.86, 0.88),
    "pruning": ("Compressing: merging entries", "compressing", 0.86, 0.90),
    "copying kept keys": ("Compressing: writing the kept entries", "compressing", 0.90, 0.92),
    "indexing": ("Building the search index", "indexing", 0.92, 1.0),
}
STEPS = ("reading", "encoding", "compressing", "indexing")
BAR_MAX = 1000
CANCELLED_TEXT = "Cancelled — nothing was kept"
ERROR_STYLE = "color: #c62828;"
HINT_STYLE = "color: #6b7280;"
OK_STYLE = "color: #2e7d32;"

def _title_font(widget: QWidget, scale: float, weight: QFont.Weight = QFont.Weight.DemiBold) -> QFont:
    font = QFont(widget.font())
    font.setPointSizeF(font.pointSizeF() * scale)
    font.setWeight(weight)
    return font


def _section(text: str, tip: str) -> QLabel:
    label = QLabel(text)
    label.setFont(_title_font(label, 1.0))
    label.setToolTip(tip)
    return label


class BuildDialog(QDialog):
    """Choose sources and settings, then build a datastore with the loaded model."""

    build_started = Signal(object)  # the BuildTracker, so the main window can follow it

    def __init__(self, catalog: Catalog, model: LoadedModel | None, parent: QWidget | None = None):
        super().__init__(parent)
        self.catalog = catalog
        self.model = model
        self.tracker: BuildTracker | None = None
        # Asked before cancelling a running build; returns True to cancel. Replace it in tests.
        self.confirm_cancel: Callable[[], bool] = self._confirm_cancel
        self._name_touched = False
        # The settings this dialog has no field for (batch size, file-size limit): an interrupted
        # build's own when the dialog was filled from one (`fill_from`), so Start resumes it.
        self._base_parameters = BuildParameters()
        self.setWindowTitle("Build datastore")
        self.setMinimumSize(640, 500)
        self.resize(760, 560)

        # ---- header
        title = QLabel("Build a datastore")
        title.setFont(_title_font(title, 1.45))
        title.setToolTip("A datastore maps every context in your documents to the token that followed it")
        if model is not None:
            subtitle = QLabel(f"Keys from <b>{model.name}</b> · {model.key_site.description} · "
                              f"model on {model.device.type.upper()}")
            subtitle.setToolTip("The loaded model encodes every context; the datastore only works with this model")
        else:
            subtitle = QLabel("No model loaded")
            subtitle.setToolTip("Load a model in the main window first: the datastore's keys come from it")
        subtitle.setStyleSheet(HINT_STYLE)
        subtitle.setWordWrap(True)

        # ---- settings page
        self.sources = SourceList()
        self.sources.setToolTip("Files and folders to index (folders are searched recursively). "
                                "Drop them here from your file manager.")
        self.sources.paths_dropped.connect(self.add_sources)
        self.sources.itemSelectionChanged.connect(self._update_state)
        self.add_files_button = QPushButton("Add files…")
        self.add_files_button.setToolTip("Choose documents to index (" + ", ".join(sorted(SUPPORTED_SUFFIXES)) + ")")
        self.add_folder_button = QPushButton("Add folder…")
        self.add_folder_button.setToolTip("Choose a folder; every supported document in it and its subfolders is indexed")
        self.remove_source_button = QPushButton("Remove")
        self.remove_source_button.setToolTip("Remove the selected files and folders from the list")
        self.add_files_button.clicked.connect(self._add_files_clicked)
        self.add_folder_button.clicked.connect(self._add_folder_clicked)
        self.remove_source_button.clicked.connect(self.remove_selected_sources)
        source_buttons = QVBoxLayout()
        for button in (self.add_files_button, self.add_folder_button, self.remove_source_button):
            source_buttons.addWidget(button)
        source_buttons.addStretch(1)
        sources_row = QHBoxLayout()
        sources_row.addWidget(self.sources, 1)
        sources_row.addLayout(source_buttons)

        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("e.g. flask-docs")
        self.name_edit.setToolTip("A unique name for the new datastore (one line, at most 100 characters)")
        self.name_edit.textEdited.connect(self._name_edited)
        self.name_edit.textChanged.connect(self._update_state)
        self.name_hint = QLabel()
        self.name_hint.setToolTip("Whether the name can be used")
        self.name_hint.setWordWrap(True)

        self.index_combo = QComboBox()
        for label, value, tip in INDEX_CHOICES:
            self.index_combo.addItem(label, value)
            self.index_combo.setItemData(self.index_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.index_combo.setToolTip("How the keys are searched: exact, or approximate for large datastores")

        self.device_combo = QComboBox()
        self.device_combo.addItem("CPU", "cpu")
        self.device_combo.addItem("GPU", "cuda")
        self.device_combo.addItem("Ray cluster", RAY)
        self.device_combo.setItemData(0, "Train the index on the CPU", Qt.ItemDataRole.ToolTipRole)
        if ray_installed():
            self.device_combo.setItemData(2, "Encode with model actors on a Ray cluster and keep the keys in shards, "
                                             "each searched by its own actor there", Qt.ItemDataRole.ToolTipRole)
        else:
            self.device_combo.model().item(2).setEnabled(False)
            self.device_combo.setItemData(2, "Needs the cluster extra: pip install 'knn-explorer[cluster]'",
                                          Qt.ItemDataRole.ToolTipRole)
        self.cuda_available = bool(torch.cuda.is_available())
        if self.cuda_available:
            self.device_combo.setItemData(1, "Train the index on the GPU (CUDA)", Qt.ItemDataRole.ToolTipRole)
            self.device_combo.setToolTip("Where the index is trained; the model itself runs where it was loaded")
            if model is not None and model.device.type == "cuda":
                self.device_combo.setCurrentIndex(1)
        else:
            gpu = self.device_combo.model().item(1)
            gpu.setEnabled(False)
            self.device_combo.setItemData(1, "GPU unavailable: no CUDA device", Qt.ItemDataRole.ToolTipRole)
            self.device_combo.setToolTip("Where the index is trained. GPU unavailable: no CUDA device")

        self.cluster_edit = QLineEdit()
        self.cluster_edit.setPlaceholderText("local, or the head's address (ray://head:10001)")
        self.cluster_edit.setToolTip("The Ray cluster: “local” starts one on this machine; otherwise the address "
                                     "of a running cluster, whose nodes reach this datastore's folder")
        self.shards_spin = QSpinBox()
        self.shards_spin.setRange(1, 1024)
        self.shards_spin.setValue(2)
        self.shards_spin.setToolTip("Key shards: each is searched by one retrieval actor on the cluster")
        # Shown only when "Run on" is the Ray cluster, in the grid's columns like every other setting
        cluster_label, shards_label = QLabel("Cluster"), QLabel("Shards")
        cluster_label.setToolTip(self.cluster_edit.toolTip())
        shards_label.setToolTip(self.shards_spin.toolTip())
        self.cluster_widgets = (cluster_label, self.cluster_edit, shards_label, self.shards_spin)
        for widget in self.cluster_widgets:
            widget.setVisible(False)
        self.device_combo.currentIndexChanged.connect(self._device_changed)

        max_context = model.max_positions if model is not None else 8192
        self.context_spin = QSpinBox()
        self.context_spin.setRange(2, max_context)
        self.context_spin.setValue(min(256, max_context))
        self.context_spin.setSuffix(" tokens")
        self.context_spin.setToolTip(f"Tokens per window run through the model (at most {max_context:,} for this model)")
        self.stride_spin = QSpinBox()
        self.stride_spin.setRange(1, max(1, self.context_spin.value() - 1))
        self.stride_spin.setValue(min(128, self.stride_spin.maximum()))
        self.stride_spin.setSuffix(" tokens")
        self.stride_spin.setToolTip("How far each window moves on; every scored token sees at least "
                                    "context − stride tokens of context. Must be smaller than the context length.")
        self.context_spin.valueChanged.connect(self._context_changed)

        key_dim = model.key_site.dim if model is not None else 4096
        self.pca_spin = QSpinBox()
        self.pca_spin.setRange(0, max(0, key_dim - 1))
        self.pca_spin.setSpecialValueText("off")
        self.pca_spin.setSuffix(" dimensions")
        self.pca_spin.setToolTip(f"Reduce the keys from {key_dim} dimensions by PCA: a smaller, faster datastore "
                                 "(queries are projected the same way). Off keeps them whole.")
        self.prune_spin = QSpinBox()
        self.prune_spin.setRange(0, 256)
        self.prune_spin.setSpecialValueText("off")
        self.prune_spin.setSuffix(" neighbours")
        self.prune_spin.setToolTip("Prune by merging each entry with those of its k nearest neighbours that predict "
                                   "the same token (kept entries count what they absorbed). Off keeps every entry.")
        # settings that check_parameters weighs together: Start and its reason follow each change
        self.pca_spin.valueChanged.connect(self._update_state)
        self.prune_spin.valueChanged.connect(self._update_state)

        form = QGridLayout()
        form.setHorizontalSpacing(12)
        form.setVerticalSpacing(6)
        form.addWidget(QLabel("Name"), 0, 0)
        form.addWidget(self.name_edit, 0, 1, 1, 3)
        form.addWidget(self.name_hint, 1, 1, 1, 3)
        form.addWidget(QLabel("Index"), 2, 0)
        form.addWidget(self.index_combo, 2, 1)
        form.addWidget(QLabel("Run on"), 2, 2)
        form.addWidget(self.device_combo, 2, 3)
        form.addWidget(QLabel("Context length"), 3, 0)
        form.addWidget(self.context_spin, 3, 1)
        form.addWidget(QLabel("Stride"), 3, 2)
        form.addWidget(self.stride_spin, 3, 3)
        form.addWidget(QLabel("PCA to"), 4, 0)
        form.addWidget(self.pca_spin, 4, 1)
        form.addWidget(QLabel("Prune"), 4, 2)
        form.addWidget(self.prune_spin, 4, 3)
        for column, widget in enumerate(self.cluster_widgets):
            form.addWidget(widget, 5, column)
        form.setColumnStretch(1, 1)
        form.setColumnStretch(3, 1)
        for row, col, tip in ((0, 0, self.name_edit.toolTip()), (2, 0, self.index_combo.toolTip()),
                              (2, 2, self.device_combo.toolTip()), (3, 0, self.context_spin.toolTip()),
                              (3, 2, self.stride_spin.toolTip()), (4, 0, self.pca_spin.toolTip()),
                              (4, 2, self.prune_spin.toolTip())):
            form.itemAtPosition(row, col).widget().setToolTip(tip)

        settings = QWidget()
        settings_layout = QVBoxLayout(settings)
        settings_layout.setContentsMargins(0, 0, 0, 0)
        settings_layout.addWidget(_section("Sources", "What to index"))
        settings_layout.addLayout(sources_row, 1)
        settings_layout.addSpacing(8)
        settings_layout.addWidget(_section("Settings", "How to index it"))
        settings_layout.addLayout(form)

        # ---- run page: progress, then the outcome
        self.phase_label = QLabel("Starting…")
        self.phase_label.setFont(_title_font(self.phase_label, 1.15))
        self.phase_label.setToolTip("What the build is doing now")
        self.step_label = QLabel()
        self.step_label.setTextFormat(Qt.TextFormat.RichText)
        self.step_label.setToolTip("The three steps of a build: read the documents, encode every context with "
                                   "the model, build the search index")
        self.details_label = QLabel()
        self.details_label.setWordWrap(True)
        self.details_label.setStyleSheet(HINT_STYLE)
        self.details_label.setToolTip("What is being built, from what, with which settings")
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, BAR_MAX)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat("%p%")
        self.progress_bar.setMinimumHeight(22)
        self.progress_bar.setToolTip("Progress of the whole build (reading 10%, encoding 80%, indexing 10%)")
        self.count_label, self.rate_label, self.eta_label, self.elapsed_label = QLabel("—"), QLabel("—"), QLabel("—"), QLabel("—")
        stats = QGridLayout()
        stats.setHorizontalSpacing(24)
        for column, (caption, value, tip) in enumerate((
            ("Processed", self.count_label, "Units done / total in this step (files, tokens or keys)"),
            ("Rate", self.rate_label, "Units per second in this step"),
            ("Time left", self.eta_label, "Estimated time left in this step"),
            ("Elapsed", self.elapsed_label, "Time since the build started"),
        )):
            cap = QLabel(caption)
            cap.setStyleSheet(HINT_STYLE)
            cap.setToolTip(tip)
            value.setToolTip(tip)
            value.setFont(_title_font(value, 1.05, QFont.Weight.Medium))
            stats.addWidget(cap, 0, column)
            stats.addWidget(value, 1, column)
            stats.setColumnStretch(column, 1)

        self.summary_label = QLabel()
        self.summary_label.setWordWrap(True)
        self.summary_label.setToolTip("What was built")
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.skipped_caption = _section("Skipped files", "Files that were not indexed, and why")
        self.no_skipped_label = QLabel("No files were skipped: every document was indexed.")
        self.no_skipped_label.setStyleSheet(HINT_STYLE)
        self.no_skipped_label.setToolTip("Every document found in the sources was indexed")
        self.skipped_table = QTableWidget(0, 2)
        self.skipped_table.setHorizontalHeaderLabels(["File", "Reason"])
        self.skipped_table.horizontalHeaderItem(0).setToolTip("The skipped file (hover a row for its full path)")
        self.skipped_table.horizontalHeaderItem(1).setToolTip("Why it was not indexed")
        self.skipped_table.setToolTip("Files that were not indexed, and why")
        self.skipped_table.verticalHeader().hide()
        self.skipped_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.skipped_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.skipped_table.setAlternatingRowColors(True)
        self.skipped_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.skipped_table.horizontalHeader().setStretchLastSection(True)
        self.skipped_table.horizontalHeader().setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        self.outcome = QWidget()
        outcome_layout = QVBoxLayout(self.outcome)
        outcome_layout.setContentsMargins(0, 4, 0, 0)
        outcome_layout.setSpacing(6)
        outcome_layout.addWidget(self.summary_label)
        outcome_layout.addWidget(self.no_skipped_label)
        outcome_layout.addSpacing(6)
        outcome_layout.addWidget(self.skipped_caption)
        outcome_layout.addWidget(self.skipped_table, 1)
        self.outcome.hide()
        rule = QFrame()
        rule.setFrameShape(QFrame.Shape.HLine)
        rule.setFrameShadow(QFrame.Shadow.Sunken)

        run_page = QWidget()
        run_layout = QVBoxLayout(run_page)
        run_layout.setContentsMargins(0, 4, 0, 0)
        run_layout.setSpacing(6)
        run_layout.addWidget(self.step_label)
        run_layout.addSpacing(6)
        run_layout.addWidget(self.phase_label)
        run_layout.addWidget(self.progress_bar)
        run_layout.addSpacing(2)
        run_layout.addLayout(stats)
        run_layout.addSpacing(10)
        run_layout.addWidget(rule)
        run_layout.addWidget(self.details_label)
        run_layout.addWidget(self.outcome)
        run_layout.addStretch(1)
        self._run_layout = run_layout

        self.pages = QStackedWidget()
        self.pages.addWidget(settings)
        self.pages.addWidget(run_page)

        # ---- bottom: one-line message and buttons
        self.message = QLabel()
        self.message.setToolTip("Why the build cannot start, or how it ended")
        self.message.setWordWrap(True)
        self.back_button = QPushButton("Back")
        self.back_button.setToolTip("Go back to the sources and settings to change them and try again")
        self.start_button = QPushButton("Start")
        self.start_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.back_button.clicked.connect(self._back_clicked)
        self.start_button.clicked.connect(self.start_build)
        self.cancel_button.clicked.connect(self._cancel_clicked)
        buttons = QHBoxLayout()
        buttons.addWidget(self.message, 1)
        buttons.addWidget(self.back_button)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)

        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 18, 20, 16)
        layout.setSpacing(8)
        layout.addWidget(title)
        layout.addWidget(subtitle)
        layout.addSpacing(6)
        layout.addWidget(self.pages, 1)
        layout.addWidget(line)
        layout.addLayout(buttons)

        self._clock = QTimer(self)
        self._clock.setInterval(500)
        self._clock.timeout.connect(self._tick)
        self._update_state()

    # ---- sources --------------------------------------------------------------------------------
    def add_sources(self, paths) -> int:
        """Add files or folders (duplicates ignored); returns how many were added."""
        present = set(self.source_paths())
        added = 0
        style = self.style()
        for raw in paths:
            path = str(Path(raw).expanduser())
            if not path or path in present:
                continue
            present.add(path)
            is_dir = Path(path).is_dir()
            item = QListWidgetItem(style.standardIcon(QStyle.StandardPixmap.SP_DirIcon if is_dir
                                                      else QStyle.StandardPixmap.SP_FileIcon), path)
            item.setData(Qt.ItemDataRole.UserRole, path)
            item.setToolTip(f"{path}\n{'Folder: every supported document in it is indexed' if is_dir else 'File'}")
            self.sources.addItem(item)
            added += 1
        if added and not self._name_touched and not self.name_edit.text().strip():
            self._suggest_name()
        self._update_state()
        return added

    def source_paths(self) -> list[str]:
        return [self.sources.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.sources.count())]

    def remove_selected_sources(self) -> None:
        for item in self.sources.selectedItems():
            self.sources.takeItem(self.sources.row(item))
        self._update_state()

    def _add_files_clicked(self) -> None:
        patterns = " ".join(f"*{s}" for s in sorted(SUPPORTED_SUFFIXES))
        files, _ = QFileDialog.getOpenFileNames(self, "Add documents", str(Path.home()),
                                                f"Documents ({patterns});;All files (*)")
        self.add_sources(files)

    def _add_folder_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add folder", str(Path.home()))
        if folder:
            self.add_sources([folder])

    def _suggest_name(self) -> None:
        first = Path(self.source_paths()[0])
        base = (first.name if first.is_dir() else first.stem) or "datastore"
        name, n = base, 2
        while self.catalog.datastore(name) is not None:
            name, n = f"{base}-{n}", n + 1
        self.name_edit.setText(name)

    # ---- settings ------------------------------------------------------------------------------
    def parameters(self) -> BuildParameters:
        on_cluster = self.device_combo.currentData() == RAY
        return replace(
            self._base_parameters, context_length=self.context_spin.value(), stride=self.stride_spin.value(),
            index=self.index_combo.currentData(), device="cpu" if on_cluster else self.device_combo.currentData(),
            pca_dim=self.pca_spin.value(), prune_k=self.prune_spin.value(),
            cluster=(self.cluster_edit.text().strip() or "local") if on_cluster else "",
            shards=self.shards_spin.value() if on_cluster else 1,
        )

    def _device_changed(self, _index: int) -> None:
        for widget in self.cluster_widgets:
            widget.setVisible(self.device_combo.currentData() == RAY)
        self._update_state()

    def cluster_shown(self) -> bool:
        return self.cluster_edit.isVisible()

    def fill_from(self, build: UnfinishedBuild) -> None:
        """Fill in the name, sources and settings of an interrupted build, so that Start resumes it."""
        params = build.parameters
        self._base_parameters = params
        self.sources.clear()
        self.add_sources([str(path) for path in build.source_paths()])
        self.name_edit.setText(build.name)
        self._name_touched = True
        self.index_combo.setCurrentIndex(max(0, self.index_combo.findData(params.index)))
        self.device_combo.setCurrentIndex(2 if params.cluster else 1 if params.device == "cuda" and self.cuda_available else 0)
        self.cluster_edit.setText(params.cluster)
        self.shards_spin.setValue(max(1, params.shards))
        self.context_spin.setValue(params.context_length)
        self.stride_spin.setValue(params.stride)
        self.pca_spin.setValue(params.pca_dim)
        self.prune_spin.setValue(params.prune_k)
        self._update_state()

    def resume_hint(self) -> str | None:
        """What Start does to the interrupted build of the name typed, if there is one: resume it (the
        same model, sources and window settings) or begin it again; None when there is none."""
        try:
            name = validate_name(self.name_edit.text())
        except LibraryError:
            return None
        build = unfinished_build(self.catalog, name)
        if build is None:
            return None
        problem = resume_problem(build, self.model)
        if problem is None and not self._same_as(build):
            problem = "its sources or window settings differ from these"
        if problem is None:
            where = f" (it stopped while {build.describe_progress()})" if build.state else ""
            return f"Start resumes the interrupted build of “{name}” where it stopped{where}"
        return f"An interrupted build of “{name}” exists, but {problem}: Start builds it again from the beginning"

    def _same_as(self, build: UnfinishedBuild) -> bool:
        sources = [path_text(Path(path).expanduser().resolve()) for path in self.source_paths()]
        limit = self.model.max_positions if self.model is not None else None
        recorded = build.parameters
        return (sources == list(build.sources) and self.stride_spin.value() == recorded.stride
                and min(self.context_spin.value(), limit or 1 << 30) == min(recorded.context_length, limit or 1 << 30))

    def name_problem(self) -> str | None:
        """Why the name cannot be used, in one line; None when it can."""
        name = self.name_edit.text()
        if not name.strip():
            return "Enter a name for the new datastore"
        try:
            name = validate_name(name)
        except LibraryError as exc:
            return str(exc)[0].upper() + str(exc)[1:]
        if self.catalog.datastore(name) is not None:
            return f"A datastore named “{name}” already exists — choose another name or remove it first"
        if name in running_builds():
            return f"“{name}” is being built right now"
        busy = build_lock.holder(name)  # a build of this name in another process (the CLI, a second window)
        if busy is not None:
            return busy[0].upper() + busy[1:]
        return None

    def start_problem(self) -> str | None:
        """Why Start is disabled, in one line; None when the build can start."""
        if self.model is None:
            return "No model loaded — load a model in the main window first"
        if self.tracker is not None and self.tracker.is_running():
            return "The build is running"
        if not self.source_paths():
            return "Add at least one file or folder to index"
        try:
            check_parameters(self.parameters())  # the library's own rules, as a build would meet them
        except LibraryError as exc:
            return str(exc)[0].upper() + str(exc)[1:]
        return self.name_problem()

    def _name_edited(self, _text: str) -> None:
        self._name_touched = True

    def _context_changed(self, value: int) -> None:
        self.stride_spin.setMaximum(max(1, value - 1))

    # ---- build ---------------------------------------------------------------------------------
    def start_build(self) -> BuildTracker | None:
        """Start building with the current sources and settings; None (with the reason shown) if it cannot."""
        problem = self.start_problem()
        if problem is not None:
            self._show_message(problem, style="error")
            return None
        owner = self.parent()  # the main window, or None: never the dialog, so closing it does not stop the build
        self.tracker = BuildTracker(self.catalog, self.model, self.name_edit.text(), self.source_paths(),
                                    self.parameters(), parent=owner)
        tracker = self.tracker
        tracker.progress.connect(self._on_progress)
        tracker.finished.connect(self._on_finished)
        tracker.failed.connect(self._on_failed)
        tracker.cancelled.connect(self._on_cancelled)
        self._reset_run_page()
        self.pages.setCurrentIndex(1)
        tracker.start()
        self._clock.start()
        self._show_message("")
        self._update_state()
        self.build_started.emit(tracker)
        return tracker

    def cancel_build(self) -> bool:
        """Stop the running build after `confirm_cancel` agrees; `tracker.cancelled` follows."""
        if self.tracker is None or not self.tracker.is_running() or self.tracker.stopping():
            return False
        if not self.confirm_cancel():
            return False
        self.tracker.stop()
        self.phase_label.setText("Cancelling…")
        self._show_message("Stopping the build and deleting what it wrote…")
        self._update_state()
        return True

    def _confirm_cancel(self) -> bool:
        answer = QMessageBox.question(
            self, "Cancel build",
            "Cancel the build? Everything it has written so far is deleted.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _reset_run_page(self) -> None:
        self.phase_label.setText("Starting…")
        self._show_steps(None)
        tracker = self.tracker
        if tracker is not None:
            params = tracker.params
            sources = tracker.sources
            where = sources[0] if len(sources) == 1 else f"{len(sources)} sources ({sources[0]}, …)"
            index = next((label for label, value, _ in INDEX_CHOICES if value == params.index), params.index)
            self.details_label.setText(
                f"Datastore “{tracker.name}” from {where}\n"
                f"Context {params.context_length} tokens, stride {params.stride} · index: {index} · "
                + (f"on Ray cluster “{params.cluster}”, {params.shards} shards" if params.cluster else
                   f"index device: {params.device.upper() if params.device == 'cpu' else 'GPU'}"))
        self.progress_bar.setValue(0)
        for label in (self.count_label, self.rate_label, self.eta_label, self.elapsed_label):
            label.setText("—")
        self.outcome.hide()
        self.summary_label.clear()
        self.skipped_table.setRowCount(0)

    def _on_progress(self, progress: Progress) -> None:
        title, step, start, end = PHASES.get(progress.phase, (progress.phase.capitalize(), None, 0.0, 1.0))
        if not (self.tracker and self.tracker.stopping()):
            self.phase_label.setText(title)
        self._show_steps(step)
        overall = start + (end - start) * min(1.0, progress.fraction)
        self.progress_bar.setValue(max(self.progress_bar.value(), round(overall * BAR_MAX)))
        self.count_label.setText(f"{progress.done:,} / {progress.total:,} {progress.unit}")
        self.rate_label.setText(f"{progress.rate:,.0f} {progress.unit}/s")
        if progress.done >= progress.total and progress.total:
            self.eta_label.setText("done")
        elif progress.eta_seconds is not None:
            self.eta_label.setText(format_seconds(progress.eta_seconds))
        else:
            self.eta_label.setText("—")
        self._tick()

    def _on_finished(self, report: BuildReport) -> None:
        self._clock.stop()
        self._tick()
        self.progress_bar.setValue(BAR_MAX)
        self.phase_label.setText("Done — the datastore is ready to use")
        self._show_steps("complete")
        manifest = report.manifest
        entries = int(manifest.get("entries", 0))
        elapsed = self.tracker.elapsed if self.tracker is not None else sum(report.seconds.values())
        encoding = report.seconds.get("encoding")
        self.count_label.setText(f"{entries:,} entries")
        self.rate_label.setText(f"{entries / encoding:,.0f} tokens/s" if encoding else "—")
        self.eta_label.setText("done")
        docs = len(report.documents)
        row = self.catalog.datastore(manifest.get("name", ""))
        size = f" · {row.size_bytes / 2**20:,.1f} MB" if row is not None else ""
        summary = (f"<b>{manifest.get('name', '')}</b>: {entries:,} entries from "
                   f"{docs:,} document{'s' if docs != 1 else ''} indexed in {format_seconds(elapsed)} · "
                   f"{manifest.get('index_description', '')}{size}")
        if report.resumed_from:
            summary += f" · resumed an interrupted build (from {report.resumed_from})"
        self.summary_label.setText(summary)
        self._fill_skipped(report.skipped)
        self.outcome.show()
        self._show_message("Build complete", style="ok")
        self._update_state()

    def _on_failed(self, reason: str) -> None:
        self._clock.stop()
        self._tick()
        self.phase_label.setText("Failed")
        self.summary_label.setText("Go back to change the sources or settings and try again.")
        self.summary_label.setStyleSheet(HINT_STYLE)
        self.no_skipped_label.hide()
        self.skipped_caption.hide()
        self.skipped_table.hide()
        self.outcome.show()
        self._show_message(f"Build failed: {reason}", style="error")
        self._update_state()

    def _on_cancelled(self) -> None:
        self._clock.stop()
        self._tick()
        self.phase_label.setText("Cancelled")
        self._show_steps(None)
        self.progress_bar.setValue(0)
        self.rate_label.setText("—")
        self.eta_label.setText("—")
        self._show_message(CANCELLED_TEXT)
        self._update_state()

    def _fill_skipped(self, skipped: list[dict]) -> None:
        self.skipped_table.setRowCount(len(skipped))
        for row, entry in enumerate(skipped):
            path = str(entry.get("path", ""))
            file_item = QTableWidgetItem(Path(path).name or path)
            file_item.setToolTip(path)
            reason_item = QTableWidgetItem(entry.get("reason", ""))
            reason_item.setToolTip(entry.get("reason", ""))
            self.skipped_table.setItem(row, 0, file_item)
            self.skipped_table.setItem(row, 1, reason_item)
        count = len(skipped)
        self.summary_label.setStyleSheet("")
        self.skipped_caption.setText(f"Skipped files ({count})")
        self.skipped_caption.setVisible(bool(count))
        self.skipped_table.setVisible(bool(count))
        self.no_skipped_label.setVisible(not count)
        self.skipped_table.resizeRowsToContents()
        # The table takes the free space only when there is something to show.
        self._run_layout.setStretchFactor(self.outcome, 1 if count else 0)

    def _show_steps(self, current: str | None) -> None:
        """The step chain: done steps ticked, the current one bold, the rest muted."""
        compressed = bool(self.tracker and self.tracker.params.compression)
        order = [step for step in STEPS if step != "compressing" or compressed]
        position = len(order) if current == "complete" else order.index(current) if current in order else -1
        parts = []
        for index, phase in enumerate(order):
            name = phase.capitalize()
            if index < position:
                parts.append(f'<span style="color:#2e7d32;">✓ {name}</span>')
            elif index == position:
                parts.append(f'<span style="color:#1565c0;"><b>● {name}</b></span>')
            else:
                parts.append(f'<span style="color:#9aa0a6;">○ {name}</span>')
        self.step_label.setText('<span style="color:#9aa0a6;">&nbsp;&nbsp;→&nbsp;&nbsp;</span>'.join(parts))

    def _tick(self) -> None:
        if self.tracker is not None and self.tracker.started_at is not None:
            self.elapsed_label.setText(format_seconds(self.tracker.elapsed))

    # ---- buttons and closing -----------------------------------------------------------------------
    def _cancel_clicked(self) -> None:
        if self.tracker is not None and self.tracker.is_running():
            self.cancel_build()
        else:
            self.reject()

    def _back_clicked(self) -> None:
        self.pages.setCurrentIndex(0)
        self._show_message("")
        self._update_state()

    def reject(self) -> None:
        """Closing the dialog (Esc, the window's close button) hides it; a running build carries on."""
        super().reject()

    def _update_state(self) -> None:
        running = self.tracker is not None and self.tracker.is_running()
        on_settings = self.pages.currentIndex() == 0
        ended = self.tracker.state if self.tracker is not None and not running and not on_settings else None

        problem = self.name_problem()
        if problem and (self.name_edit.text() or self._name_touched):
            self.name_hint.setText(problem)
            self.name_hint.setStyleSheet(ERROR_STYLE)
        elif problem is None and (hint := self.resume_hint()) is not None:
            self.name_hint.setText(hint)
            self.name_hint.setStyleSheet(HINT_STYLE)
        else:
            self.name_hint.setText("")
        self.name_hint.setVisible(bool(self.name_hint.text()))

        self.remove_source_button.setEnabled(bool(self.sources.selectedItems()))
        start_problem = self.start_problem()
        self.start_button.setVisible(on_settings)
        self.start_button.setEnabled(on_settings and start_problem is None)
        self.start_button.setToolTip(start_problem or "Build the datastore (it keeps running if you close this dialog)")
        self.back_button.setVisible(ended in ("failed", "cancelled"))
        if running:
            self.cancel_button.setText("Cancel build")
            self.cancel_button.setEnabled(not self.tracker.stopping())
            self.cancel_button.setToolTip("Stop the build and delete what it wrote so far (asks first). "
                                          "Closing the window instead lets the build carry on.")
        else:
            self.cancel_button.setText("Close" if ended else "Cancel")
            self.cancel_button.setEnabled(True)
            self.cancel_button.setToolTip("Close this dialog" if ended else "Close without building")
        if on_settings and not running:
            if self.model is None:
                self._show_message(start_problem, style="error")
            elif start_problem is not None and start_problem != problem:
                self._show_message(start_problem, style="hint")
            else:
                self._show_message("")

    def _show_message(self, text: str, style: str = "") -> None:
        """One line at the bottom; style is "", "hint", "ok" or "error"."""
        self.message.setText(text)
        self.message.setStyleSheet({"error": ERROR_STYLE, "ok": OK_STYLE, "hint": HINT_STYLE}.get(style, ""))

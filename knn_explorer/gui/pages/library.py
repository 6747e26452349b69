"""The catalog as a tree: datastores (with their documents) and unfinished builds.

Each datastore row shows name, model, entries, size, index, creation time and a status; its
children are the documents that went into it, indexed or skipped with the reason. Datastores
that the loaded model cannot use (other model, other tokenizer, incomplete folder) are greyed
out with the reason, and cannot be chosen as the active datastore.

An unfinished build is one of three things, and says which: *building* (a `BuildTracker` of this
app runs it: its phase and percent follow the tracker), *building elsewhere* (another process,
the CLI or a second window, holds the name's build lock: its phase and percent are read from
the folder every few seconds) or *interrupted* (nobody holds it: how far it got, and Resume,
which builds it again from its recorded sources and settings, continuing where it stopped).

The columns fit the panel's width, however narrow: numbers keep their width, the other columns
share what is left and elide (every cell has its whole text in a tooltip), the status column
takes what is spare. Dragging a column's edge still works until the panel is resized.

Nothing slow happens on the UI thread: the compatibility check (it reads each datastore's
manifest) and removal (it deletes folders) run as jobs; only catalog reads, lock probes and an
unfinished build's two small files (manifest and progress) are read here.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from PySide6.QtCore import QEvent, QObject, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QMessageBox,
    QPushButton,
    QSizePolicy,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...core.datastore import build_lock
from ...core.datastore.catalog import BuildRow, Catalog, DatastoreRow
from ...core.datastore.compression import describe_applied
from ...core.datastore.library import (Compatibility, UnfinishedBuild, compatibility, remove_datastore,
                                       resume_problem, unfinished_build)
from ...core.models import LoadedModel
from .. import workers
from ..build_tracker import BuildTracker, describe_progress, running_builds

COLUMNS = ["Name", "Model", "Entries", "Size", "Index", "Built", "Status"]
NAME, MODEL, ENTRIES, SIZE, INDEX, CREATED, STATUS = range(len(COLUMNS))
COLUMN_TIPS = [
    "Datastore name; expand it to see the documents that went into it",
    "The model whose hidden states are the datastore's keys",
    "Number of (context, next token) entries; for a document, its tokens",
    "Disk space used by the datastore folder",
    "The FAISS index used to search the keys",
    "When the datastore was built, or its build started (hover for the exact time)",
    "Whether the datastore can be used with the loaded model, how far a build is, or why a document was skipped",
]
NUMBERS = (ENTRIES, SIZE)  # never elided while anything else can give way
# Below the width every column needs, these are hidden in this order (their values are in the name's
# tooltip too), rather than shown as "t…".
HIDE_FIRST = (MODEL, INDEX, CREATED, SIZE)

INTERRUPTED = "interrupted"
KIND_ROLE = Qt.ItemDataRole.UserRole  # "datastore" | "building" | "elsewhere" | "build" (interrupted) | "document"
NAME_ROLE = Qt.ItemDataRole.UserRole + 1  # the datastore name an item belongs to
# On a running build's status cell: (fraction or None, "encoding 40%"), drawn as a progress bar.
PROGRESS_ROLE = Qt.ItemDataRole.UserRole + 2
BUILD_KINDS = ("building", "elsewhere", "build")
POLL_MS = 2000  # how often builds of other processes (and interrupted ones) are looked at again

MUTED = QColor("#8a8f98")
WARNING = QColor("#b25e09")
GOOD = QColor("#2e7d32")
ACTIVE = QColor("#1565c0")


class CatalogView(QWidget):
    """The datastores of a catalog, with Use / Resume / Build… / Remove / Refresh buttons."""

    datastore_chosen = Signal(str)  # a usable datastore was double-clicked, activated with Enter, or "Use" clicked
    removed = Signal(str)  # a datastore (or interrupted build) was removed from the catalog and disk
    build_requested = Signal()  # "Build…" was clicked (`prepare_build_dialog` fills the dialog from the selection)
    build_started = Signal(object)  # a BuildTracker: an interrupted build was resumed from here
    compatibility_checked = Signal()  # the check against the loaded model finished and the tree shows it

    def __init__(self, catalog: Catalog, parent: QWidget | None = None):
        super().__init__(parent)
        self.catalog = catalog
        self.model: LoadedModel | None = None
        # Asked before removing; returns True to go ahead. Replace it in tests or embedding code.
        self.confirm: Callable[[str], bool] = self._confirm_removal
        self._rows: dict[str, DatastoreRow] = {}
        self._builds: dict[str, BuildRow | None] = {}  # unfinished builds by name (None: a tracker not catalogued yet)
        self._build_kind: dict[str, str] = {}  # name -> "building" | "elsewhere" | "build"
        self._unfinished: dict[str, UnfinishedBuild | None] = {}  # what the folders of those builds recorded
        self._compat: dict[str, Compatibility] = {}  # name -> result for the current model
        self._checked_folder: dict[str, str] = {}  # name -> the folder that result is about
        self._check_generation = 0
        self._check_job: workers.Job | None = None
        self._remove_job: workers.Job | None = None
        self._removing: str | None = None
        self._watched: set[BuildTracker] = set()
        self._fitting = False

        title = QLabel("Datastores")
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.25)
        font.setWeight(QFont.Weight.DemiBold)
        title.setFont(font)
        title.setToolTip("The datastores in your catalog and any builds that did not finish")
        self.summary = QLabel()
        self.summary.setWordWrap(True)  # never the panel's minimum width
        self.summary.setToolTip("How many datastores the catalog holds, and which model they are checked against")
        self.summary.setForegroundRole(QPalette.ColorRole.PlaceholderText)

        self.use_button = QPushButton("Use")
        self.resume_button = QPushButton("Resume")
        self.build_button = QPushButton("Build…")
        self.remove_button = QPushButton("Remove")
        self.refresh_button = QPushButton("Refresh")
        self.use_button.setDefault(False)
        self.build_button.setToolTip("Build a new datastore from your files and folders with the loaded model")
        self.refresh_button.setToolTip("Read the catalog again")
        self.resume_button.setToolTip("Carry on building the selected interrupted build where it stopped")
        self.use_button.clicked.connect(self._use_clicked)
        self.resume_button.clicked.connect(self._resume_clicked)
        self.build_button.clicked.connect(self.build_requested)
        self.remove_button.clicked.connect(self._remove_clicked)
        self.refresh_button.clicked.connect(self.refresh)
        self.resume_button.hide()  # in Use's place while an interrupted build is selected

        header = QHBoxLayout()
        header.addWidget(title, 0, Qt.AlignmentFlag.AlignTop)
        header.addSpacing(8)
        header.addWidget(self.summary, 1)
        toolbar = QHBoxLayout()
        toolbar.setSpacing(6)
        for button in (self.use_button, self.resume_button, self.build_button, self.remove_button):
            toolbar.addWidget(button)
        toolbar.addStretch(1)
        toolbar.addWidget(self.refresh_button)

        self.tree = QTreeWidget()
        self.tree.setColumnCount(len(COLUMNS))
        self.tree.setHeaderLabels(COLUMNS)
        for column, tip in enumerate(COLUMN_TIPS):
            self.tree.headerItem().setToolTip(column, tip)
        self.tree.setToolTip("Double-click a datastore (or press Enter) to use it with the loaded model, "
                             "an interrupted build to resume it; right-click for more")
        self.tree.setAlternatingRowColors(True)
        self.tree.setUniformRowHeights(True)
        self.tree.setRootIsDecorated(True)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.tree.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.tree.setExpandsOnDoubleClick(False)  # double-click means "use"; the arrow expands
        self.tree.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.tree.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        head = self.tree.header()
        head.setStretchLastSection(False)  # `_fit_columns` gives the status column what is spare
        head.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        head.setMinimumSectionSize(16)
        for column in NUMBERS:
            self.tree.headerItem().setTextAlignment(column, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.tree.itemActivated.connect(self._item_activated)
        self.tree.itemSelectionChanged.connect(self._update_buttons)
        self.tree.itemExpanded.connect(lambda _item: self._fit_columns())
        self.tree.itemCollapsed.connect(lambda _item: self._fit_columns())
        self.tree.viewport().installEventFilter(self)
        self.tree.setItemDelegateForColumn(STATUS, _StatusDelegate(self.tree))

        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setToolTip("The outcome of the last action")
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.setSpacing(6)
        layout.addLayout(header)
        layout.addLayout(toolbar)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.message)

        # Builds this app does not run change without a signal: look at them every few seconds.
        self._poll = QTimer(self)
        self._poll.setInterval(POLL_MS)
        self._poll.timeout.connect(self._poll_builds)

        self.refresh()

    # ---- public API -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the catalog (datastores and unfinished builds) and rebuild the tree."""
        selected = self.selected_name()
        expanded = {self._item_name(self.tree.topLevelItem(i)) for i in range(self.tree.topLevelItemCount())
                    if self.tree.topLevelItem(i).isExpanded()}
        rows = self.catalog.datastores()
        self._rows = {row.name: row for row in rows}
        live = running_builds()
        self._builds, self._build_kind, self._unfinished = {}, {}, {}
        for build in self.catalog.unfinished_builds():  # newest first: keep the newest per name
            if build.name not in self._rows and build.name not in self._builds:
                self._builds[build.name] = build
        for name in live:  # a build of this app that has not reached the catalog yet
            if name not in self._rows and name not in self._builds:
                self._builds[name] = None
        for name in self._builds:
            if name in live:
                self._build_kind[name] = "building"
            else:
                self._build_kind[name] = "elsewhere" if build_lock.holder(name) is not None else "build"
                self._unfinished[name] = unfinished_build(self.catalog, name)
        self._compat = {name: c for name, c in self._compat.items()
                        if name in self._rows and self._checked_folder.get(name) == self._rows[name].folder}

        self.tree.clear()
        for row in rows:
            item = self._datastore_item(row)
            self.tree.addTopLevelItem(item)
            item.setExpanded(row.name in expanded)
            self._style_datastore(item, row.name)
        for name in self._builds:
            self.tree.addTopLevelItem(self._build_item(name))
        if selected is not None:
            self.select(selected)
        self._fit_columns()
        self._update_summary()
        self._update_buttons()
        self._check_compatibility()
        if any(kind != "building" for kind in self._build_kind.values()):
            self._poll.start()
        else:
            self._poll.stop()

    def set_model(self, model: LoadedModel | None) -> None:
        """Check every datastore against `model` (in the background) and grey out the unusable ones."""
        self.model = model
        self._compat = {}
        self.refresh()

    def selected_name(self) -> str | None:
        """The datastore (or unfinished build) selected in the tree; a selected document counts as its datastore."""
        items = self.tree.selectedItems()
        return self._item_name(items[0]) if items else None

    def select(self, name: str) -> bool:
        """Select the datastore or unfinished build called `name`; False if there is none."""
        item = self.item(name)
        if item is None:
            return False
        self.tree.setCurrentItem(item)
        item.setSelected(True)
        self.tree.scrollToItem(item)
        return True

    def item(self, name: str) -> QTreeWidgetItem | None:
        """The top-level tree item of datastore (or unfinished build) `name`."""
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.data(0, NAME_ROLE) == name:
                return item
        return None

    def names(self) -> list[str]:
        """Names of the datastores listed (not the unfinished builds)."""
        return list(self._rows)

    def usable_names(self) -> list[str]:
        """The datastores that can be chosen now (checked against the loaded model)."""
        return [name for name in self._rows if self.is_usable(name)]

    def build_state(self, name: str) -> str | None:
        """"building" (in this app), "elsewhere" (another process), "interrupted", or None (no unfinished build)."""
        kind = self._build_kind.get(name)
        return INTERRUPTED if kind == "build" else kind

    def is_usable(self, name: str) -> bool:
        """Whether `name` can be chosen now: catalogued, and compatible with the loaded model (if any)."""
        if name not in self._rows:
            return False
        if self.model is None:
            return True
        result = self._compat.get(name)
        return result is not None and result.usable

    def unusable_reason(self, name: str) -> str | None:
        """Why `name` cannot be chosen, in one line; None when it can."""
        state = self.build_state(name)
        if state == "building":
            return f"'{name}' is still being built"
        if state == "elsewhere":
            return f"'{name}' is being built by another process"
        if state == INTERRUPTED:
            return f"the build of '{name}' was interrupted; resume it to finish it"
        if name not in self._rows:
            return f"no datastore named '{name}'"
        if self.model is None:
            return None
        result = self._compat.get(name)
        if result is None:
            return "still checking it against the loaded model"
        return None if result.usable else result.reason

    def choose(self, name: str | None = None) -> bool:
        """Emit `datastore_chosen` for `name` (default: the selection) if it is usable."""
        name = name if name is not None else self.selected_name()
        if name is None or not self.is_usable(name):
            return False
        self.datastore_chosen.emit(name)
        return True

    def why_not_resume(self, name: str | None = None) -> str | None:
        """Why `name` (default: the selection) cannot be resumed now, in one line; None when it can."""
        name = name if name is not None else self.selected_name()
        if name is None or self.build_state(name) != INTERRUPTED:
            return "select an interrupted build to resume it"
        build = self._unfinished.get(name)
        if build is None:
            return f"the build of '{name}' is no longer in the catalog; refresh"
        return resume_problem(build, self.model)

    def resume(self, name: str | None = None) -> BuildTracker | None:
        """Resume interrupted build `name` (default: the selection) with the loaded model, from its
        recorded sources and settings; the row then shows its progress. None, with the reason shown,
        if it cannot be resumed."""
        name = name if name is not None else self.selected_name()
        problem = self.why_not_resume(name)
        if problem is not None:
            self._show_message(f"Cannot resume: {problem}" if name is None else f"Cannot resume '{name}': {problem}",
                               error=True)
            return None
        build = self._unfinished[name]
        params = build.parameters
        if params.device == "cuda" and not torch.cuda.is_available():
            params = replace(params, device="cpu")  # where the index is trained: not part of what is resumed
        tracker = BuildTracker(self.catalog, self.model, name, build.source_paths(), params)
        self.watch_build(tracker)
        tracker.failed.connect(lambda reason: self._show_message(f"Resuming '{name}' failed: {reason}", error=True))
        tracker.finished.connect(lambda _report: self._show_message(f"'{name}' is complete."))
        tracker.start()
        self.refresh()
        where = f" from {build.describe_progress()}" if build.state else ""
        self._show_message(f"Resuming '{name}'{where}…")
        self.build_started.emit(tracker)
        return tracker

    def interrupted_selection(self) -> UnfinishedBuild | None:
        """The interrupted build selected, as its folder recorded it; None if the selection is not one."""
        name = self.selected_name()
        return self._unfinished.get(name) if name is not None and self.build_state(name) == INTERRUPTED else None

    def prepare_build_dialog(self, dialog) -> None:
        """Fill a new build dialog (`gui/dialogs/build.BuildDialog`) from the interrupted build selected,
        if one is: its name, sources and settings, so that Start resumes it."""
        build = self.interrupted_selection()
        if build is not None:
            dialog.fill_from(build)

    def remove(self, name: str | None = None) -> bool:
        """Ask `confirm`, then remove `name` (default: the selection) in the background; `removed` follows."""
        name = name if name is not None else self.selected_name()
        if name is None or self._removing is not None:
            return False
        if not self.confirm(name):
            return False
        self._removing = name
        self._update_buttons()
        self._show_message(f"Removing '{name}'…")
        catalog = self.catalog
        self._remove_job = workers.run_job(
            lambda _control: remove_datastore(catalog, name), parent=self,
            finished=lambda _folders: self._removed(name), failed=lambda reason: self._remove_failed(name, reason),
        )
        return True

    def watch_build(self, tracker: BuildTracker) -> None:
        """Show a running build as a "building" row with its progress, and refresh when it ends."""
        if tracker in self._watched:
            return
        self._watched.add(tracker)
        tracker.progress.connect(lambda _progress: self._build_progressed(tracker))
        tracker.done.connect(lambda: self._watched.discard(tracker))
        tracker.done.connect(self.refresh)
        if tracker.is_running() and self.item(tracker.name) is None:
            self.refresh()

    # ---- items ------------------------------------------------------------------------------
    def _datastore_item(self, row: DatastoreRow) -> QTreeWidgetItem:
        indexed = [d for d in row.documents if d.status == "indexed"]
        skipped = [d for d in row.documents if d.status != "indexed"]
        item = QTreeWidgetItem([
            row.name, _short_model_name(row.model_name), _short_count(row.entries), _human_size(row.size_bytes),
            _short_index(row.index_description), _short_time(row.created), "",
        ])
        item.setData(0, KIND_ROLE, "datastore")
        item.setData(0, NAME_ROLE, row.name)
        docs = f"{len(indexed)} document{'s' if len(indexed) != 1 else ''} indexed"
        if skipped:
            docs += f", {len(skipped)} skipped"
        item.setToolTip(NAME, f"{row.name} — {docs}\n{row.entries:,} entries · {_human_size(row.size_bytes)} · "
                              f"{row.index_description} · built {_local_time(row.created)}\n"
                              f"Model: {row.model_name}\nLives on: {row.location}\nFolder: {row.folder}")
        item.setToolTip(MODEL, f"Built by {row.model_name}\nKeys: input of {row.key_site} ({row.dim} dimensions)")
        item.setToolTip(ENTRIES, f"{row.entries:,} entries")
        item.setToolTip(SIZE, f"{row.size_bytes / 2**20:,.1f} MB ({row.size_bytes:,} bytes) on disk")
        compressed = describe_applied(row.compression)
        item.setToolTip(INDEX, row.index_description + (f"\nCompressed: {compressed}" if compressed else ""))
        if compressed:  # "IVF-PQ · PCA+pruned": the details are in the tooltip
            applied = "+".join(tag for tag, key in (("PCA", "pca_dim"), ("pruned", "prune_k")) if row.compression.get(key))
            item.setText(INDEX, f"{_short_index(row.index_description)} · {applied}")
        if row.cluster:  # "flat · Ray ×2": searched by the shards' actors on a Ray cluster
            item.setText(INDEX, f"{item.text(INDEX)} · Ray ×{row.shards}")
            item.setToolTip(INDEX, f"{item.toolTip(INDEX)}\nLives on the Ray cluster “{row.cluster}” in {row.shards} "
                                   f"shards, each searched by its own actor; storage: {row.folder}")
        item.setToolTip(CREATED, f"Built {_local_time(row.created)}")
        for column in NUMBERS:
            item.setTextAlignment(column, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        bold = item.font(NAME)
        bold.setWeight(QFont.Weight.DemiBold)
        item.setFont(NAME, bold)
        for doc in row.documents:
            item.addChild(self._document_item(row.name, doc))
        return item

    def _document_item(self, datastore: str, doc) -> QTreeWidgetItem:
        name = Path(doc.path).name or doc.path
        if doc.status == "indexed":
            status = "indexed"
            entries = f"{doc.tokens:,}" if doc.tokens else ""
        else:
            status = f"skipped — {doc.reason}" if doc.reason else "skipped"
            entries = ""
        child = QTreeWidgetItem([name, "", entries, "", "", "", status])
        child.setData(0, KIND_ROLE, "document")
        child.setData(0, NAME_ROLE, datastore)
        child.setToolTip(NAME, doc.path)
        child.setToolTip(STATUS, f"Skipped: {doc.reason}" if doc.reason else
                         "Indexed: its tokens are entries of this datastore")
        child.setToolTip(ENTRIES, f"{doc.tokens:,} tokens read from this document" if entries else "")
        child.setTextAlignment(ENTRIES, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if doc.status != "indexed":
            child.setForeground(STATUS, QBrush(WARNING))
            child.setForeground(NAME, QBrush(MUTED))
        return child

    def _build_item(self, name: str) -> QTreeWidgetItem:
        build, kind = self._builds[name], self._build_kind[name]
        tracker = running_builds().get(name)
        if build is not None:
            model_name, started = build.model_name, build.started
            index = (build.parameters or {}).get("index", "")
        else:  # this app's build, before its catalog row exists
            model_name, started, index = tracker.model.name, None, tracker.params.index
        item = QTreeWidgetItem([name, _short_model_name(model_name), "", "", _short_index(index),
                                _short_time(started), ""])
        item.setData(0, KIND_ROLE, kind)
        item.setData(0, NAME_ROLE, name)
        tip = self._build_tip(name)
        for column in range(len(COLUMNS)):
            item.setToolTip(column, tip)
            if kind == "build":
                item.setForeground(column, QBrush(MUTED))
        item.setToolTip(MODEL, f"{tip}\n\nModel: {model_name}")
        if started is not None:
            item.setToolTip(CREATED, f"{tip}\n\nStarted {_local_time(started)}")
        item.setForeground(STATUS, QBrush(WARNING if kind == "build" else ACTIVE))
        italic = item.font(NAME)
        italic.setItalic(True)
        item.setFont(NAME, italic)
        self._set_build_status(item, name)
        return item

    def _set_build_status(self, item: QTreeWidgetItem, name: str) -> None:
        """The status text, and for a running build the bar its cell is drawn as."""
        item.setText(STATUS, self._build_status(name))
        kind = self._build_kind.get(name)
        if kind == "building":
            tracker = running_builds().get(name)
            progress = tracker.last_progress if tracker is not None else None
            bar = (progress.fraction if progress is not None else None,
                   describe_progress(tracker) if tracker is not None else "starting")
        elif kind == "elsewhere":
            build = self._unfinished.get(name)
            bar = (build.fraction if build is not None else None,
                   (build.describe_progress() if build is not None else "") or "starting")
        else:
            bar = None
        item.setData(STATUS, PROGRESS_ROLE, bar)

    def _build_status(self, name: str) -> str:
        kind = self._build_kind.get(name)
        if kind == "building":
            tracker = running_builds().get(name)
            return _building_status(tracker) if tracker is not None else "building…"
        progress = self._unfinished[name].describe_progress() if self._unfinished.get(name) else ""
        if kind == "elsewhere":  # the tooltip says which process
            return f"building — {progress}" if progress else "building…"
        return f"{INTERRUPTED} — {progress}" if progress else INTERRUPTED

    def _build_tip(self, name: str) -> str:
        kind = self._build_kind.get(name)
        if kind == "building":
            return f"'{name}' is being built now; it appears here as a datastore when it is done"
        if kind == "elsewhere":
            busy = build_lock.holder(name) or f"datastore '{name}' is being built by another process"
            return busy[0].upper() + busy[1:]
        build = self._unfinished.get(name)
        tip = f"The build of '{name}' did not finish"
        if build is not None and build.state:
            tip += f" (it stopped while {build.describe_progress()})"
        if build is not None and build.error:
            tip += f": {build.error}"
        if build is not None and build.sources:
            shown = ", ".join(build.sources[:3]) + (", …" if len(build.sources) > 3 else "")
            tip += f".\nSources: {shown}"
        problem = self.why_not_resume(name)
        if problem is None:
            tip += "\n\nResume (or double-click) carries on where it stopped, with its recorded sources and settings; or remove it."
        else:
            tip += f"\n\nIt cannot be resumed now: {problem}."
        return tip

    def _style_datastore(self, item: QTreeWidgetItem, name: str) -> None:
        """Colour and status text of a datastore row from what is known about its compatibility."""
        reason = self.unusable_reason(name)
        if self.model is None:
            status, tip, colour = "complete", "Complete; load a model to check that it can be used", None
        elif name not in self._compat:
            status, tip, colour = "checking…", "Checking it against the loaded model…", MUTED
        elif reason is None:
            status, tip, colour = "ready", f"Can be used with {self.model.name}", GOOD
        else:
            status, tip, colour = f"unusable — {reason}", reason, None
        item.setText(STATUS, status)
        unusable = self.model is not None and name in self._compat and reason is not None
        for column in range(len(COLUMNS)):
            if unusable:
                item.setForeground(column, QBrush(MUTED))
                item.setToolTip(column, reason)
            elif column == STATUS:
                item.setForeground(column, QBrush(colour) if colour is not None else QBrush())
        if not unusable:
            item.setToolTip(STATUS, tip)

    def _build_progressed(self, tracker: BuildTracker) -> None:
        item = self.item(tracker.name)
        if item is None or item.data(0, KIND_ROLE) != "building":
            if tracker.name not in self._rows:
                self.refresh()  # its folder exists now (or it was listed as interrupted): list it as building
            return
        status = _building_status(tracker)
        if item.text(STATUS) != status:
            self._set_build_status(item, tracker.name)
            if self.tree.fontMetrics().horizontalAdvance(status) + 16 > self.tree.columnWidth(STATUS):
                self._fit_columns()

    def _poll_builds(self) -> None:
        """Builds run by other processes finish, die or progress without telling us: look again."""
        for name, kind in list(self._build_kind.items()):
            if kind == "building":
                continue
            now = "elsewhere" if build_lock.holder(name) is not None else "build"
            if now != kind or not self.catalog.unfinished_builds(name):
                self.refresh()  # it started, ended or was removed: the list changes
                return
            if kind == "elsewhere":
                self._unfinished[name] = unfinished_build(self.catalog, name)
                item = self.item(name)
                if item is not None and item.text(STATUS) != self._build_status(name):
                    self._set_build_status(item, name)
                    self._fit_columns()

    # ---- column widths -----------------------------------------------------------------------
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # Only a change of width: a scrollbar appearing because a column was dragged wider changes the
        # height, and refitting then would undo the drag.
        if (watched is self.tree.viewport() and event.type() == QEvent.Type.Resize
                and event.size().width() != event.oldSize().width()):
            self._fit_columns()
        return super().eventFilter(watched, event)

    def _fit_columns(self) -> None:
        """Every column within the panel's width (`fit_widths`); below the floors of all of them, the
        least useful ones (`HIDE_FIRST`) are hidden instead of being cut to "…"."""
        if self._fitting:
            return
        available = self.tree.viewport().width()
        if available <= 0:
            return
        self._fitting = True
        try:
            head = self.tree.header()
            metrics = self.tree.fontMetrics()
            pad = 2 * (self.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin) + 1) + 2

            def text(sample: str) -> int:
                return metrics.horizontalAdvance(sample) + pad

            content = {c: self.tree.sizeHintForColumn(c) for c in range(len(COLUMNS))}
            want = {c: max(content[c], head.sectionSizeHint(c)) for c in range(len(COLUMNS))}
            floor = {
                NAME: min(want[NAME], self.tree.indentation() + text("flask-do…")),
                MODEL: min(want[MODEL], text("gpt2…")),
                INDEX: min(want[INDEX], text("IVF-PQ")),
                CREATED: min(want[CREATED], text("12 May")),
                # The status must stay readable: a running build's whole status ("building — encoding
                # 40%"), the verdict of the others ("interrupted", "unusable", "skipped"); the rest is
                # in its tooltip.
                STATUS: min(want[STATUS], max([text(t) for t in self._status_texts()] or [0])),
            }
            for column in NUMBERS:  # a number and its heading are never cut
                floor[column] = want[column]
            want[NAME] = min(want[NAME], max(floor[NAME], text("M" * 16)))
            want[STATUS] = min(want[STATUS], max(floor[STATUS], text("M" * 18)))
            shown = list(range(len(COLUMNS)))
            for column in HIDE_FIRST:
                if sum(floor[c] for c in shown) <= available:
                    break
                shown.remove(column)
            for column in range(len(COLUMNS)):
                self.tree.setColumnHidden(column, column not in shown)
            widths = fit_widths({c: want[c] for c in shown}, {c: floor[c] for c in shown}, available)
            for column, width in widths.items():
                head.resizeSection(column, width)
        finally:
            self._fitting = False

    def _status_texts(self) -> list[str]:
        """What each status cell must show whole: a running build's bar text ("encoding 40%"), the
        verdict of the others ("interrupted …", "unusable …", "ready")."""
        items = []
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            items.append(item)
            if item.isExpanded():
                items += [item.child(j) for j in range(item.childCount())]
        texts = []
        for item in items:
            bar = item.data(STATUS, PROGRESS_ROLE)
            texts.append(bar[1] if bar else _essential(item.text(STATUS)))
        return texts

    # ---- compatibility (background) ------------------------------------------------------------
    def _check_compatibility(self) -> None:
        model = self.model
        todo = [row for name, row in self._rows.items() if name not in self._compat]
        if model is None or not todo:
            if model is not None:
                self.compatibility_checked.emit()
            return
        self._check_generation += 1
        generation = self._check_generation

        def check(_control) -> dict[str, tuple[str, Compatibility]]:
            return {row.name: (row.folder, compatibility(row, model)) for row in todo}

        self._check_job = workers.run_job(
            check, parent=self, finished=lambda result: self._compatibility_done(generation, model, result),
            failed=lambda reason: self._show_message(f"Could not check the datastores: {reason}", error=True),
        )

    def _compatibility_done(self, generation: int, model: LoadedModel,
                            result: dict[str, tuple[str, Compatibility]]) -> None:
        if generation != self._check_generation or model is not self.model:
            return  # a newer model or refresh made this result stale
        for name, (folder, verdict) in result.items():
            self._compat[name], self._checked_folder[name] = verdict, folder
        for name in result:
            item = self.item(name)
            if item is not None:
                self._style_datastore(item, name)
        self._fit_columns()
        self._update_summary()
        self._update_buttons()
        self.compatibility_checked.emit()

    # ---- actions -------------------------------------------------------------------------------
    def _item_activated(self, item: QTreeWidgetItem, _column: int) -> None:
        if item.parent() is not None:
            return
        kind = item.data(0, KIND_ROLE)
        if kind == "datastore":
            self.choose(item.data(0, NAME_ROLE))
        elif kind == "build":
            self.resume(item.data(0, NAME_ROLE))

    def _context_menu(self, position: QPoint) -> None:
        item = self.tree.itemAt(position)
        if item is not None:
            self.tree.setCurrentItem(item)
        self.context_menu().exec(self.tree.viewport().mapToGlobal(position))

    def context_menu(self) -> QMenu:
        """The actions for the selection (what right-clicking it offers)."""
        menu = QMenu(self)
        name = self.selected_name()
        state = self.build_state(name) if name is not None else None

        def add(text: str, slot, problem: str | None, tip: str) -> None:
            action = menu.addAction(text)
            action.triggered.connect(lambda _checked=False: slot())
            action.setEnabled(problem is None)
            action.setToolTip(tip if problem is None else f"{text.rstrip('…')}: {problem}")

        menu.setToolTipsVisible(True)
        if name is not None and state is None:
            add("Use", self.choose, self.unusable_reason(name), f"Use '{name}' with the loaded model")
        if state == INTERRUPTED:
            add("Resume", self.resume, self.why_not_resume(name),
                f"Carry on building '{name}' where it stopped, with its recorded sources and settings")
            add("Build with these settings…", self.build_requested.emit, None,
                "Open the build dialog filled in with this build's name, sources and settings")
        else:
            add("Build…", self.build_requested.emit, None, self.build_button.toolTip())
        if name is not None:
            busy = f"'{name}' is being built" if state in ("building", "elsewhere") else None
            add("Remove…", self.remove, busy or (f"removing '{self._removing}'" if self._removing else None),
                f"Remove '{name}' from the catalog and delete its folder (asks first)")
        menu.addSeparator()
        add("Refresh", self.refresh, None, self.refresh_button.toolTip())
        return menu

    def _use_clicked(self) -> None:
        self.choose()

    def _resume_clicked(self) -> None:
        self.resume()

    def _remove_clicked(self) -> None:
        self.remove()

    def _confirm_removal(self, name: str) -> bool:
        what = "the interrupted build" if name in self._builds else "the datastore"
        answer = QMessageBox.question(
            self, "Remove datastore",
            f"Remove {what} '{name}'?\n\nIts folder is deleted from disk; your source documents are not touched.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Cancel,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _removed(self, name: str) -> None:
        self._removing = None
        self._compat.pop(name, None)
        self.refresh()
        self._show_message(f"Removed '{name}'.")
        self.removed.emit(name)

    def _remove_failed(self, name: str, reason: str) -> None:
        self._removing = None
        self.refresh()
        self._show_message(f"Could not remove '{name}': {reason}", error=True)

    # ---- state -----------------------------------------------------------------------------------
    def _update_buttons(self) -> None:
        name = self.selected_name()
        state = self.build_state(name) if name is not None else None
        interrupted = state == INTERRUPTED
        # Resume takes Use's place while an interrupted build is selected: the toolbar never widens.
        self.use_button.setVisible(not interrupted)
        self.resume_button.setVisible(interrupted)
        if interrupted:
            problem = self.why_not_resume(name)
            self.resume_button.setEnabled(problem is None)
            self.resume_button.setToolTip(
                f"Carry on building '{name}' where it stopped, with its recorded sources and settings "
                "(or double-click it)" if problem is None else f"'{name}' cannot be resumed: {problem}")
            self.build_button.setToolTip(f"Open the build dialog filled in with the name, sources and settings "
                                         f"of the interrupted build '{name}'")
        else:
            self.build_button.setToolTip("Build a new datastore from your files and folders with the loaded model")
        if name is None:
            self.use_button.setEnabled(False)
            self.use_button.setToolTip("Select a datastore to use it with the loaded model")
        elif self.is_usable(name):
            self.use_button.setEnabled(True)
            self.use_button.setToolTip(f"Use '{name}' with the loaded model (or double-click it)")
        else:
            self.use_button.setEnabled(False)
            self.use_button.setToolTip(f"'{name}' cannot be used: {self.unusable_reason(name)}")
        if self._removing is not None:
            self.remove_button.setEnabled(False)
            self.remove_button.setToolTip(f"Removing '{self._removing}'…")
        elif name is None:
            self.remove_button.setEnabled(False)
            self.remove_button.setToolTip("Select a datastore to remove it from the catalog and the disk")
        elif state == "building":
            self.remove_button.setEnabled(False)
            self.remove_button.setToolTip(f"'{name}' is being built; cancel the build instead")
        elif state == "elsewhere":
            self.remove_button.setEnabled(False)
            self.remove_button.setToolTip(f"'{name}' is being built by another process; stop it there first")
        else:
            self.remove_button.setEnabled(True)
            self.remove_button.setToolTip(f"Remove '{name}' from the catalog and delete its folder (asks first)")

    def _update_summary(self) -> None:
        count = len(self._rows)
        parts = [f"{count} datastore{'s' if count != 1 else ''}"]
        building = sum(1 for kind in self._build_kind.values() if kind in ("building", "elsewhere"))
        interrupted = sum(1 for kind in self._build_kind.values() if kind == "build")
        if building:
            parts.append(f"{building} building")
        if interrupted:
            parts.append(f"{interrupted} interrupted build{'s' if interrupted != 1 else ''}")
        if self.model is not None:
            usable = sum(1 for name in self._rows if self._compat.get(name) and self._compat[name].usable)
            if len(self._compat) >= count:
                parts.append(f"{usable} usable with {_short_model_name(self.model.name)}")
            else:
                parts.append(f"checking against {_short_model_name(self.model.name)}…")
        self.summary.setText(" · ".join(parts))

    def _show_message(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setStyleSheet("color: #c62828;" if error else "")
        self.message.setVisible(bool(text))

    def _item_name(self, item: QTreeWidgetItem | None) -> str | None:
        if item is None:
            return None
        return item.data(0, NAME_ROLE)


class _StatusDelegate(QStyledItemDelegate):
    """Draws a running build's status cell as its phase and percent ("encoding 40%") over a thin
    progress bar; every other cell as plain text."""

    def sizeHint(self, option, index):
        hint = super().sizeHint(option, index)
        hint.setHeight(hint.height() + 6)  # room for the bar under the text (rows are uniform: all get it)
        return hint

    def paint(self, painter, option, index) -> None:
        bar = index.data(PROGRESS_ROLE)
        if not bar:
            super().paint(painter, option, index)
            return
        fraction, text = bar
        shown = QStyleOptionViewItem(option)
        self.initStyleOption(shown, index)
        shown.text = text
        shown.rect = option.rect.adjusted(0, 0, 0, -5)  # the text above the bar
        widget = option.widget
        style = widget.style() if widget is not None else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, shown, painter, widget)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        track = option.rect.adjusted(4, 0, -4, -1)
        track.setTop(track.bottom() - 2)
        painter.save()
        painter.fillRect(track, option.palette.color(QPalette.ColorRole.Mid))
        if fraction is not None and fraction > 0:
            done = track.adjusted(0, 0, -round(track.width() * (1 - min(1.0, fraction))), 0)
            colour = option.palette.color(QPalette.ColorRole.HighlightedText) if selected else ACTIVE
            painter.fillRect(done, colour)
        painter.restore()


def fit_widths(want: dict[int, int], floor: dict[int, int], available: int) -> dict[int, int]:
    """Widths of the columns in `want` that add up to at most `available` (exactly, when anything is spare).

    Each column wants `want` and can give way down to `floor`. Spare room goes to the status column
    (or the last one); a shortfall is taken first from the model, index and time columns, then from
    the name and the status, then from the numbers, each group in proportion to what its columns
    can give; if even the floors do not fit, every column is scaled down alike.
    """
    columns = sorted(want)
    widths = {c: float(want[c]) for c in columns}
    excess = sum(widths.values()) - available
    if excess <= 0:
        widths[STATUS if STATUS in widths else columns[-1]] -= excess
    else:
        for group in ((MODEL, INDEX, CREATED), (NAME, STATUS), NUMBERS):
            slack = {c: widths[c] - floor[c] for c in group if c in widths and widths[c] > floor[c]}
            total = sum(slack.values())
            if total <= 0:
                continue
            take = min(excess, total)
            for column, give in slack.items():
                widths[column] -= take * give / total
            excess -= take
            if excess <= 0:
                break
        if excess > 0:
            scale = available / sum(widths.values())
            widths = {c: w * scale for c, w in widths.items()}
    # Round so that the running total never passes `available`.
    result, edge = {}, 0.0
    for column in columns:
        start = round(edge)
        edge += widths[column]
        result[column] = max(0, min(round(edge), available) - start)
    return result


def _essential(status: str) -> str:
    """The part of a status that must stay readable: a running build's whole status, the verdict of others."""
    if status.startswith(("unusable", "skipped", INTERRUPTED)):
        return status.split(" — ")[0] + " …"
    return status


def _short_count(count: int) -> str:
    """Up to 999,999 in full; above, "1.23M" (the full number is in the tooltip)."""
    return f"{count:,}" if count < 1_000_000 else f"{count / 1e6:.3g}M"


def _human_size(size: int) -> str:
    """"512 B", "320 KB", "1.5 MB", "2.1 GB"."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            break
        value /= 1024
    if unit == "B":
        return f"{size} B"
    return f"{value:.1f} {unit}" if value < 10 else f"{value:,.0f} {unit}"


def _building_status(tracker: BuildTracker) -> str:
    return f"building — {describe_progress(tracker)}"


def _short_model_name(name: str) -> str:
    """A model given as a local folder is shown by its folder name, a hub id by its name without the
    organisation (the full name is in the tooltip)."""
    if "/" in name or "\\" in name:
        path = Path(name)
        return path.name or name
    return name


def _short_index(description: str) -> str:
    """"IVF1024,PQ32x8 nprobe=32" → "IVF-PQ", "HNSW32 efSearch=128" → "HNSW", "Flat (exact)" → "flat";
    the full description is in the tooltip."""
    if description.upper().startswith("IVF"):
        return "IVF-PQ"
    if description.upper().startswith("HNSW"):
        return "HNSW"
    if description.lower().startswith("flat"):
        return "flat"
    return description


def _short_time(moment) -> str:
    """"14:05" (today), "3 May" (this year), "2023-05-03": the exact time is in the tooltip."""
    if moment is None:
        return ""
    local = moment.replace(tzinfo=timezone.utc).astimezone()
    now = datetime.now().astimezone()
    if local.date() == now.date():
        return f"{local:%H:%M}"
    if local.year == now.year:
        return f"{local.day} {local:%b}"
    return f"{local:%Y-%m-%d}"


def _local_time(moment) -> str:
    """Catalog times are naive UTC; show them in local time."""
    if moment is None:
        return ""
    return moment.replace(tzinfo=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M")

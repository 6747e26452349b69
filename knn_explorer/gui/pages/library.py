"""The catalog as a tree: datastores (with their documents) and interrupted builds.

Each datastore row shows name, model, entries, size, index, creation time and a status; its
children are the documents that went into it, indexed or skipped with the reason. Datastores
that the loaded model cannot use (other model, other tokenizer, incomplete folder) are greyed
out with the reason, and cannot be chosen as the active datastore. Interrupted builds appear
in grey with a hint to run the build again.

Nothing slow happens on the UI thread: the compatibility check (it reads each datastore's
manifest) and removal (it deletes folders) run as jobs; only catalog reads happen here.
"""
from __future__ import annotations

from datetime import timezone
from pathlib import Path
from typing import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QSizePolicy,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...core.datastore import build_lock
from ...core.datastore.catalog import BuildRow, Catalog, DatastoreRow
from ...core.datastore.library import Compatibility, compatibility, remove_datastore
from ...core.models import LoadedModel
from .. import workers
from ..build_tracker import BuildTracker, running_builds

COLUMNS = ["Name", "Model", "Entries", "Size (MB)", "Index", "Created", "Status"]
NAME, MODEL, ENTRIES, SIZE, INDEX, CREATED, STATUS = range(len(COLUMNS))
COLUMN_TIPS = [
    "Datastore name; expand it to see the documents that went into it",
    "The model whose hidden states are the datastore's keys",
    "Number of (context, next token) entries; for a document, its tokens",
    "Disk space used by the datastore folder",
    "The FAISS index used to search the keys",
    "When the datastore was built",
    "Whether the datastore can be used with the loaded model, or why a document was skipped",
]

INTERRUPTED = "interrupted — run the build again to resume"
KIND_ROLE = Qt.ItemDataRole.UserRole  # "datastore" | "build" | "document"
NAME_ROLE = Qt.ItemDataRole.UserRole + 1  # the datastore name an item belongs to

MUTED = QColor("#8a8f98")
WARNING = QColor("#b25e09")
GOOD = QColor("#2e7d32")


class CatalogView(QWidget):
    """The datastores of a catalog, with Use / Build… / Remove / Refresh buttons."""

    datastore_chosen = Signal(str)  # a usable datastore was double-clicked, activated with Enter, or "Use" clicked
    removed = Signal(str)  # a datastore (or interrupted build) was removed from the catalog and disk
    build_requested = Signal()  # "Build…" was clicked
    compatibility_checked = Signal()  # the check against the loaded model finished and the tree shows it

    def __init__(self, catalog: Catalog, parent: QWidget | None = None):
        super().__init__(parent)
        self.catalog = catalog
        self.model: LoadedModel | None = None
        # Asked before removing; returns True to go ahead. Replace it in tests or embedding code.
        self.confirm: Callable[[str], bool] = self._confirm_removal
        self._rows: dict[str, DatastoreRow] = {}
        self._builds: dict[str, BuildRow] = {}
        self._compat: dict[str, Compatibility] = {}  # name -> result for the current model
        self._checked_folder: dict[str, str] = {}  # name -> the folder that result is about
        self._check_generation = 0
        self._check_job: workers.Job | None = None
        self._remove_job: workers.Job | None = None
        self._removing: str | None = None

        title = QLabel("Datastores")
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.25)
        font.setWeight(QFont.Weight.DemiBold)
        title.setFont(font)
        title.setToolTip("The datastores in your catalog and any builds that did not finish")
        self.summary = QLabel()
        self.summary.setToolTip("How many datastores the catalog holds, and which model they are checked against")
        self.summary.setForegroundRole(QPalette.ColorRole.PlaceholderText)

        self.use_button = QPushButton("Use")
        self.build_button = QPushButton("Build…")
        self.remove_button = QPushButton("Remove")
        self.refresh_button = QPushButton("Refresh")
        self.use_button.setDefault(False)
        self.build_button.setToolTip("Build a new datastore from your files and folders with the loaded model")
        self.refresh_button.setToolTip("Read the catalog again")
        self.use_button.clicked.connect(self._use_clicked)
        self.build_button.clicked.connect(self.build_requested)
        self.remove_button.clicked.connect(self._remove_clicked)
        self.refresh_button.clicked.connect(self.refresh)

        header = QHBoxLayout()
        header.addWidget(title)
        header.addSpacing(8)
        header.addWidget(self.summary, 1, Qt.AlignmentFlag.AlignBaseline)
        toolbar = QHBoxLayout()
        toolbar.setSpacing(6)
        for button in (self.use_button, self.build_button, self.remove_button):
            toolbar.addWidget(button)
        toolbar.addStretch(1)
        toolbar.addWidget(self.refresh_button)

        self.tree = QTreeWidget()
        self.tree.setColumnCount(len(COLUMNS))
        self.tree.setHeaderLabels(COLUMNS)
        for column, tip in enumerate(COLUMN_TIPS):
            self.tree.headerItem().setToolTip(column, tip)
        self.tree.setToolTip("Double-click a datastore (or press Enter) to use it with the loaded model")
        self.tree.setAlternatingRowColors(True)
        self.tree.setUniformRowHeights(True)
        self.tree.setRootIsDecorated(True)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.tree.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.tree.setExpandsOnDoubleClick(False)  # double-click means "use"; the arrow expands
        self.tree.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        head = self.tree.header()
        head.setStretchLastSection(True)
        head.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        for column in (ENTRIES, SIZE):
            self.tree.headerItem().setTextAlignment(column, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.tree.itemActivated.connect(self._item_activated)
        self.tree.itemSelectionChanged.connect(self._update_buttons)

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

        self.refresh()

    # ---- public API -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the catalog (datastores and unfinished builds) and rebuild the tree."""
        selected = self.selected_name()
        expanded = {self._item_name(self.tree.topLevelItem(i)) for i in range(self.tree.topLevelItemCount())
                    if self.tree.topLevelItem(i).isExpanded()}
        rows = self.catalog.datastores()
        self._rows = {row.name: row for row in rows}
        self._builds = {}
        for build in self.catalog.unfinished_builds():  # newest first: keep the newest per name
            if build.name not in self._rows and build.name not in self._builds:
                self._builds[build.name] = build
        self._compat = {name: c for name, c in self._compat.items()
                        if name in self._rows and self._checked_folder.get(name) == self._rows[name].folder}

        self.tree.clear()
        for row in rows:
            item = self._datastore_item(row)
            self.tree.addTopLevelItem(item)
            item.setExpanded(row.name in expanded)
            self._style_datastore(item, row.name)
        for build in self._builds.values():
            self.tree.addTopLevelItem(self._build_item(build))
        for column in range(STATUS):
            self.tree.resizeColumnToContents(column)
        # Documents (hidden until expanded) are not measured: leave them room.
        self.tree.setColumnWidth(NAME, max(self.tree.columnWidth(NAME) + 40, 200))
        self.tree.setColumnWidth(ENTRIES, max(self.tree.columnWidth(ENTRIES) + 12, 90))
        self.tree.setColumnWidth(MODEL, min(max(self.tree.columnWidth(MODEL), 80), 220))
        if selected is not None:
            self.select(selected)
        self._update_summary()
        self._update_buttons()
        self._check_compatibility()

    def set_model(self, model: LoadedModel | None) -> None:
        """Check every datastore against `model` (in the background) and grey out the unusable ones."""
        self.model = model
        self._compat = {}
        self.refresh()

    def selected_name(self) -> str | None:
        """The datastore (or interrupted build) selected in the tree; a selected document counts as its datastore."""
        items = self.tree.selectedItems()
        return self._item_name(items[0]) if items else None

    def select(self, name: str) -> bool:
        """Select the datastore or interrupted build called `name`; False if there is none."""
        item = self.item(name)
        if item is None:
            return False
        self.tree.setCurrentItem(item)
        item.setSelected(True)
        self.tree.scrollToItem(item)
        return True

    def item(self, name: str) -> QTreeWidgetItem | None:
        """The top-level tree item of datastore (or interrupted build) `name`."""
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.data(0, NAME_ROLE) == name:
                return item
        return None

    def names(self) -> list[str]:
        """Names of the datastores listed (not the interrupted builds)."""
        return list(self._rows)

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
        if name in self._builds and name in running_builds():
            return f"'{name}' is still being built"
        if name in self._builds:
            return f"the build of '{name}' was interrupted; run the build again to resume it"
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

    # ---- items ------------------------------------------------------------------------------
    def _datastore_item(self, row: DatastoreRow) -> QTreeWidgetItem:
        indexed = [d for d in row.documents if d.status == "indexed"]
        skipped = [d for d in row.documents if d.status != "indexed"]
        created = _local_time(row.created)
        item = QTreeWidgetItem([
            row.name, _short_model_name(row.model_name), f"{row.entries:,}", f"{row.size_bytes / 2**20:,.1f}", row.index_description,
            created, "",
        ])
        item.setData(0, KIND_ROLE, "datastore")
        item.setData(0, NAME_ROLE, row.name)
        docs = f"{len(indexed)} document{'s' if len(indexed) != 1 else ''} indexed"
        if skipped:
            docs += f", {len(skipped)} skipped"
        item.setToolTip(NAME, f"{row.name} — {docs}\nFolder: {row.folder}")
        item.setToolTip(MODEL, f"Built by {row.model_name}\nKeys: input of {row.key_site} ({row.dim} dimensions)")
        item.setToolTip(ENTRIES, f"{row.entries:,} entries")
        item.setToolTip(SIZE, f"{row.size_bytes:,} bytes on disk")
        item.setToolTip(INDEX, row.index_description)
        item.setToolTip(CREATED, f"Built {created}")
        for column in (ENTRIES, SIZE):
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
        child.setToolTip(STATUS, doc.reason or "Indexed: its tokens are entries of this datastore")
        child.setToolTip(ENTRIES, f"{doc.tokens:,} tokens read from this document" if entries else "")
        child.setTextAlignment(ENTRIES, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if doc.status != "indexed":
            child.setForeground(STATUS, QBrush(WARNING))
            child.setForeground(NAME, QBrush(MUTED))
        return child

    def _build_item(self, build: BuildRow) -> QTreeWidgetItem:
        started = _local_time(build.started)
        index = (build.parameters or {}).get("index", "")
        live = running_builds().get(build.name)
        elsewhere = build_lock.holder(build.name) if live is None else None  # the CLI, another window
        status = _building_status(live) if live is not None else "building elsewhere" if elsewhere else INTERRUPTED
        item = QTreeWidgetItem([build.name, _short_model_name(build.model_name), "", "", index, started, status])
        item.setData(0, KIND_ROLE, "building" if live is not None else "build")
        item.setData(0, NAME_ROLE, build.name)
        if live is not None:
            tip = f"'{build.name}' is being built now; it appears here as a datastore when it is done"
        elif elsewhere:
            tip = elsewhere[0].upper() + elsewhere[1:]
        else:
            tip = f"The build of '{build.name}' did not finish"
            if build.error:
                tip += f": {build.error}"
            tip += ".\nBuild it again with the same name, model and sources to resume where it stopped,\nor remove it."
        for column in range(len(COLUMNS)):
            item.setForeground(column, QBrush(MUTED))
            item.setToolTip(column, tip)
        item.setToolTip(MODEL, f"{tip}\nModel: {build.model_name}")
        italic = item.font(NAME)
        italic.setItalic(True)
        item.setFont(NAME, italic)
        return item

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

    def watch_build(self, tracker: BuildTracker) -> None:
        """Show a running build as a "building" row with its progress, and refresh when it ends."""
        tracker.progress.connect(lambda progress: self._build_progressed(tracker))
        tracker.done.connect(self.refresh)

    def _build_progressed(self, tracker: BuildTracker) -> None:
        item = self.item(tracker.name)
        if item is None or item.data(0, KIND_ROLE) not in ("build", "building"):
            if tracker.name not in self._rows:
                self.refresh()  # its folder exists now: list it
            return
        item.setData(0, KIND_ROLE, "building")
        item.setText(STATUS, _building_status(tracker))

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
        self._update_summary()
        self._update_buttons()
        self.compatibility_checked.emit()

    # ---- actions -------------------------------------------------------------------------------
    def _item_activated(self, item: QTreeWidgetItem, _column: int) -> None:
        if item.parent() is None and item.data(0, KIND_ROLE) == "datastore":
            self.choose(item.data(0, NAME_ROLE))

    def _use_clicked(self) -> None:
        self.choose()

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
        building = name is not None and name in running_builds()
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
        elif building:
            self.remove_button.setEnabled(False)
            self.remove_button.setToolTip(f"'{name}' is being built; cancel the build instead")
        else:
            self.remove_button.setEnabled(True)
            self.remove_button.setToolTip(f"Remove '{name}' from the catalog and delete its folder (asks first)")

    def _update_summary(self) -> None:
        count = len(self._rows)
        text = f"{count} datastore{'s' if count != 1 else ''}"
        if self._builds:
            text += f" · {len(self._builds)} interrupted build{'s' if len(self._builds) != 1 else ''}"
        if self.model is not None:
            usable = sum(1 for name in self._rows if self._compat.get(name) and self._compat[name].usable)
            if len(self._compat) >= count:
                text += f" · {usable} usable with {self.model.name}"
            else:
                text += f" · checking against {self.model.name}…"
        self.summary.setText(text)

    def _show_message(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setStyleSheet("color: #c62828;" if error else "")
        self.message.setVisible(bool(text))

    def _item_name(self, item: QTreeWidgetItem | None) -> str | None:
        if item is None:
            return None
        return item.data(0, NAME_ROLE)


def _building_status(tracker: BuildTracker) -> str:
    progress = tracker.last_progress
    if progress is None:
        return "building…"
    return f"building — {progress.phase} {progress.fraction:.0%}"


def _short_model_name(name: str) -> str:
    """A model given as a local folder is shown by its folder name (the full path is in the tooltip)."""
    if "/" in name or "\\" in name:
        path = Path(name)
        if path.is_absolute() or name.startswith((".", "~")):
            return path.name or name
    return name


def _local_time(moment) -> str:
    """Catalog times are naive UTC; show them in local time."""
    if moment is None:
        return ""
    return moment.replace(tzinfo=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M")

"""The "Compare" page: one prompt, up to four methods, generated side by side, one row per step.

The page knows nothing of catalogs or datastores. The main window gives it `make_generators`,
which the page calls inside its worker job (so opening a datastore or making a memory retrofit
never blocks the UI, and a memory made there belongs to the job's thread) and which returns one
`StepGenerator` per chosen method. Their methods are made for this run: the page closes them
(`Method.close`: a memory gives the model its own layer back) when the run ends. Records arrive
one by one and are appended to the table (a row is inserted only when the first method reaches a
new step), so a token costs the same with 5 or 500 rows before it.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ...core.generation.step_generator import StepGenerator
from ...core.methods import UnknownMethod, get, labels
from ...core.records import TokenRecord
from ..widgets.continuation_texts import ContinuationTexts
from ...core.generation.side_by_side import (
    MAX_METHODS,
    SideBySideColumn,
    run_side_by_side,
    to_csv,
    to_json,
)
from ...core.methods.knnlm import KnnLmMethod
from ...core.methods.lm_alone import LM_ALONE
from .. import colours
from ..settings import settings_file
from ..widgets.token_strip import format_prob, record_tooltip, visible_token
from ..workers import Job, JobControl, run_job

# (methods, prompt, max_new_tokens, control) -> {method: generator}. Returning (generators, memory),
# as before methods were objects, still works: `memory` (a MemorizingRetrofit or None) is adopted by
# the job's thread, and given back to the model by closing the lane whose method holds it.
MakeGenerators = Callable[[list[str], str, int, JobControl], dict[str, StepGenerator]]

DEFAULT_METHODS = (LM_ALONE, KnnLmMethod.name)  # ticked on a first launch: the LM alone beside kNN-LM


def method_tip(method: str) -> str | None:
    """The registered method's label and one-line summary (None for one that is not installed)."""
    try:
        cls = get(method)
    except UnknownMethod:
        return None
    return f"{cls.label}: {cls.summary}" if cls.summary else cls.label

# Roles as plain ints: comparing a view's int role with a PySide enum costs microseconds per call.
_DISPLAY, _TOOLTIP = int(Qt.DisplayRole.value), int(Qt.ToolTipRole.value)
_BACKGROUND, _FOREGROUND = int(Qt.BackgroundRole.value), int(Qt.ForegroundRole.value)


class SideBySideTableModel(QAbstractTableModel):
    """Rows are steps, columns are methods; a cell is one record (empty once its column ended)."""

    RECORD_ROLE = int(Qt.UserRole.value) + 1

    def __init__(self, parent=None):
        super().__init__(parent)
        self._columns: list[SideBySideColumn] = []
        self._cells: list[list[tuple[str, QBrush, QBrush]]] = []  # per column: text, background, ink
        self._rows = 0

    def start(self, methods: list[str]) -> None:
        self.beginResetModel()
        self._columns = [SideBySideColumn.for_method(m) for m in methods]
        self._cells = [[] for _ in methods]
        self._rows = 0
        self.endResetModel()

    def append(self, method: str, record: TokenRecord) -> None:
        column = self.methods().index(method)
        row = len(self._columns[column].records)
        # Formatted once here: a view asks for every role of every visible cell on each paint.
        fill = colours.PROB_MAP.colour(record.chosen_prob_final)
        cell = (f"{visible_token(record.token)}   {format_prob(record.chosen_prob_final)}", QBrush(fill),
                QBrush(colours.text_colour_on(fill)))
        if row >= self._rows:
            self.beginInsertRows(QModelIndex(), row, row)
            self._store(column, record, cell)
            self._rows = row + 1
            self.endInsertRows()
        else:
            self._store(column, record, cell)
            index = self.index(row, column)
            self.dataChanged.emit(index, index)

    def _store(self, column: int, record: TokenRecord, cell: tuple[str, QBrush, QBrush]) -> None:
        self._columns[column].records.append(record)
        self._cells[column].append(cell)

    def methods(self) -> list[str]:
        return [c.method for c in self._columns]

    def columns(self) -> list[SideBySideColumn]:
        return [SideBySideColumn(c.method, c.label, list(c.records)) for c in self._columns]

    def record(self, index: QModelIndex) -> TokenRecord | None:
        if not index.isValid() or not 0 <= index.column() < len(self._columns):
            return None
        records = self._columns[index.column()].records
        return records[index.row()] if index.row() < len(records) else None

    def rowCount(self, parent: QModelIndex | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else self._rows

    def columnCount(self, parent: QModelIndex | None = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self._columns)

    def headerData(self, section, orientation, role=_DISPLAY):
        if orientation == Qt.Horizontal and 0 <= section < len(self._columns):
            method = self._columns[section].method
            if role == _DISPLAY:
                return self._columns[section].label
            if role == _TOOLTIP:
                return method_tip(method)
            return None
        if orientation == Qt.Vertical and role == _DISPLAY:
            for column in self._columns:  # the step number, from the first column that reached this row
                if section < len(column.records):
                    return str(column.records[section].step)
        return None

    def data(self, index, role=_DISPLAY):
        column, row = index.column(), index.row()
        if not 0 <= column < len(self._cells) or row >= len(self._cells[column]):
            return None
        if role == _DISPLAY:
            return self._cells[column][row][0]
        if role == _BACKGROUND:
            return self._cells[column][row][1]
        if role == _FOREGROUND:
            return self._cells[column][row][2]
        if role == _TOOLTIP:  # built on hover only
            return f"<b>{self._columns[column].label}</b>" + record_tooltip(self._columns[column].records[row])
        if role == self.RECORD_ROLE:
            return self._columns[column].records[row]
        return None


class SideBySidePage(QWidget):
    record_clicked = Signal(str, object)  # method, TokenRecord
    error = Signal(str)  # one-line reason
    run_ended = Signal()  # after a run finished, stopped or failed

    def __init__(self, make_generators: MakeGenerators, parent: QWidget | None = None):
        super().__init__(parent)
        self._make_generators = make_generators
        self._settings = settings_file()
        self.job: Job | None = None
        self.prompt_of_run = ""
        self._max_tokens = 0
        self._make_widgets()
        self._restore()
        # Connected after restoring, so restoring does not save a half-restored state.
        for box in self.method_boxes.values():
            box.toggled.connect(self._save)
        self.max_tokens.valueChanged.connect(self._save)
        self._set_running(False)

    # ---- layout ----------------------------------------------------------------------------
    def _make_widgets(self) -> None:
        self.prompt = QPlainTextEdit()
        self.prompt.setPlaceholderText("Type a prompt…")
        self.prompt.setToolTip("The text every method continues from")
        self.prompt.setMaximumHeight(64)

        self.method_boxes: dict[str, QCheckBox] = {}
        options = QHBoxLayout()
        for method, label in labels().items():
            box = QCheckBox(label)
            box.setToolTip(method_tip(method))
            box.toggled.connect(self._methods_changed)
            self.method_boxes[method] = box
            options.addWidget(box)
        options.addSpacing(12)
        options.addWidget(QLabel("max tokens"))
        self.max_tokens = QSpinBox(minimum=1, maximum=2048, value=20)
        self.max_tokens.setToolTip("How many tokens each method generates (greedy)")
        options.addWidget(self.max_tokens)
        options.addStretch(1)

        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Generate with every ticked method, step by step (Ctrl+Return)")
        self.run_button.clicked.connect(self.run)
        # Window-wide like the main controls' keys; Qt ignores the shortcuts of hidden widgets, so
        # with the pages in tabs only the visible page's Ctrl+Return is live.
        QShortcut(QKeySequence("Ctrl+Return"), self, activated=self.run_button.click,
                  context=Qt.ShortcutContext.WindowShortcut)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the running comparison")
        self.stop_button.clicked.connect(self.stop)
        self.export_csv_button = QPushButton("Export CSV…")
        self.export_csv_button.setToolTip("One line per step: each method's token, p_final and p_LM")
        self.export_csv_button.clicked.connect(lambda: self.export_csv())
        self.export_json_button = QPushButton("Export JSON…")
        self.export_json_button.setToolTip("The prompt, the methods and one row per step")
        self.export_json_button.clicked.connect(lambda: self.export_json())
        self.status = QLabel("")
        self.status.setWordWrap(False)
        buttons = QHBoxLayout()
        for button in (self.run_button, self.stop_button):
            buttons.addWidget(button)
        buttons.addWidget(self.status, 1)
        buttons.addWidget(self.export_csv_button)
        buttons.addWidget(self.export_json_button)

        self.table_model = SideBySideTableModel(self)
        self.table = QTableView()
        self.table.setModel(self.table_model)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setWordWrap(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        self.table.clicked.connect(self._cell_clicked)

        self.texts = ContinuationTexts()
        results = QSplitter(Qt.Orientation.Vertical)  # drag to give the text or the table more room
        results.addWidget(self.texts)
        results.addWidget(self.table)
        results.setStretchFactor(0, 1)
        results.setStretchFactor(1, 3)
        results.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.addWidget(self.prompt)
        layout.addLayout(options)
        layout.addLayout(buttons)
        layout.addWidget(results, 1)

    # ---- settings --------------------------------------------------------------------------
    def _restore(self) -> None:
        try:
            chosen = json.loads(str(self._settings.value("compare/methods", json.dumps(DEFAULT_METHODS))))
        except ValueError:
            chosen = list(DEFAULT_METHODS)
        chosen = [m for m in chosen if m in self.method_boxes] or list(DEFAULT_METHODS)
        for method, box in self.method_boxes.items():
            box.setChecked(method in chosen)
        try:
            self.max_tokens.setValue(int(self._settings.value("compare/max_new_tokens", self.max_tokens.value())))
        except (TypeError, ValueError):
            pass

    def _save(self) -> None:
        self._settings.setValue("compare/methods", json.dumps(self.methods()))
        self._settings.setValue("compare/max_new_tokens", self.max_tokens.value())

    # ---- state -----------------------------------------------------------------------------
    def methods(self) -> list[str]:
        """The ticked methods, in the table's column order."""
        return [m for m, box in self.method_boxes.items() if box.isChecked()]

    def set_methods(self, methods: list[str]) -> None:
        for method, box in self.method_boxes.items():
            box.setChecked(method in methods)

    def columns(self) -> list[SideBySideColumn]:
        return self.table_model.columns()

    def is_running(self) -> bool:
        return self.job is not None and self.job.is_running()

    def _methods_changed(self) -> None:
        self.run_button.setEnabled(not self.is_running() and bool(self.methods()))

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running and bool(self.methods()))
        self.stop_button.setEnabled(running)
        has_rows = self.table_model.rowCount() > 0
        self.export_csv_button.setEnabled(not running and has_rows)
        self.export_json_button.setEnabled(not running and has_rows)
        for box in self.method_boxes.values():
            box.setEnabled(not running)

    def _say(self, text: str, is_error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color: #c92a2a" if is_error else "")
        self.status.setToolTip(text)

    # ---- running ---------------------------------------------------------------------------
    def run(self) -> None:
        if self.is_running():
            return
        methods = self.methods()
        if not methods:
            self._fail("Choose at least one method")
            return
        if len(methods) > MAX_METHODS:
            self._fail(f"Choose at most {MAX_METHODS} methods: their columns share the screen")
            return
        prompt, max_tokens = self.prompt.toPlainText(), self.max_tokens.value()
        if not prompt.strip():
            self._fail("Type a prompt first: the columns continue it")
            return
        self.prompt_of_run = prompt
        self._max_tokens = max_tokens
        self.table_model.start(methods)
        self.texts.start([(m, labels().get(m, m)) for m in methods], prompt)
        make = self._make_generators

        def body(control: JobControl) -> int:
            made = make(list(methods), prompt, max_tokens, control)
            generators, memory = made if isinstance(made, tuple) else (made, None)
            try:
                if set(generators) != set(methods):
                    raise ValueError(f"asked for {', '.join(methods)} but got generators for {', '.join(generators)}")
                if memory is not None:
                    memory.adopt()  # the memory is used by this thread's forward passes only
                ordered = {m: generators[m] for m in methods}  # the table's column order
                steps = 0
                for item in run_side_by_side(ordered, should_stop=control.should_stop):
                    control.emit(item)
                    steps += 1
                control.checkpoint()  # raises Cancelled if Stop ended the loop
                return steps
            finally:
                for generator in generators.values():
                    generator.method.close()  # made for this run: the model gets its own layers back

        self._say(f"Preparing {', '.join(labels().get(m, m) for m in methods)}…")
        # No Qt parent: a page destroyed mid-run must not destroy a running thread (run_job keeps
        # the job alive until its thread ends); the connections are bound methods, cut with the page.
        self.job = run_job(body, item=self._record_arrived, finished=self._finished, failed=self._fail,
                           cancelled=self._cancelled, done=self._done)
        self._set_running(True)

    def stop(self) -> None:
        if self.is_running():
            self.job.stop()
            self._say("Stopping…")

    def shutdown(self, ms: int = 10_000) -> None:
        """Stop a running comparison and wait for its thread (the main window's closeEvent)."""
        if self.job is not None:
            self.job.stop()
            self.job.wait(ms)

    def _record_arrived(self, item: tuple[str, TokenRecord]) -> None:
        method, record = item
        bar = self.table.verticalScrollBar()
        following = bar.value() >= bar.maximum()
        self.table_model.append(method, record)
        self.texts.append(method, record.token)
        if following:  # keep the newest row in view unless the user scrolled up
            self.table.scrollToBottom()
        self._say(f"Step {self.table_model.rowCount()} of {self._max_tokens}…")

    def _finished(self, _steps: int) -> None:
        self._say(f"Done: {self.table_model.rowCount()} steps")

    def _cancelled(self) -> None:
        self._say(f"Stopped after {self.table_model.rowCount()} steps")

    def _fail(self, reason: str) -> None:
        self._say(reason, is_error=True)
        self.error.emit(reason)

    def _done(self) -> None:
        self._set_running(False)
        self.run_ended.emit()

    def _cell_clicked(self, index: QModelIndex) -> None:
        record = self.table_model.record(index)
        if record is not None:
            self.record_clicked.emit(self.table_model.methods()[index.column()], record)

    # ---- export ----------------------------------------------------------------------------
    def _export_target(self, path: Path | str | None, title: str, suffix: str) -> Path | None:
        if self.table_model.rowCount() == 0:
            self._fail("Nothing to export yet: run first")
            return None
        if path:
            return Path(path)
        chosen, _ = QFileDialog.getSaveFileName(self, title, f"side-by-side{suffix}", f"*{suffix}")
        return Path(chosen) if chosen else None

    def export_csv(self, path: Path | str | None = None) -> Path | None:
        """Save to `path`, or to a file chosen in a dialog; the path saved, or None."""
        target = self._export_target(path, "Export comparison as CSV", ".csv")
        if target is None:
            return None
        try:
            to_csv(self.columns(), target)
        except OSError as exc:
            self._fail(f"Could not save {target}: {exc.strerror or exc}")
            return None
        self._say(f"Saved {target}")
        return target

    def export_json(self, path: Path | str | None = None) -> Path | None:
        target = self._export_target(path, "Export comparison as JSON", ".json")
        if target is None:
            return None
        text = json.dumps(to_json(self.columns(), self.prompt_of_run), ensure_ascii=False, indent=1, allow_nan=False)
        try:
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            self._fail(f"Could not save {target}: {exc.strerror or exc}")
            return None
        self._say(f"Saved {target}")
        return target

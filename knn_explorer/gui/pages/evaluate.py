"""The Evaluate page: perplexity of the registered methods on a held-out text, sweeps, and the kept runs.

Left: what to run (held-out text, methods or a swept parameter, windows), with progress, ETA and
cancel. Right: the kept runs (from the catalog; select two to overlay them), the plots, and the
tokens the chosen method helped and hurt most — a click opens one in the token inspector.
The page never computes a perplexity itself: the core does, in a job.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (QAbstractItemView, QButtonGroup, QCheckBox, QComboBox, QFileDialog, QFormLayout,
                               QGroupBox, QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QProgressBar,
                               QPushButton, QRadioButton, QSpinBox, QSplitter, QVBoxLayout, QWidget)

from ...core.evaluation import export as evaluation_export
from ...core.datastore.catalog import Catalog, CatalogError, EvaluationRow
from ...core.datastore.documents import path_text
from ...core.evaluation.comparison import Comparison, compare, most_changed, token_record
from ...core.evaluation.fit import describe_fit, fit_heldout, fit_result_of, remember_fit, unkept_fit
from ...core.evaluation.perplexity import read_heldout
from ...core.evaluation.store import forget, keep_comparison, load_comparison
from ...core.home import DEMO_DOCS_DIR
from ...core.mechanisms.knnlm import KnnLmSettings
from ...core.methods import Method, MethodError, UnknownMethod, get, labels
from ...core.methods.knnlm import KnnLmMethod
from ...core.methods.lm_alone import LM_ALONE
from ...core.methods.sweep_names import find_sweep, registered_sweeps
from .. import workers
from ..widgets.evaluation_plots import EvaluationPlots, FitHeatmap, param_label, ShownRun, method_perplexities, run_label
from ..export_report import report_export
from ..widgets.evaluation_figure import write_figure
from ..widgets.path_field import PathField
from ..widgets.results_table import ResultsTable
from ..runs import Run
from ..settings import settings_file
from ..widgets.token_changes import TokenChangesTable

@dataclass
class MethodObjects:
    """What the main window opens for a run (inside the job's thread): one `Method` per name asked
    for, and the datastore opened for those that need one. `close()` when the job ends (a method
    that changes the model, the Memorizing Transformer's memory, gives the model back)."""

    methods: dict[str, Method] = field(default_factory=dict)
    datastore: object | None = None

    def close(self) -> None:
        for method in self.methods.values():
            method.close()


class EvaluatePage(QWidget):
    inspect_requested = Signal(object)  # a Run holding one held-out token's record
    error = Signal(str)
    fitted = Signal(object)  # a FittedSettingsRow: kNN-LM's λ and T just fitted (the main window applies them)

    def __init__(self, catalog: Catalog, parent=None):
        super().__init__(parent)
        self.catalog = catalog
        self.model = None  # set by the main window
        self.datastore_name: str | None = None
        # methods → MethodObjects, called inside jobs; set by the main window
        self.open_methods: Callable[[list[str]], MethodObjects] | None = None
        self.knn_settings: Callable[[], KnnLmSettings] = KnnLmSettings
        self.job: workers.Job | None = None
        self.inspect_job: workers.Job | None = None
        self._comparisons: dict[int, Comparison] = {}  # row id → per-token details, loaded once
        self._tables_run: ShownRun | None = None  # the run whose tokens the helped/hurt tables list
        self._running: EvaluationRow | None = None  # the comparison running now, as its partial results show
        self._partial_shown = False  # whether they have taken the view
        self._partial: ShownRun | None = None  # the methods done so far
        self._settings = settings_file()
        self._make_widgets()
        self._restore()

    # ---- layout ----------------------------------------------------------------------------
    def _make_widgets(self) -> None:
        self.text_field = PathField("Held-out text", "a document or a folder of documents",
                                    "Text the model has not been built from: perplexity is measured on it")
        self.datastore_label = QLabel("Datastore: none")
        self.knn_label = QLabel()
        self.knn_label.setWordWrap(True)
        self.knn_label.setToolTip("kNN-LM's k, λ, T and distances come from the generation controls (Explore page)")

        self.compare_mode = QRadioButton("Compare methods")
        self.sweep_mode = QRadioButton("Sweep a parameter")
        self.compare_mode.setChecked(True)
        modes = QButtonGroup(self)
        modes.addButton(self.compare_mode)
        modes.addButton(self.sweep_mode)
        self.compare_mode.toggled.connect(self._mode_changed)

        self.method_boxes: dict[str, QCheckBox] = {}
        methods_box = QGroupBox("Methods (same tokens, same windows)")
        methods_layout = QVBoxLayout(methods_box)
        for method, label in labels().items():  # every registered method, a plug-in's too
            box = QCheckBox(label)
            box.setToolTip(get(method).summary)
            box.setChecked(True)
            box.setEnabled(method != LM_ALONE)  # the LM alone is every comparison's reference
            self.method_boxes[method] = box
            methods_layout.addWidget(box)

        self.param_combo = QComboBox()
        for param in registered_sweeps():  # every registered method's sweeps, by the name runs keep them under
            self.param_combo.addItem(param_label(param), param)
        self.param_combo.setToolTip("The settings each method sweeps (kNN-LM's λ, k, T, datastore size or "
                                    "distances; the Memorizing Transformer's memory size; …)")
        self.values_edit = QLineEdit()
        self.values_edit.setToolTip("Values to try, separated by commas")
        self.param_combo.currentIndexChanged.connect(self._param_changed)
        sweep_box = QGroupBox("Sweep")
        sweep_form = QFormLayout(sweep_box)
        sweep_form.addRow("Parameter", self.param_combo)
        sweep_form.addRow("Values", self.values_edit)
        self.sweep_box = sweep_box
        self.methods_box = methods_box

        self.context_spin = QSpinBox(minimum=2, maximum=8192, value=256)
        self.context_spin.setToolTip("Tokens per evaluation window")
        self.stride_spin = QSpinBox(minimum=1, maximum=8192, value=128)
        self.stride_spin.setToolTip("Step between windows: each token is scored once, with at least "
                                    "window − stride tokens of context")
        windows = QHBoxLayout()
        windows.addWidget(QLabel("Window"))
        windows.addWidget(self.context_spin)
        windows.addWidget(QLabel("stride"))
        windows.addWidget(self.stride_spin)

        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Run the evaluation (Ctrl+Return)")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the evaluation (Esc); nothing is kept")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.fit_button = QPushButton("Fit λ and T")
        self.fit_button.setToolTip("Find kNN-LM's λ and T with the lowest perplexity on the held-out text (a grid "
                                   "from one forward pass and one retrieval at the panel's k), apply them, and "
                                   "remember them for the datastore")
        self.fit_button.clicked.connect(lambda: self.fit())
        self.fit_heatmap = FitHeatmap()  # under the button: the chosen datastore's latest fit, if it has one
        self.fit_heatmap.hide()
        self._fit_shown: tuple[str | None, int | None] = (None, None)  # (datastore, fit id) drawn
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.status = QLabel("")
        self.status.setWordWrap(True)

        left = QWidget()
        form = QVBoxLayout(left)
        form.addWidget(QLabel("Held-out text"))
        form.addWidget(self.text_field)
        form.addWidget(self.datastore_label)
        form.addWidget(self.compare_mode)
        form.addWidget(self.sweep_mode)
        form.addWidget(methods_box)
        form.addWidget(sweep_box)
        form.addWidget(self.knn_label)
        form.addLayout(windows)
        form.addLayout(buttons)
        form.addWidget(self.fit_button)
        form.addWidget(self.progress)
        form.addWidget(self.status)
        form.addWidget(self.fit_heatmap)
        form.addStretch(1)
        left.setMinimumWidth(270)
        left.setMaximumWidth(380)

        self.runs_list = QListWidget()
        self.runs_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.runs_list.setToolTip("Every evaluation and sweep you ran (CLI too). Select one to show it, "
                                  "Ctrl+click a second to overlay them; Delete forgets the selected runs.")
        self.runs_list.itemSelectionChanged.connect(self._selection_changed)
        self.export_png_button = QPushButton("Export PNG…")
        self.export_csv_button = QPushButton("Export CSV…")
        self.export_json_button = QPushButton("Export JSON…")
        self.export_png_button.clicked.connect(lambda: self.export_png())
        self.export_csv_button.clicked.connect(lambda: self.export_csv())
        self.export_json_button.clicked.connect(lambda: self.export_json())
        self.export_png_button.setToolTip("The plots as one PNG (1600 × 900), headed by what the runs were run with")
        self.export_csv_button.setToolTip("The selected runs in one file (a 'run' column): a sweep's points or a "
                                          "comparison's per-token log p, each row with the model, datastore and settings")
        self.export_json_button.setToolTip("The selected runs' settings and results")
        exports = QHBoxLayout()
        exports.addWidget(QLabel("Kept runs"))
        exports.addStretch(1)
        for button in (self.export_png_button, self.export_csv_button, self.export_json_button):
            exports.addWidget(button)

        self.plots = EvaluationPlots()
        self.gain_method = QComboBox()
        self.gain_method.setToolTip("Whose gains the histogram and the token lists show")
        self.gain_method.currentIndexChanged.connect(self._gain_method_changed)
        self.helped = TokenChangesTable("Helped most")
        self.hurt = TokenChangesTable("Hurt most")
        self.helped.token_chosen.connect(self.inspect_token)
        self.hurt.token_chosen.connect(self.inspect_token)
        tables = QWidget()
        tables_layout = QHBoxLayout(tables)
        tables_layout.setContentsMargins(0, 0, 0, 0)
        for title, table in (("Helped most", self.helped), ("Hurt most", self.hurt)):
            column = QVBoxLayout()
            column.addWidget(QLabel(f"<b>{title}</b> (click to inspect)"))
            column.addWidget(table)
            tables_layout.addLayout(column)
        method_row = QHBoxLayout()
        method_row.addWidget(QLabel("Gains of"))
        method_row.addWidget(self.gain_method)
        method_row.addStretch(1)

        self.forget_button = QPushButton("Forget")
        self.forget_button.setToolTip("Delete the selected runs from the catalog (Delete)")
        self.forget_button.clicked.connect(self.forget_selected)
        exports.insertWidget(1, self.forget_button)
        self.results_table = ResultsTable()
        lists = QSplitter(Qt.Orientation.Horizontal)
        lists.addWidget(self.runs_list)
        lists.addWidget(self.results_table)
        lists.setSizes([1, 1])  # halves: the table needs room for two runs side by side
        runs_area = QWidget()
        runs_layout = QVBoxLayout(runs_area)
        runs_layout.setContentsMargins(0, 0, 0, 0)
        runs_layout.addLayout(exports)
        runs_layout.addWidget(lists)
        lower = QWidget()
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        lower_layout.addLayout(method_row)
        lower_layout.addWidget(tables)
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(runs_area)
        right.addWidget(self.plots)
        right.addWidget(lower)
        self.token_lists = lower  # shown only for a comparison: a sweep has no per-token gains
        right.setSizes([190, 380, 260])

        layout = QHBoxLayout(self)
        layout.addWidget(left)
        layout.addWidget(right, 1)

        QShortcut(QKeySequence("Ctrl+Return"), self, activated=self.run)
        QShortcut(QKeySequence("Escape"), self, activated=self.cancel)
        QShortcut(QKeySequence.StandardKey.Delete, self.runs_list, activated=self.forget_selected)
        self._mode_changed()

    def _restore(self) -> None:
        self.text_field.setText(str(self._settings.value("evaluate/text", str(DEMO_DOCS_DIR.parent / "heldout"))))
        param = str(self._settings.value("evaluate/param", "lambda"))
        self.param_combo.setCurrentIndex(max(0, self.param_combo.findData(param)))
        self._param_changed()
        self.context_spin.setValue(int(self._settings.value("evaluate/context", 256)))
        self.stride_spin.setValue(int(self._settings.value("evaluate/stride", 128)))
        unticked = str(self._settings.value("evaluate/unticked", "")).split(",")
        for method, box in self.method_boxes.items():
            box.setChecked(method == LM_ALONE or method not in unticked)

    def _remember(self) -> None:
        self._settings.setValue("evaluate/text", self.text_field.text())
        self._settings.setValue("evaluate/param", self.param_combo.currentData())
        self._settings.setValue("evaluate/context", self.context_spin.value())
        self._settings.setValue("evaluate/stride", self.stride_spin.value())
        self._settings.setValue("evaluate/unticked", ",".join(m for m, b in self.method_boxes.items()
                                                              if not b.isChecked()))

    def _mode_changed(self) -> None:
        comparing = self.compare_mode.isChecked()
        self.methods_box.setVisible(comparing)
        self.sweep_box.setVisible(not comparing)

    def _param_changed(self) -> None:
        param = self.param_combo.currentData()
        if param is None:  # no method offers a sweep
            return
        method, setting = find_sweep(param)
        values = get(method).sweeps[setting].values
        self.values_edit.setText(", ".join(f"{v:g}" for v in values))

    def set_context(self, model, datastore_name: str | None) -> None:
        """The main window's loaded model and chosen datastore."""
        self.model, self.datastore_name = model, datastore_name
        self.datastore_label.setText(f"Datastore: {datastore_name or f'none ({need_datastore(labels())} one)'}")
        s = self.knn_settings()
        self.knn_label.setText(f"kNN-LM: k {s.k} · λ {s.lambda_:g} · T {s.temperature:g} · {s.distance} distances")
        self._show_datastore_fit()

    def _show_datastore_fit(self) -> None:
        """The heatmap of the chosen datastore's latest fit (hidden when it has none)."""
        try:
            row = self.catalog.fitted(self.datastore_name) if self.datastore_name else None
        except CatalogError:
            row = None
        if (self.datastore_name, row.id if row is not None else None) != self._fit_shown:
            self.show_fit(row)

    def show_fit(self, row) -> None:
        """Draw a kept fit (a `FittedSettingsRow`) as the λ × T heatmap; None hides it."""
        self._fit_shown = (self.datastore_name, row.id if row is not None else None)
        self.fit_heatmap.setVisible(row is not None)
        if row is not None:
            self.fit_heatmap.show_fit(fit_result_of(row), f"'{row.datastore}' on {Path(row.heldout).name}")


    # ---- running ---------------------------------------------------------------------------
    def chosen_methods(self) -> list[str]:
        return [m for m, box in self.method_boxes.items() if box.isChecked()]

    def _check(self) -> tuple[str, object] | None:
        """(mode, methods or (param, values)), or None after saying what is missing."""
        if self.model is None:
            return self._refuse("No model is loaded yet")
        if self.job is not None and self.job.is_running():
            return None
        if not self.text_field.text().strip():
            return self._refuse("Choose a held-out text (a document or a folder)")
        if self.compare_mode.isChecked():
            methods = self.chosen_methods()
            if any(get(m).needs_datastore for m in methods) and not self.datastore_name:
                return self._refuse(f"{need_datastore(methods)} a datastore: double-click one in the library")
            return "compare", methods
        param = self.param_combo.currentData()
        try:
            values = [float(v) for v in self.values_edit.text().replace(";", ",").split(",") if v.strip()]
        except ValueError:
            return self._refuse(f"Sweep values must be numbers separated by commas, not {self.values_edit.text()!r}")
        if param is None:
            return self._refuse("No method offers a sweep")
        name, setting = find_sweep(param)
        try:  # the method judges the values (a datastore's size, once open, in the job)
            method = get(name)
            method.check_sweep(setting, values)
        except (UnknownMethod, MethodError) as exc:
            return self._refuse(str(exc))
        if method.needs_datastore and not self.datastore_name:
            return self._refuse(f"{method.label} needs a datastore: double-click one in the library")
        return "sweep", (param, values)

    def fit(self) -> workers.Job | None:
        """Fit kNN-LM's λ and T on the held-out text (the panel's k and distances), keep the fit for the
        datastore, draw its heatmap and hand it to the main window (`fitted`) to apply."""
        if self.model is None:
            return self._refuse("No model is loaded yet")
        if self.job is not None and self.job.is_running():
            return None
        if not self.datastore_name:
            return self._refuse("Fitting λ and T needs a datastore: double-click one in the library")
        if not self.text_field.text().strip():
            return self._refuse("Choose a held-out text (a document or a folder)")
        self._remember()
        path, model, datastore = Path(self.text_field.text().strip()), self.model, self.datastore_name
        context, stride, open_methods, catalog = self.context_spin.value(), self.stride_spin.value(), \
            self.open_methods, self.catalog

        def body(control: workers.JobControl):
            documents = read_heldout(path)
            objects = open_methods([KnnLmMethod.name])
            try:
                settings = objects.methods[KnnLmMethod.name].settings  # its k and distances; λ and T are fitted
                result = fit_heldout(model, objects.datastore, documents, settings=settings, context_length=context,
                                     stride=stride, on_progress=control.report, should_stop=control.should_stop)
            finally:
                objects.close()
            heldout = path_text(path.resolve())
            try:  # results before records: a catalog that refuses the fit costs the record, not the fit
                return remember_fit(catalog, datastore, model.name, result, heldout), ""
            except CatalogError as exc:
                return unkept_fit(datastore, model.name, result, heldout), f" (not kept: {exc})"

        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.progress.show()
        self.status.setText("")
        self.run_button.setEnabled(False)
        self.fit_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.job = workers.run_job(body, parent=self, progress=self._progressed, finished=self._fit_finished,
                                   failed=self._failed, cancelled=lambda: self.status.setText("Cancelled; nothing kept"),
                                   done=self._done)
        return self.job

    def _fit_finished(self, result) -> None:
        row, unkept = result
        self.show_fit(row)
        self.fitted.emit(row)  # the kNN-LM panel takes the pair
        self.set_context(self.model, self.datastore_name)  # the kNN-LM line shows it
        self.status.setText(f"Applied {describe_fit(row)}{unkept}")

    def _refuse(self, reason: str) -> None:
        self.status.setText(reason)
        self.error.emit(reason)
        return None

    def run(self) -> workers.Job | None:
        checked = self._check()
        if checked is None:
            return None
        mode, what = checked
        self._remember()
        path, model, datastore = Path(self.text_field.text().strip()), self.model, self.datastore_name
        context, stride = self.context_spin.value(), self.stride_spin.value()
        open_methods, knn_settings = self.open_methods, self.knn_settings()

        def body(control: workers.JobControl):
            documents = read_heldout(path)  # the memory holds one document at a time
            parameters = {"text": str(path), "context": context, "stride": stride}
            if mode == "compare":
                objects = open_methods(what)
                try:
                    described = {name: method.describe() for name, method in objects.methods.items()}
                    c = compare(model, documents, list(objects.methods.values()), context_length=context,
                                stride=stride, on_progress=control.report, should_stop=control.should_stop,
                                on_method=lambda name, partial: control.emit((name, partial)))  # row by row
                    measured = {name: m.results() for name, m in objects.methods.items() if m.results()}
                finally:
                    objects.close()
                # Each method's own settings are kept with the run; kNN-LM's also flat, as runs always had them.
                # What a method measured besides perplexity (SPALM's gate) too.
                row_id = keep_comparison(self.catalog, c, model.name, datastore if objects.datastore else None,
                                         {**parameters, "methods": what, **knn_settings.describe(),
                                          "settings": described, "method_results": measured})
                return row_id, c, c.tokens, ""
            param, values = what
            name, setting = find_sweep(param)  # the method sweeps itself, built as the panels set it
            objects = open_methods([name])
            try:
                result = objects.methods[name].sweep(documents, setting, values, context, stride,
                                                     on_progress=control.report, should_stop=control.should_stop)
            finally:
                objects.close()
            where = datastore if objects.datastore else None
            out = {**result.to_json(), "model": model.name, "text": str(path)}
            row_id = self.catalog.record_evaluation("sweep", model.name, where,
                                                    {**parameters, "param": param, "values": values}, out)
            return row_id, None, result.tokens, _speeds(result.to_json())

        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.progress.show()
        self.status.setText("")
        self.run_button.setEnabled(False)
        self.fit_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        needs = mode == "compare" and any(get(m).needs_datastore for m in what)
        self._running = EvaluationRow(kind="compare", model_name=model.name, datastore=datastore if needs else None,
                                      parameters={"text": str(path), "context": context, "stride": stride,
                                                  "methods": what if mode == "compare" else []},
                                      results={})  # what a comparison's partial results are shown as
        self._partial_shown = False
        self.job = workers.run_job(body, parent=self, progress=self._progressed, finished=self._finished,
                                   failed=self._failed, cancelled=lambda: self.status.setText("Cancelled; nothing kept"),
                                   done=self._done, item=self._method_done)
        return self.job

    def _method_done(self, item) -> None:
        """One method of the running comparison is done: show those done so far (the results table
        fills row by row, the plots grow a bar), unless a kept run is picked meanwhile."""
        name, partial = item
        if not self._partial_shown:  # its first result takes the view from the kept runs
            self._partial_shown = True
            self.runs_list.clearSelection()
        if self.runs_list.selectedItems():
            return
        row = self._running
        row.results = partial.to_json()
        self._partial = ShownRun(row, partial, title="running")
        self._offer_gain_methods([self._partial])
        self._show([self._partial])
        self.status.setText(f"{labels().get(name, name)} done: perplexity {partial.ppl(name):.2f}; "
                            f"{len(partial.methods)} of {len(row.parameters['methods'])} methods so far")

    def cancel(self) -> None:
        if self.job is not None and self.job.is_running():
            self.job.stop()

    def shutdown(self, ms: int = 10_000) -> None:
        """Stop the running evaluation and wait for its threads (the main window is closing)."""
        for job in (self.job, self.inspect_job):
            if job is not None:
                job.stop()
                job.wait(ms)

    def _progressed(self, progress) -> None:
        self.progress.setMaximum(max(1, progress.total))
        self.progress.setValue(progress.done)
        self.progress.setFormat(progress.describe())

    def _finished(self, result) -> None:
        row_id, comparison, tokens, speeds = result
        if comparison is not None:
            self._comparisons[row_id] = comparison
        self.refresh_runs(select=[row_id])
        self.status.setText(f"Kept as run #{row_id} · {tokens:,} tokens{speeds}")

    def _failed(self, reason: str) -> None:
        self.status.setText(reason)
        self.error.emit(reason)

    def _done(self) -> None:
        self._partial = None
        if self._partial_shown and not self.runs_list.selectedItems():
            self._selection_changed()  # a cancelled or failed comparison's partial results go
        self._partial_shown = False
        self.progress.hide()
        self.run_button.setEnabled(True)
        self.fit_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    # ---- kept runs -------------------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        """Read the kept runs when the page is shown, not at start-up: and runs kept by the CLI
        meanwhile appear, with the selection kept."""
        super().showEvent(event)
        self.refresh_runs(select=[row.id for row in self.selected_rows()])

    def refresh_runs(self, select: list[int] | None = None) -> None:
        self.runs_list.blockSignals(True)
        self.runs_list.clear()
        for row in self.catalog.evaluations():
            item = QListWidgetItem(run_label(row))
            item.setData(Qt.UserRole, row)
            item.setToolTip(_summary(row))
            self.runs_list.addItem(item)
            if select and row.id in select:
                item.setSelected(True)
        self.runs_list.blockSignals(False)
        self._selection_changed()

    def selected_rows(self) -> list[EvaluationRow]:
        rows = [item.data(Qt.UserRole) for item in self.runs_list.selectedItems()]
        return sorted(rows, key=lambda r: r.id)[-2:]  # overlay at most two: the latest picked

    def shown_runs(self) -> list[ShownRun]:
        return [ShownRun(row, self._comparison(row)) for row in self.selected_rows()]

    def _comparison(self, row: EvaluationRow) -> Comparison | None:
        if row.kind != "compare":
            return None
        if row.id not in self._comparisons:
            loaded = load_comparison(self.catalog, row)
            if loaded is None:
                return None
            self._comparisons[row.id] = loaded
        return self._comparisons[row.id]

    def _selection_changed(self) -> None:
        runs = self.shown_runs()
        self._offer_gain_methods(runs)
        self._show(runs)
        for button in (self.export_png_button, self.export_csv_button, self.export_json_button, self.forget_button):
            button.setEnabled(bool(runs))

    def _offer_gain_methods(self, runs: list[ShownRun]) -> None:
        methods = list(dict.fromkeys(m for r in runs if r.comparison is not None for m in r.comparison.methods
                                     if m != LM_ALONE))
        current = self.gain_method.currentData()
        self.gain_method.blockSignals(True)
        self.gain_method.clear()
        for m in methods:
            self.gain_method.addItem(labels().get(m, m), m)
        if current in methods:
            self.gain_method.setCurrentIndex(methods.index(current))
        self.gain_method.blockSignals(False)

    def _gain_method_changed(self) -> None:
        partial = self._partial is not None and not self.runs_list.selectedItems()
        self._show([self._partial] if partial else self.shown_runs())

    def _show(self, runs: list[ShownRun]) -> None:
        self.plots.show_runs(runs, self.gain_method.currentData())
        self.results_table.show_runs(runs)
        latest = next((r for r in reversed(runs) if r.comparison is not None), None)
        method = self.plots.gain_method(latest) if latest is not None else None
        self._tables_run = latest
        self.token_lists.setVisible(latest is not None and method is not None)
        if latest is None or method is None:
            self.helped.set_changes([], [], str)
            self.hurt.set_changes([], [], str)
            return
        helped, hurt = most_changed(latest.comparison, method, count=25)
        decode = self._decoder(latest.row)
        self.helped.set_changes(helped, latest.comparison.token_ids, decode)
        self.hurt.set_changes(hurt, latest.comparison.token_ids, decode)

    def _decoder(self, row: EvaluationRow) -> Callable[[list[int]], str]:
        if self.model is not None and self.model.name == row.model_name:
            return lambda ids: self.model.tokenizer.decode(ids)
        return lambda ids: "".join(f"⟨{i}⟩" for i in ids)  # another model's tokens: ids only

    def forget_selected(self) -> None:
        for item in self.runs_list.selectedItems():
            row = item.data(Qt.UserRole)
            forget(self.catalog, row)
            self._comparisons.pop(row.id, None)
        self.refresh_runs()

    # ---- into the token inspector ----------------------------------------------------------
    def inspect_token(self, index: int) -> workers.Job | None:
        run = self._tables_run
        method = self.gain_method.currentData() or (self.plots.gain_method(run) if run else None)
        if run is None or method is None:
            return None
        if self.model is None or self.model.name != run.row.model_name:
            return self._refuse(f"Load {run.row.model_name} to inspect this run's tokens")
        try:
            needs_datastore = get(method).needs_datastore
        except UnknownMethod as exc:  # kept by a plug-in that is not installed here
            return self._refuse(str(exc))
        if needs_datastore and (not self.datastore_name or run.row.datastore not in (None, self.datastore_name)):
            return self._refuse(f"Inspecting a {labels().get(method, method)} token needs the run's datastore: "
                                f"double-click '{run.row.datastore}' in the library")
        comparison, model, open_methods = run.comparison, self.model, self.open_methods
        kept = _kept_settings(run.row, method)

        def body(_control):
            objects = open_methods([method])
            try:
                opened = objects.methods[method]
                now = opened.settings.describe()
                prompt_ids, record = token_record(model, comparison, index, opened)
            finally:
                objects.close()
            return prompt_ids, record, now

        def show(result) -> None:
            prompt_ids, record, now = result
            changed = [f"{key} {kept[key]} → {value}" for key, value in now.items()
                       if key in kept and kept[key] != value]
            if changed:
                self.status.setText(f"Opened held-out token #{index} with today's settings: {', '.join(changed)}")
            label = f"held-out token #{index} · {labels().get(method, method)} · run #{run.row.id}"
            self.inspect_requested.emit(Run(label=label, prompt=model.tokenizer.decode(prompt_ids),
                                            prompt_ids=prompt_ids, settings={**now, "method": method},
                                            records=[record], model=model.name,
                                            datastore=run.row.datastore if needs_datastore else None))

        self.status.setText(f"Opening held-out token #{index} in the inspector…")
        self.inspect_job = workers.run_job(body, parent=self, finished=show, failed=self._failed)
        return self.inspect_job

    # ---- export ----------------------------------------------------------------------------
    def _target(self, title: str, suffix: str, path: Path | None) -> Path | None:
        rows = self.selected_rows()
        if not rows:
            self._refuse("Select a kept run first")
            return None
        if path is not None:
            return Path(path)
        name = "evaluation-" + "-".join(str(r.id) for r in rows) + suffix
        chosen, _ = QFileDialog.getSaveFileName(self, title, name, f"*{suffix}")
        return Path(chosen) if chosen else None

    def _report_export(self, what: str, path: Path, write):
        """Write, then say where it went, or why not in one line (a folder, a read-only place, a full disk)."""
        return report_export(what, path, write, say=self.status.setText, fail=self._refuse)

    def export_csv(self, path: Path | None = None) -> Path | None:
        """The selected runs (one, or the two shown) in one CSV, told apart by its `run` column."""
        path = self._target("Export runs as CSV", ".csv", path)
        if path is None:
            return None
        rows = self.selected_rows()
        runs = [(row, self._comparison(row), _one_token(self._decoder(row))) for row in rows]
        return self._report_export(f"{_runs_named(rows)} as CSV", path,
                                   lambda: evaluation_export.write_runs_csv(runs, path))

    def export_json(self, path: Path | None = None) -> Path | None:
        path = self._target("Export runs as JSON", ".json", path)
        if path is None:
            return None
        rows = self.selected_rows()
        return self._report_export(f"{_runs_named(rows)} as JSON", path,
                                   lambda: evaluation_export.write_json(rows, path))

    def export_png(self, path: Path | None = None) -> Path | None:
        """The plots of the selected runs as one PNG figure (`widgets/evaluation_figure.py`)."""
        path = self._target("Export the plots as PNG", ".png", path)
        if path is None:
            return None
        runs, method = self.shown_runs(), self.gain_method.currentData()
        return self._report_export(f"the plots of {_runs_named([r.row for r in runs])} as PNG", path,
                                   lambda: write_figure(path, runs, method))


def _runs_named(rows: list[EvaluationRow]) -> str:
    """"run #3", "runs #3 and #5"."""
    return f"run #{rows[0].id}" if len(rows) == 1 else "runs " + " and ".join(f"#{r.id}" for r in rows)


def _one_token(decode: Callable[[list[int]], str]) -> Callable[[int], str]:
    return lambda token_id: decode([token_id])


def _kept_settings(row: EvaluationRow, method: str) -> dict:
    """`method`'s settings as the comparison kept them: its own ("settings"), or, in runs kept before
    methods kept theirs, the kNN-LM settings every comparison kept flat (for a method with those settings)."""
    own = row.parameters.get("settings", {}).get(method)
    if isinstance(own, dict):
        return own
    try:
        flat = get(method).Settings is KnnLmSettings
    except UnknownMethod:
        return {}
    return dict(row.parameters) if flat else {}


def _summary(row: EvaluationRow) -> str:
    """The run's numbers, for its tooltip in the list."""
    r = row.results
    if row.kind == "sweep":
        points = ", ".join(f"{p['value']:g}: {_ppl(p['ppl'])}" for p in r["results"])
        references = "".join(f" · {name} {_ppl(ppl)}" for name, ppl in r.get("references", {}).items())
        return f"{row.model_name} · {r['tokens']:,} tokens · LM alone {r['ppl_lm']:.2f}{references}\n{points}{_speeds(r)}"
    lines = [f"{labels().get(m, m)}: {_ppl(p)}" for m, p in method_perplexities(row).items()]
    return f"{row.model_name} · {r.get('tokens', 0):,} tokens\n" + "\n".join(lines)


def _speeds(results: dict) -> str:
    """" · generation tokens/s: LM alone 900, 0.25: 700, …" where a sweep timed its points; "" if not."""
    timed = [f"{p['value']:g}: {p['tokens_per_s']:,.0f}" for p in results.get("results", []) if p.get("tokens_per_s")]
    if not timed:
        return ""
    lm = f"LM alone {results['tokens_per_s_lm']:,.0f}, " if results.get("tokens_per_s_lm") else ""
    return f" · generation tokens/s: {lm}{', '.join(timed)}"


def _ppl(value: float | None) -> str:
    return "∞" if value is None else f"{value:.2f}"


def need_datastore(methods) -> str:
    """"kNN-LM and SPALM need": those of `methods` that need a datastore, and the verb."""
    needing = [get(m).label for m in methods if get(m).needs_datastore]
    return f"{' and '.join(needing)} {'needs' if len(needing) == 1 else 'need'}" if needing else "some methods need"

"""The main window: library on the left; prompt, controls, token strip and token inspector in the middle.

Everything slow (model load, datastore open, build, generation) runs in a `Job`; this window only
wires signals and renders the core's records. It never computes probabilities.
"""
from __future__ import annotations

import gc
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QComboBox, QDockWidget, QFileDialog, QHBoxLayout, QLabel, QMainWindow, QMessageBox,
                               QProgressBar, QScrollArea, QSizePolicy, QSplitter, QTabWidget, QVBoxLayout, QWidget)

from ..core.generation import run_export
from ..core.datastore.catalog import Catalog, CatalogError
from ..core.generation.step_generator import GenerationSettings, StepGenerator, warm_up
from ..core.home import DEMO_DOCS_DIR
from ..core.mechanisms.knnlm import KnnLmSettings
from ..core.datastore.library import compatibility, open_datastore
from ..core.methods import Method, MethodSettings, Resources, get
from ..core.models import DEMO_SPEC, LoadedModel, import_model_stack, load_model
from ..core.runtime import configure_threads
from ..core.methods.lm_alone import LM_ALONE
from . import workers
from .about import app_icon, show_about
from .build_tracker import waiting_for_build
from .dialogs.build import BuildDialog, BuildTracker
from .fitted_knn import FittedKnnSettings
from .pages.library import CatalogView
from .pages.evaluate import EvaluatePage, MethodObjects, need_datastore
from .export_report import report_export
from .dialogs.gate_training import GateTrainingDialog
from .widgets.generation_controls import GenerationControls, KnnLmPanel, context_window, method_settings
from .dialogs.model import LoadModelDialog
from .runs import Run
from .screen_fit import clamp_to_screen, first_launch_size, scrolling
from .widgets.elided_label import ElidedLabel
from .settings import AppSettings
from .pages.side_by_side import SideBySidePage
from .widgets.document_viewer import open_document_at
from .widgets.token_inspector import TokenInspector
from .widgets.token_strip import TokenStrip

DEMO_DATASTORE = "demo-docs"


class MainWindow(QMainWindow):
    def __init__(self, catalog: Catalog | None = None, model_spec: str | None = None, build_demo: bool = True):
        super().__init__()
        configure_threads(reserve=1)  # a core for the UI thread, so work never starves it
        import_model_stack()  # here, not in the loading thread, where it would hold the GIL for 100s of ms
        self.setWindowTitle("kNN Explorer")
        self.setWindowIcon(app_icon())
        self.resize(first_launch_size(self.screen()))
        self.settings = AppSettings()
        self.catalog = catalog or Catalog()
        self.model: LoadedModel | None = None
        self.loading_spec: str | None = None  # the model being loaded, while a load runs
        self.datastore_name: str | None = self.settings.last_datastore
        self._open_datastores: dict[str, object] = {}
        self.runs: list[Run] = []
        self.current_run: Run | None = None
        self.generation_job: workers.Job | None = None
        self.build_trackers: list[BuildTracker] = []
        self._build_demo = build_demo
        self.last_error: str | None = None  # the latest message shown by show_error
        self.remember_on_close = True  # a screenshot run leaves the user's layout and settings alone

        self._make_widgets()
        self._make_actions()
        self._restore()
        # kNN-LM's λ and T follow the chosen datastore's fit, unless moved by hand from here on
        self.fitted_knn = FittedKnnSettings(self.controls.knnlm, self.catalog,
                                            lambda message: self.statusBar().showMessage(message, 15_000), self)
        self.evaluate_page.fitted.connect(lambda row: self.fitted_knn.apply(row, asked=True))
        self.load_model(model_spec or self.settings.last_model, self.settings.device)

    # ---- layout ----------------------------------------------------------------------------
    def _make_widgets(self) -> None:
        self.catalog_view = CatalogView(self.catalog)
        self.catalog_view.datastore_chosen.connect(self.use_datastore)
        self.catalog_view.build_requested.connect(self.open_build_dialog)
        self.catalog_view.build_started.connect(self._track_build)  # a build resumed from the library
        self.catalog_view.removed.connect(self._datastore_removed)
        # The tree's size hint changes with its rows (a build in progress adds one); ignoring it keeps
        # the dock's width fixed, so the plots beside it are not re-laid out and repainted each time.
        self.catalog_view.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.catalog_view.setMinimumWidth(220)
        dock = QDockWidget("Library", self)
        dock.setObjectName("library")
        self.library_dock = dock
        dock.setWidget(self.catalog_view)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, dock)

        self.controls = GenerationControls()
        self.controls.generate_requested.connect(self.generate)
        self.controls.step_requested.connect(self.step)
        self.controls.pause_toggled.connect(self.toggle_pause)
        self.controls.stop_requested.connect(self.stop)

        # What these two say is what Generate will use; they elide rather than widen the window.
        self.model_label = ElidedLabel("Model: none", "The model Generate uses and where its kNN key is taken")
        self.datastore_label = ElidedLabel("Datastore: none", "The datastore Generate retrieves from "
                                           "(double-click one in the library)")
        header = QHBoxLayout()
        header.addWidget(self.model_label, 3)
        header.addWidget(self.datastore_label, 2)

        self.branch_choice = QComboBox()
        self.branch_choice.setToolTip("Runs and the branches made from them (click an alternative token to branch)")
        self.branch_choice.currentIndexChanged.connect(self._show_run)
        strip_bar = QHBoxLayout()
        strip_bar.addWidget(QLabel("Run"))
        strip_bar.addWidget(self.branch_choice, 1)

        self.strip = TokenStrip()
        self.strip.token_selected.connect(self._token_selected)
        self.compare_strip = TokenStrip()
        self.compare_strip.setToolTip("The same prompt with the LM alone")
        self.compare_strip.token_selected.connect(lambda step: self._token_selected(step, lane="compare"))
        self.compare_strip.hide()
        # The main strip's own "Colour by" choice drives the comparison strip too.
        self.strip.colour_combo.currentIndexChanged.connect(
            lambda i: self.compare_strip.set_colour_by(self.strip.colour_combo.itemData(i)))
        self.compare_strip.colour_combo.hide()
        strips = QSplitter(Qt.Orientation.Horizontal)
        strips.addWidget(self.strip)
        strips.addWidget(self.compare_strip)

        self.inspector = TokenInspector()
        self.inspector.branch_requested.connect(self.branch)
        self.inspector.open_document.connect(
            lambda path, offset, length: open_document_at(path, offset, length, parent=self))
        self.inspector.step_clicked.connect(lambda step: self.strip.select(step))

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(6, 4, 6, 0)
        top_layout.addLayout(header)
        top_layout.addWidget(self.controls)
        middle = QWidget()
        middle_layout = QVBoxLayout(middle)
        middle_layout.setContentsMargins(6, 0, 6, 0)
        middle_layout.addLayout(strip_bar)
        middle_layout.addWidget(strips, 1)
        legend = getattr(self.strip, "legend_widget", None)
        if callable(legend):
            middle_layout.addWidget(legend())
        # Three panes, each of which can be enlarged by dragging: the controls, the token strip, the
        # inspector. The controls and the inspector scroll when the window is smaller than they are,
        # so on a small screen nothing is squeezed to an empty bar.
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.setObjectName("explore")
        self.splitter.addWidget(scrolling(top))
        self.splitter.addWidget(middle)
        self.splitter.addWidget(scrolling(self.inspector))
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setStretchFactor(2, 2)
        self.explore_controls = top

        self.evaluate_page = EvaluatePage(self.catalog)
        self.evaluate_page.open_methods = self._evaluation_methods
        self.evaluate_page.knn_settings = lambda: self._knn_settings(self.controls.values())
        self.evaluate_page.inspect_requested.connect(self.inspect_run)
        self.evaluate_page.error.connect(lambda reason: self.statusBar().showMessage(reason, 15_000))
        self.pages = QTabWidget()
        self.pages.setDocumentMode(True)
        self.pages.addTab(self.splitter, "Explore")
        self.evaluate_page.setObjectName("evaluate")
        self.side_by_side_page = SideBySidePage(self._side_by_side_generators)
        self.side_by_side_page.record_clicked.connect(self._side_by_side_record)
        self.side_by_side_page.error.connect(lambda reason: self.statusBar().showMessage(reason, 15_000))
        self.pages.addTab(scrolling(self.evaluate_page), "Evaluate")
        self.pages.addTab(scrolling(self.side_by_side_page), "Side by side")
        self.pages.setTabToolTip(0, "Generate token by token and inspect each token (Ctrl+1)")
        self.pages.setTabToolTip(1, "Perplexity of the methods on held-out text, sweeps, kept runs (Ctrl+2)")
        self.pages.setTabToolTip(2, "One prompt, up to four methods, aligned by step (Ctrl+3)")
        self.pages.currentChanged.connect(self._page_changed)
        self.setCentralWidget(self.pages)

        self.build_progress = QProgressBar()
        self.build_progress.setMaximumWidth(260)
        self.build_progress.setToolTip("Datastore build in the background")
        self.build_progress.hide()
        self.statusBar().addPermanentWidget(self.build_progress)

    def _make_actions(self) -> None:
        menu = self.menuBar().addMenu("&File")
        for text, keys, slot in (
            ("Load model…", "Ctrl+L", self.open_model_dialog),
            ("Build datastore…", "Ctrl+B", self.open_build_dialog),
            ("Train memory gates…", "Ctrl+G", self.open_gate_training),
            (None, None, None),
            ("Explore", "Ctrl+1", lambda: self.pages.setCurrentIndex(0)),
            ("Evaluate", "Ctrl+2", lambda: self.pages.setCurrentIndex(1)),
            ("Side by side", "Ctrl+3", lambda: self.pages.setCurrentIndex(2)),
            (None, None, None),
            ("Export run as JSON…", "Ctrl+S", self.export_json),
            ("Export run as CSV…", "Ctrl+Shift+S", self.export_csv),
            ("Export plots as PNG…", "Ctrl+E", self.export_plots),
            (None, None, None),
            ("Quit", "Ctrl+Q", self.close),
        ):
            if text is None:
                menu.addSeparator()
                continue
            action = QAction(text, self, shortcut=QKeySequence(keys))
            # triggered(bool) would hand `checked` to the slot's first parameter (the export's path)
            action.triggered.connect(lambda _checked=False, slot=slot: slot())
            action.setToolTip(f"{text} ({keys})")
            menu.addAction(action)
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction("About kNN Explorer", lambda: show_about(self))
        help_menu.addAction("About Qt", lambda: QMessageBox.aboutQt(self))

    def _restore(self) -> None:
        geometry, state, explore = self.settings.window()
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)
        else:  # once shown: before, the dock has no room to take
            # ~440 px shows every column of the library; a small screen gives it less.
            QTimer.singleShot(0, lambda: self.resizeDocks([self.library_dock], [min(440, int(self.width() * 0.26))],
                                                          Qt.Orientation.Horizontal))
        self._explore_sized = explore is not None and self.splitter.restoreState(explore)
        clamp_to_screen(self)  # saved on a bigger monitor, perhaps
        self.controls.apply(self.settings.generation)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._explore_sized:  # first launch: sized once the window has its real height
            self._explore_sized = True
            QTimer.singleShot(0, self._explore_first_sizes)

    def _explore_first_sizes(self) -> None:
        """The controls get their natural height, the strip a few lines, the inspector the rest."""
        controls = self.explore_controls.sizeHint().height()
        total = self.splitter.height()
        strip = max(110, min(200, total // 8))
        self.splitter.setSizes([controls, strip, max(200, total - controls - strip)])

    def current_page(self) -> QWidget:
        """The page shown (the widget itself, not the scroll area it sits in)."""
        shown = self.pages.currentWidget()
        return shown.widget() if isinstance(shown, QScrollArea) else shown

    def show_page(self, page: QWidget) -> None:
        for index in range(self.pages.count()):
            shown = self.pages.widget(index)
            if shown is page or (isinstance(shown, QScrollArea) and shown.widget() is page):
                self.pages.setCurrentIndex(index)

    def closeEvent(self, event) -> None:
        if self.remember_on_close:
            self.settings.save_window(self.saveGeometry(), self.saveState(), self.splitter.saveState())
            self.settings.generation = self.controls.values()
            self.settings.last_datastore = self.datastore_name
            self.settings.sync()
        # Worker threads must end before their QObjects are destroyed with the window.
        if self.generation_job is not None:
            self.generation_job.stop()
            self.generation_job.wait(10_000)
        self.evaluate_page.shutdown()
        self.side_by_side_page.shutdown()
        for tracker in list(self.build_trackers):
            tracker.stop(keep=True)  # an interrupted build, resumed at the next launch, not a lost one
            tracker.wait(30_000)
        super().closeEvent(event)

    # ---- model -----------------------------------------------------------------------------
    def model_dialog(self) -> LoadModelDialog:
        """The Load Model dialog, opened on the model in use (not always on the demo)."""
        dialog = LoadModelDialog(self.settings.recent_models, self.settings.device, self)
        if self.model is not None:
            dialog.set_spec(self.model.spec)
        return dialog

    def open_model_dialog(self) -> None:
        dialog = self.model_dialog()
        if dialog.exec():
            choice = dialog.choice()
            if not choice.spec:
                self.show_error("Choose a model folder or type a hub id")
                return
            self.load_model(choice.spec, choice.device, choice.trust_remote_code)

    def load_model(self, spec: str, device: str = "auto", trust_remote_code: bool = False) -> None:
        """Load `spec` in a job. Until it is loaded the model in use stays in use and the header says
        so; Generate waits for the load rather than run a model the header no longer names."""
        self.loading_spec = spec
        in_use = f" — {self.model.name} stays in use until it is ready" if self.model is not None else ""
        self.model_label.setText(f"Model: loading {spec}…{in_use}")
        self.statusBar().showMessage(f"Loading {spec}…")
        def load(_control) -> LoadedModel:
            model = load_model(spec, device=device, trust_remote_code=trust_remote_code)
            warm_up(model)
            return model

        self._load_job = workers.run_job(load, parent=self,
            finished=lambda model: self._model_loaded(model, device), failed=self._model_failed)

    def _model_loaded(self, model: LoadedModel, device: str) -> None:
        # A full garbage collection scans every object: with torch and transformers loaded that is
        # ~100 ms with the GIL held, a visible freeze. Freezing what exists now (the model, the
        # libraries) leaves later collections only the objects made since.
        gc.freeze()
        self.loading_spec = None
        self.model = model
        self._open_datastores.clear()
        self.settings.last_model = model.spec
        self.settings.device = device
        try:
            self.catalog.remember_model(model.spec, model.name, model.model_fingerprint)
        except CatalogError:  # a read-only data home: the model is used, just not remembered
            pass
        self.model_label.setText(self._model_description(model))
        self.catalog_view.set_model(model)
        self.evaluate_page.set_context(model, self.datastore_name)
        self.controls.set_model(model)  # the memory panel names the layer its memory will use
        self.statusBar().showMessage(f"Loaded {model.name}", 5000)
        wanted = self.datastore_name or self.settings.last_datastore
        if wanted and self.catalog.datastore(wanted):
            self.use_datastore(wanted, quiet=True)
        if self._build_demo and model.spec == DEMO_SPEC and self._first_launch():
            self._build_demo_datastore()

    @staticmethod
    def _model_description(model: LoadedModel) -> str:
        params = sum(p.numel() for p in model.model.parameters())
        return (f"Model: {model.name} · {model.model.config.model_type} · {params / 1e6:.1f}M parameters · "
                f"{model.device.type} · kNN key: {model.key_site.description}")

    def _model_failed(self, reason: str) -> None:
        self.loading_spec = None
        if self.model is None:
            self.model_label.setText(f"Model: not loaded — {reason}")
            self.show_error(reason)
            return
        # The header goes back to the model that is still in use: it is what Generate runs.
        self.model_label.setText(self._model_description(self.model))
        self.show_error(f"{reason} (still using {self.model.name})")

    # ---- datastores ------------------------------------------------------------------------
    def use_datastore(self, name: str, quiet: bool = False) -> None:
        """Make `name` the datastore Generate retrieves from. One built with another model is set
        aside (the header says none, and why); `quiet` puts the reason in the status bar only (a
        model switch, where it is expected) instead of a message box."""
        row = self.catalog.datastore(name)
        if row is None:
            self.show_error(f"no datastore named '{name}'")
            return
        if self.model is not None:
            check = compatibility(row, self.model)
            if not check.usable:
                self._set_aside_datastore(name, check.reason, quiet)
                return
        self.datastore_name = name
        self.settings.last_datastore = name
        self.datastore_label.setText(f"Datastore: {name} ({row.entries:,} entries, {row.index_description})")
        self.catalog_view.select(name)
        self.fitted_knn.datastore_chosen(name)
        self.evaluate_page.set_context(self.model, name)

    def _set_aside_datastore(self, name: str, reason: str, quiet: bool) -> None:
        message = f"Datastore '{name}' set aside: {reason}"
        if self.datastore_name == name or self.datastore_name is None:
            self.datastore_name = None
            self.datastore_label.setText(f"Datastore: none ('{name}' does not fit {self.model.name})")
            self.evaluate_page.set_context(self.model, None)
        if quiet:
            self.statusBar().showMessage(message, 15_000)
        else:
            self.show_error(message)

    def _datastore_removed(self, name: str) -> None:
        self._open_datastores.pop(name, None)
        if self.datastore_name == name:
            self.datastore_name = None
            self.datastore_label.setText("Datastore: none")
            self.evaluate_page.set_context(self.model, None)

    def _first_launch(self) -> bool:
        """A fresh data home, or one whose demo build was interrupted (the app quit during it):
        the demo datastore is built, or its build resumed. A demo the user removed stays removed."""
        if not DEMO_DOCS_DIR.is_dir() or self.catalog.datastore(DEMO_DATASTORE) is not None:
            return False
        fresh = not self.catalog.datastores() and not self.catalog.builds()
        return fresh or bool(self.catalog.unfinished_builds(DEMO_DATASTORE))

    def _build_demo_datastore(self) -> None:
        resuming = bool(self.catalog.unfinished_builds(DEMO_DATASTORE))
        self.statusBar().showMessage("Resuming the demo datastore's interrupted build…" if resuming else
                                     "First launch: building the demo datastore from resources/demo/docs…")
        tracker = BuildTracker(self.catalog, self.model, DEMO_DATASTORE, [DEMO_DOCS_DIR], parent=self)
        self._track_build(tracker)
        tracker.finished.connect(lambda _report: (self.fitted_knn.demo_built(DEMO_DATASTORE, self.model.name),
                                                  self.use_datastore(DEMO_DATASTORE)))
        tracker.start()

    def open_build_dialog(self) -> None:
        dialog = BuildDialog(self.catalog, self.model, self)
        self.catalog_view.prepare_build_dialog(dialog)  # an interrupted build selected: its name, sources, settings
        dialog.build_started.connect(self._track_build)
        dialog.show()
        self.build_dialog = dialog

    def open_gate_training(self) -> None:
        if self.model is None:
            self.show_error("Load a model first: the gates are trained for it")
            return
        dialog = GateTrainingDialog(self.catalog, self.model, DEMO_DOCS_DIR if self.model.spec == DEMO_SPEC else None,
                                    self.datastore_name, self)
        dialog.adapter_ready.connect(self._use_adapter)
        dialog.show()
        self.gate_training_dialog = dialog

    def _use_adapter(self, method: str, path: str) -> None:
        """The gate-training dialog trained `method`'s gates: its panel's adapter field (if it has one) takes them."""
        field = getattr(self.controls.panels.get(method), "adapter", None)
        if field is not None:
            field.setText(path)
        self.controls.method.setCurrentIndex(self.controls.method.findData(method))
        self.statusBar().showMessage(f"{get(method).label} now uses the gates in {Path(path).name}", 10_000)

    def _track_build(self, tracker: BuildTracker) -> None:
        self.build_trackers.append(tracker)
        self.catalog_view.watch_build(tracker)
        self.build_progress.show()
        self.build_progress.setValue(0)
        tracker.progress.connect(self._build_progressed)
        tracker.finished.connect(lambda report: self._build_ended(tracker, f"Built '{report.manifest['name']}'"))
        tracker.failed.connect(lambda reason: self._build_ended(tracker, f"Build failed: {reason}"))
        tracker.cancelled.connect(lambda: self._build_ended(tracker, "Build cancelled"))

    def _build_progressed(self, progress) -> None:
        self.build_progress.setValue(int(progress.fraction * 100))
        self.build_progress.setFormat(f"{progress.phase} %p%")
        self.statusBar().showMessage(progress.describe())

    def _build_ended(self, tracker: BuildTracker, message: str) -> None:
        if tracker in self.build_trackers:
            self.build_trackers.remove(tracker)
        self.build_progress.setVisible(bool(self.build_trackers))
        self.catalog_view.refresh()
        self.statusBar().showMessage(message, 10_000)

    # ---- generation ------------------------------------------------------------------------
    @staticmethod
    def _generation_settings(values: dict, method: str, max_new_tokens: int) -> GenerationSettings:
        """`method`'s generation settings from the controls' values (its local window, if its panel sets one)."""
        return GenerationSettings(max_new_tokens=max_new_tokens, greedy=values["greedy"], seed=values["seed"],
                                  context_window=context_window(values, method))

    @staticmethod
    def _knn_settings(values: dict) -> KnnLmSettings:
        """kNN-LM's panel's settings: the Evaluate page's sweeps are kNN-LM's."""
        return KnnLmPanel.settings_from(values)[0]

    @staticmethod
    def _panel_settings(values: dict, method: str) -> tuple[MethodSettings, Path | None]:
        """The settings and adapter file `method`'s panel holds, hand-made or generated (a
        `MethodError`, one line, if they are refused)."""
        return method_settings(values, method)

    def _method_objects(self, values: dict, methods: list[str], datastore: str | None) -> MethodObjects:
        """One `Method` per name in `methods`, as the controls' panels set them: the one builder
        behind the Explore page's runs, the Evaluate page's comparisons and held-out tokens, and side
        by side. A method that `needs_datastore` gets `Resources(datastore)`. Call inside a job
        (opening a datastore reads its keys; a memory in the model belongs to the calling thread).
        The caller closes them (`MethodObjects.close`) when its run ends."""
        objects = MethodObjects()
        classes = {name: get(name) for name in methods}
        if datastore and any(method.needs_datastore for method in classes.values()):
            objects.datastore = self._datastore(datastore)
        try:
            for name, method in classes.items():
                settings, adapter = self._panel_settings(values, name)
                resources = Resources(objects.datastore if method.needs_datastore else None, adapter)
                objects.methods[name] = method(self.model, settings, resources)
        except Exception:
            objects.close()  # those made already give the model back
            raise
        return objects

    def _evaluation_methods(self, methods: list[str]) -> MethodObjects:
        return self._method_objects(self.controls.values(), methods, self.datastore_name)

    def _can_generate(self) -> bool:
        if self.loading_spec is not None:
            self.show_error(f"Wait for {self.loading_spec} to finish loading")
            return False
        if self.model is None:
            self.show_error("No model is loaded yet")
            return False
        if self.generation_job is not None and self.generation_job.is_running():
            return False
        method = get(self.controls.method.currentData())
        if method.needs_datastore and not self.datastore_name:
            wait = waiting_for_build(method.label, bool(self.catalog_view.usable_names()))  # the first launch's demo build
            self.show_error(f"{method.label} needs a datastore: "
                            f"{wait or 'double-click one in the library, or build one (Ctrl+B)'}")
            return False
        problem = self.controls.problem()
        if problem is not None:
            self.show_error(problem)
            return False
        return True

    def generate(self, step_mode: bool = False, run: Run | None = None, forced_token: int | None = None) -> None:
        if not self._can_generate():
            return
        values = self.controls.values()
        settings = self._generation_settings(values, values["method"], values["max_new_tokens"])
        if run is None:
            prompt = values["prompt"]
            prompt_ids = self.model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            run = Run(label=f"run {len(self.runs) + 1}: {values['method']}", prompt=prompt, prompt_ids=prompt_ids,
                      settings=values, model=self.model.name,
                      datastore=self.datastore_name if get(values["method"]).needs_datastore else None)
        self._add_run(run)
        model, name, compare = self.model, self.datastore_name, values["compare"] and values["method"] != LM_ALONE
        first_step = len(run.records)
        context = run.context_ids(first_step)

        def body(control: workers.JobControl):
            objects = self._method_objects(values, [values["method"]], name)
            method = objects.methods[values["method"]]
            try:
                main = StepGenerator(model, context, settings, method, first_step=first_step)
                lm_alone = None
                if compare:  # the same settings (local window included), the LM alone
                    lm_alone = StepGenerator(model, context, settings, first_step=first_step)
                control.checkpoint()
                for record in main.records(forced_token):
                    control.emit((record, self._lm_alone_step(lm_alone, method)))
                    control.checkpoint()  # pause or stop before the next step runs
            finally:
                objects.close()

        job = workers.Job(body, start_paused=step_mode, parent=self)
        job.item.connect(lambda item: self._record_arrived(run, item))
        job.failed.connect(self.show_error)
        job.paused_changed.connect(lambda paused: self._paused_changed(paused))
        job.done.connect(self._generation_done)
        self.generation_job = job
        self.controls.set_running(True, paused=step_mode)
        job.start()
        if step_mode:
            job.step()

    @staticmethod
    def _lm_alone_step(lm_alone: StepGenerator | None, method: Method):
        """The comparison lane is the model without the method's change to it (a memory), and leaves
        the method's state untouched."""
        if lm_alone is None:
            return None
        with method.set_aside():
            return lm_alone.step()

    def _datastore(self, name: str):
        """Open (once) and cache a datastore; runs inside jobs, since opening reads the keys."""
        if name not in self._open_datastores:
            self._open_datastores[name] = open_datastore(self.catalog, name, self.model)
        return self._open_datastores[name]

    def step(self) -> None:
        job = self.generation_job
        if job is not None and job.is_running():
            job.step()
        else:
            self.generate(step_mode=True, run=self.current_run if self.current_run and self.current_run.records else None)

    def toggle_pause(self) -> None:
        job = self.generation_job
        if job is None or not job.is_running():
            return
        job.resume() if job.control.paused else job.pause()

    def stop(self) -> None:
        if self.generation_job is not None:
            self.generation_job.stop()

    def _paused_changed(self, paused: bool) -> None:
        self.controls.set_running(True, paused)
        if paused and self.current_run and self.current_run.records:
            self.strip.select(self.current_run.records[-1].step)

    def _generation_done(self) -> None:
        self.controls.set_running(False)
        if self.current_run and self.current_run.records:
            self.strip.select(self.current_run.records[-1].step)

    def _record_arrived(self, run: Run, item) -> None:
        record, lm_record = item
        run.records.append(record)
        if lm_record is not None:
            run.compare.append(lm_record)
        if run is self.current_run:
            self.strip.append(record)
            if lm_record is not None:
                self.compare_strip.append(lm_record)
            # The inspector is not refreshed per token: redrawing its plots costs tens of ms, more
            # than the UI thread may be blocked. It shows the newest token when a run pauses or ends.

    # ---- runs and branches -----------------------------------------------------------------
    def _add_run(self, run: Run) -> None:
        if run not in self.runs:
            self.runs.append(run)
            self.branch_choice.addItem(run.label)
        self.branch_choice.setCurrentIndex(self.runs.index(run))
        self._show_run(self.runs.index(run))

    def _show_run(self, index: int) -> None:
        if not 0 <= index < len(self.runs):
            return
        run = self.runs[index]
        self.current_run = run
        for strip, records in ((self.strip, run.records), (self.compare_strip, run.compare)):
            strip.clear()
            strip.set_prompt(run.prompt)
            for record in records:
                strip.append(record)
        self.strip.set_branch_point(run.branch_step)
        self.compare_strip.setVisible(bool(run.compare) or bool(run.settings.get("compare")))
        if self.inspector.record is not None:  # clearing redraws four plots: skip it when already empty
            self.inspector.clear()

    def inspect_run(self, run: Run, step: int | None = None) -> None:
        """Show a run made elsewhere (a held-out token, a side-by-side column) on the Explore page."""
        self._add_run(run)
        self.pages.setCurrentIndex(0)
        if run.records:
            self.strip.select(run.records[-1].step if step is None else step)

    def _side_by_side_generators(self, methods: list[str], prompt: str, max_new_tokens: int, _control):
        """One generator per method with the controls' settings (runs inside the page's job, which
        closes their methods when the run ends)."""
        if self.model is None:
            raise ValueError("No model is loaded yet")
        if any(get(m).needs_datastore for m in methods) and not self.datastore_name:
            wait = waiting_for_build(" and ".join(get(m).label for m in methods if get(m).needs_datastore))
            raise ValueError(f"{need_datastore(methods)} a datastore: {wait or 'double-click one in the library'}")
        values = self.controls.values()
        objects = self._method_objects(values, methods, self.datastore_name)
        try:
            return {m: StepGenerator(self.model, prompt, self._generation_settings(values, m, max_new_tokens),
                                     objects.methods[m])
                    for m in methods}
        except Exception:
            objects.close()  # the page closes the methods of the generators it gets, and only those
            raise

    def _side_by_side_record(self, method: str, record) -> None:
        """A clicked cell opens its whole column as a run on the Explore page, at that step."""
        page = self.side_by_side_page
        column = next(c for c in page.columns() if c.method == method)
        prompt_ids = self.model.tokenizer(page.prompt_of_run, add_special_tokens=False)["input_ids"]
        run = Run(label=f"side by side: {column.label}", prompt=page.prompt_of_run, prompt_ids=prompt_ids,
                  settings={"method": method}, records=list(column.records), model=self.model.name,
                  datastore=self.datastore_name if get(method).needs_datastore else None)
        self.inspect_run(run, record.step)

    def _page_changed(self, _index: int) -> None:
        if self.current_page() is self.evaluate_page:
            self.evaluate_page.set_context(self.model, self.datastore_name)
        page = self.side_by_side_page
        if self.current_page() is page and not page.prompt.toPlainText().strip():
            page.prompt.setPlainText(self.controls.prompt.toPlainText())  # start from the Explore prompt

    def _token_selected(self, step: int, lane: str = "main") -> None:
        run = self.current_run
        if run is None:
            return
        records = run.records if lane == "main" else run.compare
        for record in records:
            if record.step == step:
                self.inspector.show_record(record, records)
                return

    def branch(self, step: int, token_id: int) -> None:
        """Continue the current run from `step` with `token_id` instead of what was generated."""
        if self.current_run is None or (self.generation_job is not None and self.generation_job.is_running()):
            return
        token = self.model.tokenizer.decode([token_id]) if self.model is not None else str(token_id)
        self.generate(run=self.current_run.branch(step, token), forced_token=token_id)

    # ---- export ----------------------------------------------------------------------------
    def _export_target(self, path: Path | str | None, title: str, suffix: str) -> Path | None:
        if self.current_run is None or not self.current_run.records:
            self.show_error("Nothing to export yet: generate first")
            return None
        if path:
            return Path(path)
        chosen, _ = QFileDialog.getSaveFileName(self, title, f"run{suffix}", f"*{suffix}")
        return Path(chosen) if chosen else None

    def _report_export(self, what: str, path: Path, write):
        """Write, then say where it went, or why not in one line (a folder, a read-only place, a full disk)."""
        return report_export(what, path, write, say=lambda message: self.statusBar().showMessage(message, 10_000),
                             fail=self.show_error)

    def export_json(self, path: Path | str | None = None) -> Path | None:
        """Save to `path`, or to a file chosen in a dialog; the path saved, or None."""
        path = self._export_target(path, "Export run as JSON", ".json")
        if path is None:
            return None
        run = self.current_run
        return self._report_export("the run as JSON", path,
                                   lambda: run_export.write_json(path, run.records, run.prompt, run.settings,
                                                                 model=run.model, datastore=run.datastore))

    def export_csv(self, path: Path | str | None = None) -> Path | None:
        path = self._export_target(path, "Export run as CSV", ".csv")
        if path is None:
            return None
        run = self.current_run
        return self._report_export("the run as CSV", path,
                                   lambda: run_export.write_csv(path, run.records, run.export_context()))

    def export_plots(self, folder: Path | str | None = None) -> list[Path]:
        """The inspector's plots as PNG files in `folder` (or one chosen in a dialog); the files written."""
        if folder is None:
            chosen = QFileDialog.getExistingDirectory(self, "Folder for the plot PNGs")
            if not chosen:
                return []
            folder = chosen
        folder = Path(folder)
        return self._report_export("the plots as PNG", folder, lambda: self.inspector.export_plots(folder)) or []

    # ---- messages --------------------------------------------------------------------------
    def show_error(self, reason: str) -> None:
        """Errors are a line in the status bar and a non-modal message box; never a crash."""
        self.statusBar().showMessage(reason, 15_000)
        box = QMessageBox(QMessageBox.Icon.Warning, "kNN Explorer", reason, parent=self)
        box.setModal(False)
        box.show()
        self.last_error = reason

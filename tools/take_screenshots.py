"""Regenerate docs/screenshots/ from the real app: demo model, demo documents, a fresh data home.

    QT_QPA_PLATFORM=offscreen .venv/bin/python tools/take_screenshots.py [--out docs/screenshots]

Takes about a minute on 2 cores (most of it building the demo datastore). Every picture is the
real window in the state its name says; look at each before committing it.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def show_page(window, page) -> None:
    """Bring up the tab holding `page` (pages sit inside scroll areas, so not the tab's own widget)."""
    for index in range(window.pages.count()):
        tab = window.pages.widget(index)
        if tab is page or tab.isAncestorOf(page):
            window.pages.setCurrentIndex(index)
            return
    raise RuntimeError(f"no tab holds {page!r}")


def controls_ready(window) -> bool:
    return window.controls.generate.isEnabled()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--prompt", default="To register a view function for a URL, use the")
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["KNN_EXPLORER_HOME"] = tempfile.mkdtemp(prefix="knn-explorer-shots-")
    args.out.mkdir(parents=True, exist_ok=True)

    from PySide6.QtCore import QEventLoop
    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv[:1])
    from knn_explorer.core.datastore.catalog import Catalog
    from knn_explorer.core.home import DEMO_DOCS_DIR
    from knn_explorer.gui.main_window import MainWindow

    def wait_until(condition, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the app did not reach the state to photograph")
            app.processEvents(QEventLoop.AllEvents, 20)
            time.sleep(0.005)

    def settle(seconds: float = 0.5) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents(QEventLoop.AllEvents, 20)

    def save(widget, name: str) -> None:
        path = args.out / f"{name}.png"
        widget.grab().save(str(path))
        print(f"wrote {path}")

    window = MainWindow(Catalog(), model_spec="demo", build_demo=False)
    window.resize(1440, 972)
    window.show()
    wait_until(lambda: window.model is not None)

    window.open_build_dialog()
    dialog = window.build_dialog
    dialog.add_sources([DEMO_DOCS_DIR])
    dialog.name_edit.setText("demo-docs")
    dialog.start_button.click()
    wait_until(lambda: dialog.tracker is not None and dialog.tracker.is_running()
               and "encoding" in dialog.phase_label.text().lower())
    settle(6)  # long enough for a rate and an ETA
    save(dialog, "build-dialog")
    wait_until(lambda: not dialog.tracker.is_running())
    settle()
    save(dialog, "build-dialog-done")
    dialog.close()

    window.catalog_view.refresh()
    window.use_datastore("demo-docs")
    settle()
    save(window.catalog_view, "catalog-view")

    window.controls.prompt.setPlainText(args.prompt)
    window.controls.max_tokens.setValue(40)
    window.controls.generate.click()
    wait_until(lambda: window.current_run is not None and len(window.current_run.records) >= 23)
    window.toggle_pause()
    wait_until(lambda: window.generation_job.control.paused)
    wait_until(lambda: window.inspector.record is not None and window.inspector.is_settled())
    middle = window.current_run.records[14]
    window.strip.select(middle.step)
    window.inspector.settle()
    settle()
    save(window, "main-window")
    save(window.inspector, "token-inspector")
    window.stop()
    wait_until(lambda: not window.generation_job.is_running())
    wait_until(lambda: controls_ready(window))

    def run_to_the_end(method: str, prompt: str) -> None:
        """Generate 24 tokens with `method` and wait until the inspector shows the last one."""
        controls = window.controls
        controls.method.setCurrentIndex(controls.method.findData(method))
        controls.prompt.setPlainText(prompt)
        controls.max_tokens.setValue(24)
        before = window.generation_job
        controls.generate.click()
        if window.generation_job is before:
            raise RuntimeError(f"the {method} run did not start: {window.last_error}")
        wait_until(lambda: not window.generation_job.is_running())
        wait_until(lambda: window.inspector.record is not None and window.inspector.is_settled())

    # SPALM on the same datastore, with the demo's trained gate.
    window.strip.set_colour_by("lambda")
    run_to_the_end("spalm", args.prompt)
    window.strip.select(window.current_run.records[10].step)
    window.inspector.settle()
    settle()
    save(window, "main-window-spalm")
    save(window.inspector, "spalm-inspector")
    window.strip.set_colour_by("gain")

    # The Memorizing Transformer with the demo's trained gates: a long prompt fills the memory.
    window.controls.memorizing.window.setValue(64)
    run_to_the_end("memtrf", (DEMO_DOCS_DIR / "quickstart.rst").read_text(encoding="utf-8")[:2400])
    settle()
    save(window, "main-window-memtrf")
    save(window.inspector, "memory-layer")

    window.open_gate_training()
    dialog = window.gate_training_dialog
    dialog.epochs.setValue(1)
    dialog.layer.setValue(0)  # where the gates open for this model (resources/demo/README.md)
    dialog.start()
    wait_until(lambda: len(dialog.steps) >= 40)
    settle()
    save(dialog, "gate-training")
    dialog.cancel()
    wait_until(lambda: not dialog.job.is_running())
    dialog.close()

    # The Evaluate page: the four methods on one held-out document, then two λ sweeps overlaid.
    window.controls.method.setCurrentIndex(window.controls.method.findData("knnlm"))
    page = window.evaluate_page
    show_page(window, page)
    page.text_field.setText(str(DEMO_DOCS_DIR.parent / "heldout" / "api.rst"))

    def evaluate() -> None:
        job = page.run()
        if job is None:
            raise RuntimeError(f"the evaluation did not start: {page.status.text()}")
        wait_until(lambda: not job.is_running() and page.run_button.isEnabled())
        settle()

    page.compare_mode.setChecked(True)
    evaluate()
    page.gain_method.setCurrentIndex(page.gain_method.findData("knnlm"))
    settle()
    save(window, "evaluate-compare")
    page.sweep_mode.setChecked(True)
    page.param_combo.setCurrentIndex(page.param_combo.findData("lambda"))
    for k in (32, 2):
        window.controls.knnlm.k.setValue(k)
        evaluate()
    for i in range(2):
        page.runs_list.item(i).setSelected(True)
    settle()
    save(window, "evaluate-overlay")

    # Side by side: one prompt, the four methods, aligned by step.
    side = window.side_by_side_page
    show_page(window, side)
    side.prompt.setPlainText(args.prompt)
    side.set_methods(["none", "knnlm", "spalm", "memtrf"])
    side.max_tokens.setValue(16)
    side.run()
    wait_until(lambda: not side.is_running())
    settle()
    save(window, "side-by-side")
    return 0


if __name__ == "__main__":
    sys.exit(main())

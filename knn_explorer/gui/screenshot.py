"""`knn-explorer gui --screenshot FILE --size WxH --page P`: the app as a user sees it, as a PNG.

It opens the main window on the demo at the given size (building the demo datastore first if this
data home has none), runs the page's usual job (a short generation on Explore, a comparison on
Evaluate, a side-by-side run), writes the window to FILE and exits. The docs' screenshots are made
with it, and anyone can check the layout at their own screen size the same way.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import QApplication

from ..core.home import DEMO_DOCS_DIR

PAGES = ("explore", "evaluate", "side-by-side")
# The Evaluate page's job on one held-out document: a comparison a screenshot can wait for.
EVALUATE_TEXT = DEMO_DOCS_DIR.parent / "heldout" / "design.rst"
EVALUATE_METHODS = ("none", "knnlm", "spalm")


class ScreenshotError(RuntimeError):
    pass


def parse_size(text: str) -> tuple[int, int]:
    """'1366x768' → (1366, 768); a ValueError with the reason otherwise."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size must look like 1366x768, not '{text}'")
    width, height = (int(p) for p in parts)
    if not (320 <= width <= 8192 and 240 <= height <= 8192):
        raise ValueError(f"size {width}x{height} is outside 320x240 … 8192x8192")
    return width, height


def wait_until(done: Callable[[], bool], what: str, timeout: float) -> None:
    """Run the event loop until `done()`; a ScreenshotError naming `what` after `timeout` seconds."""
    app = QApplication.instance()
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise ScreenshotError(f"gave up waiting for {what} after {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.02)


def settle(seconds: float) -> None:
    """Let queued signals and deferred redraws run for `seconds`."""
    deadline = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() > deadline, "", seconds + 5)


def _explore(window) -> None:
    controls = window.controls
    controls.max_tokens.setValue(16)
    controls.compare.setChecked(True)
    window.generate()
    wait_until(lambda: window.generation_job is not None and not window.generation_job.is_running(),
               "the generation", 300)
    wait_until(lambda: bool(window.current_run and window.current_run.records), "the first token", 10)
    settle(0.3)  # the run's last signals (it selects its last token) arrive first
    records = window.current_run.records
    window.strip.select(records[len(records) // 2].step)  # a token with neighbours, mid-run


def _evaluate(window) -> None:
    page = window.evaluate_page
    window.show_page(page)
    page.compare_mode.setChecked(True)
    page.text_field.setText(str(EVALUATE_TEXT))
    for method, box in page.method_boxes.items():
        box.setChecked(method in EVALUATE_METHODS)
    job = page.run()
    if job is None:
        raise ScreenshotError(f"the Evaluate page did not run: {page.status.text()}")
    wait_until(lambda: not job.is_running() and page.run_button.isEnabled(), "the comparison", 900)


def _side_by_side(window) -> None:
    page = window.side_by_side_page
    window.show_page(page)
    page.run()
    wait_until(lambda: not page.is_running(), "the side-by-side run", 600)


JOBS = {"explore": _explore, "evaluate": _evaluate, "side-by-side": _side_by_side}


def take(path: Path, size: tuple[int, int], page: str = "explore") -> Path:
    """Open the app at `size`, run `page`'s job, save the window as `path` (PNG)."""
    from .main_window import DEMO_DATASTORE, MainWindow  # torch and transformers: once the arguments are good

    app = QApplication.instance() or QApplication([])
    app.setApplicationName("kNN Explorer")
    app.setOrganizationName("knn-explorer")
    window = MainWindow(model_spec="demo")
    window.remember_on_close = False
    window.resize(*size)
    window.show()
    try:
        wait_until(lambda: window.model is not None or window.model_label.text().startswith("Model: not loaded"),
                   "the demo model", 300)
        if window.model is None:
            raise ScreenshotError(window.model_label.text())
        # On a fresh data home the window builds the demo datastore first; then it is used.
        wait_until(lambda: not window.build_trackers, "the demo datastore's build", 1800)
        if window.datastore_name is None and window.catalog.datastore(DEMO_DATASTORE) is not None:
            window.use_datastore(DEMO_DATASTORE)
        if window.datastore_name is None:
            raise ScreenshotError(f"no datastore fits the demo model (the demo's, '{DEMO_DATASTORE}', is missing)")
        JOBS[page](window)
        window.resize(*size)  # a long message never widens the window, but make sure of the size
        settle(0.5)  # plots redraw on a timer
        path.parent.mkdir(parents=True, exist_ok=True)
        if not window.grab().save(str(path), "PNG"):
            raise ScreenshotError(f"could not write {path}")
        return path
    finally:
        window.close()

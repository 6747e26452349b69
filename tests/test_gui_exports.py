"""Every export in the app says where the file went, or in one line why it could not be written
(issue 11: Ctrl+E never worked; a folder or an unwritable path printed a traceback and showed nothing)."""
import json
import resource
import signal

import pytest
from PySide6.QtWidgets import QFileDialog

from knn_explorer.gui.main_window import MainWindow

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def window(qtbot, small_datastore, tiny_gpt2_dir):
    """The tiny model with the shared datastore, and a 4-token run of the LM alone."""
    _model, catalog, _datastore, _docs = small_datastore
    window = MainWindow(catalog, model_spec=str(tiny_gpt2_dir), build_demo=False)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.model is not None, timeout=30_000)
    window.controls.method.setCurrentIndex(window.controls.method.findData("none"))
    window.controls.prompt.setPlainText("The quick")
    window.controls.max_tokens.setValue(4)
    window.controls.generate.click()
    qtbot.waitUntil(lambda: window.current_run is not None and len(window.current_run.records) == 4
                    and not window.generation_job.is_running(), timeout=30_000)
    return window


def action(window, shortcut: str):
    return next(a for a in window.menuBar().actions()[0].menu().actions() if a.shortcut().toString() == shortcut)


def one_line_failure(message: str | None) -> bool:
    return bool(message) and message.startswith("Could not export") and "\n" not in message


def test_ctrl_e_writes_the_plots_as_pngs_into_the_chosen_folder(qtbot, window, tmp_path, monkeypatch):
    folder = tmp_path / "plots"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *_args, **_kwargs: str(folder)))
    action(window, "Ctrl+E").trigger()  # as the menu and the shortcut do: triggered(checked=False)
    pngs = sorted(folder.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == PNG for p in pngs)
    assert window.statusBar().currentMessage() == f"Exported the plots as PNG to {folder}"


def test_run_exports_to_a_folder_or_below_a_file_are_one_line_messages(qtbot, window, tmp_path, capfd):
    out = tmp_path / "out"
    out.mkdir()
    a_file = out / "notes.txt"
    a_file.write_text("not a folder")
    attempts = [(window.export_json, out), (window.export_csv, out),  # a folder where a file goes
                (window.export_json, a_file / "run.json"), (window.export_csv, a_file / "run.csv"),
                (window.export_plots, a_file), (window.export_plots, a_file / "plots")]
    for export, path in attempts:
        window.last_error = None
        assert not export(path)
        assert one_line_failure(window.last_error), (export.__name__, path, window.last_error)
        assert window.statusBar().currentMessage() == window.last_error
    assert a_file.read_text() == "not a folder" and sorted(out.iterdir()) == [a_file]  # nothing half-written
    assert "Traceback" not in capfd.readouterr().err

    saved = window.export_json(out / "run.json")
    assert json.loads(saved.read_text(encoding="utf-8"))["prompt"] == "The quick"
    assert window.statusBar().currentMessage() == f"Exported the run as JSON to {saved}"


def test_a_runs_files_say_which_model_datastore_and_settings_made_it(qtbot, window, tmp_path):
    """Issue 13 item 12: every export carries the model, the datastore and all settings."""
    import csv

    window.use_datastore("small")
    window.controls.method.setCurrentIndex(window.controls.method.findData("knnlm"))
    window.controls.knnlm.k.setValue(3)
    window.controls.max_tokens.setValue(2)
    window.controls.generate.click()
    qtbot.waitUntil(lambda: window.current_run.settings["method"] == "knnlm" and len(window.current_run.records) == 2
                    and not window.generation_job.is_running(), timeout=30_000)
    data = json.loads(window.export_json(tmp_path / "run.json").read_text(encoding="utf-8"))
    assert (data["model"], data["datastore"], data["settings"]["k"]) == (window.model.name, "small", 3)
    with open(window.export_csv(tmp_path / "run.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {(r["model"], r["datastore"], r["method"], r["k"], r["max_new_tokens"]) for r in rows} == {
        (window.model.name, "small", "knnlm", "3", "2")}
    assert "prompt" not in rows[0] and "lambda_mode" in rows[0] and "greedy" in rows[0]


def test_a_disk_that_fills_up_mid_export_keeps_the_previous_file_whole(window, tmp_path):
    (tmp_path / "out").mkdir()
    path = window.export_csv(tmp_path / "out" / "run.csv")
    before = path.read_bytes()
    window.current_run.records[:] = window.current_run.records * 50  # more than the disk has room for
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 100, hard))  # as a full disk, even for root
    try:
        assert window.export_csv(path) is None
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert one_line_failure(window.last_error) and "File too large" in window.last_error
    assert path.read_bytes() == before and sorted(path.parent.iterdir()) == [path]


def test_the_evaluate_pages_exports_say_where_or_why_not(qtbot, window, tmp_path, small_datastore, capfd):
    _model, _catalog, _datastore, docs = small_datastore
    heldout = tmp_path / "heldout.md"
    heldout.write_text(next(docs.rglob("*.md")).read_text(encoding="utf-8")[:400], encoding="utf-8")
    window.use_datastore("small")
    page = window.evaluate_page
    window.show_page(page)
    page.text_field.setText(str(heldout))
    page.context_spin.setValue(32)
    page.stride_spin.setValue(16)
    page.sweep_mode.setChecked(True)
    page.param_combo.setCurrentIndex(page.param_combo.findData("lambda"))
    page.values_edit.setText("0, 0.5")
    job = page.run()
    qtbot.waitUntil(lambda: not job.is_running() and page.run_button.isEnabled(), timeout=60_000)
    assert "Kept as run" in page.status.text()
    out = tmp_path / "out"
    out.mkdir()

    for export, path in ((page.export_csv, out / "sweep.csv"), (page.export_json, out / "sweep.json")):
        assert export(path) == path and path.stat().st_size > 0 and str(path) in page.status.text()
    png = page.export_png(out / "plots.png")
    assert png.read_bytes()[:8] == PNG and str(out / "plots.png") in page.status.text()

    for export, path in ((page.export_csv, out), (page.export_json, out), (page.export_png, out),
                         (page.export_png, out / "sweep.csv" / "plots.png"),
                         (page.export_json, out / "sweep.csv" / "x.json")):
        assert not export(path)
        assert one_line_failure(page.status.text()), (export.__name__, path, page.status.text())
        assert window.statusBar().currentMessage() == page.status.text()
    assert "Traceback" not in capfd.readouterr().err

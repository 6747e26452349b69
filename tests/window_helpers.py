"""The main window as the GUI tests open it: shown, its model loaded, no first-launch demo build."""
from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.gui.main_window import MainWindow


def loaded_window(qtbot, catalog: Catalog | None = None, spec: str = "demo") -> MainWindow:
    window = MainWindow(catalog or Catalog(), model_spec=spec, build_demo=False)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.model is not None, timeout=30_000)
    return window

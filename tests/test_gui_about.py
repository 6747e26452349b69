"""The window carries the app's icon, and Help ▸ About names the one version."""
from PySide6.QtWidgets import QMessageBox

import knn_explorer
from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.gui.about import app_icon
from knn_explorer.gui.main_window import MainWindow


def test_the_window_has_the_icon_and_the_about_box_names_the_version(qtbot, tiny_gpt2_dir, data_home):
    icon = app_icon()
    assert sorted(s.width() for s in icon.availableSizes()) == [16, 24, 32, 48, 64, 128, 256, 512]
    window = MainWindow(Catalog(), model_spec=str(tiny_gpt2_dir), build_demo=False)
    qtbot.addWidget(window)
    assert not window.windowIcon().isNull()
    assert window.windowIcon().availableSizes() == icon.availableSizes()

    menus = {a.text(): a.menu() for a in window.menuBar().actions()}
    about = next(a for a in menus["&Help"].actions() if a.text() == "About kNN Explorer")
    about.trigger()
    box = qtbot.waitUntil(lambda: window.findChild(QMessageBox) is not None) or window.findChild(QMessageBox)
    assert box.windowTitle() == "About kNN Explorer"
    assert f"kNN Explorer {knn_explorer.__version__}" in box.text()
    assert str(data_home) in box.text() and "PyTorch" in box.text()
    assert not box.iconPixmap().isNull()
    box.close()

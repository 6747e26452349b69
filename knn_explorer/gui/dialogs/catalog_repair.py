"""Opening the catalog at start-up, and offering to rebuild it when it is damaged."""
from __future__ import annotations

from typing import Callable

from PySide6.QtWidgets import QMessageBox, QWidget

from ...core.datastore.catalog import Catalog, CatalogDamaged, CatalogError
from ...core.datastore.catalog_recovery import rebuild_catalog


def ask_to_rebuild(reason: str, parent: QWidget | None = None) -> bool:
    answer = QMessageBox.question(
        parent, "The catalog is damaged",
        f"{reason[0].upper()}{reason[1:]}.\n\nRebuild it from the datastore folders? The damaged file is "
        "kept beside the new one. Your datastores are kept; the list of recent models, catalogued "
        "adapters and kept evaluation runs are not in the folders and start empty.",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes,
    )
    return answer == QMessageBox.StandardButton.Yes


def show_failure(reason: str, parent: QWidget | None = None) -> None:
    QMessageBox.critical(parent, "kNN Explorer cannot start", f"{reason[0].upper()}{reason[1:]}.")


def open_catalog(confirm: Callable[[str], bool] = ask_to_rebuild,
                 fail: Callable[[str], None] = show_failure) -> Catalog | None:
    """The catalog, rebuilt first if it is damaged and the user agrees; None (after telling the
    user why) when the app cannot go on."""
    try:
        return Catalog()
    except CatalogDamaged as exc:
        if not confirm(str(exc)):
            return None
        try:
            rebuild_catalog()
            return Catalog()
        except (CatalogError, OSError) as again:
            fail(f"the catalog could not be rebuilt: {again}")
            return None
    except CatalogError as exc:
        fail(str(exc))
        return None

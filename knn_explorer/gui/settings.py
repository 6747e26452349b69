"""Remembered settings: window layout, last model, last datastore, generation parameters.

Stored as an INI file in the data home (`$KNN_EXPLORER_HOME/settings.ini`), so everything the app
writes lives in one folder and tests with their own data home never share settings.
"""
from __future__ import annotations

import json

from PySide6.QtCore import QByteArray, QSettings

from ..core.home import data_home

MAX_RECENT_MODELS = 8


def settings_file() -> QSettings:
    """The app's one settings file; pages that remember their own fields use it too."""
    return QSettings(str(data_home() / "settings.ini"), QSettings.Format.IniFormat)


class AppSettings:
    def __init__(self):
        self._qs = settings_file()

    def _get(self, key: str, default=None):
        value = self._qs.value(key, default)
        return default if value is None else value

    @property
    def last_model(self) -> str:
        return str(self._get("model/last", "demo"))

    @last_model.setter
    def last_model(self, spec: str) -> None:
        self._qs.setValue("model/last", spec)
        recent = [spec] + [m for m in self.recent_models if m != spec]
        self._qs.setValue("model/recent", json.dumps(recent[:MAX_RECENT_MODELS]))

    @property
    def recent_models(self) -> list[str]:
        try:
            return list(json.loads(self._get("model/recent", "[]")))
        except (TypeError, ValueError):
            return []

    @property
    def device(self) -> str:
        return str(self._get("model/device", "auto"))

    @device.setter
    def device(self, device: str) -> None:
        self._qs.setValue("model/device", device)

    @property
    def last_datastore(self) -> str | None:
        value = self._get("datastore/last", "")
        return str(value) or None

    @last_datastore.setter
    def last_datastore(self, name: str | None) -> None:
        self._qs.setValue("datastore/last", name or "")

    @property
    def generation(self) -> dict:
        try:
            return dict(json.loads(self._get("generation/parameters", "{}")))
        except (TypeError, ValueError):
            return {}

    @generation.setter
    def generation(self, parameters: dict) -> None:
        self._qs.setValue("generation/parameters", json.dumps(parameters))

    def save_window(self, geometry: QByteArray, state: QByteArray, explore: QByteArray) -> None:
        """The window's geometry, its docks' state, and the Explore page's pane sizes."""
        self._qs.setValue("window/geometry", geometry)
        self._qs.setValue("window/state", state)
        self._qs.setValue("window/explore", explore)

    def window(self) -> tuple[QByteArray | None, QByteArray | None, QByteArray | None]:
        return self._get("window/geometry"), self._get("window/state"), self._get("window/explore")

    @property
    def memory_window(self) -> int | None:
        """The Memorizing Transformer's local window in tokens (0: the model's maximum; None: never
        chosen). Kept under its own key the moment it changes, not only with the controls at exit: an
        earlier version saved the controls with no window (null), read back as the model's maximum."""
        try:
            value = self._get("memorizing/window")
            return None if value is None else max(0, int(value))
        except (TypeError, ValueError):
            return None

    @memory_window.setter
    def memory_window(self, tokens: int) -> None:
        self._qs.setValue("memorizing/window", int(tokens))

    def sync(self) -> None:
        self._qs.sync()

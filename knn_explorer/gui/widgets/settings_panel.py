"""A method's settings panel generated from its `Settings` dataclass (a plug-in that ships no Qt panel).

One row per field, the widget chosen by the field's type:
    int → QSpinBox, float → QDoubleSpinBox, bool → QCheckBox, str → QLineEdit, or a QComboBox when the
    field's metadata has `choices` (`setting(..., choices=...)`) or its type is a `Literal[...]`;
    `int | None` / `float | None` → a spin box whose lowest value reads "auto" (None);
    `str | None` → a line edit, empty meaning None. Any other type is shown, not edited: it keeps its
    default (or the value `set_settings` gave).
`setting()`'s `minimum` / `maximum` bound the spin boxes; its `help` is the tooltip. A field's
`inverted` flag is the CLI's business (`--approximate` for `exact_distances`): the panel shows the
field itself.

`settings()` is a validated instance or a `MethodError` whose text is one line; `values()` / `apply()`
are the plain values the app remembers (JSON), `set_settings()` shows an instance.
`settings_from_values()` is the same construction without widgets, for jobs' threads.
"""
from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGridLayout, QLabel, QLineEdit,
                               QSpinBox, QWidget)

from ...core.methods import MethodError, MethodSettings

AUTO_TEXT = "auto"
INT_LIMIT = 2**31 - 1  # QSpinBox holds a C int
FLOAT_LIMIT = 1e12
FLOAT_DECIMALS = 6
ONE_COLUMN_ROWS = 4  # more fields than this are laid out in two columns, so the panel stays short


@dataclass(frozen=True)
class FieldSpec:
    """What the panel needs to know about one settings field."""

    name: str
    kind: str  # "int", "float", "bool", "str", "choice" or "other" (shown, not edited)
    optional: bool  # None is a value ("auto" / empty)
    default: Any
    label: str
    help: str
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None


def _base_type(annotation) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        return (args[0] if len(args) == 1 else annotation), optional
    return annotation, False


def field_specs(settings_class: type[MethodSettings]) -> list[FieldSpec]:
    """The panel's view of each field a Settings dataclass takes in its constructor."""
    try:
        hints = typing.get_type_hints(settings_class)
    except Exception:  # an annotation that does not resolve: fall back to what the defaults say
        hints = {}
    specs = []
    for f in fields(settings_class):
        if not f.init:
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        annotation, optional = _base_type(hints.get(f.name, type(default) if default is not None else Any))
        optional = optional or default is None
        meta = f.metadata
        choices = tuple(meta.get("choices") or ())
        if not choices and typing.get_origin(annotation) is typing.Literal:
            choices = typing.get_args(annotation)
        if choices:
            kind = "choice"
        elif annotation is bool:
            kind = "bool"
        elif annotation is int:
            kind = "int"
        elif annotation is float:
            kind = "float"
        elif annotation is str:
            kind = "str"
        else:
            kind = "other"
        label = meta.get("label") or f.name.strip("_").replace("_", " ")
        specs.append(FieldSpec(f.name, kind, optional, default, label, meta.get("help") or "", choices,
                               meta.get("minimum"), meta.get("maximum")))
    return specs


def one_line(reason: object) -> str:
    text = " ".join(str(reason).split())
    return text or "invalid settings"


def settings_from_values(settings_class: type[MethodSettings], values: dict | None, who: str = "") -> MethodSettings:
    """`settings_class` with the remembered `values` over its defaults (unknown keys ignored), validated
    by the class; a `MethodError` with a one-line reason (prefixed by `who`) if it refuses them."""
    known = {spec.name for spec in field_specs(settings_class)}
    chosen = {name: value for name, value in (values or {}).items() if name in known}
    try:
        return settings_class(**chosen)
    except Exception as exc:  # the class's own validation: ValueError, TypeError, …
        raise MethodError(f"{who}: {one_line(exc)}" if who else one_line(exc)) from exc


class _FloatBox(QDoubleSpinBox):
    """A double spin box that shows 0.5, not 0.500000."""

    def textFromValue(self, value: float) -> str:
        text = self.locale().toString(float(value), "f", self.decimals())
        point = self.locale().decimalPoint()
        return text.rstrip("0").rstrip(point) if point in text else text


class SettingsPanel(QWidget):
    """The generated panel of one Settings dataclass."""

    changed = Signal()

    def __init__(self, settings_class: type[MethodSettings], who: str = "", note: str = "", parent=None):
        super().__init__(parent)
        self.settings_class = settings_class
        self.who = who  # prefixes the one-line message (the method's label)
        self.specs = field_specs(settings_class)
        self.widgets: dict[str, QWidget] = {}
        self._others: dict[str, Any] = {}  # fields shown, not edited
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        rows = len(self.specs) if len(self.specs) <= ONE_COLUMN_ROWS else math.ceil(len(self.specs) / 2)
        for i, spec in enumerate(self.specs):
            widget = self._make(spec)
            self.widgets[spec.name] = widget
            tip = spec.help or spec.name
            widget.setToolTip(tip)
            row, column = i % rows, (i // rows) * 2
            if spec.kind == "bool":
                grid.addWidget(widget, row, column, 1, 2)
            else:
                label = QLabel(spec.label)
                label.setToolTip(tip)
                label.setBuddy(widget)
                grid.addWidget(label, row, column)
                grid.addWidget(widget, row, column + 1)
        for column in range(1, 4, 2):
            grid.setColumnStretch(column, 1)
        if self.specs:
            form.addRow(grid)
        self.note = QLabel(note)
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #868e96")
        self.note.setVisible(bool(note))
        form.addRow(self.note)
        self.problem_label = QLabel("")
        self.problem_label.setWordWrap(True)
        self.problem_label.setStyleSheet("color: #c92a2a")
        self.problem_label.hide()
        form.addRow(self.problem_label)
        self.changed.connect(self._check)
        self.apply({spec.name: spec.default for spec in self.specs})

    # ---- widgets ---------------------------------------------------------------------------
    def _make(self, spec: FieldSpec) -> QWidget:
        if spec.kind == "bool":
            widget = QCheckBox(spec.label)
            widget.toggled.connect(self.changed)
        elif spec.kind == "int":
            low = int(spec.minimum) if spec.minimum is not None else (0 if spec.optional else -INT_LIMIT)
            high = int(spec.maximum) if spec.maximum is not None else INT_LIMIT
            widget = QSpinBox(minimum=low - 1 if spec.optional else low, maximum=high)
            if spec.optional:
                widget.setSpecialValueText(AUTO_TEXT)
            widget.valueChanged.connect(self.changed)
        elif spec.kind == "float":
            low = float(spec.minimum) if spec.minimum is not None else (0.0 if spec.optional else -FLOAT_LIMIT)
            high = float(spec.maximum) if spec.maximum is not None else FLOAT_LIMIT
            widget = _FloatBox(decimals=FLOAT_DECIMALS, singleStep=0.1)
            widget.setRange(low - widget.singleStep() if spec.optional else low, high)  # one step below: "auto"
            if spec.optional:
                widget.setSpecialValueText(AUTO_TEXT)
            widget.valueChanged.connect(self.changed)
        elif spec.kind == "choice":
            widget = QComboBox()
            if spec.optional:
                widget.addItem(AUTO_TEXT, None)
            for choice in spec.choices:
                widget.addItem(str(choice), choice)
            widget.currentIndexChanged.connect(self.changed)
        elif spec.kind == "str":
            widget = QLineEdit()
            if spec.optional:
                widget.setPlaceholderText(AUTO_TEXT)
            widget.textChanged.connect(self.changed)
        else:
            widget = QLineEdit()
            widget.setReadOnly(True)
        return widget

    def _read(self, spec: FieldSpec):
        widget = self.widgets[spec.name]
        if spec.kind == "bool":
            return widget.isChecked()
        if spec.kind in ("int", "float"):
            if spec.optional and widget.value() == widget.minimum():
                return None
            return widget.value()
        if spec.kind == "choice":
            return widget.currentData()
        if spec.kind == "str":
            text = widget.text()
            return None if spec.optional and not text else text
        return self._others.get(spec.name, spec.default)

    def _show(self, spec: FieldSpec, value) -> None:
        widget = self.widgets[spec.name]
        if spec.kind == "bool":
            widget.setChecked(bool(value))
        elif spec.kind in ("int", "float"):
            if value is None:
                widget.setValue(widget.minimum() if spec.optional else widget.value())
            else:
                widget.setValue(int(value) if spec.kind == "int" else float(value))
        elif spec.kind == "choice":
            index = widget.findData(value)
            if index < 0:  # a value the choices do not list: shown, and the class judges it
                widget.addItem(str(value), value)
                index = widget.count() - 1
            widget.setCurrentIndex(index)
        elif spec.kind == "str":
            widget.setText("" if value is None else str(value))
        else:
            self._others[spec.name] = value
            widget.setText(repr(value))

    # ---- values ----------------------------------------------------------------------------
    def values(self) -> dict:
        """The fields as the widgets hold them (plain values, for the settings file); not validated."""
        return {spec.name: self._read(spec) for spec in self.specs}

    def apply(self, values: dict) -> None:
        """Show remembered values; unknown keys and values a widget cannot hold are ignored."""
        for spec in self.specs:
            if spec.name in (values or {}):
                try:
                    self._show(spec, values[spec.name])
                except (TypeError, ValueError, OverflowError):
                    pass
        self._check()

    def settings(self) -> MethodSettings:
        """A validated instance, or a `MethodError` whose text is one line."""
        return settings_from_values(self.settings_class, self.values(), self.who)

    def set_settings(self, settings: MethodSettings) -> None:
        self.apply({spec.name: getattr(settings, spec.name) for spec in self.specs})

    def problem(self) -> str | None:
        """The one-line reason the values are refused, or None."""
        try:
            self.settings()
        except MethodError as exc:
            return str(exc)
        return None

    def _check(self) -> None:
        reason = self.problem()
        self.problem_label.setText(reason or "")
        self.problem_label.setVisible(reason is not None)

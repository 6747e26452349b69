"""What the wheel and the bundle carry: every package, every resource, one version, the drawn icon.

The slow tests that install the wheel and run the bundle are in test_install.py."""
from __future__ import annotations

import importlib
import struct
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def test_every_sub_package_of_knn_explorer_is_in_the_wheel():
    """pyproject lists the packages (resources/ is mapped in, which packages.find cannot do): a new
    sub-package missing from the list would be left out of every installed copy."""
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "knn_explorer").rglob("__init__.py")}
    assert set(SETUPTOOLS["packages"]) == found | {"knn_explorer.resources"}
    assert SETUPTOOLS["package-dir"] == {"knn_explorer.resources": "resources"}


def shipped_resources() -> set[Path]:
    resources = ROOT / "resources"
    return {p for pattern in SETUPTOOLS["package-data"]["knn_explorer.resources"] for p in resources.glob(pattern)
            if p.is_file()}


def test_package_data_holds_every_resource():
    """The wheel's (and the bundle's) globs match every file under resources/ but Python's and a
    training run's leftovers: a new demo file is not silently left out of installed copies."""
    resources = ROOT / "resources"
    every = {p for p in resources.rglob("*") if p.is_file() and "__pycache__" not in p.parts
             and p.suffix not in (".tmp", ".pyc") and p.name != "__init__.py"}
    assert shipped_resources() == every
    names = {str(p.relative_to(resources)) for p in every}
    for needed in ("demo/model/config.json", "demo/model/model.safetensors", "demo/knnlm-fit.json",
                   "demo/memtrf.safetensors", "demo/spalm.safetensors", "icons/knn-explorer.svg",
                   "desktop/io.github.knnexplorer.KnnExplorer.desktop"):
        assert needed in names


def test_resources_are_found_through_importlib_resources():
    import importlib.resources

    from knn_explorer.core import home

    assert home.RESOURCES == Path(importlib.resources.files("knn_explorer.resources"))
    assert home.RESOURCES.resolve() == (ROOT / "resources").resolve()  # the editable install maps the clone's folder
    assert (home.DEMO_MODEL_DIR / "config.json").is_file() and home.DEMO_DOCS_DIR.is_dir()


def test_resources_fall_back_to_the_folder_when_nothing_is_installed(monkeypatch):
    """A clone on sys.path with no install (no knn_explorer.resources mapping) still finds the demo."""
    import importlib.resources

    from knn_explorer.core import home

    def not_installed(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", not_installed)
    assert home._resources() == ROOT / "resources"


def test_one_version_for_the_package_and_the_command(capsys):
    """pyproject reads knn_explorer.__version__ (the wheel's metadata: test_install.py); so does
    `--version` (and the About box: test_gui_about.py)."""
    import knn_explorer
    from knn_explorer.cli import main

    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]
    assert SETUPTOOLS["dynamic"]["version"] == {"attr": "knn_explorer.__version__"}
    with pytest.raises(SystemExit) as exit_info:  # argparse's version action prints, then exits 0
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"knn-explorer {knn_explorer.__version__}"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_the_committed_icon_is_the_one_the_script_draws():
    sys.path.insert(0, str(ROOT / "packaging"))
    try:
        make_icon = importlib.import_module("make_icon")
    finally:
        sys.path.remove(str(ROOT / "packaging"))
    icons = ROOT / "resources" / "icons"
    assert (icons / "knn-explorer.svg").read_text(encoding="utf-8") == make_icon.svg()
    from knn_explorer.core.desktop_integration import ICON_SIZES

    assert make_icon.SIZES == ICON_SIZES
    for size in ICON_SIZES:
        assert png_size(icons / f"knn-explorer-{size}.png") == (size, size)


def test_the_bundle_ships_what_the_wheel_ships():
    """packaging/knn-explorer.spec reads the same package-data globs and maps them to the same place."""
    spec = (ROOT / "packaging" / "knn-explorer.spec").read_text(encoding="utf-8")
    assert '["package-data"]["knn_explorer.resources"]' in spec
    assert 'Path("knn_explorer/resources")' in spec
    assert 'copy_metadata("knn-explorer")' in spec

"""The app as a user installs it, not as a clone runs it.

- The wheel: built from a copy of the project, installed into a fresh virtual environment (torch
  first, pinned as the Makefile pins it, then the wheel), and run from a folder outside the project
  with no network: `generate --model demo`, the app's first launch offscreen (`gui --screenshot`,
  which builds the demo datastore from the installed documents), and `list` showing it catalogued.
- The bundle (packaging/knn-explorer.spec): its executable does the same. Building it takes long
  (docs/ARCHITECTURE.md, "Packaging"), so it runs only with KNN_EXPLORER_BUNDLE_TEST=1 (after
  `make bundle`, or it builds one), or with KNN_EXPLORER_BUNDLE=<folder> naming a built bundle.

"No network" is a new network namespace (`unshare -n`, which CI's root has); where that cannot be
made, the Hugging Face libraries are told to stay offline instead, and the test says so.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import knn_explorer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "To register a view, use the"
# What a copy of the project leaves behind: the developer's environment and earlier builds.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".ruff_cache", "*.tmp")


def offline_prefix() -> tuple[list[str], dict[str, str]]:
    """A command prefix with no network, else environment variables that keep the hub offline."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"], {}
    print("unshare -n is not permitted here: running with HF_HUB_OFFLINE=1 instead of without a network")
    return [], {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def clean_environment(home: Path) -> dict[str, str]:
    """The user's environment less this venv and this clone: nothing leads back to the project."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not k.startswith("PYTEST")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(ROOT)))
    env.update(KNN_EXPLORER_HOME=str(home), QT_QPA_PLATFORM="offscreen")
    return env


def run(command: list, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    started = time.monotonic()
    proc = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)
    print(f"{time.monotonic() - started:6.1f} s  {' '.join(str(c) for c in command)[:160]}")
    assert proc.returncode == 0, f"{command} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def check_the_installed_app(executable: list, installed_resources: Path, tmp_path: Path) -> None:
    """From a folder outside the project, without a network: the demo generates, the first launch
    builds and catalogues the demo datastore from the installed documents, the version is the one."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = tmp_path / "data-home"
    env = clean_environment(home)
    prefix, offline = offline_prefix()
    env.update(offline)
    app = [*prefix, *executable]

    version = run([*app, "--version"], elsewhere, env, 120).stdout.strip()
    assert version == f"knn-explorer {knn_explorer.__version__}"

    generated = run([*app, "generate", "--model", "demo", "--prompt", PROMPT, "--max-new-tokens", "8", "--json"],
                    elsewhere, env, 600)
    records = [json.loads(line) for line in generated.stdout.splitlines()]
    assert len(records) == 8 and all(r["method"] == "none" and r["p_final"] for r in records)

    shot = elsewhere / "first-launch.png"
    launched = run([*app, "gui", "--screenshot", shot, "--size", "1024x700"], elsewhere, env, 1500)
    assert "wrote" in launched.stdout and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    listing = json.loads(run([*app, "list", "--json"], elsewhere, env, 300).stdout)
    datastores = {d["name"]: d for d in listing["datastores"]}
    demo = datastores["demo-docs"]
    assert demo["status"] == "complete" and demo["entries"] > 10_000
    documents = [d["path"] for d in demo["documents"] if d["status"] == "indexed"]
    assert len(documents) >= 50
    installed_docs = installed_resources / "demo" / "docs"
    assert all(Path(p).is_relative_to(installed_docs) for p in documents), documents[:3]
    assert not any(Path(p).is_relative_to(ROOT / "resources") for p in documents)  # not the clone's
    assert (home / "catalog.sqlite").is_file()


def torch_requirement() -> str:
    """The Makefile's pin (the CPU build on this machine kind)."""
    match = re.search(r"^TORCH\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "the Makefile pins torch as TORCH := torch==X"
    return match.group(1)


def test_the_wheel_installs_into_a_fresh_venv_and_runs_offline_from_any_folder(tmp_path):
    started = time.monotonic()
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    wheels = tmp_path / "wheels"
    # This venv's setuptools (no build isolation): building needs no network.
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", wheels, source],
        source, dict(os.environ), 300)
    (wheel,) = wheels.glob("knn_explorer-*.whl")
    assert wheel.name.startswith(f"knn_explorer-{knn_explorer.__version__}-")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("knn_explorer/resources/demo/model/model.safetensors", "knn_explorer/resources/demo/knnlm-fit.json",
                    "knn_explorer/resources/icons/knn-explorer-512.png",
                    "knn_explorer/resources/desktop/io.github.knnexplorer.KnnExplorer.desktop"):
        assert shipped in names
    assert not any(n.startswith(("resources/", "tests/", "packaging/")) for n in names)
    print(f"wheel: {len(names)} files, {wheel.stat().st_size / 1e6:.1f} MB")

    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    run([base_python, "-m", "venv", venv], tmp_path, env, 300)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    run([*pip, torch_requirement()], tmp_path, env, 900)  # first, as the Makefile does: never the CUDA build
    run([*pip, wheel], tmp_path, env, 1200)
    print(f"fresh install: {time.monotonic() - started:.0f} s")

    site = run([venv / "bin" / "python", "-c", "import knn_explorer.core.home as h; print(h.RESOURCES)"],
               tmp_path, env, 120).stdout.strip()
    installed = Path(site)
    assert installed.is_relative_to(venv) and installed.name == "resources" and installed.parent.name == "knn_explorer"
    check_the_installed_app([venv / "bin" / "knn-explorer"], installed, tmp_path)
    print(f"whole test: {time.monotonic() - started:.0f} s")


def built_bundle(tmp_path: Path) -> Path:
    """KNN_EXPLORER_BUNDLE, else dist/knn-explorer when `make bundle` made it, else a new build."""
    named = os.environ.get("KNN_EXPLORER_BUNDLE")
    if named:
        return Path(named)
    pytest.importorskip("PyInstaller", reason="PyInstaller is the `bundle` extra: pip install -e '.[bundle]'")
    dist = tmp_path / "dist"
    started = time.monotonic()
    run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN", "--distpath", dist,
         "--workpath", tmp_path / "work", ROOT / "packaging" / "knn-explorer.spec"], ROOT, dict(os.environ), 3600)
    print(f"bundle built in {time.monotonic() - started:.0f} s")
    return dist / "knn-explorer"


@pytest.mark.skipif(not (os.environ.get("KNN_EXPLORER_BUNDLE_TEST") or os.environ.get("KNN_EXPLORER_BUNDLE")),
                    reason="building the bundle takes long: KNN_EXPLORER_BUNDLE_TEST=1 builds and runs it, "
                           "KNN_EXPLORER_BUNDLE=dist/knn-explorer runs a built one")
def test_the_bundle_runs_the_demo_offline_and_exits_cleanly(tmp_path):
    bundle = built_bundle(tmp_path)
    executable = bundle / ("knn-explorer.exe" if sys.platform == "win32" else "knn-explorer")
    assert executable.is_file(), f"no executable in {bundle}"
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"bundle: {size / 1e6:.0f} MB in {bundle}")
    check_the_installed_app([executable], bundle / "_internal" / "knn_explorer" / "resources", tmp_path)

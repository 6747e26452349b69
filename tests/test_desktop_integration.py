"""`knn-explorer install-desktop`, and the shipped launcher entry and metainfo pass Debian's validators
(desktop-file-utils, appstream). The validators are required under CI (.ci/run installs them);
elsewhere a missing one skips its test with the package to install."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from cli_helpers import assert_one_line_error, cli
from knn_explorer.core import desktop_integration as desktop

desktop_supported = desktop.supported
VALIDATORS = {"desktop-file-validate": "desktop-file-utils", "appstreamcli": "appstream"}


def validator(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing under CI: .ci/run installs Debian's {VALIDATORS[name]}")
        pytest.skip(f"{name} is not installed (apt-get install {VALIDATORS[name]})")
    return path


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def xdg(tmp_path, monkeypatch):
    """A data home laid out as a distribution's /usr/share, so appstreamcli validate-tree can read it."""
    base = tmp_path / "root" / "usr" / "share"
    monkeypatch.setenv("XDG_DATA_HOME", str(base))
    return base


def test_install_desktop_writes_the_launcher_icons_and_metainfo_and_uninstall_removes_them(xdg):
    result = json.loads(cli("install-desktop", "--json").stdout)
    installed = [os.path.relpath(p, xdg) for p in result["installed"]]
    assert installed[:2] == [f"applications/{desktop.APP_ID}.desktop", f"metainfo/{desktop.APP_ID}.metainfo.xml"]
    assert f"icons/hicolor/scalable/apps/{desktop.APP_ID}.svg" in installed
    for size in desktop.ICON_SIZES:
        assert f"icons/hicolor/{size}x{size}/apps/{desktop.APP_ID}.png" in installed
    assert all((xdg / p).is_file() for p in installed)

    entry = (xdg / installed[0]).read_text(encoding="utf-8")
    command = result["command"]
    assert command == desktop.launch_command() and os.path.isabs(command[0])
    assert f"Exec={' '.join(command)} gui\n" in entry  # this venv's paths need no quoting
    assert f"TryExec={command[0]}\n" in entry
    assert f"Icon={desktop.APP_ID}\n" in entry

    again = json.loads(cli("install-desktop", "--json").stdout)  # installing twice replaces, never fails
    assert again["installed"] == result["installed"]

    out = cli("install-desktop", "--uninstall").stdout
    assert f"removed the launcher ({len(installed)} files" in out
    assert not any((xdg / p).exists() for p in installed)
    assert "nothing to remove" in cli("install-desktop", "--uninstall").stdout


def test_the_launch_command_is_the_console_script_beside_the_interpreter():
    command = desktop.launch_command()
    script = os.path.join(os.path.dirname(sys.executable), "knn-explorer")
    assert command == ([script] if os.path.isfile(script) else [sys.executable, "-m", "knn_explorer.cli"])


def test_exec_arguments_are_quoted_and_escaped_as_the_specification_says():
    assert desktop.exec_argument("/opt/knn/bin/knn-explorer") == "/opt/knn/bin/knn-explorer"
    assert desktop.exec_argument("/home/a b/knn-explorer") == '"/home/a b/knn-explorer"'
    # inside quotes: \" \` \$ \\ ; then the whole value's backslashes doubled; % as %%
    assert desktop.exec_argument('/x/$HOME "q"/100%') == '"/x/\\\\$HOME \\\\"q\\\\"/100%%"'
    assert desktop.exec_argument("/x/back\\slash") == '"/x/back\\\\\\\\slash"'
    with pytest.raises(desktop.DesktopIntegrationError, match="control character"):
        desktop.exec_argument("/x/new\nline")


def test_install_desktop_is_refused_where_there_are_no_freedesktop_menus(xdg, monkeypatch):
    assert desktop.supported("linux") is None and "Windows" in desktop.supported("win32")
    monkeypatch.setattr(desktop, "supported", lambda: desktop_supported("darwin"))
    result = cli("install-desktop", check=False)
    assert_one_line_error(result, 1, "freedesktop", "macOS")
    assert not xdg.exists()


def test_xdg_data_home_falls_back_to_local_share(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")  # the spec: only absolute paths count
    assert desktop.data_dir() == tmp_path / ".local" / "share"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert desktop.data_dir() == tmp_path / ".local" / "share"


def test_the_shipped_entry_and_an_installed_one_pass_desktop_file_validate(xdg, tmp_path):
    validate = validator("desktop-file-validate")
    checked = run(validate, desktop.DESKTOP_ENTRY)
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr
    # installed from a folder whose name needs quoting in Exec
    odd = tmp_path / "my apps $1" / "knn-explorer"
    written = desktop.install(command=[str(odd)])
    checked = run(validate, written[0])
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr
    assert 'Exec="' in written[0].read_text(encoding="utf-8")


def test_the_metainfo_and_the_installed_tree_pass_appstreamcli_validate(xdg):
    appstreamcli = validator("appstreamcli")
    checked = run(appstreamcli, "validate", "--no-net", desktop.METAINFO)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Validation was successful" in checked.stdout
    # the installed tree: metainfo, the launcher it names, and the icon
    desktop.install(command=["/usr/bin/knn-explorer"])
    checked = run(appstreamcli, "validate-tree", "--no-net", xdg.parent.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Validation was successful" in checked.stdout

"""`knn-explorer install-desktop`: the app in the desktop's menus, for the current user.

Copies what `resources/desktop/` and `resources/icons/` ship into the freedesktop places under
`$XDG_DATA_HOME` (default `~/.local/share`): the launcher entry (`applications/<id>.desktop`), the
AppStream metainfo (`metainfo/<id>.metainfo.xml`) and the icon (`icons/hicolor/<N>x<N>/apps/<id>.png`
at every size, `scalable/apps/<id>.svg`). The entry's `Exec` is rewritten to the command that is
running now (the venv's or pipx's `knn-explorer` script, the bundle's executable), so the launcher
works whether or not that folder is on the desktop session's PATH. `uninstall` removes the same
files. Nothing else is touched: menus notice new entries by themselves.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .home import RESOURCES

APP_ID = "io.github.knnexplorer.KnnExplorer"
ICON_NAME = "knn-explorer"  # resources/icons/knn-explorer.svg, knn-explorer-<N>.png (packaging/make_icon.py)
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
DESKTOP_DIR = RESOURCES / "desktop"
ICONS_DIR = RESOURCES / "icons"
DESKTOP_ENTRY = DESKTOP_DIR / f"{APP_ID}.desktop"
METAINFO = DESKTOP_DIR / f"{APP_ID}.metainfo.xml"

# The desktop entry specification's reserved characters: an Exec argument holding one is quoted.
_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


class DesktopIntegrationError(Exception):
    """Why the launcher cannot be installed here; str() is one line for the user."""


@dataclass(frozen=True)
class Placement:
    source: Path  # a shipped file (the entry is rewritten on the way)
    target: Path


def supported(platform: str | None = None) -> str | None:
    """None where freedesktop launchers exist (on `platform`, default this one); else why not, in one line."""
    if (platform or sys.platform) in ("darwin", "win32", "cygwin"):
        return ("install-desktop writes a freedesktop launcher (Linux and BSD desktops); on macOS and Windows "
                "use the application bundle (`make bundle`, see the README)")
    return None


def data_dir() -> Path:
    """`$XDG_DATA_HOME`, or `~/.local/share` when it is unset or not absolute (as the spec says)."""
    value = os.environ.get("XDG_DATA_HOME", "")
    return Path(value) if value and os.path.isabs(value) else Path.home() / ".local" / "share"


def launch_command() -> list[str]:
    """The command that starts this installation of the app (without the `gui` argument)."""
    if getattr(sys, "frozen", False):  # the PyInstaller bundle: its executable is the command
        return [sys.executable]
    # A venv's (or pipx's) console script sits beside its interpreter; sys.executable is not
    # resolved, since a venv's python is a link into the base installation.
    script = Path(sys.executable).parent / "knn-explorer"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "knn_explorer.cli"]


def exec_argument(argument: str) -> str:
    """One argument of a desktop entry's Exec key: %-escaped, quoted when it holds a reserved
    character, then escaped as the key's string value (a backslash doubled)."""
    if any(ord(c) < 32 for c in argument):
        raise DesktopIntegrationError(f"a desktop entry cannot start a command from {argument!r} "
                                      "(a control character in the path)")
    argument = argument.replace("%", "%%")
    if not argument or any(c in _RESERVED for c in argument):
        quoted = "".join("\\" + c if c in '"`$\\' else c for c in argument)
        argument = f'"{quoted}"'
    return argument.replace("\\", "\\\\")


def desktop_entry(command: list[str]) -> str:
    """The shipped entry with Exec (and TryExec) naming `command`."""
    lines = []
    for line in DESKTOP_ENTRY.read_text(encoding="utf-8").splitlines():
        if line.startswith("Exec="):
            line = "Exec=" + " ".join(exec_argument(a) for a in [*command, "gui"])
        elif line.startswith("TryExec="):
            line = "TryExec=" + command[0].replace("\\", "\\\\")
        lines.append(line)
    return "\n".join(lines) + "\n"


def placements(base: Path | None = None) -> list[Placement]:
    """Every file install-desktop writes, from where to where."""
    base = base or data_dir()
    icons = base / "icons" / "hicolor"
    return [
        Placement(DESKTOP_ENTRY, base / "applications" / DESKTOP_ENTRY.name),
        Placement(METAINFO, base / "metainfo" / METAINFO.name),
        Placement(ICONS_DIR / f"{ICON_NAME}.svg", icons / "scalable" / "apps" / f"{APP_ID}.svg"),
        *(Placement(ICONS_DIR / f"{ICON_NAME}-{n}.png", icons / f"{n}x{n}" / "apps" / f"{APP_ID}.png")
          for n in ICON_SIZES),
    ]


def install(base: Path | None = None, command: list[str] | None = None) -> list[Path]:
    """Write the launcher, metainfo and icons under `base` (default `$XDG_DATA_HOME`); the paths written."""
    reason = supported()
    if reason:
        raise DesktopIntegrationError(reason)
    files = placements(base)
    missing = [str(p.source) for p in files if not p.source.is_file()]
    if missing:
        raise DesktopIntegrationError(f"this installation lacks its desktop files ({missing[0]} is missing)")
    entry = desktop_entry(command or launch_command())
    written = []
    try:
        for placement in files:
            placement.target.parent.mkdir(parents=True, exist_ok=True)
            partial = placement.target.with_name(placement.target.name + ".partial")
            if placement.source == DESKTOP_ENTRY:
                partial.write_text(entry, encoding="utf-8")
            else:
                partial.write_bytes(placement.source.read_bytes())
            partial.replace(placement.target)  # a menu never reads half an entry
            written.append(placement.target)
    except OSError as exc:
        raise DesktopIntegrationError(f"could not write {exc.filename}: {exc.strerror}") from None
    return written


def uninstall(base: Path | None = None) -> list[Path]:
    """Remove what `install` wrote under `base`; the paths removed (none when it was not installed)."""
    removed = []
    for placement in placements(base):
        try:
            placement.target.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise DesktopIntegrationError(f"could not remove {placement.target}: {exc.strerror}") from None
        removed.append(placement.target)
    return removed

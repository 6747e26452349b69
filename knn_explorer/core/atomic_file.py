"""Files that appear whole or not at all.

An export is written to `<name>.partial` beside its target and renamed over it at the end, so a
full disk, a kill or an error half-way leaves the previous file (or none), never a truncated one.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path


def write_atomically(path: Path | str, write: Callable[[Path], object]) -> Path:
    """Call `write(partial_path)`, then rename the partial file to `path`; on any failure remove it
    and let the error (an OSError naming the reason) reach the caller."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        write(partial)
        os.replace(partial, path)  # a directory at `path` fails here (IsADirectoryError), even for root
    except BaseException:
        with suppress(OSError):  # it may never have been created (its folder is missing or a file)
            partial.unlink()
        raise
    return path

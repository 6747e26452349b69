"""Running `knn-explorer` from the tests.

`cli` runs a command in this process: the `main(argv)` that the console script calls, with stdout and
stderr captured, so a test does not pay for a fresh interpreter and a torch import (about 3 s) per
command. What a user's process would print on stderr still lands there: warnings (under a fresh
interpreter's filters, not pytest's) and log records. Tests of the process itself (a reader that
closes the pipe, no display, a read-only mount, signals) start a real one with `cli_process`.
"""
from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
import warnings
from dataclasses import dataclass


@dataclass
class CliResult:
    """What `subprocess.run(..., capture_output=True, text=True)` returns, for a command run in-process."""
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def cli(*args, check=True):
    """`knn-explorer ARGS` in this process; with `check`, it must succeed."""
    result = run_in_process(*args)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def cli_process(*args, check=True, timeout=300):
    """`python -m knn_explorer.cli ARGS` as a real process."""
    proc = subprocess.run([sys.executable, "-m", "knn_explorer.cli", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_line_error(proc, code, *words):
    assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0]


def run_in_process(*args) -> CliResult:
    from knn_explorer.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _warnings_to(err), _log_handlers_to(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: a usage error (2) or --help (0)
            code = exc.code
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
    return CliResult(argv, 0 if code is None else code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _warnings_to(err):
    """Warnings as a process shows them: pytest's own filters (every DeprecationWarning `always`) off,
    the libraries' filters kept, each shown warning written to `err` as Python's default hook writes it."""
    added_by_pytest = {("always", DeprecationWarning), ("always", PendingDeprecationWarning)}
    kept = [f for f in warnings.filters if f[1] is not None or f[3] is not None or (f[0], f[2]) not in added_by_pytest]
    with warnings.catch_warnings(record=True) as shown:
        warnings.resetwarnings()  # also forgets which warnings were already shown (registries are per version)
        warnings.filters.extend(kept)
        try:
            yield
        finally:
            for w in shown:
                err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))


@contextlib.contextmanager
def _log_handlers_to(err):
    """Libraries (transformers) hold a StreamHandler on the stderr of the moment they were imported; in a
    process that is the process's stderr, so point them at `err` for the command's duration."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    handlers = {h for lg in loggers for h in lg.handlers if type(h) is logging.StreamHandler}  # not pytest's
    previous = {h: h.stream for h in handlers}
    for handler in handlers:
        handler.setStream(err)
    try:
        yield
    finally:
        for handler, stream in previous.items():
            handler.setStream(stream)

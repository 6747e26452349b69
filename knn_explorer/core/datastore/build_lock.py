"""One writer per datastore name: a build, a resume or a removal holds the name's lock.

The lock is an operating-system file lock (`filelock`: flock on Unix, LockFileEx on Windows), so
it dies with its process: a build killed with SIGKILL leaves nothing that blocks the next build,
which resumes its folder. It is per name, not per folder, because two builds of one name would
otherwise pick two folders and collide only when the second one registers. A small owner file
beside the lock says who holds it; it is read only to word the refusal, never trusted as the lock.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from ..home import data_home

ACTION_WORDS = {"build": "being built", "remove": "being removed"}


class DatastoreBusy(Exception):
    """Another process (or thread) is building or removing this datastore; str() is one line."""


def _lock_path(name: str) -> Path:
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return data_home() / "locks" / f"{digest}.lock"


def _owner_path(lock: Path) -> Path:
    return lock.with_suffix(".owner.json")


@contextmanager
def datastore_lock(name: str, action: str) -> Iterator[None]:
    """Hold `name`'s lock for the block, or raise DatastoreBusy at once if someone else holds it."""
    path = _lock_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise DatastoreBusy(_busy_reason(name, path)) from None
    try:
        owner = {"pid": os.getpid(), "action": action, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        _owner_path(path).write_text(json.dumps(owner), encoding="utf-8")
        yield
    finally:
        lock.release()


def holder(name: str) -> str | None:
    """Why `name` cannot be built or removed right now (one line), or None when it is free."""
    path = _lock_path(name)
    if not path.exists():
        return None
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return _busy_reason(name, path)
    except OSError:  # a read-only data home: nobody can be writing to it
        return None
    lock.release()
    return None


def _busy_reason(name: str, path: Path) -> str:
    try:
        owner = json.loads(_owner_path(path).read_text(encoding="utf-8"))
        who = "this process" if owner["pid"] == os.getpid() else f"process {owner['pid']}"
        doing = ACTION_WORDS.get(owner["action"], "in use")
        return f"datastore '{name}' is {doing} by {who} (since {owner['since']}); wait for it to finish or stop it"
    except (OSError, ValueError, KeyError, TypeError):
        return f"datastore '{name}' is being built or removed by another process; wait for it to finish or stop it"

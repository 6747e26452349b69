"""Joining a Ray cluster: "local" starts one inside this process; anything else is an address
(`ray://head:10001`, `head:6379`, or `auto` on a node of a running cluster)."""
from __future__ import annotations

import os
import queue
import threading

import ray

from ..datastore.folder import DatastoreError

LOCAL = "local"
NAMESPACE = "knn-explorer"  # named retrieval actors live here, so a second open attaches to them


class ClusterError(DatastoreError):
    """The cluster cannot be used; str() is a one-line reason."""


_joined: str | None = None
_joining = threading.Lock()


def _init_on_a_lasting_thread(**options) -> None:
    """ray.init, on a thread that lives as long as the process. A local cluster's processes get
    Linux's parent-death signal from the *thread* that started them: started from a job's worker
    thread (the app opens datastores in jobs), the cluster died when that job ended, and the next
    search killed the app."""
    if threading.current_thread() is threading.main_thread():
        ray.init(**options)
        return
    outcome: queue.Queue = queue.Queue()

    def own_the_cluster() -> None:
        try:
            ray.init(**options)
        except BaseException as exc:  # handed to the caller
            outcome.put(exc)
            return
        outcome.put(None)
        threading.Event().wait()  # never set: the thread, and so the cluster, last until exit

    threading.Thread(target=own_the_cluster, name="ray-cluster-owner", daemon=True).start()
    error = outcome.get()
    if error is not None:
        raise error


def connect(address: str) -> None:
    """Join the cluster at `address` once per process (Ray holds one connection per process)."""
    with _joining:  # the app may open two sharded datastores from two jobs at once
        _connect(address)


def _connect(address: str) -> None:
    global _joined
    address = (address or LOCAL).strip()
    if ray.is_initialized():
        if _joined not in (None, address):
            raise ClusterError(f"this process is joined to the Ray cluster '{_joined}'; "
                               f"restart it to use '{address}'")
        _joined = _joined or address
        return
    # Ray's C++ core logs notices to stderr (e.g. ray-project/ray#53727 for every Ray Data actor);
    # real failures reach us as exceptions. A user's own setting wins.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    options = dict(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        _init_on_a_lasting_thread(**options, **({} if address == LOCAL else {"address": address}))
    except (ConnectionError, RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ClusterError(f"could not join the Ray cluster at '{address}': {reason}") from None
    _joined = address


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) >= 1


def default_encoders() -> int:
    """One model actor per GPU, or per CPU on a cluster without GPUs."""
    resources = ray.cluster_resources()
    return max(1, int(resources.get("GPU", 0)) or int(resources.get("CPU", 1)))


def one_line(exc: BaseException) -> str:
    """The root cause of a Ray error, on one line (Ray wraps it in a multi-line trace)."""
    cause = getattr(exc, "cause", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return (lines[-1] if lines else type(cause).__name__)[:300]

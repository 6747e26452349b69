"""Mapping a datastore's keys into the process ahead of the searches that need them.

An approximate index's exact re-rank reads 48·k key rows per token from the memory-mapped
keys.f16, nearly all of them on pages this process has not touched yet. Each first touch is a
page fault, even when the file already sits in the page cache: at 10M × 768 a fresh process
searched in 4.6 ms per token, against 2.6 ms once the rows it touched were mapped (docs/SCALE.md).
So, when the key file fits comfortably in memory, a background thread asks the kernel to map it
all (MADV_POPULATE_READ, Linux 5.14+; elsewhere MADV_WILLNEED, which only reads ahead). The pages
stay the page cache's: clean, file-backed, reclaimable under pressure, never an anonymous copy.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
import threading

import numpy as np

MADV_WILLNEED = 3
MADV_POPULATE_READ = 22  # Linux 5.14+; older kernels answer EINVAL
CHUNK_BYTES = 64 * 2**20  # one madvise call; close() waits at most for one chunk
MEMORY_SHARE = 0.75  # prefetch keys up to this share of the memory the machine has available


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (page cache that could be dropped counts as available)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def worth_prefetching(nbytes: int) -> bool:
    available = available_memory_bytes()
    return sys.platform.startswith("linux") and available is not None and nbytes <= MEMORY_SHARE * available


class KeyPrefetch:
    """Maps `array`'s pages in a daemon thread; `done` is set when it has finished or given up."""

    def __init__(self, array: np.ndarray):
        self.done = threading.Event()
        self._stop = threading.Event()
        self._array = array  # keeps the mapping alive while the thread advises on it
        self._address = array.ctypes.data
        self._nbytes = array.nbytes
        self._thread = threading.Thread(target=self._run, name="key-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)  # CDLL calls release the GIL
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            page = mmap.PAGESIZE
            start = self._address - self._address % page  # madvise wants a page-aligned start
            end = self._address + self._nbytes
            advice = MADV_POPULATE_READ
            while start < end and not self._stop.is_set():
                length = min(CHUNK_BYTES, end - start)
                if libc.madvise(start, length, advice) != 0:
                    if advice == MADV_WILLNEED:
                        return  # the kernel takes no advice: the searches will fault pages in
                    advice = MADV_WILLNEED  # an older kernel: read ahead at least
                    continue
                start += length
        finally:
            self.done.set()

    def stop(self) -> None:
        """Stop after the current chunk and wait for it (call before the mapping goes away)."""
        self._stop.set()
        self._thread.join()


def prefetch_keys(array: np.ndarray) -> KeyPrefetch | None:
    """Start mapping `array` (a memory-mapped key file) if it fits in memory; None if not worth it."""
    if not isinstance(array, np.memmap) or array.nbytes == 0 or not worth_prefetching(array.nbytes):
        return None
    return KeyPrefetch(array)

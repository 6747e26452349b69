"""The background mapping of an index's keys: the pages end up mapped in this process, not copied."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from knn_explorer.core.datastore.key_prefetch import prefetch_keys, worth_prefetching

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


def mapped_kb(array: np.memmap) -> tuple[int, int]:
    """(Rss, Anonymous) in kB of the mapping that holds `array`."""
    address = array.ctypes.data
    rss = anonymous = None
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "Rss:":
                rss = int(line.split()[1])
            elif inside and head == "Anonymous:":
                anonymous = int(line.split()[1])
                return rss, anonymous
    raise AssertionError("mapping not found")


def test_prefetch_maps_the_whole_key_file_without_copying_it(tmp_path):
    path = tmp_path / "keys.f16"
    np.random.default_rng(0).standard_normal((8192, 256)).astype(np.float16).tofile(path)  # 4 MiB
    keys = np.memmap(path, dtype=np.float16, mode="r", shape=(8192, 256))
    assert mapped_kb(keys)[0] < 1024  # a fresh mapping: (almost) nothing touched yet
    prefetch = prefetch_keys(keys)
    assert prefetch is not None
    assert prefetch.done.wait(30)
    rss, anonymous = mapped_kb(keys)
    assert rss >= 4096 - 4  # every page of the file is mapped in
    assert anonymous == 0  # the page cache's pages, not a private copy
    prefetch.stop()


def test_prefetch_refuses_what_does_not_fit_or_is_not_mapped(tmp_path):
    assert prefetch_keys(np.zeros((10, 4), dtype=np.float16)) is None  # in RAM already
    assert not worth_prefetching(2**62)

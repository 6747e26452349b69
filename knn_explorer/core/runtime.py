"""Thread counts for torch and FAISS, set once and deliberately.

Both use OpenMP-style pools; letting each grab every core makes them fight (faiss issue #2953:
oversubscription makes single-query search several times slower).
"""
from __future__ import annotations

import os

def configure_threads(threads: int | None = None, reserve: int = 0) -> int:
    """Give torch and FAISS the same pool size (default: all cores less `reserve`, capped at 8).
    The GUI reserves one core for its UI thread. Calling it again with the same answer is free."""
    import faiss
    import torch

    threads = threads or max(1, min((os.cpu_count() or 1) - reserve, 8))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    return threads

"""kNN Explorer: see inside kNN-augmented language models."""

import os

# torch and faiss-cpu each bring an OpenMP runtime. With the default (active) wait policy their
# idle threads spin, taking the cores from each other and from the GUI thread: single-query
# retrieval was several times slower and the UI stalled for ~100 ms. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

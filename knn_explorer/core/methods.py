"""The four ways the app forms a next-token distribution, and the names it shows for them."""
from __future__ import annotations

METHOD_LABELS = {"none": "LM alone", "knnlm": "kNN-LM", "spalm": "SPALM", "memtrf": "Memorizing Transformer"}
METHODS = tuple(METHOD_LABELS)

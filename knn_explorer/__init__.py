"""kNN Explorer: see inside kNN-augmented language models."""

__version__ = "0.1.0"

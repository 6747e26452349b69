"""Perplexity on held-out text: comparisons of methods, sweeps, kept runs and their export."""

"""Sliding windows over a token sequence, as for strided perplexity evaluation.

Every token t >= 1 is a target exactly once, scored by the first window that contains it after the
tokens already scored; its context is the window's tokens before it. With stride S and length L,
every target after the first window sees at least L - S tokens of context.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple


class Span(NamedTuple):
    begin: int  # first token of the window
    end: int  # one past the last token
    first_target: int  # first token this window scores (targets are first_target .. end - 1)


def sliding_windows(n_tokens: int, length: int, stride: int) -> Iterator[Span]:
    if length < 2:
        raise ValueError("a window needs at least 2 tokens")
    stride = max(1, min(stride, length - 1))
    scored_until, begin = 1, 0  # token 0 has no context: never a target
    while scored_until < n_tokens:
        end = min(begin + length, n_tokens)
        yield Span(begin, end, scored_until)
        scored_until = end
        begin += stride

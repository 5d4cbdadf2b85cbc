"""Turning a growing list of token ids into text pieces that are safe to print as they come.

Decoding token by token is wrong for SentencePiece (a leading space depends on the neighbours) and
for byte-fallback tokens (one character can span several tokens). So the whole generated sequence is
decoded each time and only the new suffix is emitted, holding back a trailing replacement character
(an incomplete UTF-8 sequence) and any tail that could be the start of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else -1


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might still become a stop string or a complete character."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    if text.endswith("\ufffd"):
        hold = max(hold, len(text) - len(text.rstrip("\ufffd")))
    return hold


class TextStream:
    """Feed the full generated ids with ``update``; it returns the text not yet emitted."""

    def __init__(self, decode, stops: Sequence[str] = ()):
        self.decode = decode
        self.stops = tuple(stops)
        self.emitted = 0

    def update(self, ids: Sequence[int], final: bool = False) -> str:
        text = self.decode(ids)
        cut = find_stop(text, self.stops)
        if cut >= 0:
            text, final = text[:cut], True
        end = len(text) if final else len(text) - _held_back(text, self.stops)
        if end <= self.emitted:
            return ""
        piece = text[self.emitted : end]
        self.emitted = end
        return piece

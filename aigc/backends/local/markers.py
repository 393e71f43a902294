"""Citation markers a local model may write: after ``[`` only the numbers of the section's notes.

A grounded section's prompt numbers its passages [1]..[n] and asks for them, yet the 135M model wrote
numbers no note has ("[4]" with three notes) for one marker in seven on the 49-topic benchmark; each
was removed as unsupported. With a request's ``citation_numbers``, the digits that may follow an open
``[`` (or a ``, `` inside one: ``[1, 3]``) are those that begin or complete one of its numbers: any
other digit token is given no chance. Nothing else is constrained: the model may still close the bracket,
write a word in it, or write no marker at all.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

#: An open citation bracket at the end of the text so far; group 1: the digits of the number being written.
_OPEN = re.compile(r"\[(?:[0-9]+,\s*)*([0-9]*)$")
#: A token that writes digits: leading spaces, its digits, and what follows them in the same token.
_DIGITS = re.compile(r"^(\s*)([0-9]+)(.*)$", re.DOTALL)
#: Tokens of the text so far that are looked at (enough for "[12, 3, 1" in any tokenizer).
TAIL_TOKENS = 12


class MarkerVocab:
    """A tokenizer's token strings and its tokens that write digits, computed once per loaded model."""

    def __init__(self, tokenizer: Any):
        self.strings: list[str] = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        #: (token id, leading spaces?, digits, rest) of every token whose text begins with ASCII digits
        self.digit_tokens = [(i, bool(m.group(1)), m.group(2), m.group(3))
                             for i, s in enumerate(self.strings) if (m := _DIGITS.match(s))]
        self._banned: dict[tuple[frozenset[str], str], list[int]] = {}

    def open_number(self, ids: Sequence[int]) -> str | None:
        """The digits of the citation number being written at the end of ``ids`` ("" right after ``[``),
        None when no citation bracket is open there."""
        found = _OPEN.search("".join(self.strings[i] for i in ids if 0 <= i < len(self.strings)))
        return None if found is None else found.group(1)

    def banned(self, allowed: frozenset[str], run: str) -> list[int]:
        """Digit tokens that cannot come next when ``run`` digits of a number are written and only the numbers
        ``allowed`` exist: those that would make a number no allowed one begins with, or end one not allowed."""
        key = (allowed, run)
        if key not in self._banned:
            out = []
            for i, spaced, digits, rest in self.digit_tokens:
                if spaced and run:  # "[1 2": a new word, not more of the number
                    continue
                number = digits if spaced else run + digits
                fits = any(a.startswith(number) for a in allowed) and (not rest or number in allowed)
                if not fits:
                    out.append(i)
            self._banned[key] = out
        return self._banned[key]


def marker_processor(vocab: MarkerVocab, numbers: Sequence[Sequence[int]]):
    """A logits processor that keeps row k's citation numbers to ``numbers[k]`` (empty: that row is free)."""
    from transformers import LogitsProcessor

    allowed = [frozenset(str(n) for n in row) for row in numbers]
    rows = [k for k, a in enumerate(allowed) if a]  # the rows constrained, the same at every step

    class CitationNumbers(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            tails = input_ids[rows, -TAIL_TOKENS:].tolist() if rows else []
            for k, tail in zip(rows, tails):
                run = vocab.open_number(tail)
                if run is not None:
                    ban = vocab.banned(allowed[k], run)
                    if ban:
                        scores[k, ban] = float("-inf")
            return scores

    return CitationNumbers()


__all__ = ["MarkerVocab", "TAIL_TOKENS", "marker_processor"]

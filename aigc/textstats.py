"""Text statistics the metrics share: LongWriter's length score, word tokens, n-grams, distinct-n and repeated n-grams."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from aigc.cleanup import split_words


def length_score(requested: int | float, produced: int | float) -> float:
    """LongWriter's length score S_l of ``produced`` words y against ``requested`` words x (0-100).

    y > x: 100·max(0, 1-(y/x-1)/3); y < x: 100·max(0, 1-(x/y-1)/2); y == x: 100; y == 0: 0.
    So twice the words asked scores 66.67, half scores 50, four times scores 0.
    """
    x, y = float(requested), float(produced)
    if x <= 0:
        raise ValueError("requested words must be positive")
    if y <= 0:
        return 0.0
    if y > x:
        return 100.0 * max(0.0, 1.0 - (y / x - 1.0) / 3.0)
    if y < x:
        return 100.0 * max(0.0, 1.0 - (x / y - 1.0) / 2.0)
    return 100.0


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens, counted as :func:`aigc.cleanup.words` counts words."""
    return [t.lower() for t in split_words(text)]


def ngrams(toks: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct-n: unique n-grams / all n-grams, pooled over ``texts`` (n-grams never span two texts).

    None when the texts hold no n-gram at all.
    """
    grams = [g for t in texts for g in ngrams(tokens(t), n)]
    return len(set(grams)) / len(grams) if grams else None


def repeated_ngrams(sections: Sequence[str], n: int = 4) -> dict:
    """Shares of repeated n-gram occurrences, inside sections and across sections.

    Every position of a section's token list starts one n-gram occurrence; T is the number of
    occurrences over all sections.

    - ``within``: occurrences whose n-gram occurs more than once in its own section, / T
      (every copy counts: "a b c d a b c d" has 5 occurrences, 2 of them repeated -> 0.4).
    - ``across``: occurrences whose n-gram also occurs in at least one other section, / T.

    Both are None when T is 0.
    """
    grams = [ngrams(tokens(s), n) for s in sections]
    counts = [Counter(g) for g in grams]
    seen_in: Counter = Counter(g for c in counts for g in c)  # number of sections holding each n-gram
    total = sum(len(g) for g in grams)
    within = sum(1 for c, g in zip(counts, grams) for x in g if c[x] > 1)
    across = sum(1 for g in grams for x in g if seen_in[x] > 1)
    return {
        "within": within / total if total else None,
        "across": across / total if total else None,
        "ngrams": total,
    }


def pack_sentences(sentences: Sequence[str], max_words: int) -> list[str]:
    """Consecutive sentences joined into pieces of at most about ``max_words`` words (a longer sentence stays whole)."""
    out: list[str] = []
    current: list[str] = []
    count = 0
    for sentence in sentences:
        n = len(sentence.split())
        if current and count + n > max_words:
            out.append(" ".join(current))
            current, count = [], 0
        current.append(sentence)
        count += n
    if current:
        out.append(" ".join(current))
    return out

"""Several outline candidates into one outline: pool their titles, merge near-duplicates, choose and order.

Pure functions: no backend calls. Sentence embeddings come from an ``embed`` callable (texts -> L2-normalised
rows; default :func:`aigc.embeddings.embed`), so tests can pass a fake one.

The steps, as ``aigc.outline`` calls them::

    pool = pool_titles(candidate_texts, topic)          # parse leniently, exact duplicates pooled
    pool = merge_similar(pool, embed=embed, topic=topic)  # near-duplicates merged (cosine >= MERGE_THRESHOLD)
    titles, scores = select_titles(pool, n, topic, embed=embed, first_cues=..., last_cues=...)
    record = selection_record(candidate_texts, pool, titles, scores, n)

``select_titles`` returns fewer than ``n`` titles when the pool has fewer usable ones; ask the model for
the missing ones (listing the titles so far) and call again with every text.
"""

from __future__ import annotations

import hashlib
import re
import statistics
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from aigc.outline_parse import clean_title, parse_outline
from aigc.outline_titles import title_form, unusable_reason

Embed = Callable[[Sequence[str]], np.ndarray]

#: Titles whose embeddings have at least this cosine are one title (all-MiniLM-L6-v2; see docs/outlines.md).
MERGE_THRESHOLD = 0.72
#: The title used for one that only repeats the topic ("Why Libraries Lend Tools" for "Why libraries lend tools").
OVERVIEW_TITLE = "Overview"
#: Weights of the selection score (see :func:`select_titles`); they sum to 1 before the redundancy penalty (and
#: the bonus of titles from the sources' headings, "material").
WEIGHTS = {"relevance": 0.50, "support": 0.25, "form": 0.25, "cue": 0.10, "redundancy": 0.50, "off_topic": 0.20,
           "material": 0.25}
#: Cosine between two titles of one subject that is not yet redundancy (on-topic titles share the subject).
REDUNDANCY_FLOOR = 0.35
#: Below this relevance a title is off the subject (a drifted "How to Cook Chicken" scores 0.27 for a bombing).
OFF_TOPIC = 0.30
#: A title below this form score is not used at all (prompt echo, chatter, sentences about the outline).
MIN_FORM = 0.35
#: Default order cues: a title matching one goes first (in this order) ...
FIRST_CUES = ("overview", "introduction", "what is", "what are", "what it is", "definition", "basics",
              "background", "history", "origins", "origin", "early life")
#: ... or last (in this order: "conclusion" after "legacy").
LAST_CUES = ("reception", "reactions", "response", "aftermath", "impact", "legacy", "future", "outlook",
             "next steps", "summary", "conclusion", "conclusions", "final thoughts")

#: Words that, added to the topic's words, still only repeat the topic ("Tartus: An Overview").
_TOPIC_FILLER = frozenset({"overview", "introduction", "intro", "guide", "basics", "explained", "understanding",
                           "about", "all", "complete", "brief", "short", "simple", "quick", "everything",
                           "know", "need", "you", "your", "topic", "subject", "article", "essay"})
_STOP = frozenset("a an the of in on at to for and or by with from as is are was were be it its this that "
                  "these those how why what when where who which do does".split())


@dataclass
class Candidate:
    """One title of the pool, with every form it was proposed in and where."""

    title: str
    variants: list[str] = field(default_factory=list)
    #: Index of the candidate text of each occurrence (one per occurrence; a text repeating a title counts once).
    sources: list[int] = field(default_factory=list)
    #: Relative position of each occurrence in its text: 0 first .. 1 last.
    positions: list[float] = field(default_factory=list)
    #: Titles that repeated the topic and were rewritten to this one.
    rewritten_from: list[str] = field(default_factory=list)
    vector: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def support(self) -> int:
        """How many candidate texts proposed it."""
        return len(set(self.sources))

    @property
    def mean_position(self) -> float:
        return statistics.fmean(self.positions) if self.positions else 0.5

    def as_dict(self) -> dict:
        return {"title": self.title, "support": self.support, "mean_position": round(self.mean_position, 3),
                "variants": self.variants, "sources": sorted(set(self.sources)),
                **({"rewritten_from": self.rewritten_from} if self.rewritten_from else {})}


@dataclass
class TitleScore:
    """Why a title was chosen: its score when it was picked and the parts of it (see :func:`select_titles`)."""

    title: str
    score: float
    relevance: float
    support: int
    form: float
    redundancy: float
    cue: str
    mean_position: float

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def default_embed(texts: Sequence[str]) -> np.ndarray:
    """aigc's sentence embeddings (all-MiniLM-L6-v2), imported on first use.

    all-MiniLM-L6-v2 reads English: it puts any two short Chinese titles at cosine 0.7-0.8, so texts in
    Chinese, Japanese or Korean get a bag of their characters and character pairs instead (hashed into as
    many dimensions): titles that share no characters are apart, "热岛的成因" and "城市热岛效应" meet at "热岛".
    """
    from aigc.embeddings import embed
    from aigc.languages import CJK_RANGES

    texts = list(texts)
    cjk = re.compile(f"[{CJK_RANGES}]")
    latin = [i for i, t in enumerate(texts) if not cjk.search(t)]
    vectors = embed([texts[i] for i in latin]) if latin else None
    dim = vectors.shape[1] if vectors is not None and len(latin) else 384
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for k, i in enumerate(latin):
        out[i] = vectors[k]
    for i, text in enumerate(texts):
        if i in latin:
            continue
        chars = cjk.findall(text)
        for gram in chars + [a + b for a, b in zip(chars, chars[1:])] * 2:
            out[i, int(hashlib.md5(gram.encode()).hexdigest()[:8], 16) % dim] += 1.0
        norm = np.linalg.norm(out[i])
        out[i] /= norm if norm else 1.0
    return out


# -- title form ---------------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    out = []
    for w in re.findall(r"[^\W_]+", text.lower()):
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]  # plural-ish: "libraries" ~ "librarie", "tools" ~ "tool"
        out.append(w)
    return out


def _key(title: str) -> str:
    return " ".join(_words(title))


def repeats_topic(title: str, topic: str) -> bool:
    """Whether a title only repeats the topic: no words of its own beyond the topic's and a few fillers,
    and at least half of the topic's words."""
    tw = set(_words(title)) - _STOP
    pw = set(_words(topic)) - _STOP
    if not tw or not pw:
        return bool(pw) and _key(title) == _key(topic)
    own = tw - pw
    return own <= _TOPIC_FILLER and len(tw & pw) >= 0.5 * len(pw)


def _rewrite_topic_repeat(title: str, topic: str) -> str | None:
    """The title to use for one that repeats the topic, or None to keep it as it is."""
    return OVERVIEW_TITLE if repeats_topic(title, topic) else None


# -- pooling ------------------------------------------------------------------------------------
_TRAILING_NOTE = re.compile(r"\s*\((?:title|section|part|heading|optional|\d+\s*(?:minutes?|mins?|words?))\b[^)]*\)\s*$", re.I)
_DESCRIPTION = re.compile(r"^(?P<head>[^:–—]{3,}?)\s*(?::|\s[-–—]\s)\s*(?P<tail>.+)$")


def tidy_title(title: str) -> str:
    """A cleaned title without a trailing note ("(Title 3)", "(20 minutes)") or a description after a colon or
    dash when that runs over five words ("The Power of Silence: How the voice speaks louder than words")."""
    title = _TRAILING_NOTE.sub("", clean_title(title))
    m = _DESCRIPTION.match(title)
    if m and len(m.group("tail").split()) > 5:
        title = m.group("head")
    return clean_title(title)


def candidate_titles(text: str) -> list[str]:
    """The tidied titles of one candidate text, leniently: ``parse_outline``, else every line."""
    titles = parse_outline(text or "")
    if not titles:  # one title, or a shape parse_outline does not take: every line that could be a title
        titles = (text or "").replace("\r", "").split("\n")
    return [t for t in (tidy_title(t) for t in titles) if t]


def pool_titles(candidate_texts: Sequence[str], topic: str) -> list[Candidate]:
    """The titles of all candidates, exact duplicates (case, punctuation, plurals) pooled, unusable ones dropped.

    A title that repeats the topic becomes :data:`OVERVIEW_TITLE` (kept in ``rewritten_from``). The pool
    is in first-seen order.
    """
    pool: dict[str, Candidate] = {}
    for source, text in enumerate(candidate_texts):
        titles = candidate_titles(text)
        seen_here: set[str] = set()
        for i, raw in enumerate(titles):
            title, original = raw, None
            rewritten = _rewrite_topic_repeat(raw, topic)
            if rewritten is not None:
                title, original = rewritten, raw
            if unusable_reason(title):
                continue
            key = _key(title)
            if not key or key in seen_here:
                continue
            seen_here.add(key)
            cand = pool.setdefault(key, Candidate(title=title))
            cand.variants.append(title)
            cand.sources.append(source)
            cand.positions.append(i / (len(titles) - 1) if len(titles) > 1 else 0.0)
            if original is not None:
                cand.rewritten_from.append(original)
    for cand in pool.values():
        cand.title = _representative(cand.variants)
    return list(pool.values())


def _representative(variants: Sequence[str]) -> str:
    """The best-formed variant; ties: the most frequent, then the first seen."""
    counts = {v: variants.count(v) for v in variants}
    return max(dict.fromkeys(variants), key=lambda v: (round(title_form(v), 3), counts[v]))


def _embed_pool(pool: Sequence[Candidate], embed: Embed) -> None:
    missing = [c for c in pool if c.vector is None]
    if missing:
        vectors = np.asarray(embed([c.title for c in missing]), dtype=np.float64)
        for c, v in zip(missing, vectors):
            c.vector = v / (np.linalg.norm(v) or 1.0)


def _contains(a: str, b: str, topic_words: set[str]) -> bool:
    """Whether title ``a``'s own words (not the topic's, not stop words) are all in ``b``'s: "Background" in
    "Background of the attack"; "The bombing" is not in "Victims of the bombing" for "2022 Istanbul bombing"."""
    wa = set(_words(a)) - _STOP - topic_words
    return bool(wa) and wa <= set(_words(b)) - _STOP


def merge_similar(pool: Sequence[Candidate], *, embed: Embed | None = None,
                  threshold: float = MERGE_THRESHOLD, topic: str = "") -> list[Candidate]:
    """Merge titles whose embeddings have cosine >= ``threshold``, or whose own words (beyond ``topic``'s) are
    all in another's ("History" and "History of Tartus"), into one candidate.

    Better-supported titles absorb the others; the merged candidate keeps every variant, source and
    position, its support counts the texts that proposed any of them, and its title is the best-formed
    variant. Returns a new list in first-seen order; the input is not changed.
    """
    pool = list(pool)
    if len(pool) < 2:
        return [_copy(c) for c in pool]
    _embed_pool(pool, embed or default_embed)
    order = sorted(range(len(pool)), key=lambda i: (-pool[i].support, -title_form(pool[i].title), i))
    vectors = np.stack([c.vector for c in pool])
    sims = vectors @ vectors.T
    topic_words = set(_words(topic)) - _STOP
    for i, a in enumerate(pool):
        for j, b in enumerate(pool):
            if i != j and _same_words(a.title, b.title, topic_words):
                sims[i, j] = 1.0
    head_of: dict[int, int] = {}
    for i in order:
        if i in head_of:
            continue
        head_of[i] = i
        for j in order:
            if j not in head_of and sims[i, j] >= threshold:
                head_of[j] = i
    merged: dict[int, Candidate] = {}
    for i in sorted(head_of, key=lambda i: (head_of[i] != i, i)):  # heads first, so members join them
        head = head_of[i]
        if head == i:
            merged[i] = _copy(pool[i])
        else:
            m, c = merged[head], pool[i]
            m.variants += c.variants
            m.sources += c.sources
            m.positions += c.positions
            m.rewritten_from += c.rewritten_from
    vector_of = {c.title: c.vector for c in pool}
    for m in merged.values():
        m.title = _representative(m.variants)
        m.vector = vector_of.get(m.title, m.vector)  # the representative's own embedding where it has one
    first_seen = {h: min(i for i in head_of if head_of[i] == h) for h in merged}
    return [merged[h] for h in sorted(merged, key=first_seen.get)]


def _same_words(a: str, b: str, topic_words: set[str]) -> bool:
    """Whether one title's own words are all in the other's (see :func:`_contains`), either way."""
    return _contains(a, b, topic_words) or _contains(b, a, topic_words)


def without_like(pool: Sequence[Candidate], titles: Sequence[str], topic: str, *, embed: Embed | None = None,
                 threshold: float = MERGE_THRESHOLD) -> list[Candidate]:
    """The pool without the candidates that say what one of ``titles`` says, as :func:`merge_similar` tells
    it (cosine >= ``threshold``, or one's own words all in the other's: "Language learning apps" beside
    "Apps"), or with the same key. The candidates keep their embeddings for :func:`select_titles`."""
    pool = list(pool)
    if not pool or not titles:
        return pool
    embed = embed or default_embed
    _embed_pool(pool, embed)
    sims = np.stack([c.vector for c in pool]) @ _unit(embed(list(titles))).T
    topic_words = set(_words(topic)) - _STOP
    keys = {_key(t) for t in titles}
    return [c for c, row in zip(pool, sims) if row.max() < threshold and _key(c.title) not in keys
            and not any(_same_words(t, c.title, topic_words) for t in titles)]


def _copy(c: Candidate) -> Candidate:
    return Candidate(c.title, list(c.variants), list(c.sources), list(c.positions), list(c.rewritten_from), c.vector)


# -- selection and order ------------------------------------------------------------------------
def _cue(title: str, cues: Sequence[str]) -> int | None:
    low = title.lower()
    for i, cue in enumerate(cues):
        if re.search(r"\b" + re.escape(cue.lower()) + r"\b", low):
            return i
    return None


def order_titles(chosen: Sequence[Candidate], *, first_cues: Sequence[str] | None = None,
                 last_cues: Sequence[str] | None = None) -> list[Candidate]:
    """Sensible order: titles matching a first cue lead (in the cues' order), those matching a last cue end
    (in the cues' order), the rest in between by their mean position in the candidates."""
    first = FIRST_CUES if first_cues is None else tuple(first_cues)
    last = LAST_CUES if last_cues is None else tuple(last_cues)

    def key(c: Candidate) -> tuple:
        f = _cue(c.title, first)
        if f is not None:
            return (0, f, c.mean_position)
        lc = _cue(c.title, last)
        if lc is not None:
            return (2, lc, c.mean_position)
        return (1, 0, c.mean_position)

    return sorted(chosen, key=key)


def _unit(vectors) -> np.ndarray:
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def _relevance(pool: Sequence[Candidate], topic: str, embed: Embed) -> dict[int, float]:
    """Relevance to the topic, 0..1: half the title's own cosine with the topic (1 at 0.6 or more), half how
    little "<topic>: <title>" moves away from the topic (1 at cosine 1, 0 at 0.6 or less).

    A heading like "Background" has a low cosine with "2022 Istanbul bombing" (0.12), as does a drifted
    "How to Cook Chicken" (0.14); in context they part: 0.95 against 0.72 (all-MiniLM-L6-v2).
    """
    vectors = _unit(embed([topic] + [f"{topic}: {c.title}" for c in pool]))
    topic_vec, context = vectors[0], vectors[1:] @ vectors[0]
    out = {}
    for c, ctx in zip(pool, context):
        own = float(c.vector @ topic_vec)
        out[id(c)] = 0.5 * min(1.0, max(0.0, own) / 0.6) + 0.5 * min(1.0, max(0.0, (float(ctx) - 0.6) / 0.4))
    return out


def select_titles(pool: Sequence[Candidate], n: int, topic: str, *, embed: Embed | None = None,
                  first_cues: Sequence[str] | None = None, last_cues: Sequence[str] | None = None,
                  threshold: float = MERGE_THRESHOLD, n_candidates: int | None = None, material: int | None = None,
                  ) -> tuple[list[str], list[TitleScore]]:
    """Choose up to ``n`` titles from a (merged) pool and put them in order; returns (titles, scores).

    Greedy, MMR-style: each step takes the title with the highest
    ``0.50 relevance + 0.25 support + 0.25 form + 0.10 cue - 0.50 redundancy - 0.20 off_topic`` where
    relevance is :func:`_relevance` (to the topic, 0..1), support the share of candidate texts proposing it,
    form :func:`title_form`, cue 1 when the caller's own ``first_cues``/``last_cues`` match it (a style
    asking for "summary" first), redundancy the highest cosine with a title already chosen, scaled from 0 at
    ``REDUNDANCY_FLOOR`` to 1 at ``threshold``, and off_topic 1 when relevance < ``OFF_TOPIC``. Titles with
    form below ``MIN_FORM`` or a cosine >= ``threshold`` with a chosen one are never taken. Fewer than
    ``n`` titles come back when the pool runs out: ``n - len(titles)`` are missing. ``material``: the index of
    the candidate text that lists the sources' headings (a grounded article): the titles it proposes gain
    ``WEIGHTS["material"]``, so that sections follow the documents where the model's own titles only restate the
    topic (for Darya Dugina, "Daryda Alekseyova Dugineya" and "The story of Darye Alekseyakovda" had taken the
    places of "International reaction" and "Russian reaction": a person's name is close to the topic, a heading
    of her article less so).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    usable = [c for c in pool if title_form(c.title) >= MIN_FORM]
    if not usable:
        return [], []
    embed = embed or default_embed
    _embed_pool(usable, embed)
    relevance = _relevance(usable, topic, embed)
    texts = n_candidates or max((max(c.sources) + 1 for c in usable if c.sources), default=1)
    own_cues = tuple(first_cues or ()) + tuple(last_cues or ())
    w = WEIGHTS
    base = {}
    for c in usable:
        rel = relevance[id(c)]
        sup = min(1.0, c.support / max(1, texts))
        form = title_form(c.title)
        cue = 1.0 if own_cues and _cue(c.title, own_cues) is not None else 0.0
        quality = (w["relevance"] * rel + w["support"] * sup + w["form"] * form + w["cue"] * cue
                   - w["off_topic"] * (rel < OFF_TOPIC) + w["material"] * (material in c.sources))
        base[id(c)] = (quality, rel, form)

    chosen: list[Candidate] = []
    scores: dict[int, TitleScore] = {}
    remaining = list(usable)
    while remaining and len(chosen) < n:
        best, best_score, best_red = None, -np.inf, 0.0
        for c in remaining:
            red = max((float(c.vector @ d.vector) for d in chosen), default=0.0)
            if red >= threshold:
                continue
            s = base[id(c)][0] - w["redundancy"] * max(0.0, red - REDUNDANCY_FLOOR) / (threshold - REDUNDANCY_FLOOR)
            if s > best_score:
                best, best_score, best_red = c, s, red
        if best is None:
            break
        remaining.remove(best)
        chosen.append(best)
        _, rel, form = base[id(best)]
        scores[id(best)] = TitleScore(best.title, float(best_score), rel, best.support, form, max(0.0, best_red),
                                      "", best.mean_position)
    ordered = order_titles(chosen, first_cues=first_cues, last_cues=last_cues)
    first = FIRST_CUES if first_cues is None else tuple(first_cues)
    last = LAST_CUES if last_cues is None else tuple(last_cues)
    for c in ordered:
        s = scores[id(c)]
        s.cue = "first" if _cue(c.title, first) is not None else "last" if _cue(c.title, last) is not None else ""
    return [c.title for c in ordered], [scores[id(c)] for c in ordered]


def selection_record(candidate_texts: Sequence[str], pool: Sequence[Candidate], titles: Sequence[str],
                     scores: Sequence[TitleScore], n: int) -> dict:
    """What the outline step keeps in the article's record: the candidates, the pool, the choice and why."""
    return {
        "candidates": list(candidate_texts),
        "pool": [c.as_dict() for c in pool],
        "titles": list(titles),
        "scores": [s.as_dict() for s in scores],
        "asked": n,
        "missing": max(0, n - len(titles)),
    }

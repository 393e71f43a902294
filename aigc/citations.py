"""Citations: numbered passages for prompts, [n] markers checked against their passages, references, entity recall."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from aigc.sources import Passage

#: A sentence supports its marker when its cosine similarity (all-MiniLM-L6-v2) to the cited passage is at
#: least SUPPORT_SIMILARITY and at least SUPPORT_ENTITY_SHARE of its names and numbers occur in that passage.
#: Chosen on FreshWiki (docs/sources.md; 176 sentences of 8-40 words drawn from the 49 articles): against the
#: passage it came from a sentence scores median 0.63 (10th percentile 0.45), against the best passage of
#: another article median 0.32 (95th percentile 0.43); with these two bars 93% of sentences pass against their
#: own passage and 3% against the best passage of another article.
SUPPORT_SIMILARITY = 0.40
SUPPORT_ENTITY_SHARE = 0.5
#: A sentence the model left uncited gets a marker from aigc (``attribute=True``) when it states a name or number
#: and its best passage clears a higher bar: similarity >= ATTRIBUTE_SIMILARITY (on the FreshWiki sample, above
#: the 95th percentile against another article's best passage, 0.43) and the same share of names and numbers.
ATTRIBUTE_SIMILARITY = 0.50
#: Markers: [3], [1, 2], [1][2], [2-4] (a range of at most this many numbers).
MAX_RANGE = 10
MARKER = re.compile(r"\[(\d{1,4}(?:\s*[,;–-]\s*\d{1,4})*)\]")
_MARKERS_AFTER = r"(?:\s?\[\d{1,4}(?:\s*[,;–-]\s*\d{1,4})*\])*"
#: A sentence ends at . ! ? (closing quotes and markers go with it) before a space and a capital, digit or quote,
#: or at 。！？ (Chinese and Japanese), whatever follows.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)]*" + _MARKERS_AFTER + r"(?=\s+[\"“'(\[A-Z0-9]|\s*$)"
                           r"|[。！？]+[”’」』）)]*" + _MARKERS_AFTER)
_HEADING_LINE = re.compile(r"^\s*(#{1,6}\s|[-*_]{3,}\s*$)")
#: Capitalised words that start sentences and are not names.
_COMMON = frozenset(
    "a an the this that these those it its in on at by for from to of and but or if as after before during "
    "since while when where however although though also moreover furthermore meanwhile then thus there here "
    "some many most several all both each other another such one two three first second later earlier today "
    "he she they we i you his her their our my your yes no not".split())
_CONNECT = frozenset({"of", "de", "la", "von", "van", "der", "du", "del", "al", "bin", "and"})
_WORD = re.compile(r"[^\W\d_][\w'’.-]*|\d+(?:[.,]\d+)*%?", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


# ---------------------------------------------------------------- prompts


#: What a prompt leaves out of a passage: the source's own reference marks ("[53]", "[update]",
#: "[citation needed]"; the model would copy them as citations of passages it does not have) and web addresses.
_SOURCE_MARK = re.compile(r"\s*\[(?:\d{1,4}|[a-z][a-z ]{1,30})\]")
_URL = re.compile(r"\s*(?:https?://|www\.)\S+")
#: Headings of the lists a document ends with: they name sources, they state no facts.
REFERENCE_HEADINGS = frozenset({"references", "external links", "see also", "notes", "further reading",
                                "bibliography", "sources", "citations", "footnotes", "works cited"})
#: A passage whose text is this share or more of web addresses and reference marks is a list of sources too.
REFERENCE_SHARE = 0.3


def is_reference_list(p: Passage) -> bool:
    """Whether a passage is a document's list of references or links (its heading, or mostly addresses and marks)."""
    inner = (p.heading or "").rsplit(" > ", 1)[-1].strip().lower()
    if inner in REFERENCE_HEADINGS:
        return True
    marks = sum(len(m.group()) for m in _URL.finditer(p.text)) + sum(len(m.group()) for m in _SOURCE_MARK.finditer(p.text))
    return marks >= REFERENCE_SHARE * max(1, len(p.text))


def prompt_text(text: str, max_words: int | None = None) -> str:
    """A passage as a prompt shows it: without reference marks and web addresses, cut to whole sentences of at
    most ``max_words`` words (the first sentence cut at ``max_words`` when it alone is longer; " ..." when cut)."""
    from aigc.cleanup import join_text, split_sentences, split_words

    text = " ".join(_URL.sub("", _SOURCE_MARK.sub("", text)).split())
    if not max_words or len(split_words(text)) <= max_words:
        return text
    kept: list[str] = []
    count = 0
    for sentence in split_sentences(text):
        n = len(split_words(sentence))
        if count + n > max_words:
            break
        kept.append(sentence)
        count += n
    if not kept:
        return " ".join(text.split()[:max_words]) + " ..."
    return join_text(kept) + " ..."


def passages_for_prompt(passages: Sequence[Passage], *, max_words: int | None = None) -> list[dict[str, Any]]:
    """Numbered passages as template data: number (from 1), text (:func:`prompt_text`: reference marks and web
    addresses out, cut to whole sentences of at most ``max_words`` words), title, heading, document."""
    out = []
    for i, p in enumerate(passages, 1):
        text = prompt_text(p.text, max_words)
        out.append({"number": i, "text": text, "title": p.title, "heading": p.heading, "document": p.document,
                    "location": p.location, "link": p.link, "hash": p.hash})
    return out


def number_passages(passages: Sequence[Passage], *, max_words: int | None = None) -> str:
    """A prompt block: ``[1] Title > Heading: text`` per passage, separated by blank lines."""
    blocks = []
    for item in passages_for_prompt(passages, max_words=max_words):
        head = " > ".join(x for x in (item["title"], item["heading"]) if x)
        blocks.append(f"[{item['number']}] {head + ': ' if head else ''}{item['text']}")
    return "\n\n".join(blocks)


# ---------------------------------------------------------------- names and numbers


def _normal_number(token: str) -> str:
    return token.replace(",", "").rstrip("%")


def entities(text: str) -> tuple[set[str], set[str]]:
    """(names, numbers) of a text, lower-cased: names are runs of capitalised words ("Recep Tayyip Erdoğan",
    "Bank of England"; connectors such as "of" inside a run), numbers are digit groups without thousands
    commas ("45,000" -> "45000"). A sentence's first word counts only when it is no common word ("The",
    "However") and, standing alone, is in capitals ("PKK") or capitalised elsewhere in mid-sentence.
    [n] markers are ignored. Written-out numbers ("six") are not counted.
    """
    text = MARKER.sub(" ", text)
    numbers = {_normal_number(m) for m in _NUMBER.findall(text)}
    sentences = [_WORD.findall(s) for s in re.split(r"(?<=[.!?])\s+|\n+", text)]
    runs: list[tuple[list[str], bool]] = []  # (words, starts the sentence)
    for words in sentences:
        run: list[str] = []
        start = False
        for i, word in enumerate(words + [""]):
            if word and word[0].isupper():
                if not run:
                    start = i == 0
                run.append(word)
            elif run and word.lower() in _CONNECT:
                run.append(word)
            elif run:
                runs.append((run, start))
                run = []
    inner = {w for run, start in runs for w in (run[1:] if start else run)}
    names: set[str] = set()
    for run, start in runs:
        if start and run[0].lower() in _COMMON:
            run = run[1:]
        elif start and len(run) == 1 and not (run[0].isupper() and len(run[0]) > 1) and run[0] not in inner:
            run = []
        while run and run[0].lower() in _CONNECT:
            run = run[1:]
        while run and run[-1].lower() in _CONNECT:
            run = run[:-1]
        if run:
            name = " ".join(run).lower().rstrip(".’'")
            names.add(name.removesuffix("’s").removesuffix("'s"))
    names.discard("")
    return names, numbers


def _found(item: str, haystack: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(item) + r"(?!\w)", haystack) is not None


def _claim_found(item: str, haystack: str) -> bool:
    """For support: a number as a whole word; a name when each of its words occurs (any order, so
    "Mayor Ekrem Imamoglu" is found in "Ekrem Imamoglu, the mayor")."""
    return all(_found(w, haystack) for w in item.split() if w not in _CONNECT)


def _normal_text(text: str) -> str:
    text = MARKER.sub(" ", text).lower()
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    return " ".join(text.split())


def entity_recall(text: str, reference_text: str) -> dict[str, Any]:
    """Share of the reference's names and numbers (see :func:`entities`) that occur in ``text`` (whole words,
    case-insensitive). Returns recall, names and numbers recall apart, counts and up to 20 missing ones."""
    names, numbers = entities(reference_text)
    hay = _normal_text(text)
    found_names = {n for n in names if _found(n, hay)}
    found_numbers = {n for n in numbers if _found(n, hay)}
    total = len(names) + len(numbers)
    missing = sorted((names - found_names) | (numbers - found_numbers))
    return {"recall": round((len(found_names) + len(found_numbers)) / total, 4) if total else None,
            "names_recall": round(len(found_names) / len(names), 4) if names else None,
            "numbers_recall": round(len(found_numbers) / len(numbers), 4) if numbers else None,
            "found": len(found_names) + len(found_numbers), "total": total, "missing": missing[:20]}


# ---------------------------------------------------------------- sentences and markers


def marker_numbers(inside: str) -> list[int]:
    """Numbers of one marker's inside: "1, 2" -> [1, 2]; "2-4" -> [2, 3, 4] (ranges up to MAX_RANGE)."""
    out: list[int] = []
    for part in re.split(r"\s*[,;]\s*", inside.strip()):
        bounds = re.split(r"\s*[–-]\s*", part)
        if len(bounds) == 2 and bounds[0].isdigit() and bounds[1].isdigit():
            lo, hi = int(bounds[0]), int(bounds[1])
            out.extend(range(lo, hi + 1) if 0 <= hi - lo < MAX_RANGE else [lo, hi])
        elif part.isdigit():
            out.append(int(part))
    return list(dict.fromkeys(out))


def format_markers(numbers: Sequence[int]) -> str:
    """``[1][3]``: one bracket per number (each can link to its reference)."""
    return "".join(f"[{n}]" for n in numbers)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of the prose in ``text`` (headings and rules skipped); markers after the
    full stop belong to the sentence before them."""
    spans = []
    offset = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        if body.strip() and not _HEADING_LINE.match(body):
            start = len(body) - len(body.lstrip())
            for m in _SENTENCE_END.finditer(body):
                if body[start:m.end()].strip():
                    spans.append((offset + start, offset + m.end()))
                start = m.end()
                while start < len(body) and body[start].isspace():
                    start += 1
            if body[start:].strip():
                spans.append((offset + start, offset + len(body.rstrip())))
        offset += len(line)
    return _markers_join_previous(text, spans)


def _markers_join_previous(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans with those that hold only markers and punctuation ("Moscow. [2]." splits into "Moscow." and
    "[2].", a marker on a line of its own) joined to the sentence before them, whose citation they are."""
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if out and not re.sub(r"[\W_]+", "", MARKER.sub("", text[a:b])):
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


_LEADING_MARKERS = re.compile(r"^([ \t]*)((?:\[\d{1,4}(?:\s*[,;–-]\s*\d{1,4})*\][ \t]*)+)(?=\S)")


def leading_markers_moved(text: str) -> str:
    """Text whose paragraphs no longer open with markers: "[1] A bomb exploded. Next." -> "A bomb exploded [1].
    Next." (a small model copies the notes' "[1] text" layout; the marker cites the sentence it opens)."""
    out = []
    for line in text.splitlines(keepends=True):
        m = _LEADING_MARKERS.match(line)
        if m and not _HEADING_LINE.match(line):
            rest = line[m.end():]
            body = rest.rstrip("\n")
            end = next((e.end() for e in _SENTENCE_END.finditer(body)), len(body.rstrip()))
            sentence = body[:end]
            tail = re.search(r"[.!?。！？]+[\"'”’)」』）]*\s*$", sentence)
            cut = tail.start() if tail else len(sentence.rstrip())
            marks, before = "".join(m.group(2).split()), sentence[:cut].rstrip()
            space = "" if before and ord(before[-1]) >= 0x2E80 else " "  # none after Chinese or Japanese
            line = f"{m.group(1)}{before}{space}{marks}{sentence[cut:]}{rest[end:]}"
        out.append(line)
    return "".join(out)


@dataclass
class CitationReport:
    """What :func:`check_citations` found; ``to_dict()`` goes into the article record."""

    sentences: int = 0
    cited_sentences: int = 0
    markers: int = 0
    supported: int = 0
    #: Markers aigc added to sentences the model left uncited (``attribute=True``); not in markers/supported.
    attributed: int = 0
    #: Sentences whose every marker the model wrote was removed, cited by aigc instead to the passage that
    #: supports them (``attribute=True``); their markers stay counted as unsupported in markers/supported.
    retargeted: int = 0
    removed: list[dict[str, Any]] = field(default_factory=list)
    unsupported_claims: list[dict[str, Any]] = field(default_factory=list)
    used: list[int] = field(default_factory=list)

    @property
    def support_rate(self) -> float | None:
        return round(self.supported / self.markers, 4) if self.markers else None

    @property
    def cited_share(self) -> float | None:
        return round(self.cited_sentences / self.sentences, 4) if self.sentences else None

    @property
    def markers_removed(self) -> int:
        return len(self.removed)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "support_rate": self.support_rate, "cited_share": self.cited_share,
                "markers_removed": self.markers_removed}

    @classmethod
    def merge(cls, reports: Sequence["CitationReport"]) -> "CitationReport":
        """One report for a whole article from its sections' reports (``used`` left empty: numbering differs)."""
        out = cls()
        for r in reports:
            out.sentences += r.sentences
            out.cited_sentences += r.cited_sentences
            out.markers += r.markers
            out.supported += r.supported
            out.attributed += r.attributed
            out.retargeted += r.retargeted
            out.removed += r.removed
            out.unsupported_claims += r.unsupported_claims
        return out


def _attribute(sentence: str, n: int) -> str:
    """``sentence`` with the marker [n] before its closing punctuation (after it when it has none)."""
    m = re.search(r"[.!?]+[\"'”’)]*\s*$", sentence)
    cut = m.start() if m else len(sentence.rstrip())
    return f"{sentence[:cut].rstrip()} [{n}]{sentence[cut:]}"


def check_citations(text: str, passages: Sequence[Passage], *, known: str = "",
                    similarity: float = SUPPORT_SIMILARITY, entity_share: float = SUPPORT_ENTITY_SHARE,
                    passage_vectors: np.ndarray | None = None, attribute: bool = False) -> tuple[str, CitationReport]:
    """Check every [n] marker of ``text`` against ``passages`` (numbered from 1, as in the prompt).

    A marker is kept when passage n exists and supports its sentence: cosine similarity >= ``similarity``
    and at least ``entity_share`` of the sentence's names and numbers found in the passage (a sentence with
    none passes on similarity). Other markers are removed (each listed with its reason). A sentence, cited
    or not, with a name or number found in no passage (nor in ``known``, e.g. topic and section title) is
    listed under ``unsupported_claims``. Returns the cleaned text (markers as ``[1][3]``) and the report.
    ``passage_vectors``: the passages' embeddings when at hand (``Index.vectors_for(passages)``).
    ``attribute``: a sentence the model left uncited that states a name or number gets a marker from
    aigc, for its best passage, when that passage clears :data:`ATTRIBUTE_SIMILARITY` and ``entity_share``
    (counted in ``attributed``, apart from the model's own markers); a sentence the model cited, all of
    whose markers were removed, gets a marker for its best passage when that passage passes the test a
    model's marker passes (``similarity``, ``entity_share``): the model named the wrong note (counted in
    ``retargeted``; its removed markers stay counted as unsupported, with ``retargeted_to``).
    """
    from aigc.embeddings import cosine, embed

    report = CitationReport()
    text = leading_markers_moved(text)
    spans = sentence_spans(text)
    report.sentences = len(spans)
    if not spans:
        return text, report
    claims = [" ".join(MARKER.sub(" ", text[a:b]).split()) for a, b in spans]
    all_sources = _normal_text(" ".join(p.text + " " + p.title + " " + p.heading for p in passages) + " " + known)
    cited = [any(MARKER.finditer(text[a:b])) for a, b in spans]
    embedded = [has or attribute for has in cited]  # the sentences compared with the passages
    if any(embedded) and passages:
        vectors = embed([c for c, e in zip(claims, embedded) if e])
        pv = passage_vectors if passage_vectors is not None else embed([p.embed_text for p in passages])
        sims = cosine(vectors, pv)
    passage_text = [_normal_text(p.text + " " + p.title + " " + p.heading) for p in passages]

    def share_in(wanted: set[str], n: int) -> float:
        return sum(_claim_found(e, passage_text[n - 1]) for e in wanted) / len(wanted) if wanted else 1.0

    out: list[str] = []
    last = 0
    row = -1
    used: set[int] = set()
    for (a, b), claim, has, emb in zip(spans, claims, cited, embedded):
        names, numbers = entities(claim)
        missing = sorted(n for n in names | numbers if not _claim_found(n, all_sources))
        if missing:
            report.unsupported_claims.append({"sentence": claim, "missing": missing})
        if not emb:
            continue
        row += 1
        if not has and not passages:
            continue
        if not has:  # attribute: the best passage, if it clearly supports a sentence that states something
            wanted = names | numbers
            best = int(np.argmax(sims[row])) + 1
            if wanted and sims[row, best - 1] >= ATTRIBUTE_SIMILARITY and share_in(wanted, best) >= entity_share:
                out.append(text[last:a])
                out.append(_attribute(text[a:b], best))
                last = b
                report.attributed += 1
                report.cited_sentences += 1
                used.add(best)
            continue
        kept_any = False
        pieces: list[str] = []
        cursor = a
        removed_before = len(report.removed)
        for m in MARKER.finditer(text, a, b):
            keep = []
            for n in marker_numbers(m.group(1)):
                report.markers += 1
                if not 1 <= n <= len(passages):
                    report.removed.append({"sentence": claim, "marker": n, "reason": "no such passage"})
                    continue
                sim = float(sims[row, n - 1])
                share = share_in(names | numbers, n)
                if sim >= similarity and share >= entity_share:
                    keep.append(n)
                    report.supported += 1
                else:
                    why = "not similar enough" if sim < similarity else "names or numbers not in the passage"
                    report.removed.append({"sentence": claim, "marker": n, "reason": why,
                                           "similarity": round(sim, 3), "entity_share": round(share, 3)})
            pieces.append(text[cursor:m.start()])
            pieces.append(format_markers(keep))
            cursor = m.end()
            kept_any = kept_any or bool(keep)
            used.update(keep)
        pieces.append(text[cursor:b])
        sentence = "".join(pieces)
        if not kept_any and attribute and passages:  # the model cited the wrong note: cite the one that supports it
            best = int(np.argmax(sims[row])) + 1
            if sims[row, best - 1] >= similarity and share_in(names | numbers, best) >= entity_share:
                sentence = _attribute(MARKER.sub("", sentence), best)
                for removed in report.removed[removed_before:]:
                    removed["retargeted_to"] = best
                report.retargeted += 1
                used.add(best)
                kept_any = True
        # "Moscow. [2]." (markers between two full stops) -> "Moscow [2]."; with [2] removed -> "Moscow."
        sentence = re.sub(r"([.!?])\s*((?:\[[\d,;\s–-]+\])*)\s*[.!?]\s*$",
                          lambda m: (" " + m.group(2) if m.group(2) else "") + m.group(1), sentence)
        # "Moscow. [2]" (the marker after the full stop, the next sentence after it) -> "Moscow [2]."
        sentence = re.sub(r"([.!?]+)[ \t]*((?:\[\d{1,4}\])+)[ \t]*$", r" \2\1", sentence)
        sentence = re.sub(r"[ \t]+(?=[.,;:!?])", "", sentence)  # "people [1]." -> "people ." -> "people."
        sentence = re.sub(r"(?<=\S)[ \t]{2,}(?=\S)", " ", sentence).rstrip()
        out.append(text[last:a])
        out.append(sentence)
        last = b
        report.cited_sentences += kept_any
    out.append(text[last:])
    report.used = sorted(used)
    return re.sub(r"(?m)^[ \t]+(?=\S)", "", "".join(out)), report  # no paragraph opens with a space


# ---------------------------------------------------------------- one numbering per article


def renumber(sections: Sequence[tuple[str, Sequence[Passage]]]) -> tuple[list[str], list[Passage]]:
    """Sections' texts, each citing its own passages as [1]..[k], renumbered into one list for the article.

    Numbers follow first citation across the sections; a passage cited in two sections (same hash) keeps
    one number; markers naming a passage the section does not have are dropped. Returns the new texts and
    the cited passages in global order (``references`` of them gives the References section).
    """
    order: list[Passage] = []
    number_of: dict[str, int] = {}
    texts = []
    for text, passages in sections:
        def swap(m: re.Match) -> str:
            numbers = []
            for n in marker_numbers(m.group(1)):
                if 1 <= n <= len(passages):
                    p = passages[n - 1]
                    key = p.hash or p.text
                    if key not in number_of:
                        order.append(p)
                        number_of[key] = len(order)
                    numbers.append(number_of[key])
            return format_markers(list(dict.fromkeys(numbers)))

        texts.append(MARKER.sub(swap, text))
    return texts, order


def references(passages_used: Sequence[Passage]) -> list[dict[str, Any]]:
    """One dict per cited passage for a References section: number, document, title, location, link, hash."""
    return [{"number": i, "document": p.document, "title": p.title, "location": p.location, "link": p.link,
             "hash": p.hash} for i, p in enumerate(passages_used, 1)]


def link_markers(html: str, *, prefix: str = "ref-") -> str:
    """HTML with each ``[n]`` made a link to ``#ref-n`` (the References list items carry ``id="ref-n"``)."""
    return re.sub(r"\[(\d{1,4})\]", lambda m: f'<a class="cite" href="#{prefix}{m.group(1)}">[{m.group(1)}]</a>',
                  html)

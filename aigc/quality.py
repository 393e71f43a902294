"""Metrics that notice: meta-text, relevance of sections to their titles and topic, redundancy, and one quality figure."""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

from aigc.textstats import length_score as _length_score, ngrams, repeated_ngrams, tokens

# -- meta-text --------------------------------------------------------------------------------------

#: Words a text uses for itself or a part of itself.
_DOC = (r"(?:article|section|piece|essay|post|blog(?:\s+post)?|paragraph|chapter|passage|write-?up|text|guide|message"
        r"|part|point|sentence|version|draft)")
#: Words a model puts before its own text: "this rewritten version", "the revised paragraph".
_EDITED = r"(?:(?:rewritten|revised|edited|updated|improved|new|final|original|short|brief|following|above|opening)\s+)?"
#: Verbs of discourse: what a text does to its reader, not what the subject does (base forms).
_BASE = (
    r"(?:explore|discuss|delve|dive|highlight|cover|examine|focus\s+on|look\s+(?:at|into)|describe|outline|present"
    r"|introduce|provide|offer|show|demonstrate|illustrate|emphasi[sz]e|underscore|address|touch\s+(?:on|upon)"
    r"|shed\s+light|summari[sz]e|talk\s+about|deal\s+with|go\s+into|walk\s+(?:you|us|the\s+reader)"
    r"|guide\s+(?:you|us|the\s+reader)|review|argue|explain|tell|reveal|take\s+(?:us|you|a\s+(?:closer\s+)?look))"
)
#: The same verbs as a text's own action: "explores", "opens with", "takes us", "will explore", "comes across".
_VERB = (
    r"(?:explores|discusses|delves|dives|highlights|covers|examines|focuses\s+on|looks\s+(?:at|into)|describes"
    r"|outlines|presents|introduces|provides|offers|shows|demonstrates|illustrates|emphasi[sz]es|underscores"
    r"|addresses|touches\s+(?:on|upon)|sheds\s+light|summari[sz]es|talks\s+about|deals\s+with|goes\s+into"
    r"|walks\s+(?:you|us|the\s+reader)|guides\s+(?:you|us|the\s+reader)|reviews|argues|explains|tells|reveals"
    r"|takes\s+(?:us|you|a\s+(?:closer\s+)?look)|(?:opens|begins|starts|ends|closes|concludes)\s+(?:with|by)"
    r"|comes\s+across|brings\s+(?:us|you)|leads\s+(?:us|you)|aims\s+(?:to|at)|seeks\s+to|tries\s+to|concludes"
    r"|encapsulates|captures|conveys|sets\s+the\s+stage|maintains|uses\s+(?:active|passive|vivid|descriptive|simple)"
    r"|(?:is|was)\s+(?:all\s+)?about(?!\s+(?:\d|a\s+(?:mile|kilomet|hundred|thousand|dozen)|half|one|two|three|four"
    r"|five|six|seven|eight|nine|ten|twenty|fifty|a\s+third|a\s+quarter)\b)"
    rf"|(?:will|would|can|shall|is\s+going\s+to|has|have)\s+(?:also\s+|now\s+|briefly\s+)?(?:been\s+)?{_BASE}"
    r"|(?:has|have)\s+(?:shown|covered|discussed|explored|described|explained|highlighted|outlined))"
)
_ORDINAL = (r"(?:first|second|third|fourth|fifth|next|following|previous|preceding|last|final|present|current|above|below"
            r"|opening|closing|\d{1,2}(?:st|nd|rd|th))")
#: A text naming itself: "this article", "the next section", "our post", "section 2" (1-20; "Section 230" is a law).
_SELF = (
    rf"(?:\b(?:this|these|our|my)\s+{_EDITED}(?:{_DOC}|report)s?"
    rf"|\bthe\s+{_ORDINAL}\s+{_DOC}s?|\bthe\s+(?:rewritten|revised|edited)\s+{_DOC}"
    rf"|\bthe\s+(?:article|essay|post|paragraph|passage|write-?up|report)"
    rf"|(?:\bin\s*|\b)(?:section|part|chapter|paragraph)\s*(?:[1-9]|1[0-9]|20|one|two|three|four|five)\b)"
)

#: (rule name, pattern), tried in this order; the first that matches names the rule of a flagged sentence.
META_RULES: list[tuple[str, re.Pattern[str]]] = [
    # "Sure! Here is the paragraph", "I hope this helps", "Let me know if..."
    ("chat_filler", re.compile(
        r"^\s*(?:sure|certainly|absolutely|of\s+course|okay|ok|great\s+question)\s*!"
        r"|^\s*(?:sure|certainly|okay|ok|of\s+course)\s*[,.:]?\s+(?:here|i\b|i'd|i’d|let\s+me)"
        r"|\b(?:i\s+)?hope\s+(?:this|that|it)\s+helps\b|\blet\s+me\s+know\b"
        r"|\bfeel\s+free\s+to\s+(?:ask|reach\s+out|contact|let\s+me|comment|share\s+your|leave\s+a)\b"
        r"|\bhere(?:'|’)?s\s+(?:is\s+)?(?:the|your|a|an|my)\s+(?:revised\s+|rewritten\s+|updated\s+|new\s+|short\s+|brief\s+"
        r"|complete\s+|full\s+|final\s+|edited\s+)?"
        r"(?:paragraph|section|article|essay|text|summary|draft|version|outline|introduction|conclusion|post|piece|report"
        r"|document)\b"
        r"|\bhere\s+is\s+(?:the|your|a|an|my)\s+(?:revised\s+|rewritten\s+|updated\s+|new\s+|short\s+|brief\s+)?"
        r"(?:paragraph|section|article|essay|text|summary|draft|version|outline|introduction|conclusion|post|piece)\b"
        r"|\bas\s+an\s+ai\b|\b(?:i\s+am|i'm|i’m)\s+(?:sorry|happy\s+to\s+help|glad\s+to\s+help)\b"
        # an assistant offering its services: "I'd be happy to help you with...", "...benefit from my assistance"
        r"|\bi(?:'d|’d|\s+would)\s+be\s+(?:happy|glad|delighted)\s+to\s+help\b|\bmy\s+assistance\b"
        r"|\bplease\s+go\s+ahead\s+and\s+(?:share|provide|send|tell)\b"
        r"|\bif\s+you\s+have\s+any\s+(?:other\s+|more\s+|further\s+)?questions\b|\banything\s+else\s+(?:i\s+can|you\s+need)\b"
        r"|^\s*here\s+goes\b|^\s*this\s+is\s+(?:just\s+)?(?:one|an)\s+example\s*[.!]?\s*$",
        re.I)),
    # "In this section, we will explore...", "In this piece you see..." (not "in this part of the river")
    ("in_this_part", re.compile(
        rf"\b(?:in|within|throughout|over)\s*(?:this|these|our|my|the\s+{_ORDINAL}|the\s+remaining)\s+{_DOC}s?\b"
        r"(?!\s+(?:of|to|from|in|at|on|near|along|between|where|which|that)\b)(?!\s*[-–—]\s*\w)",
        re.I)),
    # "This article discusses...", "Section 1 opens with...", "The first part highlights...", "This point takes us..."
    ("text_does", re.compile(rf"{_SELF}\s*,?\s+(?:\w+ly\s+|also\s+|then\s+|now\s+|further\s+)?{_VERB}\b", re.I)),
    # "As mentioned earlier, ...", "as we saw above"
    ("as_mentioned", re.compile(
        r"\bas\s+(?:(?:previously|already|earlier|briefly)\s+)?(?:mentioned|noted|discussed|stated|described|explained"
        r"|outlined|seen|shown|said|highlighted|covered|explored)\s+(?:earlier|above|before|previously|below|in\s+the\s+"
        rf"{_ORDINAL}\s+{_DOC})\b"
        r"|\bas\s+(?:previously|already|earlier)\s+(?:mentioned|noted|discussed|stated|described|explained|said)\b"
        r"|\bas\s+(?:we|i)\s+(?:have\s+|'ve\s+|’ve\s+)?(?:saw|seen|discussed|mentioned|noted|explored|said|covered|learned|learnt)\b"
        r"|\b(?:was|were|been|is|are)\s+(?:said|mentioned|discussed|noted|stated)\s+(?:before|earlier|above|previously)"
        r"(?!\s+(?:that|this|in|on|the|by|during)\b)|\b(?:this|that|which)\s+brings\s+us\s+back\b",
        re.I)),
    # "Let's dive in", "we will explore", "I was going to say", "In my essay..."
    ("writer_voice", re.compile(
        r"\blet(?:'|’)?s\s+(?:dive|delve|explore|take\s+a|look|begin|start|get\s+started|talk|discuss|break|unpack|examine"
        r"|jump|turn|move|consider|see|find\s+out)\b"
        r"|\blet\s+us\s+(?:dive|delve|explore|take\s+a|look|begin|start|talk|discuss|examine|turn|move|consider)\b"
        r"|\b(?:we|i)\s+(?:will|shall|'ll|’ll|are\s+going\s+to|am\s+going\s+to|'re\s+going\s+to|’re\s+going\s+to|'m\s+going\s+to"
        r"|’m\s+going\s+to|want\s+to|would\s+like\s+to|aim\s+to|intend\s+to|hope\s+to)\s+(?:now\s+|also\s+|briefly\s+|first\s+)?"
        r"(?:explore|discuss|delve|dive|examine|look\s+at|take\s+a\s+(?:closer\s+)?look|focus|cover|talk\s+about|outline"
        r"|describe|explain|highlight|share|show|walk|present|introduce|summari[sz]e|review|write|begin|start|conclude|detail)\b"
        r"|\bwhat\s+i\s+was\s+going\s+to\s+say\b|\bi\s+was\s+(?:going|about)\s+to\s+(?:say|write|mention)\b"
        r"|\b(?:in|for)\s+(?:my|our)\s+(?:essay|article|post|blog|piece|paper|writing)\b"
        r"|\b(?:i|we)\s*(?:have|'ve|’ve)\s+(?:written|discussed|explored|covered|outlined|described|prepared|compiled"
        r"|drafted|put\s+together|been\s+(?:tasked|asked)\s+(?:with|to))\b"
        r"|\b(?:i|we)(?:'m|’m|\s+am|'re|’re|\s+are)\s+(?:so\s+)?(?:excited|thrilled|happy|delighted|glad|pleased)\s+to"
        r"\s+(?:share|present|write|introduce|discuss|explore|bring)\b|\bshare\s+(?:my|our)\s+thoughts\b"
        r"|\bone\s+of\s+my\s+(?:[\w-]+\s+){0,3}(?:articles|essays|posts|pieces|blog\s+posts)\b",
        re.I)),
    # "Your content is spot on with your opening sentence.", "Here's how you can refine it further", "passive voice"
    ("editor_talk", re.compile(
        r"\byour\s+(?:content|writing|paragraph|essay|draft|sentence|opening|original\s+(?:text|message|version|paragraph)"
        r"|article|introduction|text|prompt|request|report|(?:final\s+)?edit)\b"
        r"|\bhere\s+is\s+(?:a|an)\s+(?:sample|example)\s+of\s+how\s+(?:you|to|i|we)\b"
        r"|\b(?:grammar|spelling)\s+(?:consistency|errors?|mistakes?|checks?)\b"
        r"|\bhere(?:'|’)?s\s+how\s+(?:you|i|we)\s+(?:can|could|might)\s+(?:refine|improve|rewrite|revise|edit|polish)\b"
        r"|\bhere\s+is\s+how\s+(?:you|i|we)\s+(?:can|could|might)\s+(?:refine|improve|rewrite|revise|edit|polish)\b"
        r"|\b(?:refine|rewrite|revise|polish)\s+(?:it|this|the\s+(?:text|paragraph|sentence|draft))\b"
        r"|\b(?:active|passive)\s+voice\b|\btransitional\s+(?:words?|phrases?|markers?)\b|\bopening\s+sentence\b"
        r"|\bword\s+count\b|\bsentence\s+flow\b|\bmade\s+(?:these|the\s+following|some|a\s+few)\s+changes\b"
        r"|\b(?:rewrote|rephrased|reorganized|reorganised)\s+(?:the|this|your|it)\b"
        r"|\b(?:concludes|ends|opens|closes|starts|begins)\s+the\s+(?:paragraph|article|essay|piece|post|text)\b"
        r"|\bedit\s+(?:this|the)\s+(?:text|paragraph|draft)\b|\bediting\s+style\b",
        re.I)),
    # "Here's your chance to showcase how you can tackle...", "you will learn", "read on"
    ("reader_task", re.compile(
        r"\bhere(?:'|’)?s\s+(?:is\s+)?your\s+(?:chance|opportunity|task)\b|\bhere\s+is\s+your\s+(?:chance|opportunity|task)\b"
        r"|\byour\s+(?:task|assignment|job|goal|challenge)\s+(?:is|will\s+be)\s+to\b|\bshowcase\s+(?:how|what|your)\b"
        r"|\byou\s+(?:will|'ll|’ll|are\s+going\s+to)\s+(?:learn|discover|find\s+out|read|see\s+how|delve|dive|explore)\b"
        r"|\byou\s+see\s+(?:just|exactly)\s+what\b|\bas\s+you\s+read\b|\b(?:read|keep\s+reading)\s+on\b|\bstay\s+tuned\b|\bdear\s+readers?\b"
        r"|\bas\s+(?:a|the)\s+reader\b|\b(?:this|the\s+(?:above|following))\s+(?:prompt|instructions?)\b"
        r"|\bthe\s+(?:above|following)\s+task\b"
        # the request's instructions echoed: "In your response, please use all caps." (not "your response" in a letter)
        r"|\bin\s+your\s+(?:response|answer|reply)\s*,|\byour\s+(?:response|answer)\s+should\b"
        # the prompt's format instructions echoed: "You may not use bold formatting such as asterisks",
        # "This includes headings and bullet points", "please provide one paragraph with the details"
        r"|\byou\s+(?:may|must|should|can)\s*(?:not|n't)\s+use\b|\bbold\s+formatting\b"
        r"|\bheadings\s+(?:and|or)\s+(?:bullet\s+points|lists)\b|\bplease\s+(?:provide|write|use|include)\b"
        # a length instruction echoed: "make sure it has no less than 10 sentences"
        r"|\b(?:has|have|contains?|write|use|keep)\s+(?:no\s+(?:less|more|fewer)\s+than|at\s+least|at\s+most)\s+\d+\s+"
        r"(?:sentences|paragraphs)\b",
        re.I)),
    # the text's own layout: "The first paragraph of the report explains", "In the 2nd paragraph, it details",
    # "The report ... has a section 4 marked with ...", "The report is: ...", "is added after this paragraph"
    ("text_layout", re.compile(
        rf"\bthe\s+{_ORDINAL}\s+paragraph\b(?!\s+of\s+(?:article|section|clause|the\s+(?:constitution|treaty|act|law"
        r"|convention|declaration|charter|agreement|resolution)))"
        r"|\bhas\s+a\s+section\b|\bsection\s+\d{1,2}\s+(?:marked|titled|entitled|called|named|headed)\b"
        r"|^\s*(?:the|this|my|our)\s+(?:report|article|essay|text)\s+(?:is|reads)\s*:"
        r"|\b(?:after|before|below|above)\s+this\s+(?:paragraph|sentence|section)\b"
        # "The report has added one more paragraph to this section; no other sections have been written yet."
        r"|\b(?:one\s+more|another|a\s+new|an\s+extra)\s+paragraph\s+(?:to|in|for)\b"
        r"|\b(?:sections?|paragraphs?)\s+(?:have|has)\s+(?:not\s+)?(?:yet\s+)?been\s+(?:written|added)\b"
        r"|\bthe\s+(?:first|last|next)\s+(?:two|three|four|few)\s+paragraphs\b|\bparagraphs?\s+should\s+be\b"
        r"|\b(?:the|this)\s+report(?:'s|’s)\s+(?:summary|introduction|conclusion|opening|first\s+(?:part|section))\b"
        r"|^\s*the\s+(?:section|report|article)\s+continues\b|\bcontinues\s+from\s+the\s+(?:previous|last|preceding)\b"
        r"|\bthroughout\s+the\s+(?:entire\s+|whole\s+)?(?:report|article|essay|piece)\b",
        re.I)),
    # with sources: "The source documents cover...", "The notes above say", "note [1] is the first one"
    ("about_the_sources", re.compile(
        r"\bsource\s+(?:documents?|passages?|notes|texts?|materials?)\b"
        r"|\b(?:the|these|those)\s+(?:notes|passages)\s+(?:above|below|provided|given|say|says|mention|cover|describe"
        r"|state|show|list|contain)\b|(?:^\s*|\bthe\s+)(?:note|notes|passage|passages)\s+\[\d+\]"
        r"|\bthe\s+(?:first|second|third|last|next|other)\s+(?:note|passage)\s+(?:provides|gives|says|states|mentions"
        r"|describes|shows|explains|lists|contains|covers)\b",
        re.I)),
]

#: A sentence end: . ! ? (and closing quotes) before a space, or glued to a capitalised word ("others.No group").
_SENTENCE_END = re.compile(r"([.!?…]+[\"'”’)\]]*)(?:\s+|(?=[A-Z][a-z]))")
#: What a "." after these words does not end: "Dr. Smith", "e.g. this", "J. K. Rowling", "U.S. Army".
_ABBREVIATION = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|vs|No|Prof|Mt|etc|e\.g|i\.e)|\b[A-Z])$")
_MARKUP = re.compile(r"^\s{0,3}(?:[-*+]\s+|\d{1,3}[.)]\s+|>\s*)")


def _cut(line: str, m: re.Match) -> str:
    """The replacement for one possible sentence end: the end and a line break, or the text unchanged."""
    before = line[max(0, m.start() - 4): m.start()]
    glued = not m.group(0)[len(m.group(1)):]
    if m.group(1).startswith(".") and _ABBREVIATION.search(before) or glued and not (
            len(m.group(1)) == 1 and before[-1:].islower() or before[-1:].isdigit()):
        return m.group(0)
    return m.group(1) + "\n"


def sentences(text: str) -> list[str]:
    """The sentences of ``text``: split at line breaks and at . ! ? (also "end.Next", as models and scrapes write).

    Markdown headings are dropped; list markers, quotes and emphasis marks are removed.
    """
    out = []
    for line in text.replace("\r", "\n").split("\n"):
        if re.match(r"^\s{0,3}#{1,6}\s", line):
            continue
        line = re.sub(r"[*_`]{1,3}", "", _MARKUP.sub("", line)).strip()
        out.extend(s.strip() for s in _SENTENCE_END.sub(lambda m: _cut(line, m), line).split("\n") if len(s.strip()) > 1)
    return out


def find_meta(text: str) -> list[dict]:
    """Sentences of ``text`` about the text, the writer or the reader's task, not the subject.

    Each is ``{"sentence", "rule", "match"}``: the rule of :data:`META_RULES` that caught it first
    and the words it matched.
    """
    found = []
    for sentence in sentences(text):
        for rule, pattern in META_RULES:
            if m := pattern.search(sentence):
                found.append({"sentence": sentence, "rule": rule, "match": m.group(0).strip()})
                break
    return found


def is_meta(sentence: str) -> bool:
    """Whether one sentence is about the text, the writer or the reader's task (any of :data:`META_RULES`)."""
    return any(pattern.search(sentence) for _, pattern in META_RULES)


def drop_preamble(text: str) -> tuple[str, list[str]]:
    """``text`` without the meta sentences it opens with, and those sentences.

    A small model often starts a section as an assistant would ("I'd be happy to help you with your
    essay on this topic!", "In this section, we will explore...") before it reaches the subject; those
    leading sentences are dropped, up to the first one about the subject. Meta sentences further on
    are left for the evaluation to count. ``text`` is returned unchanged when it opens on the subject.
    """
    paragraphs = text.split("\n\n")
    dropped: list[str] = []
    while paragraphs:
        parts = sentences(paragraphs[0])
        k = 0
        while k < len(parts) and is_meta(parts[k]):
            k += 1
        if k == 0:
            break
        dropped += parts[:k]
        if k < len(parts):
            paragraphs[0] = " ".join(parts[k:])
            break
        paragraphs.pop(0)
    return "\n\n".join(paragraphs), dropped


def meta_sentences(text: str) -> list[str]:
    """The meta-text sentences of ``text`` (see :func:`find_meta` for the rule that caught each)."""
    return [f["sentence"] for f in find_meta(text)]


def meta_rate(sections: str | Sequence[str]) -> float:
    """Meta-text sentences / all sentences, pooled over ``sections`` (0.0 for no sentences)."""
    texts = [sections] if isinstance(sections, str) else list(sections)
    total = sum(len(sentences(t)) for t in texts)
    return sum(len(find_meta(t)) for t in texts) / total if total else 0.0


# -- relevance and redundancy -----------------------------------------------------------------------

#: Words per piece when embedding a section body (the model reads ~190 words; longer bodies are averaged over pieces).
CHUNK_WORDS = 150


def _title_text(topic: str, title: str) -> str:
    """What a section title is embedded as: "Topic: Title", since "Background" alone says little."""
    return f"{topic}: {title}" if topic and title else title or topic


def _vectors(texts: Sequence[str], bodies: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of short ``texts`` and of ``bodies`` (chunked), in one call to the model."""
    from aigc.embeddings import embed

    texts, bodies = list(texts), list(bodies)
    vecs = embed(texts + bodies, chunk_words=CHUNK_WORDS)
    return vecs[: len(texts)], vecs[len(texts):]


def section_relevance(topic: str, titles: Sequence[str], bodies: Sequence[str]) -> list[dict]:
    """Per section: ``relevance_title`` (cosine of the body to "topic: title") and ``relevance_topic`` (to the topic).

    All texts are embedded in one call. An empty body gets 0.0 for both.
    """
    titles, bodies = list(titles), list(bodies)
    if len(titles) != len(bodies):
        raise ValueError(f"{len(titles)} titles for {len(bodies)} bodies")
    heads, body_vecs = _vectors([topic] + [_title_text(topic, t) for t in titles], bodies)
    out = []
    for i, (title, body) in enumerate(zip(titles, bodies)):
        empty = not body.strip()
        out.append({
            "title": title,
            "words": len(tokens(body)),
            "relevance_title": 0.0 if empty else float(heads[i + 1] @ body_vecs[i]),
            "relevance_topic": 0.0 if empty else float(heads[0] @ body_vecs[i]),
        })
    return out


def redundancy(bodies: Sequence[str], body_vectors: np.ndarray | None = None) -> dict:
    """How much the sections say the same: pairwise cosine of their bodies (``max``, ``mean``) and 4-gram overlap.

    ``overlap_4gram`` is the share of 4-gram occurrences that also occur in another section
    (aigc.evaluate's ``repeated_ngrams(...)["across"]``). All None with fewer than two non-empty sections.
    """
    keep = [i for i, b in enumerate(bodies) if b.strip()]
    if len(keep) < 2:
        return {"redundancy": None, "redundancy_mean": None, "overlap_4gram": None}
    if body_vectors is None:
        _, body_vectors = _vectors([], [bodies[i] for i in keep])
    else:
        body_vectors = body_vectors[keep]
    sims = body_vectors @ body_vectors.T
    pairs = sims[np.triu_indices(len(keep), k=1)]
    return {
        "redundancy": float(pairs.max()),
        "redundancy_mean": float(pairs.mean()),
        "overlap_4gram": repeated_ngrams([bodies[i] for i in keep], 4)["across"],
    }


# -- one figure ---------------------------------------------------------------------------------------

#: Cosine at or below which relevance earns nothing, and at or above which it earns full marks (see docs/evaluation.md).
RELEVANCE_TITLE_RANGE = (0.15, 0.55)
RELEVANCE_TOPIC_RANGE = (0.10, 0.50)
#: Meta-text rate that costs all of its component.
META_RATE_ZERO = 0.25
#: Max pairwise body cosine from which redundancy starts to cost, and where it costs everything.
REDUNDANCY_RANGE = (0.70, 0.95)
#: Share of repeated 4-gram occurrences inside sections from which repetition starts to cost, and where it costs everything.
REPETITION_RANGE = (0.05, 0.35)
#: Weights of the components in the geometric mean.
WEIGHTS = {"relevance_title": 0.25, "relevance_topic": 0.20, "meta": 0.20, "redundancy": 0.05, "repetition": 0.05,
           "length": 0.10, "coverage": 0.15}
#: The least a component counts for, so one bad component lowers the figure hard without zeroing it.
FLOOR = 0.02


def _ramp(x: float, lo: float, hi: float) -> float:
    """0 at or below ``lo``, 1 at or above ``hi``, linear between."""
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))


def quality_figure(*, relevance_title: float | None, relevance_topic: float | None, meta_rate: float | None,
                   redundancy: float | None = None, repetition: float | None = None,
                   length_score: float | None = None, coverage: float | None = None) -> float:
    """One quality figure, 0-100: the weighted geometric mean of six components, each 0-1.

    - relevance_title: ramp(mean cosine of body to "topic: title", 0.15 -> 0, 0.55 -> 1), weight 0.25
    - relevance_topic: ramp(mean cosine of body to topic, 0.10 -> 0, 0.50 -> 1), weight 0.20
    - meta: 1 - meta_rate / 0.25 (a quarter of the sentences about the text costs it all), weight 0.20
    - redundancy: 1 - ramp(max pairwise body cosine, 0.70 -> 0, 0.95 -> 1), weight 0.05
    - repetition: 1 - ramp(repeated 4-gram share inside sections, 0.05 -> 0, 0.35 -> 1), weight 0.05
    - length: length_score / 100 (aigc.evaluate's LongWriter S_l), weight 0.10
    - coverage: share of outline sections written (aigc.evaluate), weight 0.15

    Q = 100 * prod(max(c_i, 0.02) ** w_i) ** (1 / sum(w_i)) over the components given (None leaves one out
    and the rest are reweighted), so a weak component pulls Q down more than a strong one lifts it. 0.0
    when every component is None.
    """
    parts: dict[str, float] = {}
    if relevance_title is not None:
        parts["relevance_title"] = _ramp(relevance_title, *RELEVANCE_TITLE_RANGE)
    if relevance_topic is not None:
        parts["relevance_topic"] = _ramp(relevance_topic, *RELEVANCE_TOPIC_RANGE)
    if meta_rate is not None:
        parts["meta"] = max(0.0, 1.0 - meta_rate / META_RATE_ZERO)
    if redundancy is not None:
        parts["redundancy"] = 1.0 - _ramp(redundancy, *REDUNDANCY_RANGE)
    if repetition is not None:
        parts["repetition"] = 1.0 - _ramp(repetition, *REPETITION_RANGE)
    if length_score is not None:
        parts["length"] = max(0.0, min(1.0, length_score / 100.0))
    if coverage is not None:
        parts["coverage"] = max(0.0, min(1.0, coverage))
    if not parts:
        return 0.0
    total_w = sum(WEIGHTS[k] for k in parts)
    log_q = sum(WEIGHTS[k] * math.log(max(v, FLOOR)) for k, v in parts.items()) / total_w
    return 100.0 * math.exp(log_q)


def evaluate_quality(topic: str, titles: Sequence[str], bodies: Sequence[str], *, length_score: float | None = None,
                     coverage: float | None = None) -> dict:
    """Relevance, meta-text, redundancy and the quality figure of one article, for ``result.update(...)``.

    Flat numeric keys (see :data:`QUALITY_COLUMNS`): ``relevance_title``, ``relevance_topic`` (means over
    sections), ``relevance_title_min``, ``meta_rate``, ``meta_sentences`` (count), ``redundancy``,
    ``redundancy_mean``, ``overlap_4gram``, ``repetition`` (repeated 4-gram share inside sections), ``quality``. ``quality_details`` holds the per-section
    figures and each meta sentence with its rule. ``length_score`` (0-100) and ``coverage`` (0-1) come
    from aigc.evaluate.
    """
    titles, bodies = list(titles), list(bodies)
    if len(titles) != len(bodies):
        raise ValueError(f"{len(titles)} titles for {len(bodies)} bodies")
    heads, body_vecs = _vectors([topic] + [_title_text(topic, t) for t in titles], bodies) if bodies else (None, None)
    per_section = []
    for i, (title, body) in enumerate(zip(titles, bodies)):
        empty = not body.strip()
        meta = find_meta(body)
        per_section.append({
            "title": title,
            "words": len(tokens(body)),
            "relevance_title": 0.0 if empty else float(heads[i + 1] @ body_vecs[i]),
            "relevance_topic": 0.0 if empty else float(heads[0] @ body_vecs[i]),
            "sentences": len(sentences(body)),
            "meta": meta,
        })
    red = redundancy(bodies, body_vecs) if bodies else redundancy([])
    rep = repeated_ngrams(bodies, 4)["within"]
    n_sent = sum(s["sentences"] for s in per_section)
    n_meta = sum(len(s["meta"]) for s in per_section)
    rel_title = float(np.mean([s["relevance_title"] for s in per_section])) if per_section else None
    rel_topic = float(np.mean([s["relevance_topic"] for s in per_section])) if per_section else None
    rate = n_meta / n_sent if n_sent else (None if not per_section else 0.0)
    result = {
        "relevance_title": rel_title,
        "relevance_topic": rel_topic,
        "relevance_title_min": min((s["relevance_title"] for s in per_section), default=None),
        "meta_rate": rate,
        "meta_sentences": n_meta,
        **red,
        "repetition": rep,
        "quality": quality_figure(relevance_title=rel_title, relevance_topic=rel_topic, meta_rate=rate,
                                  redundancy=red["redundancy"], repetition=rep, length_score=length_score,
                                  coverage=coverage),
    }
    result["quality_details"] = {
        "sections": [{k: v for k, v in s.items() if k != "meta"} | {"meta_sentences": len(s["meta"])}
                     for s in per_section],
        "meta": [{"section": s["title"], **m} for s in per_section for m in s["meta"]],
    }
    return result


#: Table columns of evaluate_quality's keys, in aigc.evaluate.COLUMNS' form: key -> (header, format).
QUALITY_COLUMNS = {
    "relevance_title": ("rel title", "{:.2f}"),
    "relevance_topic": ("rel topic", "{:.2f}"),
    "meta_rate": ("meta", "{:.1%}"),
    "redundancy": ("redundancy", "{:.2f}"),
    "quality": ("quality", "{:.1f}"),
}


# -- choosing between candidates ------------------------------------------------------------------


def score_sections(topic: str, titles: Sequence[str], bodies: Sequence[str], *,
                   other_bodies: Sequence[Sequence[str]] | None = None,
                   target_words: int | Sequence[int | None] | None = None) -> list[dict]:
    """Score candidate section bodies, all embedded in one call: candidate i is ``bodies[i]`` for ``titles[i]``.

    ``other_bodies[i]``: the other sections' bodies candidate i must not repeat (already chosen ones);
    ``target_words``: the word budget of each candidate (one int for all). Each result has
    ``relevance_title``, ``relevance_topic``, ``meta_rate``, ``repetition`` (repeated 4-gram share
    inside the body), ``overlap`` (max cosine to another body), ``overlap_4gram`` (share of the body's
    4-grams found in another body), ``length_fit`` (S_l / 100 against the budget, None without one),
    ``words`` and ``total`` (0-100: :func:`quality_figure` of this one section, ``overlap`` as its
    redundancy; an empty body has coverage 0). Higher total is better.
    """
    titles, bodies = list(titles), list(bodies)
    if len(titles) != len(bodies):
        raise ValueError(f"{len(titles)} titles for {len(bodies)} bodies")
    others = [list(o) for o in other_bodies] if other_bodies is not None else [[] for _ in bodies]
    if len(others) != len(bodies):
        raise ValueError(f"{len(others)} lists of other bodies for {len(bodies)} bodies")
    targets = list(target_words) if isinstance(target_words, Sequence) else [target_words] * len(bodies)
    pool = list(dict.fromkeys(bodies + [b for o in others for b in o if b.strip()]))
    heads, pool_vecs = _vectors([topic] + [_title_text(topic, t) for t in titles], pool)
    row = {b: i for i, b in enumerate(pool)}
    out = []
    for i, (title, body) in enumerate(zip(titles, bodies)):
        empty = not body.strip()
        vec = pool_vecs[row[body]]
        rel_title = 0.0 if empty else float(heads[i + 1] @ vec)
        rel_topic = 0.0 if empty else float(heads[0] @ vec)
        toks = tokens(body)
        rep = repeated_ngrams([body], 4)["within"] or 0.0
        other = [b for b in others[i] if b.strip()]
        overlap = max((float(vec @ pool_vecs[row[b]]) for b in other), default=0.0) if not empty else 0.0
        grams = ngrams(toks, 4)
        other_grams = {g for b in other for g in ngrams(tokens(b), 4)}
        overlap_4 = sum(g in other_grams for g in grams) / len(grams) if grams else 0.0
        rate = meta_rate(body)
        fit = _length_score(targets[i], len(toks)) / 100.0 if targets[i] else None
        total = quality_figure(relevance_title=rel_title, relevance_topic=rel_topic, meta_rate=rate,
                               redundancy=overlap if other else None, repetition=rep,
                               length_score=None if fit is None else fit * 100.0, coverage=0.0 if empty else 1.0)
        out.append({"title": title, "words": len(toks), "relevance_title": rel_title, "relevance_topic": rel_topic,
                    "meta_rate": rate, "repetition": rep, "overlap": overlap, "overlap_4gram": overlap_4,
                    "length_fit": fit, "total": total})
    return out


def score_section(topic: str, title: str, body: str, other_bodies: Sequence[str] = (),
                  target_words: int | None = None) -> dict:
    """:func:`score_sections` for one candidate."""
    return score_sections(topic, [title], [body], other_bodies=[list(other_bodies)], target_words=target_words)[0]

"""Whether a title can head a section, and how well-formed it is: the rules :mod:`aigc.outline_pool` selects by.

``unusable_reason(title)`` says why a title cannot be a section title at all (chatter, a sentence about the
outline, a placeholder in brackets, a length, a place in the outline), ``title_form(title)`` scores a usable
one 0..1 (length, not a sentence, not generic).
"""

from __future__ import annotations

import re

#: Title words beyond which a title is too long to use.
MAX_WORDS = 14

#: Titles that say nothing about the subject: used only when better ones run out.
GENERIC = frozenset({"introduction", "conclusion", "conclusions", "overview", "summary", "final thoughts",
                     "closing thoughts", "wrap up", "wrapping up", "key takeaways", "takeaways", "the end",
                     "in conclusion", "intro", "faq", "faqs", "misc", "miscellaneous", "other", "more", "details"})
_CHATTER = re.compile(
    r"^(?:here(?:'s| is| are)|sure|certainly|okay|ok|of course|below|the following|i hope|i will|i'll|let me|let's"
    r"|note|please|thank|as an ai|great|absolutely)\b", re.I)
_META = re.compile(
    r"\boutlines?\b|\bsection (?:titles?|headings?)\b|\b(?:this|the|an|our|your|my) (?:article|essay|blog post|post|piece)\b"
    r"|\bword count\b|\bnumbered list\b|\b\d+\s+(?:sections|titles|headings)\b|\bsource documents?\b"
    r"|^\s*(?:the|this|our|my)\s+report(?:(?:'s|’s)\b.*)?$|\bas follows\b"
    r"|^(?:write|create|generate|give|list|provide|make|draft)\b", re.I)
_SENTENCE = re.compile(r"\b(?:is|are|was|were|will|would|can|could|should|has|have|had|you|we|i|they|it's|let's)\b", re.I)

#: Titles that are no titles, (pattern, reason): "[Add a postscript starting with P.S.]", "(Insert title here)"
#: (not "[Terrorist] report"), "[Length] - 5 pages", "Introduction (200 words)", "The second part", "The fourth",
#: "Section 3", "The details can be found here: https://...".
_NOT_TITLES = [(re.compile(r"^\s*\[[^\]]*\]\s*$|^\s*\([^)]*\)\s*$"
                           r"|[\[(](?:add|insert|include|your|enter|title|name|list|use|write)\b", re.I),
                "a placeholder in brackets"),
               (re.compile(r"\b\d+\s*(?:pages?|words?|paragraphs?|sentences?)\b", re.I), "a length, not a title"),
               (re.compile(r"^\s*(?:(?:the\s+)?(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|next|other"
                           r"|\d{1,2}(?:st|nd|rd|th)?)(?:\s+(?:part|section|chapter|point|paragraph|one|topic|heading))?"
                           r"|(?:part|section|chapter|point|topic|heading)\s+(?:\d{1,2}|one|two|three|four|five|six|seven"
                           r"|eight|nine|ten))\s*$", re.I), "a place in the outline, not a title"),
               (re.compile(r"https?://|\bwww\.|\bcan\s+be\s+found\b", re.I), "a link or a pointer, not a title")]


def unusable_reason(title: str) -> str | None:
    """Why a (cleaned) title cannot be a section title at all, or None."""
    words = title.split()
    if not words or not any(c.isalpha() for c in title):
        return "no words"
    if len(words) > MAX_WORDS or len(title) > 100:
        return "too long"
    if _CHATTER.search(title):
        return "chatter"
    if _META.search(title):
        return "about the outline or the writing, not the subject"
    if title.count("(") > title.count(")") or title.count("[") > title.count("]"):
        return "cut off (a bracket left open)"
    return next((why for pattern, why in _NOT_TITLES if pattern.search(title)), None)


def title_form(title: str) -> float:
    """How well-formed a title is, 0..1: 2-10 words, not a sentence, no trailing chatter, not generic."""
    if unusable_reason(title):
        return 0.0
    words = title.split()
    score = 1.0
    if len(words) == 1:
        score -= 0.15  # "History" is a fine heading, a little less informative than "Early history"
    elif len(words) > 10:
        score -= 0.4
    if title.rstrip().endswith((".", "!", ";", ",")) or (len(words) > 6 and _SENTENCE.search(title)):
        score -= 0.4  # a sentence, not a heading
    if ":" in title and len(title.partition(":")[2].split()) > 5:
        score -= 0.2  # "Title: a description of it"
    if re.search(r"\(.*\)|\.\.\.|…|\betc\b", title):
        score -= 0.15
    if title.isupper() and len(title) > 4:
        score -= 0.1
    if re.sub(r"[^a-z ]", "", title.lower()).strip() in GENERIC:
        score -= 0.4
    return max(0.0, min(1.0, score))

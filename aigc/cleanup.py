"""Make small-model prose usable: drop echoed headings and chat filler, cut runaway repetition, end on a sentence."""

from __future__ import annotations

import re
from typing import Sequence

from aigc.languages import CJK_RANGES

#: A sentence ends at . ! ? … before a space or the end, or at 。！？ (CJK text puts no space after them).
_SENTENCE_END = re.compile(r"""[.!?…][)"'”’\]]*(?=\s|$)|[。！？][」』”’）)\]]*""")
_CJK = re.compile(f"[{CJK_RANGES}]")
_FILLER = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|absolutely|okay|ok|here(?:'s| is| are)\b)[^\n]{0,80}?(?::|!|\.)"
    r"|(?:好的|当然|没问题|以下是)[^\n]{0,40}?[:：！!。])\s*$", re.I
)
#: Sentences about the writing rather than the subject ("Here is your paragraph...").
_META_SENTENCE = re.compile(
    r"^\s*[\"“]?(?:(?:sure|certainly|of course|absolutely)\b|here(?:'s| is| are)\s+(?:a|an|the|your|my)\s+"
    r"(?:\w+\s+){0,3}(?:paragraph|section|text|essay|article|version|draft|response|answer|outline|post|report)s?\b"
    r"|(?:i'm|i am) ready\b|please (?:go ahead|let me know|provide)\b|let me know\b)",
    re.I,
)
#: A link into the document's own contents, copied by the model ("[Section Two](#section-two) Climate ...").
_ANCHOR_LINK = re.compile(r"\[[^\]\n]{1,80}\]\(#[^)\s]*\)[ \t]*")
#: A "sentence" that is one function word and a full stop ("... his case. The. In June ..."): a broken start.
_FRAGMENT = re.compile(r"^\s*(?:the|a|an|and|but|or|of|to|in|on|at|for|with|this|that|these|it|as|by)\s*[.!?]\s*$",
                       re.I)
_OUTRO = re.compile(r"^\s*(?:i hope (?:this|that)|let me know|feel free to|hope this helps|希望(?:这|以上|本文))", re.I)
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+.*|\*\*[^*]{1,100}\*\*:?|(?:section|part)\s+\w+\s*[:.\-–—].*)\s*$", re.I)
_LIST_MARK = re.compile(r"^\s*(?:[-*•+]|\d{1,2}[.)])\s+")
#: A letter or digit that is not CJK (CJK characters are words on their own).
_L = f"[^\\W{CJK_RANGES}]"
#: A word as a reader counts it: letters, digits, apostrophes and inner hyphens ("don't", "well-known"); in
#: Chinese, Japanese and Korean each character is one word (as LongBench-Write counts Chinese).
WORD = re.compile(f"[{CJK_RANGES}]|{_L}(?:(?:{_L}|['’-])*{_L})?")
_NORM_WORD = WORD  # for comparing lines, not for counting
#: Template placeholders a model copied ("[Section_title]", "[your_paragraphs_without-bold]", "[Insert_Content]",
#: "[Insert your opening paragraph]"), an instruction or note left in brackets ("[note: note added]",
#: "[Miscellaneous note: ...]"; "[Your Name]" in a letter stays, for the writer to fill in), and the prompt's
#: "<<<" / ">>>" delimiters echoed, with what they held ("<<Title: Storm Mocha>>").
_PLACEHOLDER = re.compile(r"\[[A-Za-z]+(?:[_-][A-Za-z]+)+\]\s*(?:\.{2,}\s*)?"
                          r"|\[(?:insert|add|include|enter|write|put|fill\s+in|note|editor'?s\s+note)\b[^\]\n]{0,80}\]"
                          r"\s*(?:\.{2,}\s*)?"
                          r"|\[[A-Za-z' ]{0,30}\bnote\s*:[^\]\n]{0,300}\]"
                          r"|<<[^<>\n]{1,150}>>[ \t]*"
                          r"|<{3,}|>{3,}", re.I)


def _norm(text: str) -> str:
    return " ".join(_NORM_WORD.findall(text.lower()))


def split_words(text: str) -> list[str]:
    """The words of ``text`` as a reader would count them (see :data:`WORD`)."""
    return WORD.findall(text)


def words(text: str) -> int:
    """Word count as a reader would count it."""
    return len(split_words(text))


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph (ends kept)."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start : m.end()].strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return [s for s in out if s]


def trim_to_sentence(text: str) -> str:
    """Cut an unfinished last sentence (text stopped by the token limit); text with no sentence end at all (a run of
    clauses: "Benefits of green spaces; Futures ahead;") ends with a full stop instead of its comma or semicolon."""
    text = text.rstrip()
    matches = list(_SENTENCE_END.finditer(text))
    if not matches:
        text = re.sub(r"[\s;:,，、；：–—-]+$", "", text)
        return text + ("。" if _CJK.search(text[-1:]) else ".") if text else text
    return text[: matches[-1].end()].rstrip()


def _heading_like(line: str) -> bool:
    """A short line without a sentence end: a title or heading, not prose (CJK: up to 14 characters)."""
    return 0 < words(line) <= 14 and not _SENTENCE_END.search(line) and not line.endswith((",", ";", "，", "；"))


def join_text(parts: Sequence[str]) -> str:
    """Join sentences or lines with a space, except between two CJK characters or after 。！？ (no space in CJK)."""
    out = ""
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if out and not (_CJK.match(part[0]) and (_CJK.match(out[-1]) or out[-1] in "。！？，、；：」』”）")):
            out += " "
        out += part
    return out


def _is_title_echo(line: str, titles: Sequence[str]) -> bool:
    n = _norm(re.sub(r"^\s*(?:#+|\*\*|(?:section|part)\s+\w+\s*[:.\-–—]?|\d{1,2}[.)])\s*", "", line))
    return bool(n) and any(n == _norm(t) or (len(n) > 8 and n in _norm(t)) for t in titles)


def clean_section(text: str, *, title: str, other_titles: Sequence[str] = (), truncated: bool = False) -> str:
    """Turn one generated section into plain paragraphs of prose.

    - a repeated title, and any heading or title-like line standing alone (a few words, no
      sentence end), is removed;
    - text stops where the model starts writing another section of the outline;
    - chat filler ("Sure! Here is...", "I hope this helps") is dropped;
    - repeated sentences and paragraphs are removed (degenerate loops);
    - text cut off by the token limit ends at its last full sentence.
    """
    lines = text.replace("\r", "").split("\n")
    kept: list[str] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        alone = (i == 0 or not lines[i - 1].strip()) and (i + 1 == len(lines) or not lines[i + 1].strip())
        if not kept and (not stripped or _FILLER.match(line) or _is_title_echo(line, [title]) or _HEADING.match(line)
                         or (alone and _heading_like(stripped))):
            continue
        if kept and (_is_title_echo(line, other_titles) and (_HEADING.match(line) or words(stripped) <= 14)):
            break  # the model went on to write another section
        if _OUTRO.match(line):
            break
        if _HEADING.match(line) or (alone and _heading_like(stripped)):
            continue
        kept.append(_LIST_MARK.sub("", line) if _LIST_MARK.match(line) else line)
    joined = _PLACEHOLDER.sub("", "\n".join(kept))
    joined = _ANCHOR_LINK.sub("", joined)
    joined = _drop_labels(joined, [title, *other_titles])
    joined = re.sub(r"[ \t]+(?=[.,;:!?](?:\s|$))", "", joined)  # "an officer [note: added] ." -> "an officer."
    joined = re.sub(r"(?<=[.!?])[ \t]*,[ \t]+(?=[A-Z])", " ", joined)  # "... this event. , The report" -> ". The"
    # list numbers run into the prose: "... roads [3]. 2. The ruins ... possible. 4." -> "... roads [3]. The ruins ... possible."
    joined = re.sub(r"(?<=[.!?])[ \t]+\d{1,2}\.[ \t]+(?=[A-Z\"“])", " ", joined)
    joined = re.sub(r"(?<=[.!?])[ \t]+\d{1,2}\.[ \t]*$", "", joined, flags=re.M)
    joined = re.sub(r"\.{4,}", "...", joined)
    paragraphs = [join_text(p.split()) for p in re.split(r"\n\s*\n", joined)]
    paragraphs = [p for p in paragraphs if p]
    paragraphs = [_balance_quotes(p) for p in _dedupe_sentences(paragraphs)]
    body = "\n\n".join(p for p in paragraphs if p)
    if truncated or (body and not _SENTENCE_END.search(body[-3:] + " ")):
        body = trim_to_sentence(body)
    return body.strip()  # each paragraph already starts with a capital (_balance_quotes)


#: Where a label can stand (group 1, kept): a line's start or the space after a sentence end (and its closing quote).
_LABEL_AT = r"(^|(?<=[.!?])[ \t]+|(?<=[.!?][\"'”’)\]])[ \t]+)"
#: A place in the outline put before a sentence without a colon ("Section 1 The story of ..."), not "Section 230 of".
_PLACE_LABEL = re.compile(_LABEL_AT + r"(?:section|part|chapter)[ \t]+\d{1,2}[ \t]+(?=(?-i:[A-Z][a-z]+)\b(?<!\bOf))",
                          re.I | re.M)


def _drop_labels(text: str, titles: Sequence[str]) -> str:
    """Text without the labels a small model puts before its sentences: an outline title or "Note 1" and a colon
    ("Overview: The city ... Climate and Tourism: Located on ..." -> "The city ... Located on ..."), or a place in
    the outline before a sentence ("Section 1 The story of ..." -> "The story of ...")."""
    names = sorted({t.strip() for t in titles if t and t.strip()}, key=len, reverse=True)
    label = "|".join([re.escape(t) for t in names] + [r"notes?(?:\s+\d{1,2})?"])
    pattern = re.compile(rf"{_LABEL_AT}(?:\*\*)?(?:{label})[ \t]*:(?:\*\*)?[ \t]+(\S)", re.I | re.M)
    text = re.sub(r"(?m)^[ \t]+", "", text)  # a completion's first line starts with a space: " Overview: The city"
    text = pattern.sub(lambda m: m.group(1) + m.group(2).upper(), text)
    return _PLACE_LABEL.sub(lambda m: m.group(1), text)


def _capitalize(text: str) -> str:
    """Upper-case the first letter, after any opening quote or bracket."""
    m = re.match(r"""^([\"'“‘(\[]*)([a-z])""", text)
    return text if not m else m.group(1) + m.group(2).upper() + text[m.end():]


def _balance_quotes(paragraph: str) -> str:
    """Drop a stray opening or closing double quote (models often quote a whole paragraph, or half of one)."""
    p = paragraph.strip()
    if p.count('"') % 2 == 1:
        if p.startswith('"'):
            p = p[1:].lstrip()
        elif p.endswith('"'):
            p = p[:-1].rstrip()
    if p.startswith('"') and p.endswith('"') and p.count('"') == 2:
        p = p[1:-1].strip()
    if p.startswith("“") and p.count("“") == 1 and (p.count("”") == 0 or (p.count("”") == 1 and p.endswith("”"))):
        p = p[1:].rstrip("”").strip()
    return _capitalize(p)


#: A sentence of at least NEAR_MIN_WORDS words whose words overlap an earlier one's this much (Jaccard) repeats it
#: ("... when the court had to evacuate" and "... when Elizabeth II's court had to evacuate": 0.89).
NEAR_DUPLICATE = 0.8
NEAR_MIN_WORDS = 8


def word_set(sentence: str) -> set[str]:
    """A sentence's words for :func:`near_duplicate`, [n] markers left out (none for Chinese or Japanese: characters
    overlap too readily)."""
    if _CJK.search(sentence):
        return set()
    return set(_norm(re.sub(r"\[\d[\d,;\s–-]*\]", " ", sentence)).split())  # citation markers are no words


def near_duplicate(words_of: set[str], earlier: Sequence[set[str]]) -> bool:
    """Whether a sentence's word set (of NEAR_MIN_WORDS or more) overlaps one of ``earlier`` by NEAR_DUPLICATE with
    the same numbers ("the population was 1.2 million in 2019" and "... in 2020" state two facts)."""
    if len(words_of) < NEAR_MIN_WORDS:
        return False
    return any(len(words_of & e) >= NEAR_DUPLICATE * len(words_of | e)
               and not any(w[0].isdigit() for w in words_of ^ e)
               for e in earlier if len(e) >= NEAR_MIN_WORDS)


def _dedupe_sentences(paragraphs: list[str]) -> list[str]:
    """Drop sentences seen before, or nearly (anywhere in the section), broken starts ("The.") and loops of a
    repeated phrase."""
    seen: set[str] = set()
    word_sets: list[set[str]] = []
    out = []
    for para in paragraphs:
        sentences = []
        for s in split_sentences(para):
            key = _norm(s)
            if not key or key in seen or _META_SENTENCE.match(s) or _FRAGMENT.match(s):
                continue
            ws = word_set(s)
            if near_duplicate(ws, word_sets):
                continue
            seen.add(key)
            word_sets.append(ws)
            sentences.append(_cut_phrase_loop(s))
        if sentences:
            out.append(join_text(sentences))
    return out


def _cut_phrase_loop(sentence: str, n: int = 4, max_repeats: int = 2) -> str:
    """Cut a sentence where one n-word phrase occurs more than ``max_repeats`` times ("and the and the ...")."""
    if _CJK.search(sentence):  # no spaces: count loops over words as WORD finds them (characters), 3x longer
        found = list(WORD.finditer(sentence))
        counts_cjk: dict[tuple[str, ...], int] = {}
        for i in range(len(found) - 3 * n + 1):
            gram = tuple(m.group().lower() for m in found[i : i + 3 * n])
            counts_cjk[gram] = counts_cjk.get(gram, 0) + 1
            if counts_cjk[gram] > max_repeats:
                cut = sentence[: found[i].start()].rstrip("，、；：,;: ")
                return cut + ("。" if cut and cut[-1] not in "。！？.!?" else "")
        return sentence
    tokens = sentence.split()
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(tokens) - n + 1):
        gram = tuple(t.lower().strip(",.;:") for t in tokens[i : i + n])
        counts[gram] = counts.get(gram, 0) + 1
        if counts[gram] > max_repeats:
            cut = " ".join(tokens[:i]).rstrip(",;: ")
            return cut + ("." if cut and cut[-1] not in ".!?" else "")
    return sentence


def fit_length(text: str, target: int, *, slack: float = 0.25) -> str:
    """Cut a body that runs past ``target`` words by more than ``slack`` at the sentence end nearest the target."""
    if words(text) <= target * (1 + slack):
        return text
    paragraphs = text.split("\n\n")
    best, best_gap, count, kept = text, None, 0, []
    for para in paragraphs:
        sentences = split_sentences(para)
        for s_index, sentence in enumerate(sentences):
            count += words(sentence)
            gap = abs(count - target)
            if best_gap is None or gap < best_gap:
                best_gap = gap
                best = "\n\n".join(kept + [join_text(sentences[: s_index + 1])])
            if count > target * (1 + slack):
                return best
        kept.append(para)
    return best

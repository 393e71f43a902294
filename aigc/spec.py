"""What to write: the validated inputs of one article, and the prompt variables derived from them."""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aigc.errors import InputError, validate

#: Tokens per English word for budgeting (byte-level BPE tokenizers average ~1.3-1.4).
TOKENS_PER_WORD = 1.4
#: Tokens per Chinese, Japanese or Korean character (about 1 with large vocabularies, 2-3 with small byte-level ones).
TOKENS_PER_CHARACTER = 2.0
#: Bounds of the length asked for, in words (characters in Chinese, Japanese and Korean).
MIN_WORDS, MAX_WORDS = 50, 10000
#: One generation's budget: a section longer than this is written in continuation steps (aigc.sections).
STEP_WORDS = 400
#: A section may run this far over its words before it is cut at the sentence end nearest its target
#: (aigc.cleanup.fit_length); its token budget leaves room for that much and no more, since what a
#: rambling row writes past it is cut anyway and a batched call lasts as long as its longest row.
LENGTH_SLACK = 0.15
#: Longest brief (characters); longer source material belongs in a file the writing draws on, not the prompt.
MAX_BRIEF_CHARS = 20000
MAX_TOPIC_CHARS = 300
#: Words a section gets when the number of sections is chosen from the length (a pack may set its own).
DEFAULT_WORDS_PER_SECTION = 160
MAX_AUTO_SECTIONS = 12
#: A brief's numbered points raise the number of sections chosen from the length (one each) while every
#: section keeps at least this many words.
MIN_POINT_SECTION_WORDS = 80
#: A topic derived from a brief (when none is given) is at most this long; it names the folder.
DERIVED_TOPIC_CHARS = 60


def _no_controls(text: str, keep: str = "") -> str:
    return "".join(c if c in keep or c.isspace() or unicodedata.category(c) != "Cc" else "" for c in text)


def auto_sections(words: int, per_section: str | int | None = None) -> int:
    """Sections for a length: one for a short piece, then about one per ``per_section`` words, growing slowly.

    ``per_section`` "all" (a pack's setting) means one section whatever the length (an email, a story).
    100 words -> 1, 400 -> 2, 800 -> 5, 1500 -> 7, 3000 -> 9, 10000 -> 12.
    """
    if str(per_section).strip().lower() == "all":
        return 1
    per = int(per_section) if str(per_section or "").strip().isdigit() and int(per_section) > 0 \
        else DEFAULT_WORDS_PER_SECTION
    if words < 1.5 * per:
        return 1
    if words <= 5 * per:
        return max(1, round(words / per))
    return min(MAX_AUTO_SECTIONS, round(5 + 2 * math.log2(words / (5 * per))))


def pack_words_per_section(style: str, templates_dir: str | None = None) -> str:
    """A style pack's ``words_per_section`` setting (a block in its section.j2): a number, "all", or "" (default)."""
    from aigc.errors import AigcError
    from aigc.templates import TemplateStore

    try:
        return TemplateStore(templates_dir).pack_setting(style, "section", "words_per_section")
    except AigcError:  # unknown style or templates folder: said later by the steps that need them
        return ""


def topic_from_brief(brief: str) -> str:
    """A short topic from a brief: its first sentence or line, cut at a word under 60 characters."""
    from aigc.cleanup import split_sentences

    first = next((line.strip() for line in brief.splitlines() if any(c.isalnum() for c in line)), "")
    first = (split_sentences(first) or [first])[0].rstrip(".!?。！？:：;；, ")
    first = re.sub(r"^(?:please\s+)?(?:write|draft|compose|create|prepare|give me|i need)\s+(?:me\s+)?", "", first,
                   flags=re.I).strip()
    first = re.sub(r"^(?:请)?(?:帮我|为我|给我)?(?:写|撰写|起草)(?:一[篇封份个段])?", "", first).strip() or first
    if any("\u3400" <= c <= "\u9fff" or "\u3040" <= c <= "\u30ff" or "\uac00" <= c <= "\ud7af" for c in first):
        first = re.split(r"[，,；;：:]", first)[0][:DERIVED_TOPIC_CHARS // 3]  # CJK: its first clause, 20 characters
    if len(first) > DERIVED_TOPIC_CHARS:
        first = _cut_topic(first)
    return first[:1].upper() + first[1:]


#: Where a long first sentence is cut into a topic: before a clause or a phrase that qualifies the head
#: ("A letter of recommendation | for a former intern, Maya, who ..."), at least this many characters in.
_TOPIC_MIN_CHARS = 24
_TOPIC_BREAK = re.compile(r"\s*[,;:(–—]\s*|\s+(?=(?:who|whom|whose|where|which|that|about|for|with|because|while|"
                          r"when|after|before|telling|asking|explaining|describing|including)\b)", re.I)
_TRAILING = re.compile(r"(?:\s+(?:a|an|the|of|to|at|in|on|by|and|or|my|our|your|his|her|their|its|for|with|from))+$",
                       re.I)


def _cut_topic(sentence: str) -> str:
    """The head of a long first sentence, under DERIVED_TOPIC_CHARS: up to its last break (a comma, a clause or a
    phrase starting "about", "for", "who", ...) that leaves at least _TOPIC_MIN_CHARS, else cut at a word,
    without a dangling "of the" at its end."""
    breaks = [m.start() for m in _TOPIC_BREAK.finditer(sentence, _TOPIC_MIN_CHARS) if m.start() <= DERIVED_TOPIC_CHARS]
    if breaks:
        return sentence[:breaks[-1]].rstrip()
    cut = sentence[:DERIVED_TOPIC_CHARS]
    cut = cut.rsplit(" ", 1)[0] if " " in cut[DERIVED_TOPIC_CHARS // 2:] else cut
    return _TRAILING.sub("", cut) or cut


def single_outline(topic: str) -> tuple[str, ...] | None:
    """The outline of a one-section piece: its topic as the one title (None if that is not a usable title)."""
    from aigc.outline_parse import MAX_TITLE_CHARS, MAX_TITLE_WORDS, _is_title, clean_title

    title = clean_title(" ".join(_no_controls(topic).split()[:MAX_TITLE_WORDS]))[:MAX_TITLE_CHARS].strip()
    return (title,) if title and _is_title(title) else None


class ArticleSpec(BaseModel):
    """The inputs of one article. Everything that changes the text is here (and in the templates)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Free-text instructions (what to write, for whom, points to cover); data given to every template.
    brief: str | None = None
    topic: str = Field(..., description="What the article is about (short: it names the folder and the title)")
    #: Language of the text (ISO 639-1, e.g. en, zh); detected from topic and brief when not given.
    lang: str = "en"
    style: str = "article"
    sections: int = Field(5, ge=1, le=20)
    words: int = 800
    seed: int = 0
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    backend: str = "local"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    outline: tuple[str, ...] | None = None
    #: Outlines asked for at once (one batched call); their titles are pooled and the best chosen.
    outline_candidates: int = Field(4, ge=1, le=16)
    #: Candidates written for each section in the same call, the best kept; None: the backend's default.
    section_candidates: int | None = Field(None, ge=1, le=8)
    #: Documents the article is grounded in (folders, files, saved datasets; docs/sources.md); None: none.
    sources: tuple[str, ...] | None = None
    #: The text field of JSONL, CSV, Parquet and dataset sources.
    text_field: str = "text"
    #: Set by aigc: the topic was derived from the brief (the model is asked for a title).
    topic_from_brief: bool = False
    #: Set by aigc: the number of sections was chosen from the length and the style.
    sections_from_length: bool = False

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, values: Any) -> Any:
        """Fill what the user may leave out: the topic (from the brief), the language, the number of sections."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        try:  # the brief's own errors are said by its field validator
            brief = cls._brief(values["brief"]) if values.get("brief") is not None else None
        except ValueError:
            brief = None
        topic = values.get("topic")
        if topic is None or (isinstance(topic, str) and not topic.strip()):
            values["topic"], values["topic_from_brief"] = (topic_from_brief(brief), True) if brief else ("", False)
        if values.get("lang") is None:
            from aigc.languages import detect_lang

            values["lang"] = detect_lang(str(values.get("topic") or ""), brief or "")
        if values.get("sections") is None and values.get("outline"):
            values["sections"] = len(values["outline"])  # a given outline decides the number of sections
        if values.get("sections") is None:
            words = values.get("words", 800)
            per = values.pop("_words_per_section", None)
            if per is None and isinstance(values.get("style", "article"), str):
                per = pack_words_per_section(values.get("style", "article"))
            if not (isinstance(words, int) and MIN_WORDS <= words <= MAX_WORDS):
                values.pop("sections", None)  # the words' own error is the one to say
            else:
                values["sections"], values["sections_from_length"] = auto_sections(words, per), True
                if values["sections"] > 1 and brief:  # a brief's numbered points each get a section
                    from aigc.points import point_titles

                    wanted = min(len(point_titles(brief)), MAX_AUTO_SECTIONS, words // MIN_POINT_SECTION_WORDS)
                    values["sections"] = max(values["sections"], wanted)
                if values["sections"] == 1 and not values.get("outline") and isinstance(values.get("topic"), str):
                    values["outline"] = single_outline(values["topic"])  # one section: no outline to plan
        values.pop("_words_per_section", None)
        return values

    @field_validator("brief", mode="before")
    @classmethod
    def _brief(cls, v: Any) -> str | None:
        if v is None:
            return None
        if not isinstance(v, str):
            raise ValueError("must be text")
        if "\x00" in v or sum(unicodedata.category(c) == "Cc" and not c.isspace() for c in v) > max(2, len(v) // 100):
            raise ValueError("looks like binary data, not text; give the instructions as UTF-8 text")
        v = _no_controls(v).strip()
        if not v:
            raise ValueError("is empty; say what to write, or leave the brief out")
        if len(v) > MAX_BRIEF_CHARS:
            raise ValueError(f"is {len(v):,} characters long; keep it under {MAX_BRIEF_CHARS:,} "
                             "(summarise long material)")
        return v

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        # control characters (NUL, escape sequences, ...) would go raw into the files and the index
        v = " ".join(_no_controls(v).split())
        if not v:
            raise ValueError("the topic is empty; give what the article is about, e.g. \"Urban heat islands\", "
                             "or give a --brief")
        if len(v) > MAX_TOPIC_CHARS:
            raise ValueError(f"the topic is {len(v)} characters long; keep it under {MAX_TOPIC_CHARS} (a short "
                             "title) and put the full request in the brief (--brief, or 'brief' in a batch item)")
        if not any(c.isalnum() for c in v):
            raise ValueError(f"the topic {v!r} has no letters or digits; give words that name the subject")
        return v

    @field_validator("lang", mode="before")
    @classmethod
    def _lang(cls, v: Any) -> str:
        from aigc.languages import normalize_lang

        return normalize_lang(str(v))

    @field_validator("words")
    @classmethod
    def _words(cls, v: int) -> int:
        if v < MIN_WORDS:
            raise ValueError(f"{v} is too few; ask for {MIN_WORDS} to {MAX_WORDS} words")
        if v > MAX_WORDS:
            raise ValueError(f"{v} is too many; ask for {MIN_WORDS} to {MAX_WORDS} words (write longer works "
                             "in parts)")
        return v

    @field_validator("sources", mode="before")
    @classmethod
    def _sources(cls, v: Any) -> tuple[str, ...] | None:
        if v is None:
            return None
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)) or not all(isinstance(p, str) for p in v):
            raise ValueError("give a list of folders or files, e.g. [notes/, briefings.jsonl]")
        paths = tuple(p.strip() for p in v if p.strip())
        return paths or None

    @field_validator("backend_options")
    @classmethod
    def _no_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if "key" in key.lower() and key != "api_key_env":
                raise ValueError(f"backend option {key!r} looks like a secret; pass API keys through the environment")
        return v

    @classmethod
    def build(cls, source: str = "input", templates_dir: str | None = None, **values: Any) -> "ArticleSpec":
        """Validate, turning pydantic's errors into one InputError line naming the field.

        ``sections`` left out (or None) is chosen from the length and the style pack's
        ``words_per_section`` setting, read from ``templates_dir``.
        """
        if values.get("sections") is None and isinstance(values.get("style", "article"), str):
            values = {**values, "_words_per_section": pack_words_per_section(values.get("style", "article"),
                                                                            templates_dir)}
        return validate(cls, values, where=source, error=InputError)

    # -- derived values ------------------------------------------------------------
    @property
    def counts_characters(self) -> bool:
        """Lengths are in characters (Chinese, Japanese, Korean), not words."""
        from aigc.languages import counts_characters

        return counts_characters(self.lang)

    @property
    def section_words(self) -> int:
        return max(20, round(self.words / self.sections))

    @property
    def step_words(self) -> int:
        """Words one generation writes: the section's, or a step's share of a long section."""
        return min(self.section_words, STEP_WORDS)

    @property
    def section_tokens(self) -> int:
        """New-token budget of one generation: its words plus the LENGTH_SLACK that fit_length keeps."""
        per = TOKENS_PER_CHARACTER if self.counts_characters else TOKENS_PER_WORD
        return int(self.step_words * per * (1 + LENGTH_SLACK)) + 16

    @property
    def outline_tokens(self) -> int:
        """New-token budget of an outline reply: room for every title and a little chatter."""
        return self.outline_tokens_for(self.sections)

    def outline_tokens_for(self, titles: int) -> int:
        """New-token budget of a reply that lists ``titles`` section titles (a follow-up asks only for the missing)."""
        return (40 if self.counts_characters else 24) * titles + 40

    def template_context(self, **extra: Any) -> dict[str, Any]:
        """Variables every template sees. User text (topic, brief) goes in as data, never as template source."""
        from aigc.languages import language_name

        return {
            "topic": self.topic,
            "brief": self.brief or "",
            "lang": self.lang,
            "language": language_name(self.lang),
            "style": self.style,
            "n_sections": self.sections,
            "words": self.words,
            "section_words": self.section_words,
            **extra,
        }

    def key(self) -> str:
        """A short hash of the inputs, used to recognise an article already written."""
        data = self.model_dump(mode="json")
        if not data.get("sources"):  # an article without sources keeps the key it had before sources existed
            data.pop("sources", None)
            data.pop("text_field", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

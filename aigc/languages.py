"""Languages: the codes aigc knows, a script-based guess from the topic and brief, and which scripts count characters."""

from __future__ import annotations

import re

#: Language codes aigc accepts for ``--lang`` (ISO 639-1), with the name templates use ("Write in ...").
LANGUAGES: dict[str, str] = {
    "en": "English", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "fr": "French", "de": "German",
    "es": "Spanish", "it": "Italian", "pt": "Portuguese", "nl": "Dutch", "sv": "Swedish", "da": "Danish",
    "no": "Norwegian", "fi": "Finnish", "pl": "Polish", "cs": "Czech", "ru": "Russian", "uk": "Ukrainian",
    "el": "Greek", "tr": "Turkish", "ar": "Arabic", "he": "Hebrew", "fa": "Persian", "hi": "Hindi",
    "bn": "Bengali", "th": "Thai", "vi": "Vietnamese", "id": "Indonesian", "ms": "Malay",
}
#: Languages whose text is counted in characters, not words (as LongBench-Write counts Chinese).
CHARACTER_COUNTED = {"zh", "ja", "ko"}

#: Han ideographs, kana and Hangul syllables: each one counts as one "word".
CJK_RANGES = ("\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
              "\U00020000-\U0002fa1f")
_TAG = re.compile(r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z0-9]{2,8}))*$")

#: Scripts a topic or brief can be told by, the language each one means, and its letters.
_SCRIPTS: tuple[tuple[str, str], ...] = (
    ("ko", "\uac00-\ud7af\u1100-\u11ff"),
    ("ja", "\u3040-\u30ff"),
    ("zh", "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"),
    ("ru", "\u0400-\u04ff"),
    ("el", "\u0370-\u03ff"),
    ("ar", "\u0600-\u06ff"),
    ("he", "\u0590-\u05ff"),
    ("hi", "\u0900-\u097f"),
    ("th", "\u0e00-\u0e7f"),
    ("en", "A-Za-z\u00c0-\u024f"),
)
_SCRIPT_RES = [(lang, re.compile(f"[{chars}]")) for lang, chars in _SCRIPTS]


def normalize_lang(value: str) -> str:
    """A language tag as aigc stores it ("ZH-cn" -> "zh-CN"); ValueError naming the known codes when unknown."""
    text = (value or "").strip()
    m = _TAG.match(text)
    if not m or m.group(1).lower() not in LANGUAGES:
        known = ", ".join(sorted(LANGUAGES))
        raise ValueError(f"unknown language {value!r}; give a code such as en or zh (known: {known})")
    parts = re.split(r"[-_]", text)
    return "-".join([parts[0].lower()] + [p.upper() if len(p) == 2 else p.title() for p in parts[1:]])


def primary(lang: str) -> str:
    """The language of a tag without its region or script ("zh-CN" -> "zh")."""
    return re.split(r"[-_]", lang, maxsplit=1)[0].lower()


def language_name(lang: str) -> str:
    return LANGUAGES.get(primary(lang), lang)


def counts_characters(lang: str) -> bool:
    """Whether lengths in ``lang`` are counted in characters (Chinese, Japanese, Korean)."""
    return primary(lang) in CHARACTER_COUNTED


def detect_lang(*texts: str) -> str:
    """The language the texts are written in, told by their script; "en" for Latin script or none.

    Kana means Japanese even beside Han characters, Hangul Korean, Han alone Chinese. Latin-script
    languages are not told apart (a topic of a few words is too short to do it reliably): give
    ``--lang`` for French, German, ...
    """
    text = " ".join(t for t in texts if t)
    counts = {lang: len(rx.findall(text)) for lang, rx in _SCRIPT_RES}
    if counts["ja"] and counts["ja"] + counts["zh"] >= counts["en"]:
        return "ja"
    counts["zh"] += counts.pop("ja")
    best = max(counts, key=lambda k: (counts[k], k == "en"))
    return best if counts[best] else "en"

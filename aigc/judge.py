"""The LLM judge: a template asks any backend to rate coherence, meaningfulness and truthfulness from 1 to 5."""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from aigc.article_text import ParsedArticle

#: Judge criteria and the words a reply may use for each.
CRITERIA = {
    "coherence": ("coherence", "coherent"),
    "meaningfulness": ("meaningfulness", "meaningful", "meaning"),
    "truthfulness": ("truthfulness", "truthful", "truth", "factuality", "factual accuracy"),
}
JUDGE_TEMPLATE = "eval/judge.j2"


def _rating(value: Any) -> tuple[float | None, str | None]:
    """A number from a JSON value (4, 4.5, "4", "4/5"); and why not, if it is not one."""
    scale = None
    if isinstance(value, bool) or value is None:
        return None, "not a number"
    if isinstance(value, str):
        m = re.search(r"(\d+(?:\.\d+)?)\s*(?:(?:/|out of)\s*(\d+))?", value)
        if not m:
            return None, f"not a number: {value[:40]!r}"
        value, scale = float(m.group(1)), m.group(2)
    if not isinstance(value, (int, float)):
        return None, "not a number"
    return _check(float(value), scale)


def _check(value: float, scale: str | None) -> tuple[float | None, str | None]:
    if scale is not None and int(scale) != 5:
        return None, f"rated on a scale of {scale}, not 5"
    if not 1 <= value <= 5:
        return None, f"rating {value:g} is outside 1-5"
    return value, None


def _from_json(reply: str) -> dict | None:
    start, end = reply.find("{"), reply.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(reply[start : end + 1])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    data = {str(k).lower().strip(): v for k, v in data.items()}
    reasons = data.get("reasons") if isinstance(data.get("reasons"), dict) else {}
    out = {}
    for name, aliases in CRITERIA.items():
        key = next((a for a in aliases if a in data), None)
        if key is None:
            continue
        value, reason = data[key], reasons.get(name) or data.get(f"{key}_reason")
        if isinstance(value, dict):
            low = {str(k).lower(): v for k, v in value.items()}
            value = next((low[k] for k in ("score", "rating", "value") if k in low), None)
            reason = next((low[k] for k in ("reason", "reasons", "explanation", "justification") if k in low), reason)
        out[name] = (*_rating(value), str(reason).strip() if reason else "")
    return out or None


def _rating_pattern(aliases: Sequence[str]) -> re.Pattern:
    """A criterion's name, optional "(1-5)" and "score", the rating, an optional "/5" or "out of 5"."""
    alias = "|".join(re.escape(a) for a in sorted(aliases, key=len, reverse=True))
    return re.compile(
        rf"\b(?:{alias})\b[^\w\n]{{0,6}}(?:\(?\s*1\s*(?:-|–|to)\s*5\s*\)?[^\w\n]{{0,4}})?"
        rf"(?:(?:score|rating|is|of|gets)\b[^\w\n]{{0,4}})?(\d+(?:\.\d+)?)[ \t]*(?:(?:/|out of)[ \t]*(\d+))?",
        re.I,
    )


_PATTERNS = {name: _rating_pattern(aliases) for name, aliases in CRITERIA.items()}


def _from_text(reply: str) -> dict:
    """Ratings from free text, preferring those that open a line; a reason runs to the line's end or the next rating."""
    def line_start_first(m: re.Match) -> tuple[bool, int]:
        before = reply[reply.rfind("\n", 0, m.start()) + 1 : m.start()]
        return not re.fullmatch(r"[\s>*_#\-•\d.)]*", before), m.start()

    matches = {name: sorted(p.finditer(reply), key=line_start_first) for name, p in _PATTERNS.items()}
    # a reason stops at the next rating that opens a line or follows ",", ";" or "and"
    starts = sorted(m.start() for ms in matches.values() for m in ms
                    if not line_start_first(m)[0] or re.search(r"(?:[,;]|\band)\s*$", reply[: m.start()]))
    out = {}
    for name, found in matches.items():
        for m in found:  # the first valid rating (those opening a line first), else the first one's problem
            line_end = reply.find("\n", m.end())
            stop = min([line_end if line_end >= 0 else len(reply)] + [s for s in starts if s >= m.end()])
            reason = reply[m.end() : stop].lstrip(" \t*_-–—:.,;)").rstrip(" \t*_,;")
            reason = re.sub(r"^(?:because|since)\s+|\s*\band$", "", reason, flags=re.I)
            item = (*_check(float(m.group(1)), m.group(2)), reason)
            if name not in out or out[name][0] is None:
                out[name] = item
            if item[0] is not None:
                break
    return out


def parse_judgement(reply: str) -> dict:
    """Ratings 1-5 and reasons from a judge's reply: JSON, or lines like "Coherence: 4/5 - because...".

    Accepts ``{"coherence": 4}``, ``{"coherence": {"score": 4, "reason": ...}}``, "**Coherence:** 4",
    "coherence = 4", "Coherence (1-5): 4". A rating outside 1-5 or on another scale ("8/10") is
    rejected; a missing or rejected rating is None and named in ``flags``. ``mean`` is over the
    ratings present and ``score`` is (mean-1)·25 on 0-100.
    """
    found = _from_json(reply) or {}
    text_found = _from_text(reply)
    for name, item in text_found.items():
        if name not in found or (found[name][0] is None and item[0] is not None):
            found[name] = item
    result: dict[str, Any] = {"ratings": {}, "reasons": {}, "flags": []}
    for name in CRITERIA:
        value, problem, reason = found.get(name, (None, "missing", ""))
        result["ratings"][name] = value
        result["reasons"][name] = reason
        if problem:
            result["flags"].append(f"{name}: {problem}")
    present = [v for v in result["ratings"].values() if v is not None]
    result["mean"] = sum(present) / len(present) if present else None
    result["score"] = (result["mean"] - 1) * 25 if present else None
    return result


def judge_requests(articles: Sequence[ParsedArticle], *, store: Any = None, template: str = JUDGE_TEMPLATE,
                   max_words: int = 1500, max_new_tokens: int = 200, seed: int = 0) -> list:
    """One greedy generation request per article from the judge template (text cut to ``max_words``)."""
    from aigc.backends.base import GenerationRequest
    from aigc.templates import TemplateStore

    store = store or TemplateStore()
    out = []
    for art in articles:
        parts = [f"## {s.title}\n\n{s.body}" for s in art.sections]
        text = "\n\n".join(parts)
        toks = text.split(" ")
        truncated = len(toks) > max_words
        context = {"title": art.title, "text": " ".join(toks[:max_words]) if truncated else text,
                   "truncated": truncated, "words": max_words}
        rendered = store.render_messages(template, context)
        out.append(GenerationRequest(messages=rendered.messages, max_new_tokens=max_new_tokens,
                                     temperature=0.0, seed=seed))
    return out


def judge(articles: Sequence[ParsedArticle], backend: Any, **options: Any) -> list[dict]:
    """Ask ``backend`` to rate each article (one batch); parsed ratings, reasons, flags and the raw reply."""
    from aigc.backends.base import generate_with_prefill

    completions = generate_with_prefill(backend, judge_requests(articles, **options))
    results = []
    for c in completions:
        parsed = parse_judgement(c.text)
        if c.finish_reason == "error":
            parsed["flags"].append("the backend reported an error")
        results.append({**parsed, "model": backend.model_id, "reply": c.text})
    return results


def judge_fields(verdict: dict) -> dict:
    """A judge verdict as flat result fields (``judge_coherence``... ``judge_score``) plus details."""
    flat = {f"judge_{k}": v for k, v in verdict["ratings"].items()}
    flat.update(judge_mean=verdict["mean"], judge_score=verdict["score"],
                judge={k: verdict[k] for k in ("reasons", "flags", "model", "reply") if k in verdict})
    return flat

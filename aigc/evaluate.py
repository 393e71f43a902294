"""Evaluate generated articles: length adherence, outline coverage, repetition and perplexity (the judge is in aigc.judge)."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from aigc.cleanup import words

#: Section headings that are navigation, not content.
TOC_TITLES = {"contents", "table of contents", "toc", "in this article"}
_TOKEN = re.compile(r"\b[\w'’-]+\b")
_HEADING2 = re.compile(r"^##\s+(.*?)\s*#*\s*$")
_NUMBERING = re.compile(r"^\s*(?:\d{1,3}|[ivxlc]{1,6}|[a-z])[.)]\s+", re.I)


# -- parsing ----------------------------------------------------------------------------------------


@dataclass
class Section:
    """One ``##`` section of an article: its heading as written and its Markdown body."""

    title: str
    body: str
    words: int = field(init=False)

    def __post_init__(self) -> None:
        self.words = words(self.body)


@dataclass
class ParsedArticle:
    """An article's title and content sections (Contents and the footer after ``---`` left out)."""

    title: str
    sections: list[Section]

    @property
    def body(self) -> str:
        """The section bodies, one paragraph block each."""
        return "\n\n".join(s.body for s in self.sections if s.body)

    @property
    def body_words(self) -> int:
        return sum(s.words for s in self.sections)


def _norm_title(text: str) -> str:
    text = re.sub(r"[*_`]+", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = _NUMBERING.sub("", text.strip())
    return " ".join(_TOKEN.findall(text.lower()))


def parse_article(markdown: str) -> ParsedArticle:
    """Split Markdown into the ``#`` title and the ``##`` sections.

    Lines inside fenced code blocks are never headings; a section titled "Contents" (or "Table of
    contents") is left out; a final ``---`` rule with no ``##`` heading after it starts the footer,
    which is dropped. Text before the first ``##`` (title, byline) is not a section.
    """
    lines = markdown.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    in_fence, title = False, ""
    heads: list[tuple[int, str]] = []
    rules: list[int] = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if not title and not heads and re.match(r"^#\s+\S", line):
            title = line.lstrip("#").strip()
        elif m := _HEADING2.match(line):
            heads.append((i, m.group(1)))
        elif re.match(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$", line):
            rules.append(i)
    end = len(lines)
    if rules and (not heads or rules[-1] > heads[-1][0]):
        end = rules[-1]
    sections = []
    for k, (i, head) in enumerate(heads):
        stop = heads[k + 1][0] if k + 1 < len(heads) else end
        if _norm_title(head) in TOC_TITLES:
            continue
        sections.append(Section(title=head, body="\n".join(lines[i + 1 : stop]).strip()))
    return ParsedArticle(title=title, sections=sections)


# -- cheap metrics ----------------------------------------------------------------------------------


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


def outline_coverage(article: ParsedArticle, outline: Sequence[str] | None = None, *, min_words: int = 20) -> dict:
    """Which outline sections the article has, each under a ``##`` heading with at least ``min_words`` words.

    Headings match titles case- and punctuation-insensitively, ignoring report-style numbering
    ("## 1. Title"). Without an outline, the article's own headings are the sections to cover.
    Returns ``coverage`` (share of sections covered, None for an empty outline), ``missing``
    (no heading) and ``empty`` (heading with a body shorter than ``min_words``).
    """
    titles = list(outline) if outline is not None else [s.title for s in article.sections]
    found: dict[str, Section] = {}
    for s in article.sections:
        found.setdefault(_norm_title(s.title), s)
    missing, empty = [], []
    for t in titles:
        s = found.get(_norm_title(t))
        if s is None:
            missing.append(t)
        elif s.words < min_words:
            empty.append(t)
    covered = len(titles) - len(missing) - len(empty)
    return {
        "coverage": covered / len(titles) if titles else None,
        "covered": covered,
        "expected": len(titles),
        "missing": missing,
        "empty": empty,
        "basis": "outline" if outline is not None else "headings",
    }


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens, counted as :func:`aigc.cleanup.words` counts words."""
    return [t.lower() for t in _TOKEN.findall(text)]


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


def repetition(article: ParsedArticle) -> dict:
    """distinct-1, distinct-2 and repeated 4-gram shares over the article's section bodies."""
    bodies = [s.body for s in article.sections]
    rep = repeated_ngrams(bodies, 4)
    return {
        "distinct_1": distinct_n(bodies, 1),
        "distinct_2": distinct_n(bodies, 2),
        "repeated_4gram_within": rep["within"],
        "repeated_4gram_across": rep["across"],
    }


# -- perplexity -------------------------------------------------------------------------------------


def load_lm(model: str | None = None) -> tuple[Any, Any, str]:
    """(model, tokenizer, model id) of a local causal LM, loaded once per process by the local backend.

    ``model``: None or "embedded" (SmolLM2), a folder saved with ``save_pretrained``, or a cached hub id.
    A measurement scores with the model's own weights: on a CPU its float32 linear weights are packed
    as they are, not rounded to float16 as for writing (see the local backend's ``fp16_weights``).
    """
    from aigc.backends import create_backend

    backend = create_backend("local", model=model or "embedded", fp16_weights=False)
    lm, tokenizer = backend.load()
    return lm, tokenizer, backend.model_id


def perplexity(texts: Sequence[str], model: str | None = None, *, batch_size: int = 2, window: int | None = None,
               stride: int | None = None, lm: Any = None, tokenizer: Any = None) -> list[float | None]:
    """Perplexity exp(mean token NLL) of each text under a causal LM, in batches, sliding over long texts.

    A text longer than ``window`` tokens (default: the model's context, at most 512) is scored in
    windows starting every ``stride`` tokens (default window/2); each token is scored once, with
    the context its window gives. A text of fewer than 2 tokens gets None. Pass ``lm`` and
    ``tokenizer`` to use an already loaded model instead of ``model``.
    """
    import torch

    if lm is None or tokenizer is None:
        lm, tokenizer, _ = load_lm(model)
    config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    ctx = next((v for k in ("max_position_embeddings", "n_positions", "n_ctx")
                if isinstance(v := getattr(config, k, None), int) and v > 0), 512)
    window = max(2, min(window or 512, ctx))
    stride = max(1, min(stride or window // 2, window - 1))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    pieces: list[tuple[int, list[int], int]] = []  # (text index, window ids, targets at its end)
    for i, text in enumerate(texts):
        ids = tokenizer(text)["input_ids"]
        prev_end = 0
        for begin in range(0, max(len(ids) - 1, 1), stride):
            end = min(begin + window, len(ids))
            pieces.append((i, ids[begin:end], min(end - prev_end, end - begin - 1)))
            prev_end = end
            if end >= len(ids):
                break
    nll, count = [0.0] * len(texts), [0] * len(texts)
    pieces = [p for p in pieces if p[2] > 0]
    pieces.sort(key=lambda p: len(p[1]))
    device = next(lm.parameters()).device
    from aigc.backends.local import run_on_model_thread

    run_on_model_thread(lambda: _score(torch, lm, pieces, batch_size, pad, device, nll, count))
    return [math.exp(n / c) if c else None for n, c in zip(nll, count)]


def _score(torch: Any, lm: Any, pieces: list, batch_size: int, pad: int, device: Any, nll: list, count: list) -> None:
    """Add each piece's summed token NLL and target count to its text's totals (on the model thread)."""
    with torch.inference_mode():
        for start in range(0, len(pieces), batch_size):
            chunk = pieces[start : start + batch_size]
            width = max(len(p[1]) for p in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for row, (_, w, n_target) in enumerate(chunk):
                ids[row, : len(w)] = torch.tensor(w)
                mask[row, : len(w)] = 1
                labels[row, len(w) - n_target : len(w)] = torch.tensor(w[len(w) - n_target :])
            logits = lm(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), labels[:, 1:].to(device), ignore_index=-100, reduction="none"
            ).sum(dim=1)
            for row, (i, _, n_target) in enumerate(chunk):
                nll[i] += float(losses[row])
                count[i] += n_target


# -- one article, many articles ---------------------------------------------------------------------


def evaluate_article(markdown: str, record: dict | None = None, *, requested_words: int | None = None,
                     outline: Sequence[str] | None = None, cheap: bool = True, perplexity_model: str | None = None,
                     judge_backend: Any = None, min_section_words: int = 20) -> dict:
    """Metrics of one article as a JSON-able dict (metric name -> value; None where not measured).

    Requested words and outline come from the arguments, else from ``record`` (article.json:
    ``requested.words``, ``outline.titles``). Length, coverage and repetition always run (cheap,
    pure Python). Perplexity runs when ``cheap`` is False or ``perplexity_model`` is given
    (default model: the embedded one); the judge runs when ``judge_backend`` is given.
    """
    record = record or {}
    if requested_words is None:
        requested_words = (record.get("requested") or {}).get("words")
    if outline is None:
        outline = (record.get("outline") or {}).get("titles")
    art = parse_article(markdown)
    cov = outline_coverage(art, outline, min_words=min_section_words)
    result: dict[str, Any] = {
        "title": art.title or record.get("title"),
        "words": art.body_words,
        "requested_words": requested_words,
        "length_score": length_score(requested_words, art.body_words) if requested_words else None,
        "sections": len(art.sections),
        "coverage": cov["coverage"],
        "sections_missing": cov["missing"],
        "sections_empty": cov["empty"],
        "coverage_basis": cov["basis"],
        **repetition(art),
    }
    if not cheap or perplexity_model is not None:
        lm, tokenizer, model_id = load_lm(perplexity_model)
        result["perplexity"] = perplexity([art.body], lm=lm, tokenizer=tokenizer)[0]
        result["perplexity_model"] = model_id
    if judge_backend is not None:
        from aigc.judge import judge, judge_fields

        result.update(judge_fields(judge([art], judge_backend)[0]))
    return result


COLUMNS = {
    "name": ("article", "{}"),
    "words": ("words", "{:.0f}"),
    "requested_words": ("requested", "{:.0f}"),
    "length_score": ("S_l", "{:.1f}"),
    "coverage": ("coverage", "{:.0%}"),
    "distinct_2": ("distinct-2", "{:.3f}"),
    "repeated_4gram_within": ("rep4 within", "{:.3f}"),
    "repeated_4gram_across": ("rep4 across", "{:.3f}"),
    "perplexity": ("perplexity", "{:.1f}"),
    "judge_mean": ("judge 1-5", "{:.2f}"),
    "judge_score": ("judge 0-100", "{:.1f}"),
}
_OPTIONAL = ("perplexity", "judge_mean", "judge_score")


def summarize(results: Sequence[dict]) -> dict:
    """Means of every numeric metric over the articles that have it; ``articles`` is how many there are."""
    keys = [k for k in dict.fromkeys(k for r in results for k in r) if k not in ("name", "path")]
    out: dict[str, Any] = {"articles": len(results)}
    for k in keys:
        vals = [r[k] for r in results if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out


def format_table(results: Sequence[dict], summary: dict | None = None) -> str:
    """A Markdown table: one row per article (``name`` or ``title``), then a row of means.

    Perplexity and judge columns appear when some result was scored for them; "–" marks no value.
    """
    cols = [k for k in COLUMNS if k not in _OPTIONAL or any(k in r for r in results)]
    summary = summarize(results) if summary is None else summary

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "–"
        text = COLUMNS[key][1].format(value) if not isinstance(value, str) else value
        return text.replace("|", "\\|")

    rows = [[COLUMNS[k][0] for k in cols], ["---"] * len(cols)]
    for r in results:
        rows.append([cell(k, r.get(k) if k != "name" else (r.get("name") or r.get("title") or "?")) for k in cols])
    rows.append([f"mean of {summary['articles']}" if k == "name" else cell(k, summary.get(k)) for k in cols])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


"""Evaluate generated articles: length adherence, outline coverage, repetition (perplexity and the judge have their own modules)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from aigc.article_text import ParsedArticle, Section, norm_title, parse_article
from aigc.errors import InputError
from aigc.perplexity import load_lm, perplexity
from aigc.quality import QUALITY_COLUMNS, evaluate_quality
from aigc.textstats import distinct_n, length_score, ngrams, repeated_ngrams, tokens  # noqa: F401  (re-exported)

# -- cheap metrics ----------------------------------------------------------------------------------


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
        found.setdefault(norm_title(s.title), s)
    missing, empty = [], []
    for t in titles:
        s = found.get(norm_title(t))
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


# -- one article, many articles ---------------------------------------------------------------------


def evaluate_article(markdown: str, record: dict | None = None, *, requested_words: int | None = None,
                     outline: Sequence[str] | None = None, cheap: bool = True, perplexity_model: str | None = None,
                     judge_backend: Any = None, min_section_words: int = 20,
                     quality: bool = True) -> dict:
    """Metrics of one article as a JSON-able dict (metric name -> value; None where not measured).

    Requested words and outline come from the arguments, else from ``record`` (article.json:
    ``requested.words``, ``outline.titles``). Length, coverage and repetition always run (cheap,
    pure Python). Perplexity runs when ``cheap`` is False or ``perplexity_model`` is given
    (default model: the embedded one); the judge runs when ``judge_backend`` is given. ``quality`` adds
    :func:`aigc.quality.evaluate_quality` (relevance, meta-text rate, redundancy, the quality figure).
    """
    record = record or {}
    if requested_words is None:
        requested_words = (record.get("requested") or {}).get("words")
    if outline is None:
        outline = (record.get("outline") or {}).get("titles")
    from aigc.grounding import evaluation_fields, without_references

    # with sources: the References are not prose (and not a section), and the citation figures join in
    markdown = without_references(markdown, len(record.get("references", ())))
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
        **evaluation_fields(record),
    }
    if quality:  # relevance, meta-text, redundancy and the overall figure (sentence embeddings)
        topic = record.get("topic") or art.title or ""
        result.update(evaluate_quality(topic, [s.title for s in art.sections], [s.body for s in art.sections],
                                       length_score=result["length_score"], coverage=result["coverage"]))
    if not cheap or perplexity_model is not None:
        lm, tokenizer, model_id = load_lm(perplexity_model)
        result["perplexity"] = perplexity([art.body], lm=lm, tokenizer=tokenizer)[0]
        result["perplexity_model"] = model_id
    if judge_backend is not None:
        from aigc.judge import judge, judge_fields

        result.update(judge_fields(judge([art], judge_backend)[0]))
    return result


def find_articles(path: Path) -> list[tuple[str, Path, Path | None]]:
    """(name, Markdown file, article.json or None) for an article file, an article folder or an outputs folder."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder (give an article .md, an article folder or an outputs folder)")
    if path.is_file():
        record = path.with_suffix(".json")
        name = path.parent.name if path.name == "article.md" and path.parent.name else path.stem
        return [(name or path.stem, path, record if record.is_file() else None)]
    if (path / "article.md").is_file():
        return [(path.resolve().name, path / "article.md", _record(path))]
    found = sorted(p for p in path.rglob("article.md")
                   if not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not found:
        raise InputError(f"{path}: no articles found (looked for article.md files in it and its subfolders)")
    return [(p.parent.relative_to(path).as_posix(), p, _record(p.parent)) for p in found]


def _record(folder: Path) -> Path | None:
    return folder / "article.json" if (folder / "article.json").is_file() else None


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read it as UTF-8 text ({type(err).__name__}: {err})") from None


def _read_record(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        data = json.loads(_read(path))
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err}); fix or remove it") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object (an aigc article record)")
    return data


def evaluate_path(path: Path, *, words: int | None = None, min_section_words: int = 20,
                  perplexity_model: str | None = None, judge_backend: Any = None,
                  templates_dir: str | None = None, echo=lambda msg: None) -> list[dict]:
    """Cheap metrics of every article under ``path``; perplexity and judge (batched over articles) when asked."""
    results, parsed = [], []
    for name, md_path, record_path in find_articles(Path(path)):
        markdown, record = _read(md_path), _read_record(record_path)
        result = evaluate_article(markdown, record, requested_words=words, min_section_words=min_section_words)
        results.append({"name": name, "path": str(md_path), **result})
        parsed.append(parse_article(markdown))
    if perplexity_model is not None:
        lm, tokenizer, model_id = load_lm(perplexity_model)
        echo(f"Perplexity of {len(parsed)} article(s) under {model_id}...")
        for result, ppl in zip(results, perplexity([a.body for a in parsed], lm=lm, tokenizer=tokenizer)):
            result.update(perplexity=ppl, perplexity_model=model_id)
    if judge_backend is not None:
        from aigc import judge
        from aigc.templates import TemplateStore

        echo(f"Judging {len(parsed)} article(s) with {judge_backend.model_id}...")
        verdicts = judge.judge(parsed, judge_backend, store=TemplateStore(templates_dir))
        for result, verdict in zip(results, verdicts):
            result.update(judge.judge_fields(verdict))
    return results


COLUMNS = {
    "name": ("article", "{}"),
    "words": ("words", "{:.0f}"),
    "requested_words": ("requested", "{:.0f}"),
    "length_score": ("S_l", "{:.1f}"),
    "coverage": ("coverage", "{:.0%}"),
    "distinct_2": ("distinct-2", "{:.3f}"),
    "repeated_4gram_within": ("rep4 within", "{:.3f}"),
    "repeated_4gram_across": ("rep4 across", "{:.3f}"),
    **QUALITY_COLUMNS,
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


"""The sections step: expand every section of every article in one batch, then clean the prose."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from aigc.backends.base import Backend, GenerationRequest, generate_with_prefill
from aigc.cleanup import clean_section, fit_length, words
from aigc.spec import ArticleSpec
from aigc.templates import TemplateStore

log = logging.getLogger(__name__)

#: A section shorter than this after cleaning is generated again once, with another seed.
MIN_SECTION_WORDS = 12
RETRY_SEED_OFFSET = 1000
#: ``rescore(article, section, candidate bodies)``: points to add to each candidate's score, or None.
Rescore = Callable[[int, int, Sequence[str]], "list[float] | None"]


def section_context(spec: ArticleSpec, titles: Sequence[str], index: int) -> dict:
    """Template variables of section ``index`` (0-based)."""
    return spec.template_context(
        outline=list(titles),
        section_title=titles[index],
        section_index=index + 1,
        is_first=index == 0,
        is_last=index == len(titles) - 1,
    )


def section_requests(
    spec: ArticleSpec, titles: Sequence[str], store: TemplateStore, *, seed_offset: int = 0,
    extra: Sequence[dict] | None = None,
) -> list[GenerationRequest]:
    """One request per section; all share the generation settings so a backend can batch them.

    ``extra[i]``: more template variables for section i (its numbered source passages, aigc.grounding).
    """
    name = store.template_name(spec.style, "section")
    requests = []
    for i in range(len(titles)):
        rendered = store.render_messages(name, section_context(spec, titles, i) | (extra[i] if extra else {}))
        requests.append(
            GenerationRequest(
                messages=rendered.messages,
                max_new_tokens=spec.section_tokens,
                temperature=spec.temperature,
                top_p=spec.top_p,
                seed=spec.seed + seed_offset,
                purpose="section",
            )
        )
    return requests


#: Seeds of a section's candidates are this far apart (candidate 0 keeps the article's seed).
CANDIDATE_SEED_STRIDE = 7919


def candidate_count(spec: ArticleSpec, backend: Backend) -> int:
    """Candidates per section: the article's own choice, else the backend's default."""
    return spec.section_candidates or max(1, int(getattr(backend, "default_section_candidates", 1)))


def expand_sections(
    backend: Backend, specs: Sequence[ArticleSpec], outlines: Sequence[Sequence[str]], store: TemplateStore, *,
    extra: Sequence[Sequence[dict] | None] | None = None, rescore: Rescore | None = None,
) -> list[list[dict]]:
    """Write every section of every article: one batched backend call, plus one for any that came out empty.

    Each section gets its article's number of candidates in the same call (other seeds); the best by
    :func:`choose` is kept. ``outlines[i]`` holds the section titles of ``specs[i]``; returns each
    article's sections in order. ``extra[a]``: per section, more template variables of article a (or None);
    ``rescore``: points added to candidates' scores (with sources: their checked citations), see :func:`choose`.
    """
    counts = [candidate_count(spec, backend) for spec in specs]
    per_article = [[section_requests(spec, titles, store, seed_offset=c * CANDIDATE_SEED_STRIDE,
                                     extra=extra[a] if extra else None) for c in range(k)]
                   for a, (spec, titles, k) in enumerate(zip(specs, outlines, counts))]
    rows = [(a, i, c) for a, titles in enumerate(outlines) for i in range(len(titles)) for c in range(counts[a])]
    completions = generate_with_prefill(backend, [per_article[a][c][i] for a, i, c in rows])
    drafts: dict[tuple[int, int], list[dict]] = {}
    for (a, i, c), completion in zip(rows, completions):
        drafts.setdefault((a, i), []).append(_result(specs[a], outlines[a], i, completion, attempts=1))
    results = choose(specs, outlines, drafts, rescore=rescore)
    short = [(a, i) for a, titles in enumerate(outlines) for i in range(len(titles))
             if results[a, i]["words"] < MIN_SECTION_WORDS]
    if short:
        log.warning("%d section(s) came out empty or too short; generating them again", len(short))
        retry = {a: section_requests(specs[a], outlines[a], store, seed_offset=RETRY_SEED_OFFSET,
                                     extra=extra[a] if extra else None) for a, _ in short}
        again = generate_with_prefill(backend, [retry[a][i] for a, i in short])
        for (a, i), c in zip(short, again):
            first, second = results[a, i], _result(specs[a], outlines[a], i, c, attempts=2)
            for key in ("prompt_tokens", "completion_tokens", "seconds"):
                second[key] += first[key]
            if second["words"] >= first["words"]:
                results[a, i] = {**second, **{k: first[k] for k in ("candidates", "chosen") if k in first}}
        for a, i in short:
            if results[a, i]["words"] < MIN_SECTION_WORDS:
                log.warning("%s: section %d %r is still empty after a retry: the article has a gap there "
                            "(try another --seed, or a larger model)", specs[a].topic, i + 1, outlines[a][i])
    return [[results[a, i] for i in range(len(titles))] for a, titles in enumerate(outlines)]


def choose(specs: Sequence[ArticleSpec], outlines: Sequence[Sequence[str]],
           drafts: dict[tuple[int, int], list[dict]], *, rescore: Rescore | None = None
           ) -> dict[tuple[int, int], dict]:
    """Keep the best candidate of each section by :func:`aigc.quality.score_sections` (all scored in one batch).

    A section is scored against its title, the topic, its word budget and the sections chosen
    before it (overlap); the chosen result records every candidate's scores. ``rescore(a, i, bodies)``
    gives points to add to the candidates' totals (or None): with sources, their checked citations.
    """
    single = {key: {**found[0]} for key, found in drafts.items() if len(found) == 1}
    if len(single) == len(drafts):
        return single
    from aigc.quality import score_sections

    chosen: dict[tuple[int, int], dict] = dict(single)
    for a, titles in enumerate(outlines):
        for i, title in enumerate(titles):
            found = drafts[a, i]
            if len(found) == 1:
                continue
            others = [chosen[a, j]["body"] for j in range(i) if chosen[a, j]["body"]]
            scores = score_sections(specs[a].topic, title, [d["body"] for d in found], others, specs[a].section_words)
            points = rescore(a, i, [d["body"] for d in found]) if rescore else None
            for sc, p in zip(scores, points or ()):  # sources: text that cites its passages rightly wins
                sc["citations"], sc["total"] = p, sc["total"] + p
            best = max(range(len(found)), key=lambda c: (scores[c]["total"], -c))
            usage = {k: sum(d[k] for d in found) for k in ("prompt_tokens", "completion_tokens", "seconds")}
            chosen[a, i] = {**found[best], **usage, "chosen": best,
                            "candidates": [{"words": d["words"], **_rounded(sc)} for d, sc in zip(found, scores)]}
    return chosen


def _rounded(scores: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}


def _result(spec: ArticleSpec, titles: Sequence[str], i: int, completion, *, attempts: int) -> dict:
    others = [t for j, t in enumerate(titles) if j != i]
    body = clean_section(
        completion.text, title=titles[i], other_titles=others, truncated=completion.finish_reason == "length"
    )
    body = fit_length(body, spec.section_words)
    return {
        "title": titles[i],
        "body": body,
        "words": words(body),
        "target_words": spec.section_words,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "finish_reason": completion.finish_reason,
        "seconds": round(completion.seconds, 3),
        "attempts": attempts,
    }

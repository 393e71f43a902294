"""The sections step: expand every section of every article in one batch, then clean the prose."""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

from aigc.backends.base import Backend, GenerationRequest, generate_with_prefill
from aigc.cleanup import _norm, clean_section, fit_length, join_text, near_duplicate, split_sentences, word_set, words
from aigc.quality import drop_preamble
from aigc.spec import LENGTH_SLACK, STEP_WORDS, TOKENS_PER_CHARACTER, TOKENS_PER_WORD, ArticleSpec
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
    name = store.template_name(spec.style, "section", spec.lang)
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
                # with passages, names and numbers are to be taken from the prompt, not steered away from
                penalize_prompt=not (extra and extra[i].get("passages")),
                citation_numbers=citation_numbers(extra[i] if extra else None),
            )
        )
    return requests


def citation_numbers(extra: dict | None) -> tuple[int, ...]:
    """The numbers of a section's passages (its notes), the only ones its citations may give; () without passages."""
    return tuple(int(p["number"]) for p in (extra or {}).get("passages") or ())


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
    continue_sections(backend, specs, outlines, store, results, extra=extra)
    return [[results[a, i] for i in range(len(titles))] for a, titles in enumerate(outlines)]


# -- continuation steps: sections longer than one generation ----------------------------------------
#: Words of the text so far that a continuation step sees (whole sentences, from the end).
TAIL_WORDS = 150
#: A long section gets another step while it is shorter than this share of its target.
CONTINUE_BELOW = 0.9
#: A section within one budget, in a piece of several, gets its spare step only while under this share.
SPARE_BELOW = 0.8
#: Seeds of continuation step n are n times this far from the article's seed.
STEP_SEED_OFFSET = 2000


def max_steps(spec: ArticleSpec) -> int:
    """Generations a section may take: its share of budgets plus one spare (a model that stops early).

    The spare step of a section within one budget in a piece of several is taken only when the section
    stopped well short (:data:`SPARE_BELOW`) and the piece is short of its length (see :func:`_short`); a
    small model stopped a 150-word summary at 68 words and the 200-word sections of a 400-word piece at 110."""
    return math.ceil(spec.section_words / STEP_WORDS) + 1


def _short(spec: ArticleSpec, words_so_far: int, article_words: int | None = None) -> bool:
    """Whether a section needs another step: under 90% of its target; or, for a section within one budget
    in a piece of several, under :data:`SPARE_BELOW` while the whole piece (``article_words``) is under 90%
    of its length. A spare round is one more batched call: on 8-section reports one section of 8 at 70%
    cost a round (10 s of 30) while the report stood at 96% of its length."""
    if spec.sections > 1 and spec.section_words <= STEP_WORDS:
        return (words_so_far < SPARE_BELOW * spec.section_words
                and (article_words is None or article_words < CONTINUE_BELOW * spec.words))
    return words_so_far < CONTINUE_BELOW * spec.section_words


def tail(text: str, n_words: int = TAIL_WORDS) -> str:
    """The end of ``text``: its last whole sentences, about ``n_words`` words."""
    sentences = [s for p in text.split("\n\n") for s in split_sentences(p)]
    kept: list[str] = []
    while sentences and (not kept or sum(words(s) for s in kept) < n_words):
        kept.insert(0, sentences.pop())
    return join_text(kept)


def continuation_request(spec: ArticleSpec, titles: Sequence[str], i: int, body: str, step: int,
                         store: TemplateStore, extra: dict | None = None) -> GenerationRequest:
    """The request for step ``step`` (2, 3, ...) of section ``i``: its prompt (with ``extra``, its passages)
    plus the end of the text so far."""
    want = max(20, min(STEP_WORDS, spec.section_words - words(body)))
    context = {**section_context(spec, titles, i), **(extra or {}), "continuation": tail(body),
               "continue_words": want}
    rendered = store.render_messages(store.template_name(spec.style, "section", spec.lang), context)
    per = TOKENS_PER_CHARACTER if spec.counts_characters else TOKENS_PER_WORD
    return GenerationRequest(messages=rendered.messages, max_new_tokens=int(want * per * (1 + LENGTH_SLACK)) + 16,
                             temperature=spec.temperature, top_p=spec.top_p,
                             seed=spec.seed + STEP_SEED_OFFSET * step + i, purpose="section",
                             penalize_prompt=not (extra and extra.get("passages")),
                             citation_numbers=citation_numbers(extra))


def _new_text(body: str, addition: str) -> str:
    """The paragraphs of ``addition`` without the sentences ``body`` already has, or nearly (a model that repeats
    itself)."""
    seen = {_norm(s) for p in body.split("\n\n") for s in split_sentences(p)}
    word_sets = [word_set(s) for p in body.split("\n\n") for s in split_sentences(p)]
    paragraphs = []
    for para in addition.split("\n\n"):
        fresh = []
        for s in split_sentences(para):
            key, ws = _norm(s), word_set(s)
            if key not in seen and not near_duplicate(ws, word_sets):
                fresh.append(s)
                seen.add(key)
                word_sets.append(ws)
        if fresh:
            paragraphs.append(join_text(fresh))
    return "\n\n".join(paragraphs)


def continue_sections(backend: Backend, specs: Sequence[ArticleSpec], outlines: Sequence[Sequence[str]],
                      store: TemplateStore, results: dict[tuple[int, int], dict], *,
                      extra: Sequence[Sequence[dict] | None] | None = None) -> None:
    """Write sections longer than one generation budget in steps, each seeing the end of the text so far.

    Every round is one batched call for all sections of all articles still short of
    ``CONTINUE_BELOW`` of their target; a step that adds nothing new ends its section. ``results``
    is updated in place (body, words, tokens, ``steps``). ``extra``: as for :func:`expand_sections` (a
    grounded section's steps see its passages too).
    """
    for result in results.values():
        result.setdefault("steps", 1)
    for step in range(2, 1 + max((max_steps(s) for s in specs), default=1)):
        totals: dict[int, int] = {}
        for (a, _), r in results.items():
            totals[a] = totals.get(a, 0) + r["words"]
        todo = [(a, i) for (a, i), r in sorted(results.items())
                if r["steps"] == step - 1 and step <= max_steps(specs[a]) and r["words"] >= MIN_SECTION_WORDS
                and _short(specs[a], r["words"], totals[a])]
        if not todo:
            return
        requests = [continuation_request(specs[a], outlines[a], i, results[a, i]["body"], step, store,
                                         extra[a][i] if extra and extra[a] else None) for a, i in todo]
        completions = generate_with_prefill(backend, requests)
        for (a, i), completion in zip(todo, completions):
            r, titles = results[a, i], outlines[a]
            added = clean_section(completion.text, title=titles[i], other_titles=[t for j, t in enumerate(titles)
                                                                                if j != i],
                                  truncated=completion.finish_reason == "length")
            added = _new_text(r["body"], added)
            for key in ("prompt_tokens", "completion_tokens"):
                r[key] += getattr(completion, key)
            r["seconds"] = round(r["seconds"] + completion.seconds, 3)
            if words(added) < MIN_SECTION_WORDS:  # nothing new: the section ends here
                continue
            r["body"] = fit_length(r["body"] + "\n\n" + added, specs[a].section_words, slack=LENGTH_SLACK)
            r["words"], r["steps"], r["finish_reason"] = words(r["body"]), step, completion.finish_reason


def choose(specs: Sequence[ArticleSpec], outlines: Sequence[Sequence[str]],
           drafts: dict[tuple[int, int], list[dict]], *, rescore: Rescore | None = None
           ) -> dict[tuple[int, int], dict]:
    """Keep the best candidate of each section by :func:`aigc.quality.score_sections` (one scoring call per article).

    A candidate is scored on its relevance to its title and to the topic, meta-text, repetition inside
    it, overlap with the other sections' candidates and fit to the word budget; the chosen result
    records every candidate's scores and which one won. ``rescore(a, i, bodies)`` gives points to add
    to the candidates' totals (or None): with sources, their checked citations.
    """
    chosen = {key: {**found[0]} for key, found in drafts.items() if len(found) == 1}
    for a, titles in enumerate(outlines):
        keys = [(a, i) for i in range(len(titles)) if len(drafts[a, i]) > 1]
        if not keys:
            continue
        from aigc.quality import score_sections

        rows = [(i, d) for _, i in keys for d in drafts[a, i]]
        others = [[d["body"] for j in range(len(titles)) if j != i for d in drafts[a, j]] for i, _ in rows]
        scores = score_sections(specs[a].topic, [titles[i] for i, _ in rows], [d["body"] for _, d in rows],
                                other_bodies=others, target_words=specs[a].section_words)
        for _, i in keys:
            found = drafts[a, i]
            mine = [sc for (r, _), sc in zip(rows, scores) if r == i]
            points = rescore(a, i, [d["body"] for d in found]) if rescore else None
            for sc, p in zip(mine, points or ()):  # sources: text that cites its passages rightly wins
                sc["citations"], sc["total"] = p, sc["total"] + p
            best = max(range(len(found)), key=lambda c: (mine[c]["total"], -c))
            usage = {k: sum(d[k] for d in found) for k in ("prompt_tokens", "completion_tokens", "seconds")}
            chosen[a, i] = {**found[best], **usage, "chosen": best,
                            "candidates": [_rounded({k: v for k, v in sc.items() if k != "title"}) for sc in mine]}
    return chosen


def _rounded(scores: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}


def _result(spec: ArticleSpec, titles: Sequence[str], i: int, completion, *, attempts: int) -> dict:
    others = [t for j, t in enumerate(titles) if j != i]
    body = clean_section(
        completion.text, title=titles[i], other_titles=others, truncated=completion.finish_reason == "length"
    )
    body, preamble = drop_preamble(body)  # "I'd be happy to help with your essay!": an assistant's opening, not prose
    body = fit_length(body, spec.section_words, slack=LENGTH_SLACK)
    return {
        "title": titles[i],
        "body": body,
        **({"preamble_dropped": len(preamble)} if preamble else {}),
        "words": words(body),
        "target_words": spec.section_words,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "finish_reason": completion.finish_reason,
        "seconds": round(completion.seconds, 3),
        "attempts": attempts,
    }

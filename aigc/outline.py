"""The outline step: ask for several outlines at once, pool their titles, choose the best, and ask again for what is missing."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from aigc.backends.base import Backend, GenerationRequest, generate_with_prefill
from aigc.errors import OutlineError
from aigc.outline_parse import (  # noqa: F401  (re-exported: the outline step's parsing lives there)
    MAX_TITLE_CHARS,
    MAX_TITLE_WORDS,
    clean_title,
    given_outline,
    parse_outline,
    validate_outline,
)
from aigc.spec import ArticleSpec
from aigc.templates import TemplateStore

log = logging.getLogger(__name__)

#: Rounds of asking for the missing titles (a request that lists the titles so far) before the style's
#: fallback titles fill what is left. Each round is one more sequential call: on the default article
#: (5 sections) two rounds made the outline step the larger part of the candidates' cost.
FOLLOW_UP_ROUNDS = 1
#: Requests per article in a follow-up round.
FOLLOW_UP_REQUESTS = 2
#: Seeds of follow-up rounds start this far from the article's seed.
FOLLOW_UP_SEED_OFFSET = 100


def outline_requests(spec: ArticleSpec, store: TemplateStore, *, count: int, titles_so_far: Sequence[str] = (),
                     seed_offset: int = 0, extra: dict | None = None) -> list[GenerationRequest]:
    """``count`` outline requests for ``spec`` (candidates), each with its own seed.

    With ``titles_so_far`` the template asks only for the missing titles, continuing the numbered list
    (and the reply's token budget is theirs).
    ``extra``: more template variables (the sources' headings and passages, aigc.grounding).
    """
    context = spec.template_context(titles_so_far=list(titles_so_far), **(extra or {}))
    rendered = store.render_messages(store.template_name(spec.style, "outline", spec.lang), context)
    return [
        GenerationRequest(
            messages=rendered.messages,
            max_new_tokens=spec.outline_tokens_for(spec.sections - len(titles_so_far)),
            temperature=spec.temperature,
            top_p=spec.top_p,
            seed=spec.seed + seed_offset + c,
            # stop before an item past the ones asked for
            stop=(f"\n{spec.sections + 1}.",),
            purpose="outline",
            penalize_prompt=not (extra and extra.get("source_headings")),  # sources: their headings may be taken
        )
        for c in range(count)
    ]


def order_cues(spec: ArticleSpec, store: TemplateStore) -> tuple[list[str], list[str], list[str]]:
    """What the style's outline template says (comma-separated blocks): which titles come first and last
    (``first_sections``, ``last_sections``), and the titles to fall back on (``fallback_sections``)."""
    blocks = store.render_blocks(store.template_name(spec.style, "outline", spec.lang),
                                 spec.template_context(titles_so_far=[]),
                                 ["first_sections", "last_sections", "fallback_sections"])
    split = lambda text: [c.strip() for c in text.split(",") if c.strip()]  # noqa: E731
    return ([c.lower() for c in split(blocks["first_sections"])], [c.lower() for c in split(blocks["last_sections"])],
            split(blocks["fallback_sections"]))


def _choose(spec: ArticleSpec, texts: Sequence[str], cues: tuple[list[str], list[str], list[str]],
            source_headings: Sequence[str] = (), required: Sequence[str] = ()) -> dict[str, Any]:
    """Pool the candidates' titles and select; with sources, their headings join the pool as one more candidate
    (the material's own sections compete with the model's titles, and gain ``WEIGHTS["material"]`` in the
    selection: see :func:`aigc.outline_pool.select_titles`).

    ``required``: titles the outline must have (a brief's numbered points, in the brief's order); the pool
    fills the other places with titles unlike them, an opening one before them and a closing one after.
    """
    from aigc import outline_pool as op

    if source_headings:
        texts = [*texts, "\n".join(f"{n}. {t}" for n, t in enumerate(source_headings, 1))]
    pool = op.merge_similar(op.pool_titles(texts, spec.topic))
    if required:
        pool = op.without_like(pool, required, spec.topic)
    want = spec.sections - len(required)
    titles, scores = op.select_titles(pool, want, spec.topic, first_cues=cues[0] or None, last_cues=cues[1] or None,
                                      n_candidates=len(texts), material=len(texts) - 1 if source_headings else None,
                                      ) if want > 0 and pool else ([], [])
    record = op.selection_record(texts, pool, titles, scores, want)
    if required:
        first = [t for t, sc in zip(titles, scores) if sc.cue == "first"]
        last = [t for t, sc in zip(titles, scores) if sc.cue == "last"]
        titles = first + list(required) + [t for t in titles if t not in first and t not in last] + last
        record = {**record, "titles": titles, "from_brief": list(required), "asked": spec.sections,
                  "missing": max(0, spec.sections - len(titles))}
    return {"titles": titles, "selection": record}


def generate_outlines(backend: Backend, specs: Sequence[ArticleSpec], store: TemplateStore, *,
                      extra: Sequence[dict | None] | None = None) -> list[dict | OutlineError]:
    """Outlines of several articles, from candidates asked for in one batched call.

    Each article gets ``spec.outline_candidates`` requests in the first call; their titles are pooled,
    near-duplicates merged, and the requested number chosen by score (``aigc.outline_pool``). An
    article still short of titles is asked for the missing ones (listing those it has) in up to
    ``FOLLOW_UP_ROUNDS`` more calls, shared by all such articles; what is still missing then comes from
    the style's ``fallback_sections``. Returns per spec ``{"titles",
    "attempts", "selection", usage...}`` or the OutlineError that says what the model returned.
    ``extra[i]``: more template variables for article i's prompts (its sources), or None.
    """
    from aigc.points import point_titles

    cues = [order_cues(spec, store) for spec in specs]
    headings = [list((e or {}).get("source_headings") or ()) for e in (extra or [None] * len(specs))]
    required = [point_titles(spec.brief)[:spec.sections] if spec.sections > 1 else [] for spec in specs]
    texts: list[list[str]] = [[] for _ in specs]
    usage = [{"prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0} for _ in specs]
    chosen: list[dict[str, Any]] = [{"titles": []} for _ in specs]
    pending = []
    for i, spec in enumerate(specs):  # a brief whose numbered points fill the outline needs no model call
        if len(required[i]) == spec.sections:
            chosen[i] = {"titles": list(required[i]), "selection": {"titles": list(required[i]),
                                                                    "from_brief": list(required[i])}}
        else:
            pending.append(i)
    rounds = [0] * len(specs)  # the calls each article took part in
    for round_ in range(1 + FOLLOW_UP_ROUNDS):
        if not pending:
            break
        asked = []
        for i in pending:
            rounds[i] = round_ + 1
            spec = specs[i]
            if round_ == 0:
                reqs = outline_requests(spec, store, count=spec.outline_candidates, extra=extra[i] if extra else None)
            else:
                reqs = outline_requests(spec, store, count=FOLLOW_UP_REQUESTS, titles_so_far=chosen[i]["titles"],
                                        seed_offset=FOLLOW_UP_SEED_OFFSET * round_, extra=extra[i] if extra else None)
                log.info("%s: %d of %d outline titles usable; asking for the missing ones", spec.topic,
                         len(chosen[i]["titles"]), spec.sections)
            asked += [(i, r) for r in reqs]
        completions = generate_with_prefill(backend, [r for _, r in asked])
        for (i, _), completion in zip(asked, completions):
            texts[i].append(completion.text)
            for key in usage[i]:
                usage[i][key] += getattr(completion, key)
        for i in pending:
            chosen[i] = _choose(specs[i], texts[i], cues[i], headings[i], required[i])
        pending = [i for i in pending if len(chosen[i]["titles"]) < specs[i].sections]
    for i in list(pending):  # the last resort: the style's fallback titles join the pool, the best fitting fill the gaps
        fallback = cues[i][2]
        if not fallback:
            continue
        log.warning("%s: %d of %d outline titles usable after %d rounds; filling the rest from the style's "
                    "fallback titles", specs[i].topic, len(chosen[i]["titles"]), specs[i].sections, rounds[i])
        filled = _choose(specs[i], [*texts[i], "\n".join(f"{n}. {t}" for n, t in enumerate(fallback, 1))], cues[i],
                         headings[i], required[i])
        if len(filled["titles"]) >= specs[i].sections:
            chosen[i] = {**filled, "fallback_titles": [t for t in filled["titles"] if t in fallback]}
            pending.remove(i)
    results: list[dict | OutlineError] = []
    for i, spec in enumerate(specs):
        if i in pending:
            results.append(OutlineError(_shortfall(spec, chosen[i]["titles"], texts[i], rounds[i])))
        else:
            results.append({**chosen[i], "attempts": rounds[i], **usage[i]})
    return results


def _shortfall(spec: ArticleSpec, titles: Sequence[str], texts: Sequence[str], rounds: int) -> str:
    """One line: how many usable titles the model gave, a glimpse of what it wrote, and what to try."""
    sample = next((" ".join(t.split()) for t in texts if any(c.isalpha() for c in t)), "")
    wrote = f"it wrote e.g. {sample[:80]!r}" if sample else "it wrote no text"
    return (f"no usable outline: {len(texts)} replies in {rounds} rounds gave {len(titles)} usable section titles, "
            f"{spec.sections} were asked for ({wrote}); try fewer --sections, another --seed, or pass --outline")


def generate_outline(backend: Backend, spec: ArticleSpec, store: TemplateStore) -> dict:
    """The outline of one article (see :func:`generate_outlines`); raises OutlineError when it has none."""
    result = generate_outlines(backend, [spec], store)[0]
    if isinstance(result, Exception):
        raise result
    return result

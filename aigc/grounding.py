"""Grounded writing in the pipeline: each article's source index, passages for its prompts, citation checks, References.

The steps of :mod:`aigc.pipeline` call this module for articles whose spec names ``sources``; an
article without sources never reaches it, so it is written exactly as without this module. The
index caches itself (:func:`aigc.index.build_index`: an unchanged corpus loads in about 0.2 s), so
each step asks for it again instead of passing it between Prefect tasks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from aigc.errors import AigcError
from aigc.sources import Passage
from aigc.spec import ArticleSpec

#: The outline prompt: the topic's best passages (their headings listed) and the first few of them, shortened.
OUTLINE_HITS = 12
OUTLINE_PASSAGES = 3
OUTLINE_PASSAGE_WORDS = 40
#: A section's prompt: the best passages for "topic + section title", numbered, each cut to this many words.
#: Chosen by benchmarks/grounded.py (3 FreshWiki topics, embedded model, 1 thread): 5 x 120 words made a
#: grounded report take 8-16x the time of a plain one; 4 x 80 raised the recall of the source's names and
#: numbers 3.2x at 1.76x the time; 3 x 70 2.8x at 1.27-1.50x (docs/sources.md). On 6 topics, same tree, quiet
#: machine: 3 x 70 recall 3.1x at 1.62x, 3 x 55 recall 3.2x at 1.53x (a cut passage still holds its first,
#: most topical sentences).
SECTION_PASSAGES = 3
SECTION_PASSAGE_WORDS = 55
#: Each section's passages are spread over the article: taken from its best SPREAD_DEPTH x SECTION_PASSAGES hits.
SPREAD_DEPTH = 3
#: A section candidate's score (0-100, aigc.quality) gains up to CITED_POINTS points for the share of its
#: sentences that keep a supported citation, loses up to REMOVED_POINTS for the share of its markers that
#: had to be removed and up to UNSUPPORTED_POINTS for the share of its sentences naming a thing or number
#: found in no passage: with sources, text that cites its passages correctly and invents less wins.
CITED_POINTS = 20.0
REMOVED_POINTS = 10.0
UNSUPPORTED_POINTS = 10.0


def _indexes(specs: Sequence[ArticleSpec], progress: Callable[[str, int, int, str], None] | None = None
             ) -> list[Any]:
    """Each spec's :class:`aigc.index.Index` (None without sources, the AigcError when its sources are unusable).

    Specs naming the same sources share one index (built or loaded once).
    """
    from aigc.index import build_index

    built: dict[tuple, Any] = {}
    out = []
    for spec in specs:
        if not spec.sources:
            out.append(None)
            continue
        key = (spec.sources, spec.text_field)
        if key not in built:
            name = ", ".join(spec.sources)
            report = (lambda done, total, stage, name=name: progress(name, done, total, stage)) if progress else None
            try:
                built[key] = build_index(list(spec.sources), text_field=spec.text_field, progress=report)
            except AigcError as err:
                built[key] = err
        out.append(built[key])
    return out


def index_summary(index: Any, spec: ArticleSpec) -> dict[str, Any]:
    """What the record keeps of an article's index: the paths, the corpus key, its size, the warnings."""
    return {"paths": list(spec.sources or ()), "text_field": spec.text_field, "key": index.key,
            "documents": index.stats.get("documents", len({p.document for p in index.passages})),
            "passages": len(index), "warnings": list(index.warnings)}


def index_sources(specs: Sequence[ArticleSpec], progress: Callable[[str, int, int, str], None] | None = None
                  ) -> list[dict[str, Any] | AigcError | None]:
    """Build (or load) the index of every article with sources: its summary, the error, or None without sources."""
    out: list[dict[str, Any] | AigcError | None] = []
    for spec, index in zip(specs, _indexes(specs, progress)):
        out.append(index if index is None or isinstance(index, AigcError) else
                   {**index_summary(index, spec), "stats": dict(index.stats)})
    return out


def _search(indexes: Sequence[Any], queries: Sequence[Sequence[str]], k: int) -> list[list[list[Passage]] | None]:
    """For each article with an index, the best ``k`` passages for each of its queries: one batched search per
    index. Lists of references and links (:func:`aigc.citations.is_reference_list`) are passed over: they
    state no facts, and a list of web addresses costs a prompt many tokens."""
    from aigc.citations import is_reference_list

    results: list[list[list[Passage]] | None] = [None] * len(indexes)
    by_index: dict[int, list[int]] = {}
    for a, index in enumerate(indexes):
        if index is not None and not isinstance(index, AigcError):
            by_index.setdefault(id(index), []).append(a)
    for members in by_index.values():
        index = indexes[members[0]]
        flat = [q for a in members for q in queries[a]]
        found = [[p for p in hits if not is_reference_list(p)][:k] for hits in index.search_many(flat, k=2 * k)]
        for a in members:
            results[a], found = found[:len(queries[a])], found[len(queries[a]):]
    return results


def outline_contexts(specs: Sequence[ArticleSpec]) -> list[dict[str, Any] | AigcError | None]:
    """Extra outline-template variables per article (``source_headings``, ``source_passages``), its error, or None."""
    from aigc.citations import passages_for_prompt

    indexes = _indexes(specs)
    hits = _search(indexes, [[spec.topic] for spec in specs], OUTLINE_HITS)
    out: list[dict[str, Any] | AigcError | None] = []
    for index, found in zip(indexes, hits):
        if found is None:
            out.append(index)  # None or the error
            continue
        best = found[0]
        heads = (p.heading.rsplit(" > ", 1)[-1] for p in best if p.heading and p.heading != p.title)
        out.append({"source_headings": list(dict.fromkeys(heads)),  # innermost headings: what a section may be
                    "source_passages": passages_for_prompt(best[:OUTLINE_PASSAGES], max_words=OUTLINE_PASSAGE_WORDS)})
    return out


def _passage_record(p: Passage, number: int) -> dict[str, Any]:
    """A passage as the record lists it: where it is and its content hash (not its text), its score, its number."""
    data = {k: v for k, v in p.to_dict().items() if k != "text"}
    return {"number": number, **data, "words": len(p.text.split())}


def spread(ranked: Sequence[Sequence[Passage]], k: int) -> list[list[Passage]]:
    """``k`` passages per section from each section's ranked hits, spread so that sections tell different facts.

    In rounds, each section in turn takes its best passage that no section has yet; a section whose hits run
    out of such passages fills up with its best ones already taken (in their rank order). With the same
    corpus the topic alone ranks the same few passages first for every section, and the sections of a small
    model then retell one passage each.
    """
    def key(p: Passage) -> str:  # one passage however often it is found (as aigc.citations.renumber tells them)
        return p.hash or p.text

    taken: set[str] = set()
    chosen: list[list[Passage]] = [[] for _ in ranked]
    for _ in range(k):
        for i, hits in enumerate(ranked):
            if len(chosen[i]) >= k:
                continue
            best = next((p for p in hits if key(p) not in taken), None)
            if best is not None:
                chosen[i].append(best)
                taken.add(key(best))
    for i, hits in enumerate(ranked):
        have = {key(p) for p in chosen[i]}
        for p in hits:
            if len(chosen[i]) >= k:
                break
            if key(p) not in have:
                chosen[i].append(p)
                have.add(key(p))
        order = {id(p): r for r, p in enumerate(hits)}
        chosen[i].sort(key=lambda p: order.get(id(p), len(order)))  # best first, as the search ranked them
    return chosen


def wants_citations(spec: ArticleSpec, titles: Sequence[str], store: Any, extra: dict[str, Any]) -> bool:
    """Whether the style's section template asks for [n] markers: its block ``citation`` is not empty
    (``extra``: the first section's template variables with its passages)."""
    from aigc.sections import section_context

    name = store.template_name(spec.style, "section", spec.lang)
    return bool(store.render_blocks(name, section_context(spec, titles, 0) | extra, ["citation"])["citation"])


@dataclass
class SectionSources:
    """The passages of every section of articles written together, and what checks their citations.

    ``passages[a]`` is None for an article without sources, else one list of passages per section.
    """

    specs: Sequence[ArticleSpec]
    titles: Sequence[Sequence[str]]
    indexes: list[Any]
    passages: list[list[list[Passage]] | None]
    #: Per article: whether aigc adds markers to the sentences the model left uncited (its style asks for citations).
    attribute: list[bool] = field(default_factory=list)
    _checked: dict[tuple[int, int, str], tuple[str, Any]] = field(default_factory=dict, repr=False)
    _extra: list[list[dict[str, Any]] | None] | None = field(default=None, repr=False)

    @classmethod
    def find(cls, specs: Sequence[ArticleSpec], titles: Sequence[Sequence[str]], store: Any = None
             ) -> "SectionSources":
        """Retrieve each section's passages (query: topic + section title), one batched search per index.

        ``store`` (a TemplateStore): with it, articles whose style asks for citations get markers added
        where the model left a supported sentence uncited (:func:`aigc.citations.check_citations`)."""
        indexes = _indexes(specs)
        queries = [[f"{spec.topic} {t}" for t in ts] for spec, ts in zip(specs, titles)]
        hits = _search(indexes, queries, SPREAD_DEPTH * SECTION_PASSAGES)
        found = cls(specs, titles, indexes, [None if h is None else spread(h, SECTION_PASSAGES) for h in hits])
        if store is not None:
            found.attribute = [bool(extra) and wants_citations(spec, ts, store, extra[0])
                               for spec, ts, extra in zip(specs, titles, found.extra())]
        return found

    @property
    def any(self) -> bool:
        return any(p is not None for p in self.passages)

    def error(self, a: int) -> AigcError | None:
        """The error of article ``a``'s sources, if they could not be used."""
        return self.indexes[a] if isinstance(self.indexes[a], AigcError) else None

    def extra(self) -> list[list[dict[str, Any]] | None]:
        """Per article, per section: the section template's extra variables (``passages``, numbered from 1);
        made once (:meth:`find` reads the first section's, the sections step all of them)."""
        from aigc.citations import passages_for_prompt

        if self._extra is None:
            self._extra = [None if found is None else
                           [{"passages": passages_for_prompt(ps, max_words=SECTION_PASSAGE_WORDS)} for ps in found]
                           for found in self.passages]
        return self._extra

    def check(self, a: int, i: int, body: str) -> tuple[str, Any]:
        """Section ``i`` of article ``a`` with its unsupported markers removed, and the CitationReport."""
        from aigc.citations import check_citations

        key = (a, i, body)
        if key not in self._checked:
            ps = self.passages[a][i]
            self._checked[key] = check_citations(body, ps, known=f"{self.specs[a].topic} {self.titles[a][i]}",
                                                 passage_vectors=self.indexes[a].vectors_for(ps),
                                                 attribute=a < len(self.attribute) and self.attribute[a])
        return self._checked[key]

    def rescore(self, a: int, i: int, bodies: Sequence[str]) -> list[float] | None:
        """Points added to each candidate's score of section ``i`` of article ``a`` (None without sources)."""
        if self.passages[a] is None:
            return None
        return [candidate_points(self.check(a, i, body)[1]) for body in bodies]

    def finish(self, a: int, sections: list[dict]) -> list[dict]:
        """Article ``a``'s sections with their citations checked: body cleaned, ``passages`` and ``citations`` added."""
        from aigc.cleanup import words

        if self.passages[a] is None:
            return sections
        out = []
        for i, section in enumerate(sections):
            cleaned, report = self.check(a, i, section["body"])
            numbers = report.to_dict()
            out.append({**section, "body": cleaned, "words": words(cleaned),
                        "passages": [_passage_record(p, n) for n, p in enumerate(self.passages[a][i], 1)],
                        "citations": numbers})
        return out

    def summary(self, a: int) -> dict[str, Any] | None:
        """What the sections step hands on about article ``a``'s sources (None without sources)."""
        if self.passages[a] is None:
            return None
        return index_summary(self.indexes[a], self.specs[a])


# ---------------------------------------------------------------- assembly


def _web_link(link: str | None) -> str | None:
    return link if isinstance(link, str) and re.match(r"https?://", link) else None


def candidate_points(report: Any) -> float:
    """Points a section candidate's :class:`aigc.citations.CitationReport` adds to its score (see CITED_POINTS)."""
    cited = report.cited_share or 0.0
    removed = report.markers_removed / report.markers if report.markers else 0.0
    invented = len(report.unsupported_claims) / report.sentences if report.sentences else 0.0
    return round(CITED_POINTS * cited - REMOVED_POINTS * removed - UNSUPPORTED_POINTS * invented, 3)


def number_citations(sections: Sequence[dict]) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """One numbering for the article's citations: the sections with renumbered bodies, the References rows and
    the article's citation report (the sections' reports added up).

    Each section's ``passages`` gain ``cited_as`` (the passage's number in the References, or None).
    """
    from aigc.citations import references, renumber

    local = [[Passage.from_dict({"text": "", **p}) for p in s.get("passages", ())] for s in sections]
    texts, used = renumber([(s["body"], ps) for s, ps in zip(sections, local)])
    refs = [{**r, "url": _web_link(r["link"])} for r in references(used)]
    number_of = {p.hash: n for n, p in enumerate(used, 1)}
    out = []
    for s, text in zip(sections, texts):
        if "passages" in s:
            s = {**s, "body": text, "passages": [{**p, "cited_as": number_of.get(p["hash"])} for p in s["passages"]]}
        out.append(s)
    return out, refs, merge_reports([s["citations"] for s in sections if s.get("citations")])


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The article's citation report from its sections' (``CitationReport.to_dict()``) reports."""
    from aigc.citations import CitationReport

    keys = ("sentences", "cited_sentences", "markers", "supported", "attributed", "retargeted", "removed",
            "unsupported_claims")
    merged = CitationReport.merge([CitationReport(**{k: r[k] for k in keys if k in r}) for r in reports])
    data = merged.to_dict()
    data.pop("used", None)
    return data


def add_to_record(record: dict[str, Any], summary: dict[str, Any], references: Sequence[dict],
                  citations: dict[str, Any]) -> None:
    """Put the article's sources, their warnings, its References and its citation report into its record.

    Each section keeps its passages (place, hash, score, ``cited_as``) and its citation counts; the
    removed markers and the unsupported claims are listed once, in the article's ``citations``.
    """
    record["sources"] = {k: v for k, v in summary.items() if k != "warnings"}
    record["source_warnings"] = list(summary.get("warnings", ()))
    record["references"] = list(references)
    record["citations"] = citations
    for section in record["sections"]:
        if isinstance(section.get("citations"), dict):
            section["citations"] = {k: v for k, v in section["citations"].items()
                                    if k not in ("removed", "unsupported_claims")}


def without_references(markdown: str, count: int) -> str:
    """The article's Markdown without its References (a ``##`` heading and a numbered list of ``count`` items).

    For measures of the prose (length, coverage, repetition); unchanged when no such list is found.
    """
    if not count:
        return markdown
    found = list(re.finditer(r"^##[^\n]*\n\n((?:\d+\. [^\n]*\n)+)\n?", markdown, flags=re.M))
    for m in reversed(found):
        if len(m.group(1).splitlines()) == count:
            return markdown[:m.start()] + markdown[m.end():]
    return markdown


def link_references(html: str, count: int) -> str:
    """HTML whose ``[n]`` markers link to the References list, whose items get ``id="ref-n"``.

    The References list is the last ``<ol>`` with exactly ``count`` items (the document template decides its
    heading and wording); a style that shows no such list keeps its markers as plain text.
    """
    from aigc.citations import link_markers

    if not count:
        return html
    markers = [m.end() for m in re.finditer(r"\[\d{1,4}\]", html)]
    lists = list(re.finditer(r"<ol>\n?(.*?)</ol>", html, flags=re.S))
    target = next((m for m in reversed(lists) if m.group(1).count("<li>") == count
                   and m.start() > (markers[-1] if markers else 0)), None)  # after the text that cites it
    if target is None:
        return html
    items = iter(range(1, count + 1))
    block = re.sub(r"<li>", lambda _: f'<li id="ref-{next(items)}">', target.group(0))
    head, tail = html[:target.start()], html[target.end():]
    return link_markers(head) + block + link_markers(tail)


def evaluation_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The citation figures of an article's record for its evaluation (empty without sources)."""
    report = record.get("citations")
    if not report:
        return {}
    return {"citation_support_rate": report.get("support_rate"), "cited_share": report.get("cited_share"),
            "unsupported_claims": len(report.get("unsupported_claims", ())),
            "citation_markers_removed": report.get("markers_removed"),
            "citations_attributed": report.get("attributed", 0), "citations_retargeted": report.get("retargeted", 0)}


def strip_markers(text: str) -> str:
    """Text without its ``[n]`` markers (for measures of the prose itself)."""
    from aigc.citations import MARKER

    return re.sub(r"[ \t]+(?=[.,;:!?])", "", MARKER.sub("", text))

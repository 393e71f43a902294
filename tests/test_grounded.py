"""Grounded writing end to end: sources indexed, passages in the prompts, [n] checked, References, record, CLI."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from click.testing import CliRunner

from aigc.backends import register_backend, unregister_backend
from aigc.backends.base import GenerationRequest
from aigc.cli import main
from aigc.pipeline import write_article
from aigc.sources import Passage
from aigc.spec import ArticleSpec
from tests.conftest import FakeBackend

FUNDY = ("The Bay of Fundy in Canada has the highest tides in the world, with a range of up to 16 metres between low "
         "and high water. Engineers at the Annapolis Royal station have generated electricity from these tides since "
         "1984, using a barrage across the river mouth. Fishermen along the bay time their work by the tide tables, "
         "and the mud flats left at low water feed millions of migrating sandpipers every summer.")
MOON = ("Tides are caused by the gravitational pull of the Moon and the Sun on the oceans of the Earth. The Moon is "
        "the larger influence because it is much closer, and its pull raises two bulges of water on opposite sides "
        "of the planet. As the Earth rotates, a coast passes through both bulges, which gives most places two high "
        "tides and two low tides each lunar day of about 24 hours and 50 minutes.")
BREAD = ("Sourdough bread rises with a culture of wild yeast and lactic acid bacteria kept alive in a starter of "
         "flour and water. Bakers feed the starter daily and leave the dough to ferment slowly for many hours, "
         "which gives the loaf its sour taste, its open crumb and a crust that stays crisp for days.")
#: What the citing fake writes in each section: one sentence its passage supports, one it does not, a marker
#: naming no passage.
SUPPORTED = "The Bay of Fundy in Canada has the highest tides in the world, with a range of up to 16 metres [{n}]."
UNSUPPORTED = "The Eiffel Tower in Paris opened to visitors in 1889 [{n}]."
MISSING = "Many coastal towns depend on the sea [9]."


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """Two Markdown files and a JSONL file in a folder; the index cache in tmp_path."""
    monkeypatch.setenv("AIGC_CACHE_DIR", str(tmp_path / "cache"))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "fundy.md").write_text(f"# Bay of Fundy\n\n## Tidal range\n\n{FUNDY}\n", "utf-8")
    (notes / "moon.md").write_text(f"# Tides\n\n## Causes\n\n{MOON}\n", "utf-8")
    (notes / "bread.jsonl").write_text(json.dumps({"text": BREAD, "title": "Sourdough",
                                                   "url": "https://example.org/bread"}) + "\n", "utf-8")
    return notes


class CitingFake(FakeBackend):
    """The fake model, except that a section cites the passage about Fundy by the number its prompt gives it."""

    def generate(self, requests):
        out = super().generate(requests)
        for request, completion in zip(requests, out):
            if request.purpose == "section":
                completion.text = citing_reply(request)
        return out


def prompt_text(request: GenerationRequest) -> str:
    return "\n".join(m.content for m in request.messages)


def citing_reply(request: GenerationRequest) -> str:
    numbers = re.findall(r"^\[(\d+)\] [^\n]*Fundy", prompt_text(request), flags=re.M)
    n = numbers[0] if numbers else "1"
    return f"{SUPPORTED.format(n=n)} {UNSUPPORTED.format(n=n)} {MISSING}"


@pytest.fixture
def citing_backend():
    backend = CitingFake()
    register_backend("fake", lambda **options: backend)
    yield backend
    unregister_backend("fake")


def grounded_spec(notes, **kw) -> ArticleSpec:
    values = dict(topic="Tides of the Bay of Fundy", sections=2, words=120, backend="fake", outline_candidates=1,
                  section_candidates=1, outline=("Tidal range", "Causes"), sources=(str(notes),))
    return ArticleSpec(**{**values, **kw})


def test_sections_cite_their_passages_checked_and_listed(citing_backend, corpus, tmp_path):
    result = write_article(grounded_spec(corpus), backend=citing_backend, root=tmp_path / "out")
    sections = [r for r in citing_backend.requests if r.purpose == "section"]
    # two sections, each stopping short (30 of 60 words) and so taking a spare step that sees its passages too
    assert len(sections) == 4 and sum("The section so far ends with" in prompt_text(r) for r in sections) == 2
    for request in sections:  # numbered passages, and the instruction to cite them
        text = prompt_text(request)
        assert re.search(r"^\[1\] .+", text, flags=re.M) and "Bay of Fundy" in text
        assert "square brackets" in text

    md = (result.folder / "article.md").read_text()
    assert md.count("up to 16 metres [1].") == 2  # supported: kept, one number for the article
    assert "opened to visitors in 1889." in md and "[9]" not in md  # unsupported and missing markers removed
    assert "## References" in md and "1. *Bay of Fundy*, " in md and "fundy.md" in md
    html = (result.folder / "article.html").read_text()
    assert '<a class="cite" href="#ref-1">[1]</a>' in html and '<li id="ref-1">' in html

    record = json.loads((result.folder / "article.json").read_text())
    c = record["citations"]
    assert (c["markers"], c["supported"], c["markers_removed"]) == (6, 2, 4)
    assert c["support_rate"] == pytest.approx(2 / 6, abs=1e-3)
    assert {r["reason"] for r in c["removed"]} == {"no such passage", "not similar enough"}
    assert any("eiffel tower" in claim["missing"] for claim in c["unsupported_claims"])
    used = record["sections"][0]["passages"]
    fundy = next(p for p in used if p["document"].endswith("fundy.md"))
    assert re.fullmatch(r"[0-9a-f]{16}", fundy["hash"]) and fundy["cited_as"] == 1
    assert "text" not in fundy and {"location", "score", "number"} <= set(fundy)
    assert record["references"][0]["hash"] == fundy["hash"]
    assert record["sources"]["documents"] == 3 and record["sources"]["key"]
    ev = record["evaluation"]
    assert ev["citation_support_rate"] == c["support_rate"] and ev["unsupported_claims"] >= 2
    assert ev["sections"] == 2  # the References are no section of the prose
    assert ev["citations_retargeted"] == c["retargeted"]
    from flows.article import _citations_line

    line = _citations_line(record)  # the Prefect artifact's line
    assert line.startswith(f"Citations: 2 of 6 supported (33%), {c['attributed']} added by aigc, "
                           f"{c['retargeted']} cited to another note")


@pytest.mark.parametrize("style, lang, asks", [("summary", "en", "square brackets"), ("email", "en", "square brackets"),
                                               ("report", "zh", "方括号"), ("summary", "zh", "方括号")])
def test_short_forms_and_chinese_templates_present_the_passages(citing_backend, corpus, tmp_path, style, lang, asks):
    topic = "芬迪湾的潮汐" if lang == "zh" else "Tides of the Bay of Fundy"
    one = style in ("summary", "email")
    spec = grounded_spec(corpus, topic=topic, style=style, lang=lang, sections=1 if one else 2,
                         outline=(topic,) if one else ("潮差", "成因"))
    result = write_article(spec, backend=citing_backend, root=tmp_path / "out")
    sections = [r for r in citing_backend.requests if r.purpose == "section"]
    assert sections and all(re.search(r"^\[1\] [A-Z]\w+ ", prompt_text(r), flags=re.M) and asks in prompt_text(r)
                            for r in sections)  # continuation steps too
    record = json.loads((result.folder / "article.json").read_text())
    assert record["citations"]["markers"] >= 1 and record["sections"][0]["passages"]


def test_outline_prompt_sees_the_documents(fake_backend, corpus, tmp_path):
    fake_backend.enqueue(" Tidal range\n2. Causes")
    write_article(grounded_spec(corpus, outline=None), backend=fake_backend, root=tmp_path / "out")
    outline = next(r for r in fake_backend.requests if r.purpose == "outline")
    text = prompt_text(outline)
    assert re.search(r"^\[1\] The Bay of Fundy in Canada has the highest tides in the world", text, flags=re.M)
    headings = re.search(r"headings: (.*)\.", text).group(1).split("; ")
    assert {"Tidal range", "Causes"} <= set(headings)  # the documents' own section headings


def test_candidates_prefer_supported_citations(corpus, tmp_path):
    """Two candidates per section: the one whose citations hold wins, with the points in the record."""
    from aigc.grounding import CITED_POINTS

    backend = FakeBackend()
    good = "The Bay of Fundy in Canada has the highest tides in the world, with a range of up to 16 metres [{n}]."
    bad = "The Bay of Fundy is the deepest lake in Africa and was found by sailors in 1492 [{n}]."

    def generate(requests):
        out = FakeBackend.generate(backend, requests)
        for r, c in zip(requests, out):
            if r.purpose == "section":
                n = re.findall(r"^\[(\d+)\] [^\n]*Fundy", prompt_text(r), flags=re.M)[0]
                c.text = (bad if r.seed == 0 else good).format(n=n)  # candidate 0 (seed 0) cites wrongly
        return out

    backend.generate = generate
    result = write_article(grounded_spec(corpus, section_candidates=2), backend=backend, root=tmp_path / "out")
    record = json.loads((result.folder / "article.json").read_text())
    for section in record["sections"]:
        assert section["chosen"] == 1
        assert section["candidates"][1]["citations"] == pytest.approx(CITED_POINTS)
        assert section["candidates"][0]["citations"] < 0
    assert "deepest lake" not in (result.folder / "article.md").read_text()


def test_a_candidate_that_invents_names_and_numbers_scores_lower():
    from aigc.citations import CitationReport
    from aigc.grounding import CITED_POINTS, UNSUPPORTED_POINTS, candidate_points

    honest = CitationReport(sentences=4, cited_sentences=2, markers=2, supported=2)
    inventive = CitationReport(sentences=4, cited_sentences=2, markers=2, supported=2,
                               unsupported_claims=[{"sentence": "Born in Paris in 1492.", "missing": ["1492", "paris"]}])
    assert candidate_points(honest) == CITED_POINTS / 2
    assert candidate_points(inventive) == CITED_POINTS / 2 - UNSUPPORTED_POINTS / 4


class UncitingFake(FakeBackend):
    """The fake model, except that a section states the Fundy passage's facts and another fact, citing nothing."""

    def generate(self, requests):
        out = super().generate(requests)
        for request, completion in zip(requests, out):
            if request.purpose == "section":
                completion.text = SUPPORTED.replace(" [{n}]", "") + " The Eiffel Tower in Paris opened in 1889."
        return out


def test_sentences_left_uncited_get_the_passage_that_supports_them(corpus, tmp_path, templates_copy):
    backend = UncitingFake()
    result = write_article(grounded_spec(corpus), backend=backend, root=tmp_path / "out")
    sections = [r for r in backend.requests if r.purpose == "section"]
    assert sections and not any(r.penalize_prompt for r in sections)  # names may be taken from the passages
    for r in sections:  # a local model may cite the section's notes, and no other number
        assert r.citation_numbers and all(f"[{n}]" in prompt_text(r) for n in r.citation_numbers)
        assert f"[{max(r.citation_numbers) + 1}]" not in prompt_text(r)
    md = (result.folder / "article.md").read_text()
    assert md.count("up to 16 metres [1].") == 2 and "opened in 1889." in md  # only the supported one is cited
    c = json.loads((result.folder / "article.json").read_text())["citations"]
    assert (c["attributed"], c["markers"], c["support_rate"]) == (2, 0, None)
    assert c["cited_share"] == pytest.approx(0.5)

    # a style that asks for no citations gets none added
    section = templates_copy / "report" / "section.j2"
    section.write_text(re.sub(r"(?s)\{% block citation %\}.*?\{% endblock %\}", "{% block citation %}{% endblock %}",
                              section.read_text()))
    backend = UncitingFake()
    result = write_article(grounded_spec(corpus, style="report"), backend=backend, root=tmp_path / "plain")
    assert "[1]" not in (result.folder / "article.md").read_text().split("## References")[0]
    assert json.loads((result.folder / "article.json").read_text())["citations"]["attributed"] == 0


def test_sections_get_different_passages_where_their_hits_allow():
    from aigc.grounding import spread

    p = {n: Passage(text=f"passage {n}", document="d.md", location=str(n), hash=f"h{n}") for n in range(1, 8)}
    ranked = [[p[1], p[2], p[3], p[4]], [p[1], p[2], p[5], p[6]], [p[1], p[7]]]
    chosen = [[x.location for x in c] for c in spread(ranked, 2)]
    assert chosen == [["1", "3"], ["2", "5"], ["1", "7"]]  # the third has no unused second hit: it shares [1]


def test_outline_titles_can_come_from_the_documents_headings(fake_backend, corpus, tmp_path):
    fake_backend.enqueue(" Here is your outline\n2. Outline for the article")  # nothing usable from the model
    fake_backend.enqueue(" Here is your outline\n2. Outline for the article")
    result = write_article(grounded_spec(corpus, outline=None, outline_candidates=1), backend=fake_backend,
                           root=tmp_path / "out")
    record = json.loads((result.folder / "article.json").read_text())
    assert set(record["outline"]["titles"]) == {"Tidal range", "Causes"}
    outline = next(r for r in fake_backend.requests if r.purpose == "outline")
    assert not outline.penalize_prompt


def test_without_sources_prompts_have_no_passages(fake_backend, tmp_path):
    spec = ArticleSpec(topic="Tides", sections=2, words=120, backend="fake", outline_candidates=1,
                       outline=("Tidal range", "Causes"))
    result = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    assert all("Notes from" not in prompt_text(r) and "square brackets" not in prompt_text(r) and r.penalize_prompt
               and not r.citation_numbers for r in fake_backend.requests)
    record = json.loads((result.folder / "article.json").read_text())
    assert "citations" not in record and "citation_support_rate" not in record["evaluation"]
    assert "References" not in (result.folder / "article.md").read_text()


def test_unusable_sources_fail_the_article_with_one_line(fake_backend, tmp_path, monkeypatch):
    from aigc.errors import InputError
    from aigc.pipeline import write_articles

    monkeypatch.setenv("AIGC_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    bad = grounded_spec(tmp_path / "empty")
    fine = ArticleSpec(topic="Tides", sections=2, words=120, backend="fake", outline=("A b", "C d"))
    failed, written = write_articles([bad, fine], backend=fake_backend, root=tmp_path / "out")
    assert isinstance(failed, InputError) and "no source files in this folder" in str(failed)
    assert written.status == "written"


# ---------------------------------------------------------------- command line


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_index_builds_then_loads_and_searches(corpus):
    first = invoke("index", str(corpus))
    assert first.exit_code == 0, first.output
    assert "Indexed 3 passages of 3 documents: 3 passages embedded" in first.output
    again = invoke("index", str(corpus), "--search", "highest tides", "-k", "1")
    assert again.exit_code == 0 and "loaded (unchanged)" in again.output
    assert "[1]" in again.output and "fundy.md" in again.output


def test_cli_bad_sources_are_one_line(corpus, tmp_path):
    for args, said in ((("index", str(tmp_path / "nope")), "no such file or folder"),
                       (("write", "Tides", "--backend", "fake", "--sources", str(tmp_path / "nope")),
                        "--sources " + str(tmp_path / "nope") + ": no such file or folder")):
        result = invoke(*args)
        assert result.exit_code != 0
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and said in lines[0] and "Traceback" not in result.output
    (corpus / "broken.jsonl").write_text('{"body": "no text field"}\n', "utf-8")
    result = invoke("index", str(corpus / "broken.jsonl"))
    assert result.exit_code != 0 and "line 1: no 'text' field" in result.output


def test_sources_option_takes_several_paths(corpus, tmp_path, monkeypatch):
    """``--sources a b``: both are sources, TOPIC stays the topic (checked before anything runs)."""
    seen = {}
    import aigc.cli.write as write

    def stop(spec, templates_dir, outputs_dir=None):
        seen["spec"] = spec
        raise write.click.ClickException("stopped")

    monkeypatch.setattr(write, "preflight", stop)
    invoke("write", "Tides", "--sources", str(corpus / "fundy.md"), str(corpus / "moon.md"), "--style", "report")
    assert seen["spec"].sources == (str(corpus / "fundy.md"), str(corpus / "moon.md"))
    assert seen["spec"].topic == "Tides" and seen["spec"].style == "report"


def test_batch_items_name_sources_relative_to_the_batch_file(fake_backend, corpus, tmp_path):
    from aigc.batch import load_batch, plan_item

    batch = tmp_path / "weekly.yaml"
    batch.write_text("defaults:\n  sources: notes/\n  backend: fake\nitems:\n  - topic: Tides\n"
                     "  - topic: Bread\n    sources: [notes/bread.jsonl]\n", "utf-8")
    items = load_batch(batch).items
    assert items[0].spec.sources == (str(tmp_path / "notes"),)
    assert items[1].spec.sources == (str(tmp_path / "notes" / "bread.jsonl"),)
    before = plan_item(items[0], tmp_path / "out").key
    (corpus / "moon.md").write_text(f"# Tides\n\n## Causes\n\n{MOON} Spring tides follow full moons.\n", "utf-8")
    assert plan_item(items[0], tmp_path / "out").key != before  # changed documents: another article


# ---------------------------------------------------------------- Prefect flow (slow: temporary API server)


@pytest.mark.slow
def test_flow_indexes_as_its_own_task_and_caches_on_the_corpus(citing_backend, corpus, tmp_path):
    from flows.article import article_flow

    topic = f"Tides of the Bay of Fundy {uuid.uuid4().hex[:6]}"
    run = lambda: article_flow(topic=topic, sections=2, words=120, backend="fake", outline=["Tidal range", "Causes"],  # noqa: E731
                               sources=[str(corpus)], outputs_dir=str(tmp_path / "out"))
    first = run()
    assert first["steps"] == {"index": "Completed", "outline": "Completed", "sections": "Completed"}
    assert first["evaluation"]["citation_support_rate"] == pytest.approx(2 / 6, abs=1e-3)
    second = run()
    assert second["steps"] == {"index": "Completed", "outline": "Cached", "sections": "Cached"}
    assert second["status"] == "unchanged"
    (corpus / "moon.md").write_text(f"# Tides\n\n## Causes\n\n{MOON} Spring tides follow full moons.\n", "utf-8")
    third = run()
    assert third["steps"]["sections"] == "Completed" and third["status"] == "renamed"


@pytest.mark.slow
def test_cli_write_with_sources_end_to_end(citing_backend, corpus, tmp_path):
    out = tmp_path / "cli"
    result = invoke("write", "Bay of Fundy tides", "--backend", "fake", "--sections", "2", "--words", "120",
                    "--sources", str(corpus / "fundy.md"), str(corpus / "moon.md"), "--outputs", str(out))
    assert result.exit_code == 0, result.output
    md = (out / "bay-of-fundy-tides" / "article.md").read_text()
    assert "[1]" in md and "## References" in md
    record = json.loads((out / "bay-of-fundy-tides" / "article.json").read_text())
    assert record["sources"]["paths"] == [str(corpus / "fundy.md"), str(corpus / "moon.md")]

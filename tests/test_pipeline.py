"""The plain-function pipeline with a fake backend: batch-first steps, the three files, the record."""

import json

import pytest

from aigc.errors import OutlineError
from aigc.pipeline import write_article, write_articles
from aigc.spec import ArticleSpec
from aigc.templates import TemplateStore

OUTLINE = " Causes of heat\n2. Effects on health\n3. Cooling the city"
SECTION = "Fine text for {}. It has enough words to count as a body here, and one more sentence to be sure."


@pytest.fixture
def spec():
    # one outline candidate, so that queued replies map to requests simply (candidates: tests/test_outline.py)
    return ArticleSpec(topic="Urban heat islands", style="article", sections=3, words=180, seed=5, backend="fake",
                       outline_candidates=1)


def test_article_from_topic_to_three_files(fake_backend, spec, tmp_path):
    fake_backend.enqueue(" Causes\n2. Effects\n3. Remedies", *(SECTION.format(t) for t in ("causes", "effects", "remedies")))
    result = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    assert result.status == "written"
    assert sorted(p.name for p in result.folder.iterdir()) == ["article.html", "article.json", "article.md"]
    md = (result.folder / "article.md").read_text()
    assert md.startswith("# Urban heat islands\n")
    assert md.index("## Causes") < md.index("Fine text for causes.") < md.index("## Effects") < md.index("## Remedies")
    assert "Fine text for remedies." in md


def test_sections_are_expanded_in_one_batch(fake_backend, spec, tmp_path):
    titles = write_article(spec, backend=fake_backend, root=tmp_path / "out").record["outline"]["titles"]
    assert len(titles) == 3
    outline_call, sections_call, *spare = fake_backend.calls  # the fake's short replies then take a spare step
    assert [r.purpose for r in outline_call] == ["outline"] and [r.purpose for r in sections_call] == ["section"] * 3
    assert all("The section so far ends with" in r.messages[-1].content for c in spare for r in c)
    prompts = [r.messages[-1].content for r in sections_call]
    for i, prompt in enumerate(prompts, 1):
        assert "Urban heat islands" in prompt
        assert "".join(f"{n}. {t}\n" for n, t in enumerate(titles, 1)) in prompt  # the outline
        assert f"Write section {i}," in prompt
        assert "in about 60 words" in prompt  # 180 words / 3 sections
    assert {r.max_new_tokens for r in sections_call} == {spec.section_tokens}
    assert {r.seed for r in sections_call} == {5}


def test_articles_of_a_batch_share_one_outline_call_and_one_sections_call(fake_backend, tmp_path):
    specs = [ArticleSpec(topic=t, sections=n, words=120, backend="fake") for t, n in (("Tides", 2), ("Snow", 3), ("Ice", 4))]
    results = write_articles(specs, backend=fake_backend, root=tmp_path / "out")
    assert [r.status for r in results] == ["written"] * 3
    outline_call, sections_call, *spare = fake_backend.calls
    assert len(outline_call) == 3 * 4 and len(sections_call) == 2 + 3 + 4  # 4 outline candidates each
    assert len(spare) <= 1  # one spare round, shared by all short sections of all three
    assert [r.messages[-1].content.count('"') >= 2 for r in sections_call] == [True] * 9
    assert [json.loads((r.folder / "article.json").read_text())["articles_together"] for r in results] == [3, 3, 3]
    # the shared steps' wall times are recorded as they were, the same for all three
    timings = [r.record["timings"] for r in results]
    assert len({(t["outline"], t["sections"]) for t in timings}) == 1


def test_one_unusable_outline_does_not_stop_the_other_articles(fake_backend, tmp_path, templates_copy):
    outline = templates_copy / "base" / "outline.j2"  # a style without fallback titles: the outline can fail
    outline.write_text(outline.read_text().replace("{% block fallback_sections %}Background", "{% block fallback_sections %}{#"
                                                   ).replace("What comes next{% endblock %}", "#}{% endblock %}"))
    specs = [ArticleSpec(topic="Tides", sections=2, words=100, backend="fake", outline_candidates=1),
             ArticleSpec(topic="Snow", sections=2, words=100, backend="fake", outline_candidates=1)]
    junk = " I cannot help with that, but here is a long sentence instead of any list."
    fake_backend.enqueue(" Why tides happen\n2. Spring tides", *[junk] * 3)  # Snow: nothing usable, ever
    tides, snow = write_articles(specs, backend=fake_backend, root=tmp_path / "out", store=TemplateStore(templates_copy))
    assert tides.status == "written" and isinstance(snow, OutlineError)
    assert "no usable outline: 3 replies in 2 rounds gave 0 usable section titles, 2 were asked for" in str(snow)
    assert "I cannot help with that" in str(snow) and "--outline" in str(snow)
    # both outlines, then Snow 2 more, then Tides' sections (then their spare step: the fake's replies are short)
    assert [len(c) for c in fake_backend.calls][:3] == [2, 2, 2]
    assert not (tmp_path / "out" / "snow").exists()


def test_an_assistant_opening_is_dropped_and_counted(fake_backend, spec, tmp_path):
    preamble = "I'd be happy to help you with your essay on this topic! In this section, we will explore the causes. "
    fake_backend.enqueue(OUTLINE, preamble + SECTION.format("one"), SECTION.format("two"), SECTION.format("three"))
    result = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    md = (result.folder / "article.md").read_text()
    assert "happy to help" not in md and "we will explore" not in md and "Fine text for one." in md
    assert [s.get("preamble_dropped") for s in result.record["sections"]] == [2, None, None]


def test_a_rerun_of_an_unchanged_article_is_not_evaluated_again(fake_backend, spec, tmp_path, monkeypatch):
    from aigc import evaluate

    first = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    calls = []
    real = evaluate.evaluate_article
    monkeypatch.setattr(evaluate, "evaluate_article", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    assert again.status == "unchanged" and again.folder == first.folder and calls == []
    assert again.record == json.loads((first.folder / "article.json").read_text())  # what is on disk, evaluated
    assert again.record["evaluation"]["quality"] == first.record["evaluation"]["quality"]
    replaced = write_article(spec, backend=fake_backend, root=tmp_path / "out", overwrite=True)
    assert replaced.status == "replaced" and calls == [1]  # --overwrite writes and evaluates anew


def test_empty_section_is_generated_again(fake_backend, spec, tmp_path):
    fake_backend.enqueue(OUTLINE, SECTION.format("one"), "## Effects on health", SECTION.format("three"))
    result = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    assert len(fake_backend.calls) >= 3 and len(fake_backend.calls[2]) == 1  # the retry (then the spare step)
    assert fake_backend.calls[2][0].seed == 5 + 1000
    two = result.record["sections"][1]
    assert two["attempts"] == 2 and two["words"] > 10


def test_record_says_how_it_was_made(fake_backend, spec, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-never-written")
    result = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    raw = (result.folder / "article.json").read_text()
    assert "sk-secret-never-written" not in raw
    record = json.loads(raw)
    assert record["topic"] == "Urban heat islands" and record["style"] == "article"
    assert record["model"] == "fake-model" and record["backend"]["backend"] == "fake"
    assert record["generation"]["seed"] == 5 and record["generation"]["temperature"] == 0.7
    assert set(record["templates"]) == {"outline", "section", "document"}
    assert all(len(t["sha256"]) == 16 for t in record["templates"].values())
    assert [s["title"] for s in record["sections"]] == record["outline"]["titles"]
    assert all(s["words"] > 0 and s["completion_tokens"] > 0 for s in record["sections"])
    assert set(record["timings"]) == {"outline", "sections", "assembly", "total"}
    assert record["timings"]["total"] == pytest.approx(sum(v for k, v in record["timings"].items() if k != "total"), abs=0.002)
    assert record["aigc_version"]


def test_html_is_standalone_and_escapes_model_html(fake_backend, spec, tmp_path):
    fake_backend.enqueue(OUTLINE, *["Text with <script>alert(1)</script> inside it, said the model. "
                                                       "Then it wrote a second, longer sentence about heat."] * 3)
    result = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    html = (result.folder / "article.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<title>Urban heat islands</title>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert '<a href="#causes-of-heat">Causes of heat</a>' in html  # contents link to headings
    assert '<h2 id="causes-of-heat">Causes of heat</h2>' in html


def test_given_outline_skips_the_outline_step(fake_backend, tmp_path):
    spec = ArticleSpec(topic="Tides", sections=2, backend="fake", outline=("Why tides happen", "Spring and neap tides"))
    result = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    assert [r.purpose for c in fake_backend.calls for r in c] == ["section"] * (2 * len(fake_backend.calls))
    assert len(fake_backend.calls[0]) == 2  # no outline call: the sections batch (and their spare step)
    assert result.record["outline"] == {"source": "given", "titles": ["Why tides happen", "Spring and neap tides"], "attempts": 0}


def test_same_spec_twice_is_recognised(fake_backend, spec, tmp_path):
    first = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    second = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    assert second.status == "unchanged" and second.folder == first.folder


def test_cheap_evaluation_is_in_the_record(fake_backend, spec, tmp_path):
    result = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    ev = json.loads((result.folder / "article.json").read_text())["evaluation"]
    assert ev["coverage"] == 1.0 and ev["sections_missing"] == []
    assert 0 < ev["length_score"] <= 100
    assert 0 < ev["distinct_2"] <= 1
    assert "perplexity" not in ev  # cheap metrics only by default

"""The plain-function pipeline with a fake backend: one batch for all sections, the three files, the record."""

import json

import pytest

from aigc.pipeline import write_article
from aigc.spec import ArticleSpec


@pytest.fixture
def spec():
    return ArticleSpec(topic="Urban heat islands", style="article", sections=3, words=180, seed=5, backend="fake")


def test_article_from_topic_to_three_files(fake_backend, spec, tmp_path):
    result = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    assert result.status == "written"
    assert sorted(p.name for p in result.folder.iterdir()) == ["article.html", "article.json", "article.md"]
    md = (result.folder / "article.md").read_text()
    assert md.startswith("# Urban heat islands\n")
    for title in ("Part A of the story", "Part B of the story", "Part C of the story"):
        assert f"## {title}" in md
    assert "This part explains part b of the story" in md


def test_sections_are_expanded_in_one_batch(fake_backend, spec, tmp_path):
    write_article(spec, backend=fake_backend, root=tmp_path / "out")
    outline_call, sections_call = fake_backend.calls
    assert len(outline_call) == 1 and len(sections_call) == 3
    prompts = [r.messages[-1].content for r in sections_call]
    for i, prompt in enumerate(prompts, 1):
        assert "Urban heat islands" in prompt
        assert "1. Part A of the story\n2. Part B of the story\n3. Part C of the story" in prompt  # the outline
        assert f"Write section {i}," in prompt
        assert "in about 60 words" in prompt  # 180 words / 3 sections
    assert {r.max_new_tokens for r in sections_call} == {spec.section_tokens}
    assert {r.seed for r in sections_call} == {5}


def test_empty_section_is_generated_again(fake_backend, spec, tmp_path):
    fake_backend.replies.extend([" One\n2. Two\n3. Three", "Fine text for one. It has enough words to count as a body here.",
                                 "## Two", "Fine text for three. It has enough words to count as a body here."])
    result = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    assert len(fake_backend.calls) == 3 and len(fake_backend.calls[2]) == 1
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
    assert set(record["timings"]) >= {"outline", "sections", "assembly", "total"}
    assert record["aigc_version"]


def test_html_is_standalone_and_escapes_model_html(fake_backend, spec, tmp_path):
    fake_backend.replies.extend([" One\n2. Two\n3. Three"] + ["Text with <script>alert(1)</script> inside it, said the model. "
                                                                      "Then it wrote a second, longer sentence about heat."] * 3)
    result = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    html = (result.folder / "article.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<title>Urban heat islands</title>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert '<a href="#one">One</a>' in html and '<h2 id="one">One</h2>' in html  # contents link to headings


def test_given_outline_skips_the_outline_step(fake_backend, tmp_path):
    spec = ArticleSpec(topic="Tides", sections=2, backend="fake", outline=("Why tides happen", "Spring and neap tides"))
    result = write_article(spec, backend=fake_backend, root=tmp_path / "out")
    assert len(fake_backend.calls) == 1  # only the sections batch
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

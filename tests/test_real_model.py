"""The article flow end to end with the real embedded model (SmolLM2-135M), as a user runs it."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_flow_writes_a_short_article_with_the_embedded_model(tmp_path):
    from flows.article import article_flow

    result = article_flow(topic="Urban heat islands", sections=3, words=180, seed=1,
                          outputs_dir=str(tmp_path / "out"))
    folder = tmp_path / "out" / "urban-heat-islands"
    assert result["folder"] == str(folder) and result["status"] == "written"
    md = (folder / "article.md").read_text()
    html = (folder / "article.html").read_text()
    record = json.loads((folder / "article.json").read_text())

    assert record["model"] == "SmolLM2-135M-Instruct" and record["backend"]["backend"] == "local"
    titles = record["outline"]["titles"]
    assert len(titles) == 3 and len(set(titles)) == 3
    for title, section in zip(titles, record["sections"]):
        assert f"## {title}" in md
        assert f">{title}</h2>" in html or title.replace("'", "&rsquo;") in html
        # a real body, near its ~60-word budget, ending on a full sentence
        assert 15 <= section["words"] <= 110, section
        assert section["completion_tokens"] > 0
    bodies = md.split("## ")[2:]
    for body in bodies:
        text = body.split("\n", 1)[1].split("\n---")[0].strip()
        assert text[-1] in ".!?\"'”’)", text[-80:]
    assert record["timings"]["sections"] > 0

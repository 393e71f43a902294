"""Briefs and forms: the brief as data in every prompt and in the record, titles for brief-only pieces, sections
chosen from the length and style, short forms without contents or headings, bad briefs and batch items."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from aigc.batch import load_batch
from aigc.errors import InputError
from aigc.pipeline import write_article
from aigc.spec import ArticleSpec, auto_sections

BRIEF = ("A 400-word proposal to our purchasing team to stop low-quality deliveries from our packaging vendor. "
         "Cover 1. the defects we logged 2. the cost of returns 3. a deadline for a fix. Keep it {{ 7*7 }} polite.")


def invoke(*args: str):
    from aigc.cli import main

    return CliRunner().invoke(main, list(args))


def error_line(result) -> str:
    assert result.exit_code != 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output  # one clear line, no traceback
    return lines[0]


def test_the_brief_reaches_every_prompt_literally_and_is_in_the_record(fake_backend, tmp_path):
    spec = ArticleSpec.build(topic="Vendor quality", brief=BRIEF, words=400, sections=2, backend="fake")
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    prompts = [m.content for r in fake_backend.requests for m in r.messages if m.role == "user"]
    assert prompts and all("the cost of returns" in p for p in prompts)  # every prompt
    assert all("{{ 7*7 }}" in p and "49" not in p for p in prompts)  # data, never template source
    assert result.record["brief"] == BRIEF
    assert result.record["title"] == "Vendor quality" and result.record["title_source"] == "topic"


def test_a_briefs_numbered_points_are_sections_and_fill_the_outline_without_a_model_call(fake_backend, tmp_path):
    spec = ArticleSpec.build(topic="Vendor quality", brief=BRIEF, words=400, backend="fake")
    assert spec.sections == 3  # the length alone gives 2; each of the 3 points gets one
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    assert [r.purpose for r in fake_backend.requests if r.purpose == "outline"] == []
    titles = [s["title"] for s in result.record["sections"]]
    assert titles == ["The defects we logged", "The cost of returns", "A deadline for a fix"]
    assert "## The cost of returns" in result.files["article.md"].read_text()


def test_points_take_their_places_and_the_model_fills_the_others(fake_backend, tmp_path):
    fake_backend.enqueue(" The cost of returns\n2. Introduction\n3. Our vendor today\n4. Conclusion\n"
                         "5. Packaging defects we logged\n6. Talking to the vendor\n7. Other suppliers\n"
                         "8. Returns and their cost")
    spec = ArticleSpec.build(topic="Vendor quality", brief=BRIEF, words=1200, outline_candidates=1, backend="fake")
    assert spec.sections == 6
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    titles = [s["title"] for s in result.record["sections"]]
    points = ["The defects we logged", "The cost of returns", "A deadline for a fix"]
    assert titles[0] == "Introduction" and titles[1:4] == points  # an opening title before the points
    assert len(titles) == 6 and set(titles[4:]) <= {"Our vendor today", "Conclusion", "Talking to the vendor",
                                                    "Other suppliers"}  # not "Packaging defects we logged"
    assert result.record["outline"]["selection"]["from_brief"] == points


def test_pool_titles_that_restate_a_point_are_left_out():
    from aigc import outline_pool as op

    topic = "Learning a language as an adult"
    pool = op.merge_similar(op.pool_titles(["1. Language learning apps\n2. Finding a tutor"], topic))
    # "Apps" and "Language learning apps" are far apart as sentences (cosine 0.55), but one holds the other
    assert [c.title for c in op.without_like(pool, ["Apps"], topic)] == ["Finding a tutor"]


def test_a_brief_of_8000_characters_is_taken_whole(fake_backend, tmp_path):
    brief = ("Explain the steps of our onboarding checklist to new staff in a friendly tone. " * 110)[:7999] + "."
    spec = ArticleSpec.build(topic="Onboarding", brief=brief, words=200, backend="fake")
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    assert len(result.record["brief"]) == 8000
    assert brief.strip() in fake_backend.requests[-1].messages[-1].content


def test_a_brief_alone_gets_a_title_from_the_model_and_a_folder_from_the_brief(fake_backend, tmp_path):
    fake_backend.enqueue('"Thank You for Your Patience"')  # the title request comes first (one section: no outline)
    spec = ArticleSpec.build(brief="Write a 100-word thank-you email to the bank teller who helped me open an "
                                   "account. Mention her patience.", words=100, style="email", backend="fake")
    assert spec.topic_from_brief and spec.sections == 1
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    purposes = [r.purpose for r in fake_backend.requests]  # the fake's short reply gets one continuation step
    assert purposes[:2] == ["title", "section"] and set(purposes[2:]) <= {"section"} and len(purposes) <= 3
    assert result.record["title"] == "Thank You for Your Patience" and result.record["title_source"] == "model"
    assert result.folder.name == "a-100-word-thank-you-email-to-the-bank-teller"  # cut before "who helped me ..."
    md = result.files["article.md"].read_text()
    assert md.startswith("# Thank You for Your Patience\n")


def test_the_title_template_is_an_input_of_a_brief_only_piece(tmp_path, templates_copy):
    from aigc.pipeline import inputs_key, template_info
    from aigc.templates import TemplateStore

    spec = ArticleSpec.build(brief="Draft a note to parents about the school trip on Friday.", words=80,
                             style="email", backend="fake")
    store = TemplateStore(templates_copy)
    before = template_info(spec, store)
    assert before["title"]["file"] == "base/title.j2"
    (templates_copy / "base" / "title.j2").write_text((templates_copy / "base" / "title.j2").read_text() + "\nShort.")
    after = template_info(spec, store)
    assert after["title"]["sha256"] != before["title"]["sha256"]
    hashes = lambda info: {k: v["sha256"] for k, v in info.items()}  # noqa: E731
    assert inputs_key(spec, hashes(after), "m") != inputs_key(spec, hashes(before), "m")  # a rerun writes it anew
    with_topic = ArticleSpec.build(topic="School trip", brief="Draft a note to parents.", words=80, style="email",
                                   backend="fake")
    assert "title" not in template_info(with_topic, store)


def test_a_reply_that_is_no_title_falls_back_to_the_brief(fake_backend, tmp_path):
    fake_backend.enqueue("Sure! Here is a title for your email:")
    spec = ArticleSpec.build(brief="Draft a note to parents about the school trip on Friday.", words=80,
                             style="email", backend="fake")
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    assert result.record["title"] == "A note to parents about the school trip on Friday"
    assert result.record["title_source"] == "brief"


@pytest.mark.parametrize("reply", ["Your response should be formatted as follows", "It would be: BEEFBISHOPPERY",
                                   "To improve this sentence", "What's Your Title? [Your requested topic]",
                                   "Laughter and Tears: A Tale of Perseverance"])
def test_a_title_about_the_request_or_about_nothing_asked_is_refused(reply):
    from aigc.briefs import clean_model_title

    spec = ArticleSpec.build(brief="A short summary of why bees matter to farming, for a school newsletter.",
                             words=150, style="summary", backend="fake")
    assert clean_model_title(reply, spec) is None
    assert clean_model_title("Why Farmers Need Bees", spec) == "Why Farmers Need Bees"


@pytest.mark.parametrize("brief, topic", [
    ("A complaint letter to the city council about broken street lights on Elm Road.",
     "A complaint letter to the city council"),
    ("A letter of recommendation for a former intern, Maya, who worked with us for six months.",
     "A letter of recommendation for a former intern, Maya"),
    ("A short story for children about a lighthouse keeper who befriends a seal.",
     "A short story for children about a lighthouse keeper"),
    ("Write a 400-word proposal to stop low-quality deliveries from our vendor and find a new one.",
     "A 400-word proposal to stop low-quality deliveries"),
])
def test_a_long_first_sentence_is_cut_before_a_clause_not_mid_phrase(brief, topic):
    from aigc.spec import topic_from_brief

    assert topic_from_brief(brief) == topic


@pytest.mark.parametrize("words,style,sections", [(100, "article", 1), (100, "email", 1), (3000, "email", 1),
                                                  (800, "article", 5), (3000, "report", 9), (10000, "article", 12)])
def test_sections_follow_the_length_and_the_style(words, style, sections):
    spec = ArticleSpec.build(topic="Urban heat islands", words=words, style=style)
    assert (spec.sections, spec.sections_from_length) == (sections, True)
    assert ArticleSpec.build(topic="Urban heat islands", words=words, sections=3).sections == 3  # the user's wins


def test_auto_sections_grows_with_the_length():
    counts = [auto_sections(w) for w in (50, 100, 200, 300, 800, 1500, 3000, 10000)]
    assert counts == sorted(counts) and counts[0] == 1 and counts[-1] == 12


def test_a_100_word_piece_has_no_contents_and_no_headings(fake_backend, tmp_path):
    spec = ArticleSpec.build(topic="Why tides turn", words=100, backend="fake")
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    md = result.files["article.md"].read_text()
    assert {r.purpose for r in fake_backend.requests} == {"section"}  # no outline to plan for one section
    assert "## " not in md and "Contents" not in md
    assert result.record["evaluation"]["words"] == result.record["body_words"] > 0  # the body is still measured
    long = write_article(ArticleSpec.build(topic="Tides", words=3000, style="report", backend="fake"),
                         backend=fake_backend, root=tmp_path)
    assert long.files["article.md"].read_text().count("\n## ") == 1 + 9  # Contents and nine sections


@pytest.mark.parametrize("style", ["email", "letter", "story", "summary"])
def test_short_forms_are_one_piece_without_headings(fake_backend, tmp_path, style):
    spec = ArticleSpec.build(topic="Thanks for the help", words=150, style=style, backend="fake")
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    md = result.files["article.md"].read_text()
    assert spec.sections == 1 and "## " not in md and "Contents" not in md and "·" not in md
    assert result.record["templates"]["section"]["file"] == f"{style}/section.j2"


def test_topic_too_long_says_to_use_a_brief():
    with pytest.raises(InputError, match="397 characters long; keep it under 300 .*--brief"):
        ArticleSpec.build(topic="x" * 397)


@pytest.mark.parametrize("args,expected", [
    (["write", "Tides", "--brief", ""], "brief: is empty"),
    (["write", "Tides", "--brief", "a\x01b\x02c\x03d"], "brief: looks like binary data"),
    (["write", "--words", "300"], "topic: the topic is empty"),
    (["write", "Tides", "--lang", "klingon"], "unknown language 'klingon'"),
    (["write", "!!! ???"], "has no letters or digits"),
    (["write", "🎉🎉🎉"], "has no letters or digits"),
    (["write", "Tides", "--words", "0"], "words: 0 is too few; ask for 50 to 10000 words"),
    (["write", "Tides", "--words", "10000000"], "words: 10000000 is too many; ask for 50 to 10000 words"),
])
def test_bad_input_is_one_line_and_nothing_is_written(args, expected, tmp_path):
    line = error_line(invoke(*args, "--outputs", str(tmp_path / "out")))
    assert expected in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_brief_files(tmp_path):
    binary = tmp_path / "b.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    huge = tmp_path / "huge.txt"
    huge.write_text("word " * 200_000)  # 1 MB
    assert "not UTF-8 text" in error_line(invoke("write", "Tides", "--brief-file", str(binary)))
    assert "1,000,000 bytes" in error_line(invoke("write", "Tides", "--brief-file", str(huge)))
    assert "no such file" in error_line(invoke("write", "Tides", "--brief-file", str(tmp_path / "nope.txt"))).lower() \
        or "cannot read" in error_line(invoke("write", "Tides", "--brief-file", str(tmp_path / "nope.txt")))


def test_batch_items_take_a_brief_and_bad_items_are_reported_by_line_or_skipped(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(item) for item in [
        {"brief": "A 100-word thank-you email to a bank teller.", "style": "email", "words": 100},
        {"topic": "x" * 397, "words": 400},
        {"topic": "Tides", "words": 5},
        {"topic": "Urban heat islands", "brief": BRIEF, "words": 400},
    ]) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_batch(path)
    message = str(err.value)
    assert f"{path}:2: item 2: topic: the topic is 397 characters" in message
    assert "(1 more bad item(s))" in message and "--skip-invalid" in message
    batch = load_batch(path, skip_invalid=True)
    assert [i.index for i in batch.items] == [1, 4]
    assert [s.split(": item")[0] for s in batch.skipped] == [f"{path}:2", f"{path}:3"]
    assert batch.items[0].spec.topic_from_brief and batch.items[0].spec.sections == 1
    assert batch.items[1].spec.brief == BRIEF


def test_summary_line_warns_about_empty_sections():
    from aigc.cli.write import summary_line

    base = {"status": "written", "folder": "outputs/x", "words": 120, "unit": "words", "steps": {}}
    assert "WARNING" not in summary_line({**base, "empty_sections": []})
    line = summary_line({**base, "empty_sections": ["Costs"]})
    assert "WARNING: 1 section(s) came out empty: 'Costs'" in line


def test_cli_write_with_a_brief_and_an_empty_section_says_so(fake_backend, tmp_path):
    outline = tmp_path / "plan.txt"
    outline.write_text("Causes\nRemedies\n")
    fake_backend.enqueue("", "", "", "")  # both sections empty, and again on the retry
    result = invoke("write", "Urban heat", "--backend", "fake", "--outline", str(outline), "--words", "200",
                    "--brief", "Explain it to {{ students }}.", "--outputs", str(tmp_path / "o"))
    summary = next(ln for ln in result.output.splitlines() if ln.startswith("Written"))
    assert "WARNING: 2 section(s) came out empty: 'Causes'; 'Remedies'" in summary, result.output
    assert result.exit_code != 0  # no text at all: a non-zero exit too
    record = json.loads(next((tmp_path / "o").glob("*/article.json")).read_text())
    assert record["brief"] == "Explain it to {{ students }}."
    assert record["empty_sections"] == ["Causes", "Remedies"]


def test_cli_write_with_a_brief_and_no_topic(fake_backend, tmp_path):
    fake_backend.enqueue("Thank You, Ms Lee")
    result = invoke("write", "--style", "email", "--words", "100", "--backend", "fake", "--brief",
                    "Write a thank-you email to Ms Lee, the bank teller who helped me.", "--outputs", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "1 section," in result.output  # "Writing email '...' (1 section, ~100 words, en)"
    folder = tmp_path / "a-thank-you-email-to-ms-lee-the-bank-teller-who-helped-me"
    record = json.loads((folder / "article.json").read_text())
    assert record["title"] == "Thank You, Ms Lee" and record["outline"]["titles"] == ["Thank You, Ms Lee"]
    assert (folder / "article.md").read_text().startswith("# Thank You, Ms Lee\n")

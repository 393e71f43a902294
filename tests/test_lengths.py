"""Any length: sections longer than one generation budget are written in continuation steps that see the end of the
text so far; short sections keep one call; a model that repeats itself ends its section instead of looping."""

from __future__ import annotations

import itertools

from aigc.backends.base import Completion
from aigc.cleanup import words
from aigc.pipeline import write_article
from aigc.sections import max_steps, tail
from aigc.spec import STEP_WORDS, ArticleSpec

_counter = itertools.count(1)


def numbered_prose(n_words: int) -> str:
    """About ``n_words`` words of distinct sentences (each names its own number, so none is a repeat)."""
    out = []
    while words(" ".join(out)) < n_words:
        k = next(_counter)
        out.append(f"Fact number {k} about tides is that water rises and falls twice a day near coast {k}.")
    return " ".join(out)


def answer_with(fake_backend, reply):
    real = type(fake_backend).generate

    def generate(self, requests):
        real(self, requests)
        return [Completion(text=reply(r), prompt_tokens=10, completion_tokens=r.max_new_tokens,
                           finish_reason="length", seconds=0.01) for r in requests]

    fake_backend.generate = generate.__get__(fake_backend)


def test_a_long_section_is_written_in_steps_that_see_the_end_of_the_text(fake_backend, tmp_path):
    # a model that writes about 300 words per call, whatever it is asked
    answer_with(fake_backend, lambda r: numbered_prose(300))
    spec = ArticleSpec.build(topic="Tides", words=2000, sections=2, outline=("Causes", "Effects"), backend="fake")
    assert spec.section_words == 1000 and max_steps(spec) == 4
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    sections = result.record["sections"]
    assert all(s["steps"] >= 3 for s in sections)
    assert all(0.9 * 1000 <= s["words"] <= 1.25 * 1000 for s in sections), [s["words"] for s in sections]
    assert result.record["evaluation"]["length_score"] >= 90
    calls = fake_backend.calls
    assert len(calls[0]) == 2 and all(len(c) == 2 for c in calls)  # every step: one batched call for both sections
    first, later = calls[0], [r for c in calls[1:] for r in c]
    assert all("The section so far ends with" not in r.messages[-1].content for r in first)
    assert all("The section so far ends with" in r.messages[-1].content for r in later)
    # each budget fits one generation: no request asks for more than STEP_WORDS words' tokens
    assert max(r.max_new_tokens for c in calls for r in c) == spec.section_tokens <= int(STEP_WORDS * 1.4 * 1.15) + 16
    md = result.files["article.md"].read_text()
    body = md.split("## Causes")[1].split("## Effects")[0]
    assert tail(body.strip(), 40).split(". ")[-1] in md  # the text so far ends where the next step went on


def test_each_step_sees_the_last_sentences_written():
    text = numbered_prose(400)
    end = tail(text, 50)
    assert text.endswith(end) and 50 <= words(end) < 50 + 25


def test_a_model_that_repeats_itself_ends_the_section(fake_backend, tmp_path):
    same = numbered_prose(300)
    answer_with(fake_backend, lambda r: same)  # every step writes the same sentences again
    spec = ArticleSpec.build(topic="Tides", words=2000, sections=2, outline=("Causes", "Effects"), backend="fake")
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    assert len(fake_backend.calls) == 2  # the first step, one continuation that added nothing new: done
    assert all(s["steps"] == 1 and s["words"] == words(same) for s in result.record["sections"])


def test_sections_within_one_budget_take_one_call(fake_backend, tmp_path):
    answer_with(fake_backend, lambda r: numbered_prose(170))  # 170 of 200 words: short, but not well short
    spec = ArticleSpec.build(topic="Tides", words=800, outline=("A", "B", "C", "D"), backend="fake")
    assert spec.section_words == 200 and max_steps(spec) == 2
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    assert len(fake_backend.calls) == 1 and all(s["steps"] == 1 for s in result.record["sections"])


def test_only_the_sections_that_stopped_well_short_get_a_spare_step(fake_backend, tmp_path):
    # the first call: sections B and D stop at 100 of 200 words; the continuation adds 90
    answer_with(fake_backend, lambda r: numbered_prose(
        90 if "The section so far ends with" in r.messages[-1].content
        else 100 if any(f'"{t}"' in r.messages[-1].content for t in "BD")
        else 190))
    spec = ArticleSpec.build(topic="Tides", words=800, outline=("A", "B", "C", "D"), backend="fake")
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    steps = [s["steps"] for s in result.record["sections"]]
    assert len(fake_backend.calls) == 2 and len(fake_backend.calls[1]) == steps.count(2) >= 1
    assert all(s["words"] >= 0.8 * 200 for s in result.record["sections"]), result.record["sections"]


def test_no_spare_round_when_the_piece_is_long_enough_already(fake_backend, tmp_path):
    # section B stops at 110 of 200 words, but the piece stands at 800 of 800: no round for it
    answer_with(fake_backend, lambda r: numbered_prose(110 if '"B"' in r.messages[-1].content else 260))
    spec = ArticleSpec.build(topic="Tides", words=800, outline=("A", "B", "C", "D"), backend="fake")
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    assert len(fake_backend.calls) == 1 and result.record["sections"][1]["words"] < 0.8 * 200
    assert result.record["evaluation"]["length_score"] >= 90


def test_a_one_section_piece_that_stops_short_gets_one_more_step(fake_backend, tmp_path):
    replies = iter([numbered_prose(60), numbered_prose(100)])  # stops at 60 of 150 words, then goes on
    answer_with(fake_backend, lambda r: next(replies))
    spec = ArticleSpec.build(topic="Thanks", words=150, sections=1, outline=("Thank you",), backend="fake")
    assert max_steps(spec) == 2
    result = write_article(spec, backend=fake_backend, root=tmp_path)
    assert len(fake_backend.calls) == 2 and result.record["sections"][0]["steps"] == 2
    assert result.record["sections"][0]["words"] > 120


def test_chinese_budgets_count_characters():
    zh = ArticleSpec.build(topic="城市热岛效应", words=1200, sections=3)
    en = ArticleSpec.build(topic="Urban heat islands", words=1200, sections=3)
    assert zh.counts_characters and not en.counts_characters
    assert zh.section_tokens > en.section_tokens  # a character costs more tokens than a word in small vocabularies

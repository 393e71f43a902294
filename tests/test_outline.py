"""Outline parsing on messy real-model output, validation, given outlines, and retries with another seed."""

from pathlib import Path

import pytest

from aigc.errors import InputError, OutlineError
from aigc.outline import clean_title, generate_outline, given_outline, parse_outline, validate_outline
from aigc.spec import ArticleSpec
from aigc.templates import TemplateStore

SAMPLES = [s.strip() for s in (Path(__file__).parent / "data" / "outlines.txt").read_text().split("=====")]
SAMPLES[0] = SAMPLES[0].split("\n", 1)[1]  # drop the file's comment line


def test_numbered_list_from_the_real_model():
    assert parse_outline(SAMPLES[0]) == [
        "Heat and the Future of Cities",
        "How Urban Heat Insulation Can Help Mitigate Climate Change",
        "The Science Behind Urban Heat Insulation: A New Era in Sustainability",
        "Building with Energy Efficiency: The Future of Urban Heat Insulation",
        "Urban Heat Insulation: A New Era in Sustainability",
    ]


def test_extra_items_are_cut_to_the_count_asked_for():
    titles = validate_outline(parse_outline(SAMPLES[1]), 5)
    assert len(titles) == 5
    assert titles[0] == "A Day in the Life of a Heat Island"  # a 17-word title keeps its part before the colon


def test_markdown_headings_with_stray_text_and_bold():
    assert parse_outline(SAMPLES[2]) == [
        "Introduction", "Why cities trap heat", "Health effects", "What planners can do", "Outlook",
    ]


def test_bullets_ignore_sub_items_and_chatter():
    assert parse_outline(SAMPLES[3]) == ["Summary", "Causes of urban heat", "Who is most at risk", "Recommendations"]


def test_section_prefixes_and_bold_lines():
    assert parse_outline(SAMPLES[4]) == ["Rising temperatures", "Concrete and asphalt", "Cooling the streets"]
    assert parse_outline(SAMPLES[5]) == ["The problem", "The causes", "The fixes"]


def test_prose_is_not_an_outline():
    prose = (
        "To create a perfect blend between the best two topics and making your piece concise can be quite "
        "challenging but it's also very rewarding when you see how something that used to seem dull turns "
        "into exciting work after all."
    )
    assert parse_outline(prose) == []


@pytest.mark.parametrize("raw,expected", [
    ("1. **Why it matters**:", "Why it matters"),
    ("III. The road ahead.", "The road ahead"),
    ('2) "Quoted title"', "Quoted title"),
    ("Section Two - Costs and benefits", "Costs and benefits"),
])
def test_clean_title(raw, expected):
    assert clean_title(raw) == expected


def test_validation_rejects_too_few_and_duplicates():
    with pytest.raises(OutlineError, match="2 usable section titles, 3 were asked for"):
        validate_outline(["Intro", "intro", "Outlook"], 3)
    with pytest.raises(OutlineError):
        validate_outline(["Urban heat islands", "Causes", "Effects"], 3, topic="Urban heat islands")


def test_given_outline_errors_name_the_source():
    assert given_outline(["1. First", "", "- Second"], source="plan.txt") == ["First", "Second"]
    with pytest.raises(InputError, match="plan.txt: the outline is empty"):
        given_outline(["", "  "], source="plan.txt")
    with pytest.raises(InputError, match="repeats a section title"):
        given_outline(["One", "one"], source="plan.txt")


def test_bad_outline_is_retried_with_another_seed_then_succeeds(fake_backend):
    fake_backend.enqueue(" I am not sure what you mean.", " Causes\n2. Effects\n3. Remedies")
    spec = ArticleSpec(topic="Urban heat islands", sections=3, seed=7, backend="fake")
    result = generate_outline(fake_backend, spec, TemplateStore())
    assert result["titles"] == ["Causes", "Effects", "Remedies"]
    assert result["attempts"] == 2
    assert [r.seed for r in fake_backend.requests] == [7, 8]
    assert fake_backend.requests[0].stop == ("\n4.",)


def test_outline_fails_with_a_clear_error_after_the_attempts(fake_backend):
    fake_backend.enqueue(*[" Nothing useful here at all, just one long rambling sentence of prose."] * 3)
    spec = ArticleSpec(topic="Urban heat islands", sections=3, backend="fake")
    with pytest.raises(OutlineError, match="no usable outline after 3 attempts.*--outline"):
        generate_outline(fake_backend, spec, TemplateStore())
    assert len(fake_backend.calls) == 3


def test_numbered_title_prefixes_and_stray_quotes_from_the_openai_path():
    assert parse_outline(SAMPLES[6]) == [
        "The Unsustainable Future of Urban Heat Insulation",
        "The Impact of Urban Heat Insulation on Energy Efficiency",
        "The Future of Urban Heat Insulation: A New Era of Sustainability",
    ]


def test_chatter_before_the_list_is_not_a_title():
    assert parse_outline(SAMPLES[7]) == [
        "Impact of Urban Heat Island on Buildings",
        "Suffer in the Heat: How Urban Heat Island Affects Buildings",
        "Cooling the city",
    ]
    assert parse_outline('Here is the outline for a short article about "Heat\nA\nB') == ["A", "B"]

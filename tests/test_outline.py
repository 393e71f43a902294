"""Outline parsing on messy real-model output, validation, given outlines, and retries with another seed."""

from pathlib import Path

import pytest

from aigc.errors import InputError, OutlineError
from aigc.outline import clean_title, generate_outline, given_outline, order_cues, parse_outline, validate_outline
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


def test_candidates_share_one_call_and_their_titles_are_pooled(fake_backend):
    fake_backend.enqueue(" Causes of heat\n2. Effects on health\n3. Cooling the city",
                         " Why cities are hotter\n2. Effects on health\n3. Green roofs",
                         " I am not sure what you mean.",
                         " Causes of the heat\n2. Health effects\n3. Cooling the city")
    spec = ArticleSpec(topic="Urban heat islands", sections=3, seed=7, backend="fake", outline_candidates=4)
    result = generate_outline(fake_backend, spec, TemplateStore())
    assert len(fake_backend.calls) == 1 and [r.seed for r in fake_backend.calls[0]] == [7, 8, 9, 10]
    assert fake_backend.requests[0].stop == ("\n4.",)
    titles = result["titles"]
    assert len(titles) == 3 and len({t.lower() for t in titles}) == 3
    # the titles most candidates proposed win; near-duplicates ("Health effects") were merged, not chosen twice
    assert "Effects on health" in titles and "Cooling the city" in titles and "Health effects" not in titles
    selection = result["selection"]
    assert len(selection["candidates"]) == 4 and selection["titles"] == titles and selection["missing"] == 0
    assert result["attempts"] == 1


def test_a_short_pool_asks_for_the_missing_titles_listing_the_ones_so_far(fake_backend):
    junk = " I am not sure what you mean by that, so here is a long sentence of prose instead of any list."
    fake_backend.enqueue(" Causes of heat\n2. Causes of heat", " Causes of heat", junk, junk,
                         " Green roofs and trees\n3. What cities can do", " Green roofs")
    spec = ArticleSpec(topic="Urban heat islands", sections=3, seed=7, backend="fake", outline_candidates=4)
    result = generate_outline(fake_backend, spec, TemplateStore())
    assert [len(c) for c in fake_backend.calls] == [4, 2]
    follow_up = fake_backend.calls[1][0]
    assert "has these sections so far:\n1. Causes of heat" in follow_up.messages[1].content
    assert follow_up.messages[-1].content == "2."  # the list goes on from the titles it has
    # room for the two missing titles, not for a whole outline
    assert follow_up.max_new_tokens == spec.outline_tokens_for(2) < fake_backend.calls[0][0].max_new_tokens
    assert sorted(result["titles"]) == ["Causes of heat", "Green roofs and trees", "What cities can do"]
    assert result["attempts"] == 2


def test_attempts_are_counted_per_article(fake_backend):
    """Articles outlined together: only the one that needed the follow-up call says it took two."""
    from aigc.outline import generate_outlines

    junk = " I am not sure what you mean by that, so here is a long sentence of prose instead of any list."
    fake_backend.enqueue(" Causes of heat\n2. Effects on health\n3. Cooling the city", junk,
                         " Why tides happen\n2. Spring tides\n3. Neap tides", junk)
    specs = [ArticleSpec(topic=t, sections=3, seed=7, backend="fake", outline_candidates=1)
             for t in ("Urban heat islands", "Tides")]
    heat, tides = generate_outlines(fake_backend, specs, TemplateStore())
    assert [len(c) for c in fake_backend.calls] == [2, 2]  # both, then Tides' follow-up requests
    assert heat["attempts"] == 1 and tides["attempts"] == 2
    assert "Why tides happen" in tides["titles"]


BAD_REPLIES = ["", "Urban heat islands", " 1. Urban heat islands\n2. Urban heat islands",
               "Write an outline for an article about \"Urban heat islands\""]


@pytest.mark.parametrize("reply", BAD_REPLIES)
def test_bad_replies_still_give_an_outline_from_the_styles_fallback_titles(fake_backend, reply):
    spec = ArticleSpec(topic="Urban heat islands", sections=3, backend="fake", outline_candidates=2)
    fake_backend.enqueue(*[reply] * 6)
    result = generate_outline(fake_backend, spec, TemplateStore())
    assert len(result["titles"]) == 3 and result["attempts"] == 2
    fallback = order_cues(spec, TemplateStore())[2]  # the article style's fallback_sections block
    assert "Background" in fallback
    assert set(result["fallback_titles"]) <= set(result["titles"]) and len(result["fallback_titles"]) >= 2
    assert all(t in fallback or "heat" in t.lower() or t == "Overview" for t in result["titles"])


@pytest.mark.parametrize("reply", BAD_REPLIES)
def test_without_fallback_titles_bad_replies_give_one_clear_line(fake_backend, reply, templates_copy):
    outline = templates_copy / "base" / "outline.j2"
    outline.write_text(outline.read_text().replace("{% block fallback_sections %}Background", "{% block fallback_sections %}{#"
                                                   ).replace("What comes next{% endblock %}", "#}{% endblock %}"))
    spec = ArticleSpec(topic="Urban heat islands", sections=3, backend="fake", outline_candidates=2)
    fake_backend.enqueue(*[reply] * 6)
    with pytest.raises(OutlineError) as err:
        generate_outline(fake_backend, spec, TemplateStore(templates_copy))
    message = str(err.value)
    assert "\n" not in message and "were asked for" in message and "--outline" in message
    assert ("it wrote no text" in message) if not reply.strip() else ("it wrote e.g." in message)


def test_a_title_repeating_the_topic_is_rewritten_not_fatal(fake_backend):
    fake_backend.enqueue(" Why Libraries Lend Tools\n2. Tools people borrow", " Why libraries lend tools\n2. Tools people borrow")
    spec = ArticleSpec(topic="Why libraries lend tools", sections=2, backend="fake", outline_candidates=2)
    titles = generate_outline(fake_backend, spec, TemplateStore())["titles"]
    assert len(titles) == 2 and "Tools people borrow" in titles
    assert not any(t.lower() == "why libraries lend tools" for t in titles)


def test_the_report_style_puts_its_summary_first_and_recommendations_last(fake_backend):
    fake_backend.enqueue(" Recommendations\n2. Causes of heat\n3. Summary\n4. Effects on health")
    spec = ArticleSpec(topic="Urban heat islands", style="report", sections=4, backend="fake", outline_candidates=1)
    titles = generate_outline(fake_backend, spec, TemplateStore())["titles"]
    assert titles[0] == "Summary" and titles[-1] == "Recommendations"


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

"""Tests of the quality metrics: meta-text rules on real model sentences, relevance, redundancy, the quality figure."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from aigc import quality as q

# Sentences the embedded model wrote (issue 17), each with the rule that must catch it.
MODEL_META = [
    ("Section 1 opens with clarity on climate change and what it means for us.", "text_does"),
    ("Insection 2 delves into the many ways farming has to change.", "text_does"),
    ("Here's your chance to showcase how you can tackle rising temperatures.", "reader_task"),
    ("In this piece you see just what I was going to say before.", "in_this_part"),
    ("This point takes us into a realm we never knew before; the idea of lending something.", "text_does"),
    ("The first part highlights that what “lots” stands for.", "text_does"),
    ("As mentioned earlier, this trend creates new opportunities both financially and socially.", "as_mentioned"),
    ("The idea behind this message comes across as very basic yet profound.", "text_does"),
    ("In this section, we will explore the history of the honey bee.", "in_this_part"),
    ("This article discusses the causes of the 2023 floods.", "text_does"),
    ("I hope this helps!", "chat_filler"),
    ("Let me know if you need more details.", "chat_filler"),
    ("Let's dive into the details of the water bill.", "writer_voice"),
    ("We will now look at how the rates are set.", "writer_voice"),
    ("As we have seen, the charges depend on use.", "as_mentioned"),
    # from articles the embedded model wrote while these rules were written
    ("Your content is spot on with your opening sentence.", "editor_talk"),
    ("Here's how you can refine it further -", "editor_talk"),
    ("This rewritten version aims at maintaining the essence of your original message while making it concise.",
     "text_does"),
    ("It uses active language instead of passive voice, adds descriptive phrases.", "editor_talk"),
    ("This sentence encapsulates the message at hand with precision and conviction.", "text_does"),
    ("It concludes the paragraph with what could be considered as the final part of this type of impactful piece.",
     "editor_talk"),
    ("As you read through these stories your mind starts to focus towards how important it actually is.", "reader_task"),
    ("The source documents cover a significant aspect of the topic.", "about_the_sources"),
    ("The note [1] is the first one on the list of notes.", "about_the_sources"),
    # an assistant's opening (issue 17, the everyday batch after candidates)
    ("I'd be happy to help you with your essay on this topic!", "chat_filler"),
    ("I'll take care of making sure everything is perfect, so please go ahead and share any information that may "
     "benefit from my assistance.", "chat_filler"),
    ("I'm excited to share my thoughts with readers who may have no idea what I've written before!", "writer_voice"),
    ("This is indeed one of my most thought-provoking articles yet.", "writer_voice"),
    ("This brings us back to what was said before which were mentioned previously.", "as_mentioned"),
    ("This example brings up several points which I will cover further as this piece continues.", "writer_voice"),
    ("In addition I made these changes while maintaining the original message intact while improving clarity.",
     "editor_talk"),
    ("I added a transitional phrase at the beginning of each new paragraph.", "editor_talk"),
    ("Your article has already set the stage perfectly.", "editor_talk"),
    ("The opening sentence is already well-defined with the topic of Mount Greylock's ecosystem.", "editor_talk"),
    # the requests benchmark (issue 19): the request's instructions echoed
    ("In your response, please use all caps.", "reader_task"),
    ("Your response should be formatted as follows.", "reader_task"),
    # the grounded benchmark's plain reports (issue 18)
    ("This is just one example.", "chat_filler"),
    ("Here goes...", "chat_filler"),
    ("Remember to make sure it has no less than 10 sentences - keep them short, easy to read and complete.",
     "reader_task"),
    ("Here is an example of how to edit this text using your personal editing style.", "editor_talk"),
    # the grounded benchmark's reports after the marker constraint (issue 18): the report's own layout
    ('The report on Darya Aleksandrovna Dugina, Russia has a section 4 marked with "Investigation".', "text_layout"),
    ("The report is: The Dugina Dugine family.", "text_layout"),
    ("The first paragraph of the report explains that it's not known how the killing began.", "text_does"),
    ("In the 2nd paragraph, it details a story about the murder.", "in_this_part"),
    ("A sentence with no punctuation is added after this paragraph so that it reads as a single sentence.",
     "text_layout"),
    ("This report focuses on several legal cases.", "text_does"),
    ("I've prepared a comprehensive report on the Batbing Bear case that delves into the world.", "writer_voice"),
    ('I\'ve been tasked with organizing and presenting my essay\'s section 2 titled "Impact on Business".',
     "writer_voice"),
    ("This part is where I will detail how deforestation affects businesses globally.", "writer_voice"),
    ('In chapter three, you will delve into the concept of "The One-Last Lament".', "reader_task"),
    ("Here's the complete document edited by you.", "chat_filler"),
    ("The report has added one more paragraph to this section; no other sections have been written yet.",
     "text_layout"),
    ("For example, the first two paragraphs should be numbered.", "text_layout"),
    ("The report's summary opens with a note about support for the 2022 edition.", "text_layout"),
    ("You may not use bold formatting such as asteracing or enumerations unless it has been explicitly noted.",
     "reader_task"),
    ("This includes headings and bullet points for a single section.", "reader_task"),
    ("If there are no other notes, please provide one paragraph with the details needed here.", "reader_task"),
    ("The first note provides details about this edition and its predecessor.", "about_the_sources"),
    ('The report will delve into the complex topic of "Illegal operation (euphemism)" [1].', "text_does"),
    ("The report outlines the complex topic of illegal operation (euphemism).", "text_does"),
    ("The section continues: [1] In the eight days of Elizabeth II's lying in state, a service was held.",
     "text_layout"),
    ('Here is a sample of how you can write the section "Participation and incidents" in detail.', "editor_talk"),
    ("Section 3 of your report will explore what makes it so captivating.", "editor_talk"),
    ("It seems there might be more areas needing improvement for better clarity as well as grammar consistency.",
     "editor_talk"),
    ("I will make sure to maintain this format throughout the entire report.", "text_layout"),
]

# Sentences about the subject, some using "section", "article", "part", "point" about it.
SUBJECT = [
    "Urban heat islands form where asphalt stores heat.",
    "The section of the river near the dam floods every spring.",
    "The article of the constitution guarantees free speech.",
    "This part of the city has many parks.",
    "At this point, the army retreated.",
    "Section 230 covers online platforms.",
    "The section covers 40 km of track between the two towns.",
    "The post was abolished in 1901.",
    "In the first part of the season, the team won six games.",
    "This point is about 3 km from the coast.",
    "Bees will explore the meadow for nectar.",
    "He wrote an article for the Times in 1990 that discusses the strike.",
    "In this region, summers are hot.",
    "This is just one example of the city's resilience.",
    "The court handed down at least 3 sentences of ten years.",
    "Certainly, the war changed everything.",
    "The text of the treaty was published in May.",
    "Dr. Smith opened the clinic in 1950.",
    "This sentence was handed down by the court in 1998.",
    "This version of the song reached number one.",
    "Your water bill lists the charges.",
    "The plan was discussed earlier that year.",
    "Since then a good number of editors have and continue to oversee this task.",
    "Thank you for your response to my letter of 3 May.",
    "I look forward to your reply, and to meeting you in June.",
    "The second paragraph of Article 5 protects free speech.",
    "This report by the UN was published in 2020.",
    "The report is due in June.",
    "These documents reveal that the files were kept in a garage.",
    "The 2nd battalion crossed the river.",
    "Her report explains the causes of the flood.",
    "The report, released by the UN in May, was widely read.",
    "The report of the commission was published in 1990.",
]


@pytest.mark.parametrize("sentence, rule", MODEL_META)
def test_each_meta_sentence_is_caught_by_its_rule(sentence, rule):
    found = q.find_meta(sentence)
    assert [(f["sentence"], f["rule"]) for f in found] == [(sentence, rule)]


@pytest.mark.parametrize("sentence", SUBJECT)
def test_subject_sentences_are_not_meta(sentence):
    assert q.find_meta(sentence) == []


def test_chat_filler_sure_here_is_is_two_meta_sentences():
    found = q.find_meta("Sure! Here is the paragraph about bees.")
    assert [(f["sentence"], f["rule"], f["match"]) for f in found] == [
        ("Sure!", "chat_filler", "Sure!"),
        ("Here is the paragraph about bees.", "chat_filler", "Here is the paragraph"),
    ]


def test_sentences_split_glued_ends_but_not_abbreviations_or_headings():
    text = "## Heading\nThe U.S. Army arrived.It stayed. Dr. Smith said \"stop.\" Then e.g. this.\n- J. K. Rowling wrote it!Really?"
    assert q.sentences(text) == [
        "The U.S. Army arrived.", "It stayed.", 'Dr. Smith said "stop."', "Then e.g. this.", "J. K. Rowling wrote it!",
        "Really?",
    ]


PREAMBLE = ("I'd be happy to help you with your essay on this topic! I'll take care of making sure everything is "
            "perfect, so please go ahead and share any information that may benefit from my assistance.")


def test_a_section_loses_the_meta_sentences_it_opens_with_and_nothing_else():
    subject = "Libraries lend drills and ladders. A tool used twice a year need not be bought."
    later = "Many branches keep a waiting list. In this section, we will explore the costs."
    body, dropped = q.drop_preamble(f"{PREAMBLE} {subject}\n\n{later}")
    assert body == f"{subject}\n\n{later}"  # the meta sentence further on is the evaluation's to count
    assert len(dropped) == 2 and dropped[0].startswith("I'd be happy")
    body, dropped = q.drop_preamble(f"In this article we will explore libraries.\n\n{subject}")
    assert body == subject and dropped == ["In this article we will explore libraries."]
    assert q.drop_preamble(f"{subject}\n\n{later}") == (f"{subject}\n\n{later}", [])  # unchanged, byte for byte
    assert q.drop_preamble(PREAMBLE) == ("", q.sentences(PREAMBLE))  # nothing left: the section is retried


def test_meta_sentences_and_rate_of_a_mixed_section():
    text = (
        "In this section, we will explore how bees make honey. Foragers carry nectar back to the hive. "
        "House bees pass it from mouth to mouth, adding enzymes. As mentioned earlier, water must evaporate. "
        "Fanning wings dry the nectar until it is thick. I hope this helps!"
    )
    assert q.meta_sentences(text) == [
        "In this section, we will explore how bees make honey.",
        "As mentioned earlier, water must evaporate.",
        "I hope this helps!",
    ]
    assert q.meta_rate(text) == 3 / 6
    assert q.meta_rate([text, "Bees sting once. Wasps sting often."]) == 3 / 8
    assert q.meta_rate("") == 0.0
    assert q.meta_rate(["", "   "]) == 0.0


def test_meta_rate_of_human_subject_text_is_zero():
    assert q.meta_rate(SUBJECT) == 0.0


FRESHWIKI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "freshwiki-dev" / "txt"


@pytest.mark.skipif(not FRESHWIKI.is_dir(), reason="FreshWiki dev articles not on this machine (../shared/data)")
def test_no_sentence_of_the_freshwiki_articles_is_meta():
    texts = [p.read_text() for p in sorted(FRESHWIKI.glob("*.txt"))]
    assert len(texts) == 49
    assert sum(len(q.sentences(t)) for t in texts) > 8000
    assert [f["sentence"] for t in texts for f in q.find_meta(t)] == []


# -- the figure (pure arithmetic) ---------------------------------------------------------------------


def test_quality_figure_formula():
    perfect = dict(relevance_title=0.9, relevance_topic=0.9, meta_rate=0.0, redundancy=0.3, repetition=0.0,
                   length_score=100.0, coverage=1.0)
    assert q.quality_figure(**perfect) == pytest.approx(100.0)
    # relevance to title halfway up its ramp (0.15 -> 0.55): 100 * 0.5 ** 0.25
    assert q.quality_figure(**{**perfect, "relevance_title": 0.35}) == pytest.approx(100 * 0.5**0.25)
    # half the sentences meta: that component is 0, floored at 0.02, weight 0.20
    assert q.quality_figure(**{**perfect, "meta_rate": 0.5}) == pytest.approx(100 * 0.02**0.20)
    # duplicated sections (cosine 0.95 or more): the redundancy component is gone
    assert q.quality_figure(**{**perfect, "redundancy": 0.99}) == pytest.approx(100 * 0.02**0.05)
    # None leaves a component out; the others are reweighted
    assert q.quality_figure(relevance_title=None, relevance_topic=None, meta_rate=0.125) == pytest.approx(50.0)
    assert q.quality_figure(relevance_title=None, relevance_topic=None, meta_rate=None) == 0.0
    # length and coverage from aigc.evaluate: S_l 50 and coverage 0.5 -> 100 * 0.5 ** (0.10 + 0.15)
    assert q.quality_figure(**{**perfect, "length_score": 50.0, "coverage": 0.5}) == pytest.approx(100 * 0.5**0.25)


# -- with the real embedding model ------------------------------------------------------------------

TOPIC = "Honey bees"
TITLES = ["How bees make honey", "The year of a hive", "Bees and farming"]
GOOD = [
    "Worker bees collect nectar from flowers and carry it to the hive in their honey stomachs. House bees take the "
    "nectar, add enzymes that split its sugars, and spread it in wax cells. They fan their wings until most of the "
    "water evaporates, then seal each cell of ripe honey with a wax cap.",
    "A colony survives winter as a tight cluster of bees around the queen, eating stored honey and shivering to keep "
    "warm. In spring the queen lays more eggs and foragers return to the flowers. In summer the colony may swarm: the "
    "old queen leaves with half the workers to found a new nest.",
    "Many crops depend on honey bees for pollination, among them almonds, apples and blueberries. Beekeepers rent "
    "hives to growers and move them between orchards during the bloom. Pesticides, mites and poor forage weaken "
    "colonies, so farmers plant hedges and time their spraying to protect them.",
]
BAD = [
    "Section 1 opens with clarity on the subject. In today's digital age, information is at our fingertips and "
    "technology has transformed every aspect of our lives. Here's your chance to showcase how you can tackle it.",
    "The world is rapidly changing at an unprecedented pace with online shopping and social media platforms. "
    "As mentioned earlier, this trend creates new opportunities. The idea behind this message comes across as basic.",
    "In this piece you see just what I was going to say before. Smartphones let consumers buy things anytime they "
    "want. This point takes us into a realm we never knew before. I hope this helps!",
]


@pytest.mark.slow
def test_on_topic_section_is_more_relevant_than_a_drifting_one():
    rel = q.section_relevance(TOPIC, [TITLES[0], TITLES[0]], [GOOD[0], BAD[1]])
    assert [r["title"] for r in rel] == [TITLES[0], TITLES[0]]
    assert rel[0]["relevance_title"] > 0.5
    assert rel[1]["relevance_title"] < 0.2
    assert rel[0]["relevance_topic"] > rel[1]["relevance_topic"] + 0.3
    # each body against its own title beats it against another section's title
    own = q.section_relevance(TOPIC, TITLES, GOOD)
    swapped = q.section_relevance(TOPIC, [TITLES[2], TITLES[0], TITLES[1]], GOOD)
    assert all(o["relevance_title"] > s["relevance_title"] for o, s in zip(own, swapped))
    assert q.section_relevance(TOPIC, ["Empty"], [""])[0]["relevance_title"] == 0.0


@pytest.mark.slow
def test_redundancy_of_duplicated_sections_is_high():
    dup = q.redundancy([GOOD[0], GOOD[0], GOOD[1]])
    assert dup["redundancy"] == pytest.approx(1.0, abs=1e-4)
    assert dup["overlap_4gram"] > 0.6  # the two copies: all their 4-grams occur in another section
    distinct = q.redundancy(GOOD)
    assert distinct["redundancy"] < 0.7
    assert distinct["overlap_4gram"] == 0.0
    assert q.redundancy([GOOD[0]]) == {"redundancy": None, "redundancy_mean": None, "overlap_4gram": None}


@pytest.mark.slow
def test_quality_of_good_text_beats_meta_drifting_text_by_a_wide_margin():
    good = q.evaluate_quality(TOPIC, TITLES, GOOD, length_score=95.0, coverage=1.0)
    bad = q.evaluate_quality(TOPIC, TITLES, BAD, length_score=95.0, coverage=1.0)
    assert good["meta_rate"] == 0.0
    assert bad["meta_rate"] == 7 / 10
    assert bad["meta_sentences"] == 7
    assert good["quality"] > 85
    assert bad["quality"] < 30
    # flat numbers for a table, the details apart
    flat = {k: v for k, v in good.items() if k != "quality_details"}
    assert all(isinstance(v, float) or isinstance(v, int) for v in flat.values())
    assert set(q.QUALITY_COLUMNS) <= set(flat)
    rules = [(m["section"], m["rule"]) for m in bad["quality_details"]["meta"]]
    assert rules[:2] == [(TITLES[0], "text_does"), (TITLES[0], "reader_task")]
    assert [s["title"] for s in bad["quality_details"]["sections"]] == TITLES
    # the same article with its sections repeated scores worse than the distinct one
    repeated = q.evaluate_quality(TOPIC, TITLES, [GOOD[0]] * 3, length_score=95.0, coverage=1.0)
    assert repeated["redundancy"] == pytest.approx(1.0, abs=1e-4)
    assert repeated["quality"] < good["quality"] - 10


@pytest.mark.slow
def test_score_sections_prefers_the_on_topic_candidate():
    scores = q.score_sections(
        TOPIC, [TITLES[0]] * 4, [GOOD[0], BAD[0], GOOD[1], GOOD[0] + " " + GOOD[0]],
        other_bodies=[[GOOD[1]], [GOOD[1]], [GOOD[1]], [GOOD[1]]], target_words=50,
    )
    good, meta, copy_of_other, doubled = scores
    assert good["total"] > meta["total"] + 30
    assert meta["meta_rate"] == 2 / 3
    assert good["meta_rate"] == 0.0
    assert copy_of_other["overlap"] == pytest.approx(1.0, abs=1e-4)  # it repeats the section already chosen
    assert copy_of_other["overlap_4gram"] == 1.0
    assert copy_of_other["total"] < good["total"]
    assert doubled["repetition"] > 0.9
    assert good["repetition"] == 0.0
    assert good["total"] > doubled["total"]
    assert good["length_fit"] == pytest.approx(q._length_score(50, good["words"]) / 100)
    one = q.score_section(TOPIC, TITLES[0], GOOD[0], [GOOD[0][:80] + " bees.", GOOD[2]], target_words=None)
    assert one["length_fit"] is None
    assert 0.0 < one["overlap_4gram"] < 0.5
    assert one["overlap"] > 0.3

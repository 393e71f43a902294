"""Citations: numbered passages, [n] markers checked against their passages, one numbering per article, entity recall."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from aigc import embeddings
from aigc.citations import (CitationReport, check_citations, entities, entity_recall, is_reference_list, link_markers,
                            marker_numbers, number_passages, prompt_text, references, renumber, sentence_spans)
from aigc.sources import Passage, text_hash


def passage(text: str, document: str = "doc.md", location: str = "Intro, line 3", **kw) -> Passage:
    return Passage(text=text, document=document, location=location, hash=text_hash(text), **kw)


BOMBING = passage("A bomb exploded on Istiklal Avenue in Istanbul on 13 November 2022, killing 6 people and "
                  "injuring 81 others. Turkish authorities blamed the PKK.", title="2022 Istanbul bombing",
                  heading="Attack")
ARREST = passage("Police arrested Ahlam Albashir, a Syrian woman, and 46 other suspects the next day.",
                 location="Investigation, line 9", link="https://example.org/arrest")
BREAD = passage("Sourdough bread rises with wild yeast kept in a starter fed with flour and water.",
                document="bread.md")


def test_number_passages_gives_numbered_blocks_with_title_and_heading():
    block = number_passages([BOMBING, ARREST], max_words=5)
    assert block.split("\n\n") == ["[1] 2022 Istanbul bombing > Attack: A bomb exploded on Istiklal ...",
                                   "[2] Police arrested Ahlam Albashir, a ..."]


def test_prompt_text_drops_the_sources_own_marks_and_addresses_and_cuts_at_a_sentence():
    text = ("The FSB blamed Ukraine [50] [51]. It named a suspect.[citation needed] See https://example.org/a?b=1 "
            "for the footage [update]. A fourth sentence follows here.")
    assert prompt_text(text) == ("The FSB blamed Ukraine. It named a suspect. See for the footage. "
                                 "A fourth sentence follows here.")
    assert prompt_text(text, max_words=9) == "The FSB blamed Ukraine. It named a suspect. ..."
    assert prompt_text("One very long sentence without any end at all", max_words=3) == "One very long ..."


def test_reference_lists_are_recognised_by_heading_or_by_their_addresses():
    links = " ".join(f"[{n}] https://news.example.org/story-{n}" for n in range(1, 9))
    assert is_reference_list(passage(links, heading="Darya Dugina > Killing"))
    assert is_reference_list(passage("Smith, J. (2020). A book.", heading="Darya Dugina > References"))
    assert not is_reference_list(BOMBING) and not is_reference_list(ARREST)


def test_entities_are_capitalised_runs_and_numbers():
    names, numbers = entities("However, the Bank of England raised rates to 4.5% in 2023 [2]. The PKK denied it. "
                              "About 45,000 people were killed by Kurdistan Workers' Party fighters.")
    assert names == {"bank of england", "pkk", "kurdistan workers' party"}
    assert numbers == {"4.5", "2023", "45000"}  # the [2] marker is no number


def test_entity_recall_counts_names_and_numbers_of_the_reference():
    reference = "The Golden Gate Bridge opened in 1937. Joseph Strauss led the work on the 1,280 m span."
    got = entity_recall("Strauss's bridge, the Golden Gate Bridge, opened in 1937 with a 1280 m span.", reference)
    assert got["total"] == 4 and got["found"] == 3 and got["recall"] == 0.75
    assert got["missing"] == ["joseph strauss"]
    assert entity_recall("nothing here", "no names at all")["recall"] is None


def test_marker_numbers_and_sentence_spans():
    assert marker_numbers("1, 3") == [1, 3] and marker_numbers("2-4") == [2, 3, 4] and marker_numbers("1-500") == [1, 500]
    text = "## Heading [1]\n\nFirst sentence here [1]. Second one.[2] Third ends\nA new line [3]\n"
    spans = [text[a:b] for a, b in sentence_spans(text)]
    assert spans == ["First sentence here [1].", "Second one.[2]", "Third ends", "A new line [3]"]


def test_renumber_gives_one_numbering_across_sections_and_references():
    texts, used = renumber([("Attack text [2]. More [1][2].", [ARREST, BOMBING]),
                            ("Other text [1]. Bad marker [9].", [BOMBING]),
                            ("Bread [1, 2].", [BREAD, ARREST])])
    assert texts == ["Attack text [1]. More [2][1].", "Other text [1]. Bad marker .", "Bread [3][2]."]
    assert used == [BOMBING, ARREST, BREAD]
    refs = references(used)
    assert refs[1] == {"number": 2, "document": "doc.md", "title": "", "location": "Investigation, line 9",
                       "link": "https://example.org/arrest", "hash": ARREST.hash}
    assert link_markers("<p>x [2]</p>") == '<p>x <a class="cite" href="#ref-2">[2]</a></p>'


def test_report_merges_sections():
    a = CitationReport(sentences=4, cited_sentences=2, markers=3, supported=2)
    b = CitationReport(sentences=6, cited_sentences=1, markers=1, supported=1)
    merged = CitationReport.merge([a, b]).to_dict()
    assert merged["support_rate"] == 0.75 and merged["cited_share"] == 0.3


@pytest.fixture
def bag_embed(monkeypatch):
    """Embeddings by shared lower-case words, so support depends on word overlap only."""
    def vec(text):
        v = np.zeros(embeddings.DIM, dtype=np.float32)
        for w in text.lower().replace(".", " ").replace(",", " ").split():
            v[int(hashlib.md5(w.encode()).hexdigest(), 16) % embeddings.DIM] += 1
        return v / max(np.linalg.norm(v), 1e-9)

    monkeypatch.setattr(embeddings, "embed", lambda texts, **_: np.stack([vec(t) for t in texts]))


def test_markers_to_missing_or_unrelated_passages_are_removed_and_counted(bag_embed):
    text = ("## Attack\n\nA bomb exploded on Istiklal Avenue in Istanbul on 13 November 2022, killing 6 people [1]. "
            "Sourdough bread rises with wild yeast kept in a starter [1][3]. It rained [7].\n\nNo citation here.")
    cleaned, report = check_citations(text, [BOMBING, ARREST, BREAD])
    assert cleaned == ("## Attack\n\nA bomb exploded on Istiklal Avenue in Istanbul on 13 November 2022, killing 6 "
                       "people [1]. Sourdough bread rises with wild yeast kept in a starter [3]. It rained.\n\n"
                       "No citation here.")
    assert (report.sentences, report.markers, report.supported, report.cited_sentences) == (4, 4, 2, 2)
    reasons = sorted((r["marker"], r["reason"]) for r in report.removed)
    assert reasons == [(1, "not similar enough"), (7, "no such passage")]
    assert report.used == [1, 3] and report.to_dict()["support_rate"] == 0.5 and report.cited_share == 0.5


def test_a_wrong_number_or_an_unknown_name_is_flagged(bag_embed):
    text = ("A bomb exploded on Istiklal Avenue in Istanbul on 13 November 2022, killing 9 people [1]. "
            "Mayor Ekrem Imamoglu visited the site.")
    cleaned, report = check_citations(text, [BOMBING], similarity=0.3, entity_share=1.0)
    assert "[1]" not in cleaned
    assert report.removed[0]["reason"] == "names or numbers not in the passage"
    flagged = {c["sentence"][:8]: c["missing"] for c in report.unsupported_claims}
    assert flagged == {"A bomb e": ["9"], "Mayor Ek": ["mayor ekrem imamoglu"]}
    _, known = check_citations("Mayor Ekrem Imamoglu visited.", [BOMBING], known="Ekrem Imamoglu Mayor")
    assert known.unsupported_claims == []


def test_a_marker_after_the_full_stop_belongs_to_the_sentence_before_it(bag_embed):
    # "... people. [1]." and a marker on a line of its own: the small model writes both
    zh = "潮汐由月球引力引起[1]。芬迪湾潮差最大。[2] 第三句！"
    assert [zh[a:b] for a, b in sentence_spans(zh)] == ["潮汐由月球引力引起[1]。", "芬迪湾潮差最大。[2]", "第三句！"]
    lines = "Born in Moscow. [2]. Then she moved.\n[4].\nNext."
    assert [lines[a:b] for a, b in sentence_spans(lines)] == ["Born in Moscow. [2].", "Then she moved.\n[4].", "Next."]
    text = ("A bomb exploded on Istiklal Avenue in Istanbul on 13 November 2022, killing 6 people. [1]. "
            "Sourdough bread rises with wild yeast kept in a starter. [1].")
    cleaned, report = check_citations(text, [BOMBING, ARREST, BREAD])
    assert cleaned == ("A bomb exploded on Istiklal Avenue in Istanbul on 13 November 2022, killing 6 people [1]. "
                       "Sourdough bread rises with wild yeast kept in a starter.")
    assert (report.sentences, report.markers, report.supported) == (2, 2, 1)
    assert report.removed[0]["sentence"].startswith("Sourdough")
    text = ("A bomb exploded on Istiklal Avenue in Istanbul on 13 November 2022, killing 6 people. [1] "
            "Sourdough bread rises with wild yeast kept in a starter.")
    cleaned, _ = check_citations(text, [BOMBING, ARREST, BREAD])
    assert cleaned == ("A bomb exploded on Istiklal Avenue in Istanbul on 13 November 2022, killing 6 people [1]. "
                       "Sourdough bread rises with wild yeast kept in a starter.")


def test_attribution_cites_an_uncited_sentence_its_passage_clearly_supports(bag_embed):
    text = ("Police arrested Ahlam Albashir, a Syrian woman, and 46 other suspects the next day. "
            "Police arrested a man in Paris in 1999. Bread is nice.")
    cleaned, report = check_citations(text, [BOMBING, ARREST], attribute=True)
    assert cleaned == ("Police arrested Ahlam Albashir, a Syrian woman, and 46 other suspects the next day [2]. "
                       "Police arrested a man in Paris in 1999. Bread is nice.")
    assert (report.attributed, report.markers, report.cited_sentences, report.used) == (1, 0, 1, [2])
    assert report.to_dict()["support_rate"] is None  # the model's own markers only
    unchanged, off = check_citations(text, [BOMBING, ARREST])
    assert unchanged == text and off.attributed == 0 and off.cited_sentences == 0


def test_a_paragraph_opening_with_a_marker_cites_its_first_sentence(bag_embed):
    from aigc.citations import leading_markers_moved

    text = ("[1] A bomb exploded on Istiklal Avenue in Istanbul on 13 November 2022, killing 6 people. Then quiet.\n\n"
            "[3][2] Police arrested Ahlam Albashir, a Syrian woman, and 46 other suspects the next day\n## [1] Heading")
    cleaned, report = check_citations(text, [BOMBING, ARREST, BREAD])
    assert cleaned == ("A bomb exploded on Istiklal Avenue in Istanbul on 13 November 2022, killing 6 people [1]. "
                       "Then quiet.\n\nPolice arrested Ahlam Albashir, a Syrian woman, and 46 other suspects the next "
                       "day [2]\n## [1] Heading")
    assert (report.markers, report.supported) == (3, 2)
    assert leading_markers_moved("[2] 芬迪湾潮差最大。后来。") == "芬迪湾潮差最大[2]。后来。"
    cleaned, _ = check_citations("Intro line.\n\n [9] Bread is nice. More.", [BREAD])
    assert cleaned == "Intro line.\n\nBread is nice. More."  # the impossible marker goes, no space opens the line


def test_a_sentence_citing_the_wrong_note_is_cited_to_the_note_that_supports_it(bag_embed):
    text = ("Police arrested Ahlam Albashir, a Syrian woman, and 46 other suspects the next day [1]. "
            "Sourdough bread rises with wild yeast [2].")
    cleaned, report = check_citations(text, [BOMBING, ARREST, BREAD], attribute=True)
    assert cleaned == ("Police arrested Ahlam Albashir, a Syrian woman, and 46 other suspects the next day [2]. "
                       "Sourdough bread rises with wild yeast [3].")
    assert (report.markers, report.supported, report.retargeted, report.attributed) == (2, 0, 2, 0)
    assert report.to_dict()["support_rate"] == 0.0  # the model's markers as written
    assert [r["retargeted_to"] for r in report.removed] == [2, 3] and report.used == [2, 3]
    assert report.cited_sentences == 2
    # no note supports it: the marker goes and nothing replaces it; without attribute: only removed
    cleaned, report = check_citations("Bread is nice in Paris [1].", [BOMBING, BREAD], attribute=True)
    assert cleaned == "Bread is nice in Paris." and report.retargeted == 0 and "retargeted_to" not in report.removed[0]
    cleaned, report = check_citations(text, [BOMBING, ARREST, BREAD])
    assert "[" not in cleaned and report.retargeted == 0


@pytest.mark.slow
def test_real_embeddings_support_a_paraphrase_and_reject_an_unrelated_citation():
    text = ("A bombing on Istiklal Avenue in Istanbul killed 6 people on 13 November 2022 [1]. "
            "Police detained Ahlam Albashir and 46 others [2]. "
            "Bakers feed a starter with flour and water to make sourdough rise [1].")
    cleaned, report = check_citations(text, [BOMBING, ARREST, BREAD])
    assert report.supported == 2 and [r["marker"] for r in report.removed] == [1]
    assert cleaned.endswith("make sourdough rise.")

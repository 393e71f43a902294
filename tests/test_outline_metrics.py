"""Heading soft recall (STORM's soft cardinality) with exact small examples, and the FreshWiki outline reader."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aigc.errors import InputError
from aigc.outline_metrics import (
    heading_entity_recall_lite,
    heading_soft_recall,
    human_outline,
    load_topics,
    outline_headings,
    soft_cardinality,
    topic_file,
)


def fake_embed(table: dict[str, list[float]]):
    """An embed that looks texts up in ``table`` and records what it was asked."""
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.array([table[t] for t in texts], dtype=float)

    embed.calls = calls
    return embed


AXES = {"History": [1, 0, 0], "Geography": [0, 1, 0], "Economy": [0, 0, 1]}


def test_identical_lists_recall_one():
    embed = fake_embed(AXES)
    assert heading_soft_recall(["History", "Geography"], ["Geography", "History"], embed=embed) == pytest.approx(1.0)


def test_orthogonal_lists_recall_zero_and_partial_overlap_exact():
    embed = fake_embed(AXES)
    assert heading_soft_recall(["History", "Geography"], ["Economy"], embed=embed) == pytest.approx(0.0)
    # G = {History, Geography}, P = {History, Economy}: card(G) = 2, card(P) = 2, card(G u P) = 3 -> 1/2
    assert heading_soft_recall(["History", "Geography"], ["History", "Economy"], embed=embed) == pytest.approx(0.5)


def test_soft_match_at_cosine_one_half():
    # cos(a, b) = 0.5: card(G) = card(P) = 1, card(G u P) = 2 / 1.5, recall = 2 - 4/3 = 2/3
    embed = fake_embed({"a": [1, 0], "b": [0.5, math.sqrt(3) / 2]})
    assert heading_soft_recall(["a"], ["b"], embed=embed) == pytest.approx(2 / 3)


def test_duplicates_count_once_and_unnormalised_vectors_are_normalised():
    embed = fake_embed({"History": [3, 0, 0], "Geography": [0, 2, 0]})
    assert heading_soft_recall(["History", "History", "Geography"], ["History"], embed=embed) == pytest.approx(0.5)
    assert embed.calls == [["History", "Geography"]]  # each distinct heading embedded once
    assert soft_cardinality(np.array([[2.0, 0], [5.0, 0]])) == pytest.approx(1.0)  # two copies of one direction


def test_empty_prediction_scores_zero_without_embedding():
    embed = fake_embed({})
    assert heading_soft_recall(["History"], [], embed=embed) == 0.0
    assert embed.calls == []
    with pytest.raises(ValueError):
        heading_soft_recall([], ["History"], embed=fake_embed(AXES))


ARTICLE = """Tartus

Tartus is a city. It grew 1. slowly.

# Etymology

Text about 2022. Then more.

# History

## Crusades

1. Ottoman era

# Notes and sources

# Later heading
"""


def test_outline_headings_reads_as_storm_does():
    assert outline_headings(ARTICLE) == ["Etymology", "History", "Crusades", "Ottoman era"]
    assert outline_headings("# A\n# References\n# B") == ["A"]
    assert outline_headings("# A\nSee # References below\n# B") == ["A"]  # any line with '# References' stops
    assert outline_headings("# A\n## See also\n# B") == ["A"]


def test_human_outline_and_topics_from_a_folder(tmp_path):
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "AC_DC_live.txt").write_text(ARTICLE)
    (tmp_path / "topics.jsonl").write_text(json.dumps({"topic": "AC/DC live", "file": "txt/AC_DC_live.txt"}) + "\n\n")
    assert topic_file("AC/DC live") == "AC_DC_live.txt"
    [row] = load_topics(tmp_path)
    assert human_outline(row["topic"], tmp_path) == ["Etymology", "History", "Crusades", "Ottoman era"]
    with pytest.raises(InputError, match="no human article for topic 'Nope'"):
        human_outline("Nope", tmp_path)
    with pytest.raises(InputError, match="topics.jsonl"):
        load_topics(tmp_path / "txt")


def test_real_dev_topics_all_have_headings():
    from pathlib import Path

    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "freshwiki-dev"
    if not data.is_dir():
        pytest.skip("the FreshWiki dev data is not next to the repository")
    topics = load_topics(data)
    assert len(topics) == 49
    outlines = {t["topic"]: human_outline(t["topic"], data, file=t["file"]) for t in topics}
    assert all(outlines.values())
    assert outlines["Tartus"][:3] == ["Etymology", "History", "Phoenician Antaradus"]
    assert "External links" not in outlines["Tartus"]


def test_entity_recall_lite():
    assert heading_entity_recall_lite(["Early life", "Career"], ["Anything"]) == 1.0  # no entities to find
    assert heading_entity_recall_lite(["Reign of Elizabeth II", "Visit to Paris in 1960"],
                                      ["Life of Elizabeth in Paris"]) == pytest.approx(2 / 4)

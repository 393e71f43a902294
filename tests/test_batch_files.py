"""Batch files: YAML, CSV and JSONL items become ArticleSpecs; every mistake names the file, the item, the field and the fix."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from aigc.batch import BatchLock, clean_stray, load_batch, render_index, write_text_atomic
from aigc.errors import InputError, OutputError

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path, **kw) -> str:
    with pytest.raises(InputError) as info:
        load_batch(path, **kw)
    return str(info.value)


@pytest.mark.parametrize("name", ["nightly.yaml", "example.csv", "example.jsonl"])
def test_shipped_examples_are_valid(name):
    batch = load_batch(REPO / "data" / "batches" / name)
    assert 3 <= len(batch.items) <= 4
    assert all(i.spec.sections == 3 and i.spec.words == 240 for i in batch.items)


def test_yaml_defaults_apply_and_items_override(tmp_path):
    path = write(tmp_path, "b.yaml", """\
name: Evening run
defaults: {style: report, sections: 4, words: 300, backend: openai, model: gpt-4o-mini}
items:
  - Plain topic as a string
  - topic: Local one
    backend: local
  - topic: Given outline
    outline: [One, Two]
""")
    batch = load_batch(path)
    assert batch.name == "Evening run" and batch.slug == "evening-run"
    a, b, c = (i.spec for i in batch.items)
    assert (a.topic, a.style, a.sections, a.backend, a.backend_options) == (
        "Plain topic as a string", "report", 4, "openai", {"model": "gpt-4o-mini"})
    assert b.backend == "local" and b.backend_options == {}  # the default model belongs to the default backend
    assert c.outline == ("One", "Two") and c.sections == 2
    assert [i.line for i in batch.items] == [4, 5, 7]


def test_yaml_bad_value_names_file_line_item_and_field(tmp_path):
    path = write(tmp_path, "b.yaml", "items:\n  - topic: Fine\n  - topic: Too many\n    sections: 40\n")
    msg = error_of(path)
    assert msg.startswith(f"{path}:3: item 2: sections:") and "less than or equal to 20" in msg


def test_yaml_unknown_field_lists_the_known_ones(tmp_path):
    path = write(tmp_path, "b.yaml", "items:\n  - topic: A\n    stlye: report\n")
    msg = error_of(path)
    assert f"{path}:2: item 1: unknown field 'stlye'" in msg and "style" in msg


def test_yaml_missing_topic_and_syntax_and_structure(tmp_path):
    assert "item 1: topic: missing" in error_of(write(tmp_path, "a.yaml", "items:\n  - style: report\n"))
    msg = error_of(write(tmp_path, "b.yaml", "items:\n  - topic: [unclosed\n"))
    assert msg.startswith(f"{tmp_path / 'b.yaml'}:") and "not valid YAML" in msg
    assert "no 'items:' list" in error_of(write(tmp_path, "c.yaml", "defaults: {style: news}\n"))
    assert "unknown top-level key 'item'" in error_of(write(tmp_path, "d.yaml", "item: []\n"))
    assert "defaults: unknown field 'topic'" in error_of(write(tmp_path, "e.yaml", "defaults: {topic: x}\nitems: [a]\n"))
    assert "has no items" in error_of(write(tmp_path, "f.yaml", "items: []\n"))


def test_empty_topic_and_outline_mismatch(tmp_path):
    msg = error_of(write(tmp_path, "a.yaml", "items:\n  - topic: '   '\n"))
    assert "item 1: topic: the topic is empty" in msg
    msg = error_of(write(tmp_path, "b.yaml", "items:\n  - topic: A\n    sections: 3\n    outline: [One, Two]\n"))
    assert "item 1: sections: 3 but the outline has 2 titles" in msg


def test_duplicate_items_are_refused(tmp_path):
    msg = error_of(write(tmp_path, "a.yaml", "items:\n  - topic: Same\n  - topic: Other\n  - topic: Same\n"))
    assert ":4: item 3: the same article as item 1" in msg and "change its seed" in msg


def test_csv_lines_columns_and_outline(tmp_path):
    path = write(tmp_path, "b.csv", 'topic,style,sections,outline\n"A, with comma",news,,One | Two\nB,report,3,\n')
    a, b = load_batch(path).items
    assert a.spec.topic == "A, with comma" and a.spec.outline == ("One", "Two") and a.spec.sections == 2
    assert (b.line, b.spec.sections, b.spec.style) == (3, 3, "report")
    msg = error_of(write(tmp_path, "c.csv", "topic,words\nA,200\nB,lots\n"))
    assert msg.startswith(f"{tmp_path / 'c.csv'}:3: item 2: words:") and "integer" in msg
    assert "c2.csv:1: unknown column 'titel'" in error_of(write(tmp_path, "c2.csv", "titel,style\nA,news\n"))
    assert "more cells than columns" in error_of(write(tmp_path, "c3.csv", "topic,style\nA,news,extra\n"))


def test_jsonl_header_defaults_and_errors(tmp_path):
    path = write(tmp_path, "b.jsonl", '{"name": "j", "defaults": {"words": 120}}\n\n{"topic": "A"}\n{"topic": "B", "seed": 3}\n')
    batch = load_batch(path, max_items=1)
    assert batch.name == "j" and len(batch.items) == 1 and batch.items[0].spec.words == 120
    assert batch.items[0].line == 3
    assert "b2.jsonl:2: not valid JSON" in error_of(write(tmp_path, "b2.jsonl", '{"topic": "A"}\n{"topic": \n'))
    msg = error_of(write(tmp_path, "b3.jsonl", '{"topic": "A", "top_p": 0}\n'))
    assert ":1: item 1: top_p:" in msg


def test_secret_in_backend_options_and_unknown_file_type(tmp_path):
    msg = error_of(write(tmp_path, "a.yaml", "items:\n  - topic: A\n    backend_options: {api_key: sk-x}\n"))
    assert "item 1: backend_options: backend option 'api_key' looks like a secret" in msg
    assert "unknown batch file type '.txt'" in error_of(write(tmp_path, "a.txt", "A\n"))
    assert "no such batch file" in error_of(tmp_path / "missing.yaml")


def test_index_lists_every_item_with_evaluation_columns():
    rows = [
        {"index": 1, "topic": "A | pipe", "style": "report", "status": "written", "words": 230, "seconds": 12.34,
         "slug": "a-pipe", "evaluation": {"title": "A", "words": 230, "length_score": 0.91,
                                                   "sections_missing": [], "coverage_basis": "outline"}},
        {"index": 2, "topic": "B", "style": "article", "status": "failed", "seconds": 0.5, "slug": None,
         "error": "openai: cannot connect", "evaluation": {}},
    ]
    text = render_index("nightly", rows, link_ext="html")
    assert "| # | topic | style | status | words | seconds | link | length_score |" in text
    # the evaluation table per article, with the batch's means
    assert "## Evaluation" in text and "| a-pipe | 230 |" in text and "| mean of 1 | 230 |" in text
    assert "| 1 | A \\| pipe | report | written | 230 | 12.3 | [a-pipe](a-pipe/article.html) | 0.91 |" in text
    assert "| 2 | B | article | **failed** |  | 0.5 | openai: cannot connect |  |" in text
    assert "2 items: 1 failed, 1 written" in text


def test_atomic_index_stray_cleanup_and_lock(tmp_path):
    write_text_atomic(tmp_path / "index.md", "one\n")
    write_text_atomic(tmp_path / "index.md", "two\n")
    assert (tmp_path / "index.md").read_text() == "two\n" and [p.name for p in tmp_path.iterdir()] == ["index.md"]
    (tmp_path / ".tmp-topic-abc").mkdir()
    (tmp_path / ".tmp-topic-abc" / "article.md").write_text("half")
    (tmp_path / "done").mkdir()
    assert clean_stray(tmp_path) == [".tmp-topic-abc"] and (tmp_path / "done").is_dir()
    (tmp_path / ".lock").write_text(f"{socket.gethostname()} 999999999\n")  # a dead process: stale, taken over
    with BatchLock(tmp_path):
        assert (tmp_path / ".lock").read_text().split() == [socket.gethostname(), str(os.getpid())]
        with pytest.raises(OutputError, match="already running"):
            BatchLock(tmp_path).__enter__()
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text("other-machine 12\n")  # another machine's run is respected
    with pytest.raises(OutputError, match="already running \\(other-machine 12\\)"):
        BatchLock(tmp_path).__enter__()

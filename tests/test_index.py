"""The source index: built once per corpus, only changed passages embedded again, change while indexing, search modes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from aigc import embeddings
from aigc.errors import InputError
from aigc.index import BM25, Index, build_index, index_root
from aigc.sources import Passage


def fake_vector(text: str) -> np.ndarray:
    """A deterministic unit vector per text: bag of hashed words (shared words -> similar vectors)."""
    v = np.zeros(embeddings.DIM, dtype=np.float32)
    for word in text.lower().split():
        v[int(hashlib.md5(word.encode()).hexdigest(), 16) % embeddings.DIM] += 1.0
    return v / max(np.linalg.norm(v), 1e-9)


@pytest.fixture
def fake_embed(monkeypatch, tmp_path):
    """aigc.embeddings.embed replaced by :func:`fake_vector`; records every text embedded. Cache in tmp_path."""
    monkeypatch.setenv("AIGC_CACHE_DIR", str(tmp_path / "cache"))
    seen: list[str] = []

    def embed(texts, **_):
        seen.extend(texts)
        return np.stack([fake_vector(t) for t in texts]) if texts else np.zeros((0, embeddings.DIM), np.float32)

    monkeypatch.setattr(embeddings, "embed", embed)
    return seen


def write_corpus(folder, n: int = 3):
    folder.mkdir(parents=True, exist_ok=True)
    topics = ["volcano lava eruption ash", "violin orchestra concert music", "tax budget revenue finance",
              "football league match goal"]
    for i in range(n):
        words = topics[i % len(topics)]
        (folder / f"doc{i}.md").write_text(f"# Doc {i}\n\n## Part\n\n" + (f"{words} sentence {i}. " * 15), "utf-8")
    return folder


def test_unchanged_corpus_is_not_embedded_again_and_a_changed_file_only_its_passages(tmp_path, fake_embed):
    src = write_corpus(tmp_path / "src", 3)
    calls = []
    first = build_index([src], progress=lambda done, total, stage: calls.append((done, total, stage)))
    assert len(first) == 3 and len(fake_embed) == 3 and first.stats["embedded"] == 3
    assert ("done", 3) == (calls[-1][2], calls[-1][0]) and (3, 3, "embed") in calls and (0, 3, "read") in calls
    assert (index_root() / "indexes" / first.key / "index.faiss").is_file()
    fake_embed.clear()
    again = build_index([src])
    assert fake_embed == [] and again.key == first.key and again.stats["from_saved_index"]
    assert [p.hash for p in again.passages] == [p.hash for p in first.passages]
    (src / "doc1.md").write_text("# Doc 1\n\n## Part\n\n" + "violin bow strings changed. " * 15, "utf-8")
    changed = build_index([src])
    assert len(fake_embed) == 1 and "changed" in fake_embed[0] and changed.stats["cached"] == 2
    assert changed.key != first.key


def test_search_finds_the_matching_passage_in_every_mode(tmp_path, fake_embed):
    index = build_index([write_corpus(tmp_path / "src", 4)])
    for mode in ("dense", "bm25", "hybrid"):
        hits = index.search("violin concert", 2, mode=mode)
        assert hits[0].document.endswith("doc1.md"), mode
        assert hits[0].score > 0 and len(hits) == (1 if mode == "bm25" else 2)  # BM25: only passages sharing a word
    assert index.search_many(["tax revenue", "lava ash"], 1) == [index.search("tax revenue", 1),
                                                                  index.search("lava ash", 1)]
    assert len(index.search("anything", 50)) == 4  # k larger than the corpus
    with pytest.raises(ValueError, match="unknown search mode"):
        index.search("x", mode="magic")


def test_saved_index_loads_with_the_same_results(tmp_path, fake_embed):
    index = build_index([write_corpus(tmp_path / "src", 4)])
    loaded = Index.load(index.folder)
    assert loaded.passages == index.passages
    assert [p.hash for p in loaded.search("football goal", 3)] == [p.hash for p in index.search("football goal", 3)]
    hits = loaded.search("violin", 2, mode="dense")
    assert np.allclose(loaded.vectors_for(hits), [fake_vector(p.embed_text) for p in hits], atol=1e-6)
    assert loaded.vectors_for([Passage(text="unknown", document="x", location="y", hash="0" * 16)]) is None


def test_a_corpus_changed_while_indexing_is_read_again(tmp_path, fake_embed):
    src = write_corpus(tmp_path / "src", 2)
    edits = []

    def progress(done, total, stage):
        if stage == "embed" and done == total and not edits:  # after the first embedding pass
            edits.append(1)
            (src / "doc0.md").write_text("# Doc 0\n\n## Part\n\n" + "rewritten lava text now. " * 15, "utf-8")

    index = build_index([src], progress=progress)
    assert any("changed while being indexed; read again" in w for w in index.warnings)
    assert any("rewritten" in p.text for p in index.passages)


def test_a_corpus_that_keeps_changing_is_indexed_with_a_warning_and_not_saved(tmp_path, fake_embed):
    src = write_corpus(tmp_path / "src", 2)
    count = [0]

    def progress(done, total, stage):
        if stage == "embed" and done == total:
            count[0] += 1
            (src / "doc0.md").write_text("# Doc 0\n\n## Part\n\n" + f"version {count[0]} text. " * 15, "utf-8")

    index = build_index([src], progress=progress)
    assert any("changed while being indexed, again" in w for w in index.warnings)
    assert index.folder is None  # not kept: the next run reads the settled files


def test_bad_sources_are_input_errors_before_any_embedding(tmp_path, fake_embed):
    with pytest.raises(InputError, match="no such file or folder"):
        build_index([tmp_path / "missing"])
    assert fake_embed == []


def test_bm25_prefers_rare_matching_terms():
    bm = BM25(["the cat sat on the mat", "the dog ate the bone", "cat and dog"])
    scores = bm.scores("bone")
    assert scores.argmax() == 1 and scores[0] == 0 and scores[2] == 0
    assert bm.scores("the")[0] == 0  # stop words do not count


@pytest.mark.slow
def test_real_embeddings_find_the_right_document(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGC_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "bridge.md").write_text("# Golden Gate Bridge\n\nThe suspension bridge spans the strait at the entrance "
                                   "to San Francisco Bay and opened to traffic in 1937.", "utf-8")
    (src / "bread.md").write_text("# Sourdough\n\nSourdough bread rises with wild yeast and lactic acid bacteria "
                                  "kept in a starter that bakers feed with flour and water.", "utf-8")
    index = build_index([src])
    assert index.search("When did the San Francisco bridge open?", 1, mode="dense")[0].document.endswith("bridge.md")
    assert index.search("how to bake bread with a starter", 1)[0].document.endswith("bread.md")

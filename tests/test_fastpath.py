"""Tests of the local backend's CPU fast path: oneDNN pre-packed linear layers and top-k/top-p sampling."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from aigc.backends import fastpath  # noqa: E402

needs_onednn = pytest.mark.skipif(not fastpath.mkldnn_linear_available(), reason="this torch build has no oneDNN linear ops")


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 48), (5, 48), (3, 1, 48), (2, 7, 48)])
def test_packed_linear_matches_nn_linear(bias, shape):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 96, bias=bias), torch.nn.GELU(), torch.nn.Linear(96, 300, bias=bias)).eval()
    x = torch.randn(*shape)
    with torch.inference_mode():
        expected = model(x)
        assert fastpath.pack_linears(model, rows_hint=8) == 2
        got = model(x)
    assert all(type(m).__name__ == "PackedLinear" for m in (model[0], model[2]))
    assert "packed for oneDNN" in repr(model)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@needs_onednn
def test_pack_linears_leaves_other_dtypes_and_subclasses_alone():
    class MyLinear(torch.nn.Linear):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(8, 8).to(torch.bfloat16), MyLinear(8, 8), torch.nn.Linear(8, 8))
    assert fastpath.pack_linears(model, rows_hint=4) == 1
    assert type(model[0]) is torch.nn.Linear and type(model[1]) is MyLinear
    assert type(model[2]).__name__ == "PackedLinear"


def _hf_probs(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The distribution Hugging Face's own warpers give (what generate(do_sample=True) draws from)."""
    warpers = transformers.LogitsProcessorList([transformers.TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(transformers.TopKLogitsWarper(top_k))
    warpers.append(transformers.TopPLogitsWarper(top_p))
    return torch.softmax(warpers(None, scores.clone()), dim=-1)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 50, 0.9), (1.0, 5, 1.0), (1.3, 0, 0.5), (0.5, 20, 0.3)])
def test_sampler_draws_from_the_same_distribution_as_hugging_face(temperature, top_k, top_p):
    torch.manual_seed(1)
    vocab, draws = 64, 20_000
    scores = torch.randn(1, vocab) * 2.5
    expected = _hf_probs(scores, temperature, top_k, top_p)[0]
    sampler = fastpath.top_k_top_p_sampler(temperature, top_k, top_p)
    out = sampler(None, scores.expand(draws, vocab).contiguous())
    assert torch.isinf(out).sum(dim=-1).eq(vocab - 1).all()  # exactly one finite score per row: greedy takes it
    picks = out.argmax(dim=-1)
    counts = torch.bincount(picks, minlength=vocab).double() / draws
    assert set(picks.unique().tolist()) <= set(expected.nonzero().flatten().tolist())  # never outside top-k / top-p
    assert (counts - expected.double()).abs().max() < 0.015  # ~4 standard errors at 20,000 draws


def test_sampler_rows_are_independent_and_respect_top_k():
    torch.manual_seed(2)
    scores = torch.randn(3, 1000)
    out = fastpath.top_k_top_p_sampler(1.0, 3, 1.0)(None, scores)
    picks = out.argmax(dim=-1)
    top3 = scores.topk(3, dim=-1).indices
    assert all(picks[i] in top3[i] for i in range(3))
    with pytest.raises(ValueError, match="temperature"):
        fastpath.top_k_top_p_sampler(0.0, 50, 0.9)


def test_local_backend_uses_packed_kernels_and_keeps_greedy_output(tmp_path):
    """A tiny Llama saved as a user would: prepack on and off give the same greedy tokens."""
    from aigc.backends.base import GenerationRequest
    from aigc.backends.local import LocalBackend

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "m")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(300)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="w1", eos_token="w2", pad_token="w0",
                                                unk_token="w3")
    fast.save_pretrained(tmp_path / "m")
    requests = [GenerationRequest(prompt=p, max_new_tokens=6, temperature=0.0) for p in ("w5 w6 w7", "w9")]
    runs = {}
    for prepack in (True, False):
        backend = LocalBackend.from_options(model=str(tmp_path / "m"), device="cpu", dtype="float32", threads=1,
                                            prepack=prepack, repetition_penalty=1.0)
        runs[prepack] = [c.text for c in backend.generate(requests)]
        kernels = backend.describe()["kernels"]
        assert kernels == ("onednn-packed" if prepack and fastpath.mkldnn_linear_available() else "default")
    assert runs[True] == runs[False]
    assert all(t.strip() for t in runs[True])

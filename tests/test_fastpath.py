"""Tests of the local backend's CPU fast path: each part gives transformers' logits and greedy text, and the version gate."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from aigc.backends.local import fastpath  # noqa: E402
from aigc.backends.local.fastpath import fused as fused_step, kernels  # noqa: E402

needs_onednn = pytest.mark.skipif(not fastpath.mkldnn_linear_available(), reason="this torch build has no oneDNN linear ops")
KINDS = [pytest.param(kind, marks=pytest.mark.skipif(not fastpath.packed_kernels_available(kind),
                                                     reason=f"this torch build has no {kind} linear ops"))
         for kind in fastpath.PACKED_KERNELS]
CLASS_NAMES = {fastpath.ONEDNN_PACKED: ("PackedLinear", "packed for oneDNN"),
               fastpath.FBGEMM_FP16: ("HalfLinear", "float16 weights packed for fbgemm")}


def _round_to_fp16(model):
    """Round a float32 model's weights to the nearest float16 (kept float32): what float16 packing stores."""
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.half().float())
    return model


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 48), (5, 48), (3, 1, 48), (2, 7, 48)])
def test_packed_linear_matches_nn_linear(kind, bias, shape):
    """Both kinds compute nn.Linear of the weights they store (float16 packing: the weights rounded to float16)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 96, bias=bias), torch.nn.GELU(), torch.nn.Linear(96, 300, bias=bias)).eval()
    x = torch.randn(*shape)
    with torch.inference_mode():
        original = model(x)
        if kind == fastpath.FBGEMM_FP16:
            _round_to_fp16(model)
        expected = model(x)
        assert fastpath.pack_linears(model, rows_hint=8, kind=kind) == 2
        got = model(x)
    name, described = CLASS_NAMES[kind]
    assert all(type(m).__name__ == name for m in (model[0], model[2]))
    assert described in repr(model)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got, original, rtol=1e-2, atol=5e-3)  # float16 weights stay close to float32 ones


@pytest.mark.skipif(not fastpath.fbgemm_fp16_available(), reason="this torch build has no fbgemm float16 linear ops")
def test_half_linear_stores_float16_weights_and_float32_bias():
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 24)
    linear.bias.data += 1e-4  # a bias that float16 would round
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    half = kernels._packed_linear_class(fastpath.FBGEMM_FP16)(linear)
    stored_weight, stored_bias = torch.ops.quantized.linear_unpack_fp16(half.packed_weight)
    assert torch.equal(stored_weight, weight.half().float()) and not torch.equal(stored_weight, weight)
    assert torch.equal(stored_bias, bias)
    x = torch.randn(3, 16)
    torch.testing.assert_close(half(x), x @ weight.half().float().T + bias, rtol=1e-5, atol=1e-5)


needs_bf16 = pytest.mark.skipif(not fastpath.bf16_prefill_available(), reason="this CPU has no bfloat16 instructions")


@needs_bf16
@pytest.mark.parametrize("kind", KINDS)
def test_bf16_prefill_multiplies_many_positions_in_bfloat16_and_leaves_decode_steps_alone(kind):
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 96)
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    cls = kernels._packed_linear_class(kind)
    bf16, plain = cls(linear, 8, True), cls(linear, 8)
    prefill, step, rows = torch.randn(2, 7, 48), torch.randn(3, 1, 48), torch.randn(5, 48)
    with torch.inference_mode():
        got = bf16(prefill)
        assert got.dtype == torch.float32 and torch.equal(got, got.bfloat16().float())  # rounded to bfloat16
        expected = prefill.bfloat16().float() @ weight.bfloat16().float().T + bias
        torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
        assert not torch.equal(got, plain(prefill))
        for x in (step, rows):  # one position a row (a decode step), or rows without positions: as before
            assert torch.equal(bf16(x), plain(x))
            assert torch.equal(bf16.call(x), plain.call(x))
    assert "prefill in bfloat16" in repr(bf16) and "bfloat16" not in repr(plain)


@pytest.mark.parametrize("kind", KINDS)
def test_pack_linears_leaves_other_dtypes_and_subclasses_alone(kind):
    class MyLinear(torch.nn.Linear):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(8, 8).to(torch.bfloat16), MyLinear(8, 8), torch.nn.Linear(8, 8))
    assert fastpath.pack_linears(model, rows_hint=4, kind=kind) == 1
    assert type(model[0]) is torch.nn.Linear and type(model[1]) is MyLinear
    assert type(model[2]).__name__ == CLASS_NAMES[kind][0]


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
    top3 = scores.topk(3, dim=-1).indices
    out = fastpath.top_k_top_p_sampler(1.0, 3, 1.0)(None, scores)
    picks = out.argmax(dim=-1)
    assert all(picks[i] in top3[i] for i in range(3))
    with pytest.raises(ValueError, match="temperature"):
        fastpath.top_k_top_p_sampler(0.0, 50, 0.9)


def test_sampler_with_the_repetition_penalty_draws_what_transformers_penalty_then_the_sampler_draw():
    torch.manual_seed(3)
    vocab = 500
    ids = torch.randint(0, vocab, (4, 30))
    ids[1, :10] = ids[1, 10]  # a token many times over
    scores = torch.randn(4, vocab) * 3
    scores[0, ids[0]] = -scores[0, ids[0]].abs()  # negative scores are multiplied, not divided
    penalty = transformers.RepetitionPenaltyLogitsProcessor(1.3)

    def seeded():
        return [torch.Generator().manual_seed(i) for i in range(4)]

    for _ in range(5):
        want = fastpath.top_k_top_p_sampler(0.8, 20, 0.9, seeded())(ids, penalty(ids, scores.clone())).argmax(-1)
        got = fastpath.top_k_top_p_sampler(0.8, 20, 0.9, seeded(), repetition_penalty=1.3)(ids, scores.clone())
        assert torch.equal(got.argmax(-1), want)
        ids = torch.cat((ids, want[:, None]), dim=1)
    out = fastpath.penalize_repeats(ids, scores.clone(), 1.3)
    assert torch.equal(out, penalty(ids, scores.clone()))  # the same numbers, not only the same picks
    past = torch.cat((ids, torch.full((4, 1), vocab + 7)), dim=1)  # an id past the output layer: left out
    assert torch.equal(fastpath.penalize_repeats(past, scores.clone(), 1.3), out)


def test_sampler_can_leave_the_prompt_out_of_the_repetition_penalty():
    """``penalty_from``: only the reply's tokens are penalised, so a token of the prompt stays as likely as it was."""
    prompt_token, reply_token, other = 5, 6, 7
    ids = torch.tensor([[prompt_token, prompt_token, reply_token]])  # a prompt of width 2, one token of reply
    scores = torch.zeros(1, 10)
    scores[0, [prompt_token, reply_token, other]] = torch.tensor([3.0, 3.0, 2.9])
    pick = lambda **kw: int(fastpath.top_k_top_p_sampler(1.0, 1, 1.0, repetition_penalty=2.0, **kw)(  # noqa: E731
        ids, scores.clone()).argmax(-1))
    assert pick() == other  # the prompt's token and the reply's both penalised: the third wins
    assert pick(penalty_from=2) == prompt_token  # the prompt's token is not


def _save_tiny(folder, arch: str = "llama", positions: int = 64, fp16_exact: bool = False):
    """A tiny random model and a word-level tokenizer (w0 ... w299), saved as a user would.

    ``fp16_exact``: weights rounded to float16 values (so float16 packing stores them exactly).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    if arch == "llama":
        config = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=positions, bos_token_id=1, eos_token_id=2,
                                          pad_token_id=0)
        model = transformers.LlamaForCausalLM(config)
        (_round_to_fp16(model) if fp16_exact else model).save_pretrained(folder)
    else:
        config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=positions, vocab_size=300,
                                         bos_token_id=1, eos_token_id=2, initializer_range=0.2)
        transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    vocab = {f"w{i}": i for i in range(300)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="w1", eos_token="w2", pad_token="w0",
                                                unk_token="w3")
    fast.save_pretrained(folder)
    return folder


def _backend(folder, fast=None, **options):
    """A CPU float32 local backend on ``folder``; ``fast``: FastPath switches (the benchmark's way, not user options)."""
    from aigc.backends.local import FastPath, LocalBackend, LocalOptions

    options = {"device": "cpu", "dtype": "float32", "threads": 1, **options}
    return LocalBackend(LocalOptions(model=str(folder), **options), fastpath=FastPath(**(fast or {})))


def test_local_backend_uses_packed_kernels_and_keeps_greedy_output(tmp_path):
    """A tiny Llama saved as a user would (weights that float16 holds exactly): every kind of kernel, the same greedy tokens."""
    from aigc.backends.base import GenerationRequest
    from aigc.backends.local import LocalBackend

    folder = _save_tiny(tmp_path / "m", fp16_exact=True)
    requests = [GenerationRequest(prompt=p, max_new_tokens=6, temperature=0.0) for p in ("w5 w6 w7", "w9")]
    runs = {}
    for prepack, fp16, want in ((True, True, fastpath.FBGEMM_FP16), (True, False, fastpath.ONEDNN_PACKED),
                                (False, True, "default")):
        backend = _backend(folder, {"prepack": prepack, "fp16_weights": fp16}, repetition_penalty=1.0)
        runs[want] = [c.text for c in backend.generate(requests)]
        kernels = backend.describe()["kernels"]
        assert kernels == (want if want == "default" or fastpath.packed_kernels_available(want) else "default")
    assert runs[fastpath.FBGEMM_FP16] == runs[fastpath.ONEDNN_PACKED] == runs["default"]
    assert all(t.strip() for t in runs["default"])


def _prefill_bf16_modules(model) -> list[bool]:
    """For each packed linear of a loaded model: whether it multiplies prefills in bfloat16."""
    return [m.prefill is not None for m in model.modules() if type(m).__name__ in ("PackedLinear", "HalfLinear")]


@needs_bf16
def test_bf16_prefill_is_the_default_on_a_bf16_cpu_and_its_switch_turns_it_off(tmp_path, monkeypatch):
    from aigc.backends.base import GenerationRequest
    from aigc.perplexity import load_lm

    folder = _save_tiny(tmp_path / "m", positions=128)
    requests = [GenerationRequest(prompt="w5 w6 w7 w8 w9", max_new_tokens=4, temperature=0.0)]
    for fast, want in (({}, fastpath.BF16_PREFILL), ({"bf16_prefill": False}, fastpath.PLAIN_PREFILL),
                       ({"prepack": False}, fastpath.PLAIN_PREFILL)):
        backend = _backend(folder, fast, repetition_penalty=1.0)
        assert backend.describe()["prefill"] == want  # asked for
        assert backend.generate(requests)[0].text.strip()
        assert backend.describe()["prefill"] == want  # in use
        flags = _prefill_bf16_modules(backend.load()[0])
        assert flags == [want == fastpath.BF16_PREFILL] * len(flags) and (flags or not fast.get("prepack", True))
    model, _, _ = load_lm(str(folder))  # a measurement multiplies in float32
    assert not any(_prefill_bf16_modules(model))
    monkeypatch.setattr(kernels, "bf16_prefill_available", lambda: False)  # a CPU without bfloat16 instructions
    backend = _backend(folder, {"fp16_weights": False}, repetition_penalty=1.0)  # a model not loaded yet
    backend.generate(requests)
    assert backend.describe()["prefill"] == fastpath.PLAIN_PREFILL and not any(_prefill_bf16_modules(backend.load()[0]))


def test_float16_kernels_fall_back_to_onednn_where_fbgemm_is_missing(tmp_path, monkeypatch, caplog):
    """A torch build without fbgemm (ARM): float32 weights packed for oneDNN, and the fused step still runs."""
    import logging

    from aigc.backends.base import GenerationRequest
    from aigc.backends.local import LocalBackend

    if not fastpath.mkldnn_linear_available():
        pytest.skip("this torch build has no oneDNN linear ops")
    monkeypatch.setattr(kernels, "fbgemm_fp16_available", lambda: False)
    backend = LocalBackend.from_options(model=str(_save_tiny(tmp_path / "m")), device="cpu", dtype="float32", threads=1)
    assert backend.describe()["kernels"] == fastpath.FBGEMM_FP16  # asked for, before loading
    with caplog.at_level(logging.INFO, logger="aigc.backends.local"):
        backend.generate([GenerationRequest(prompt="w5 w6", max_new_tokens=3, temperature=0.0)])
    assert backend.describe()["kernels"] == fastpath.ONEDNN_PACKED
    assert backend.describe()["decode"] == fastpath.FUSED_DECODE
    assert "packing float32 weights for oneDNN" in caplog.text


# -- shared prompt prefixes, the reserved KV cache, attention of one new token -----------------------------------

def test_prefix_groups_group_rows_that_begin_alike_and_leave_each_row_a_token():
    shared = list(range(10, 70))
    prompts = [shared + [100, 101], [5, 6, 7], shared + [120], shared[:50] + [9], [5, 6, 7]]
    groups, lengths = fastpath.prefix_groups(prompts, min_shared=48)
    assert groups == [0, 1, 0, 0, 2]  # [5, 6, 7] twice share only 2 tokens, under the minimum: a group each...
    assert lengths == [50, 2, 2]  # ...whose prefix is all of the prompt but its last token
    same, lengths = fastpath.prefix_groups([shared, shared], min_shared=48)
    assert same == [0, 0] and lengths == [59]  # the last token stays out of the prefix


def test_shared_prefill_layout_keeps_every_row_and_costs_less():
    shared = list(range(10, 70))
    prompts = [shared + [100, 101], shared + [120], [200, 201]]
    groups, lengths = fastpath.prefix_groups(prompts, min_shared=48)
    layout = fastpath.shared_prefill_layout(prompts, groups, lengths, pad_id=0)
    for prompt, row, mask in zip(prompts, layout["input_ids"], layout["attention_mask"]):
        assert [t for t, m in zip(row, mask) if m] == prompt  # the real tokens, in order
        assert all(t == 0 for t, m in zip(row, mask) if not m)
    assert len({len(r) for r in layout["input_ids"]}) == 1
    assert layout["prefix_ids"][0][-60:] == shared and layout["prefix_mask"][1] == [0] * 59 + [1]
    assert layout["tokens"] == 2 * 60 + 3 * 2 < layout["plain_tokens"] == 3 * 62


def test_best_layout_shares_whole_prompts_of_candidates_rather_than_a_short_common_start():
    start = list(range(10, 60))  # 50 tokens all rows begin with (a system turn)
    x, y = list(range(100, 160)), list(range(200, 260))  # two sections' own 60 tokens
    prompts = [start + x, start + x, start + y, start + y]  # two candidates of each
    groups, lengths = fastpath.prefix_groups(prompts, min_shared=48)
    assert groups == [0, 0, 0, 0] and lengths == [50]  # the first match: only the common start is shared
    groups, lengths = fastpath.duplicate_groups(prompts)
    alike = fastpath.shared_prefill_layout(prompts, groups, lengths, pad_id=0)
    assert alike["groups"] == [0, 0, 1, 1] and alike["tokens"] == 2 * 109 + 4 * 1  # vs 50 + 4 * 61
    layout = fastpath.best_layout(prompts, pad_id=0)  # both: the start once, each section's own 59 once
    assert layout["groups"] == [0, 0, 1, 1] and layout["middle_outer"] == [0, 0]
    assert layout["tokens"] == 50 + 2 * 59 + 4 * 1
    assert fastpath.best_layout([x, y, start], pad_id=0) is None  # nothing in common


def test_nested_layout_keeps_every_row_in_order():
    start = list(range(10, 60))
    x, y = list(range(100, 160)), list(range(200, 230))  # sections of different lengths
    prompts = [start + x, start + y, start + x, list(range(300, 360)), start + y, start + [7]]
    layout = fastpath.nested_prefill_layout(prompts, pad_id=0)
    assert layout["groups"] == [0, 1, 0, 2, 1, 3] and layout["middle_outer"] == [0, 0, 1, 0]
    for prompt, row, mask in zip(prompts, layout["input_ids"], layout["attention_mask"]):
        assert [t for t, m in zip(row, mask) if m] == prompt
    assert len({len(r) for r in layout["input_ids"]}) == 1
    assert fastpath.nested_prefill_layout([start + x, start + y], pad_id=0) is None  # no two rows alike


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_duplicate_prompts_share_their_prefill_and_give_the_same_tokens(tmp_path, arch, caplog):
    import logging

    from aigc.backends.base import GenerationRequest

    folder = _save_tiny(tmp_path / arch, arch, positions=256)
    start = " ".join(f"w{i}" for i in range(10, 60))
    x, y = " ".join(f"w{i}" for i in range(100, 160)), " ".join(f"w{i}" for i in range(200, 260))
    requests = [GenerationRequest(prompt=f"{start} {rest}", max_new_tokens=8, temperature=0.7, seed=seed)
                for rest in (x, y) for seed in (1, 2)]
    runs = {}
    for fast in (True, False):
        backend = _backend(folder, {"share_prefix": fast, "reserve_cache": fast}, max_batch_size=4)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="aigc.backends.local"):
            runs[fast] = [(c.text, c.completion_tokens) for c in backend.generate(requests)]
        assert ("prompt prefixes shared by 1 groups (2 subgroups) of 4 rows" in caplog.text) == fast
    assert runs[True] == runs[False]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shared_prefix_and_reserved_cache_give_the_same_tokens(tmp_path, arch, caplog):
    """Rows with a 60-token common start: prefilled once per group and decoded into a reserved cache, or plainly."""
    import logging

    from aigc.backends.base import GenerationRequest
    from aigc.backends.local import LocalBackend

    folder = _save_tiny(tmp_path / arch, arch, positions=128)
    shared = " ".join(f"w{i}" for i in range(10, 70))
    prompts = [f"{shared} w100 w101", f"{shared} w120", "w200 w201", f"{shared} w130 w131 w132"]
    requests = [GenerationRequest(prompt=p, max_new_tokens=10, temperature=0.0) for p in prompts]
    runs = {}
    for fast in (True, False):
        backend = _backend(folder, {"share_prefix": fast, "reserve_cache": fast}, repetition_penalty=1.0,
                           max_batch_size=4)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="aigc.backends.local"):
            runs[fast] = [(c.text, c.completion_tokens, c.prompt_tokens) for c in backend.generate(requests)]
        assert ("prompt prefixes shared by 2 groups of 4 rows" in caplog.text) == fast
    assert runs[True] == runs[False]
    assert all(r[1] > 0 for r in runs[True])


def test_growing_layer_holds_what_dynamic_layer_holds():
    from transformers.cache_utils import DynamicLayer

    grow, plain = fastpath.cache.growing_layer_class()(capacity=6), DynamicLayer()
    torch.manual_seed(0)
    steps = [torch.randn(3, 2, n, 4) for n in (4, 1, 1, 1, 2)]  # prefill, decode steps, past the reserved room
    for i, k in enumerate(steps):
        got, want = grow.update(k, -k), plain.update(k, -k)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
        if i == 1:  # a reorder replaces the tensors: the layer copies them into new room
            index = torch.tensor([2, 0, 0])
            grow.batch_select_indices(index), plain.batch_select_indices(index)
    assert grow.get_seq_length() == plain.get_seq_length() == 9
    torch.testing.assert_close(grow.keys, plain.keys)
    torch.testing.assert_close(grow.values, plain.values)
    cache = fastpath.growing_cache(transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=16, num_hidden_layers=3, num_attention_heads=2)), 10)
    assert [type(layer).__name__ for layer in cache.layers] == ["GrowingLayer"] * 3


def _sdpa(q, k, v, keep, scaling):
    """transformers' sdpa attention of one query per row (the reference), ``keep``: None or (batch, 1, 1, keys) bool."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = SimpleNamespace(num_key_value_groups=q.shape[1] // k.shape[1], is_causal=True, training=False)
    return sdpa_attention_forward(module, q, k, v, keep, scaling=scaling)[0]  # (batch, 1, heads, dim)


def _grouped(q, k, v, keep, scaling):
    """The fused step's attention on the same inputs, shaped as sdpa's output."""
    batch, heads, _, dim = q.shape
    kv_heads = k.shape[1]
    bias = None if keep is None else fastpath.product_bias(fastpath.blocked_bias(~keep, q.dtype), kv_heads)
    out = fastpath.grouped_attention((q * scaling).reshape(batch, kv_heads, heads // kv_heads, dim), k, v, bias)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2)


@pytest.mark.parametrize("padded", [True, False])
def test_grouped_attention_matches_sdpa(padded):
    torch.manual_seed(0)
    q, k, v = torch.randn(4, 6, 1, 8), torch.randn(4, 2, 11, 8), torch.randn(4, 2, 11, 8)
    keep = torch.ones(4, 1, 1, 11, dtype=torch.bool)
    keep[1, ..., :5] = False  # a left-padded row
    keep = keep if padded else None
    want, got = _sdpa(q, k, v, keep, 0.3), _grouped(q, k, v, keep, 0.3)
    assert got.shape == want.shape == (4, 1, 6, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_grouped_attention_keeps_a_float32_softmax_for_bfloat16():
    torch.manual_seed(0)
    q, k, v = (torch.randn(shape).to(torch.bfloat16) for shape in ((3, 4, 1, 8), (3, 2, 40, 8), (3, 2, 40, 8)))
    got = _grouped(q, k, v, None, 8**-0.5)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), _sdpa(q.float(), k.float(), v.float(), None, 8**-0.5), rtol=2e-2, atol=1e-2)


# -- the fused decode step of Llama-family models -----------------------------------------------------

def _tiny_llama(**overrides):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=120, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=0, **overrides)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cache_kind", ["growing", "dynamic"])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_decode_step_gives_transformers_logits(monkeypatch, kind, cache_kind, bias):
    """Prefill (transformers' forward reading the fused q/k/v and gate/up) and 6 decode steps (aigc's), left padding.

    Float16 packing is compared with transformers running the same weights rounded to float16.
    """
    import copy

    from transformers import DynamicCache

    plain = _tiny_llama(attention_bias=bias, mlp_bias=bias)
    if kind == fastpath.FBGEMM_FP16:
        _round_to_fp16(plain)
    fused = copy.deepcopy(plain)
    assert fastpath.install_fused_decode(fused, rows_hint=3, kind=kind)
    fastpath.pack_linears(fused, 3, kind=kind)
    layer, mlp_class = fused.model.layers[0], CLASS_NAMES[kind][0]
    other_class = "PackedLinear" if fastpath.mkldnn_linear_available() else mlp_class  # float16 for the MLP only
    assert type(layer.mlp.down_proj).__name__ == type(layer.mlp.gate_proj.fused).__name__ == mlp_class
    assert type(layer.self_attn.o_proj).__name__ == type(layer.self_attn.q_proj.fused).__name__ == other_class
    assert type(fused.lm_head).__name__ == other_class
    steps = []
    real_step = fused_step._decode_step
    monkeypatch.setattr(fused_step, "_decode_step", lambda model, kwargs: steps.append(1) or real_step(model, kwargs))
    ids = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15], [0, 20, 21, 22, 23, 24, 25]])
    mask = (ids != 0).long()
    caches = [fastpath.growing_cache(m, 16) if cache_kind == "growing" else DynamicCache(config=m.config)
              for m in (plain, fused)]
    with torch.inference_mode():
        want = plain(input_ids=ids, attention_mask=mask, cache=caches[0], use_cache=True).logits[:, -1]
        got = fused(input_ids=ids, attention_mask=mask, cache=caches[1], use_cache=True).logits[:, -1]
        for step in range(7):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            token = want.argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            want = plain(input_ids=token, attention_mask=mask, cache=caches[0], use_cache=True).logits[:, -1]
            got = fused(input_ids=token, attention_mask=mask, cache=caches[1], use_cache=True).logits[:, -1]
    assert len(steps) == 7  # every one-token call took the fused step; the prefill did not
    assert caches[1].get_seq_length() == caches[0].get_seq_length() == 14


@needs_onednn
def test_fused_decode_keeps_generate_output_and_declines_other_models():
    import copy

    plain = _tiny_llama()
    fused = copy.deepcopy(plain)
    assert fastpath.install_fused_decode(fused, rows_hint=2)
    ids = torch.tensor([[0, 0, 5, 6, 7], [9, 10, 11, 12, 13]])
    settings = dict(attention_mask=(ids != 0).long(), max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        assert torch.equal(fused.generate(ids, **settings), plain.generate(ids, **settings))
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))
    assert "not 'llama'" in fastpath.fused_decode_unsupported(gpt2)
    assert not fastpath.install_fused_decode(gpt2, 2) and "forward" not in vars(gpt2)
    half = _tiny_llama().to(torch.bfloat16)
    assert "float32" in fastpath.fused_decode_unsupported(half)
    assert not fastpath.install_fused_decode(half, 2)


@needs_onednn
def test_local_backend_fused_decode_is_the_default_and_keeps_greedy_output(tmp_path):
    """Both ways, with rows sharing a prompt prefix: the same greedy tokens; describe() says which decode step ran."""
    from aigc.backends.base import GenerationRequest
    from aigc.backends.local import LocalBackend

    folder = _save_tiny(tmp_path / "m", positions=128)
    shared = " ".join(f"w{i}" for i in range(10, 70))
    requests = [GenerationRequest(prompt=p, max_new_tokens=8, temperature=0.0)
                for p in (f"{shared} w100 w101", f"{shared} w120", "w200 w201", "w5")]
    runs = {}
    for wanted in (True, False):
        backend = _backend(folder, {"fused_decode": wanted}, repetition_penalty=1.0, max_batch_size=4)
        expected = fastpath.FUSED_DECODE if wanted else "transformers"
        assert backend.describe()["decode"] == expected  # the plan, before loading
        runs[wanted] = [c.text for c in backend.generate(requests)]
        assert backend.describe()["decode"] == expected
    assert runs[True] == runs[False]
    assert all(t.strip() for t in runs[True])
    gpt2 = LocalBackend.from_options(model=str(_save_tiny(tmp_path / "g", "gpt2")), device="cpu", dtype="float32",
                                     threads=1)
    gpt2.load()
    assert gpt2.describe()["decode"] == "transformers"  # asked for, but GPT-2 is not a Llama


# -- one switch for users, and the transformers releases the fast path is tested with ----------------------

def _plain_model(model) -> bool:
    """Whether a loaded model is transformers' own: no packed linears, no fused decode step."""
    return "forward" not in vars(model) and not any(type(m).__name__ in ("PackedLinear", "HalfLinear", "SharedOutput")
                                                    for m in model.modules())


def test_fast_false_is_plain_transformers_with_the_same_greedy_text(tmp_path):
    from aigc.backends.base import GenerationRequest
    from aigc.backends.local import FastPath, LocalBackend, LocalOptions
    from aigc.errors import ConfigError

    folder = _save_tiny(tmp_path / "m", positions=128, fp16_exact=True)
    shared = " ".join(f"w{i}" for i in range(10, 70))
    requests = [GenerationRequest(prompt=p, max_new_tokens=8, temperature=0.0)
                for p in (f"{shared} w100 w101", f"{shared} w120", "w200 w201")]
    options = dict(device="cpu", dtype="float32", threads=1, repetition_penalty=1.0, max_batch_size=4)
    fast = LocalBackend.from_options(model=str(folder), **options)
    plain = LocalBackend(LocalOptions(model=str(folder), fast=False, **options), fastpath=FastPath())  # the option wins
    assert [c.text for c in plain.generate(requests)] == [c.text for c in fast.generate(requests)]
    info = plain.describe()
    assert (info["fast"], info["kernels"], info["decode"], info["share_prefix"], info["reserve_cache"]) == (
        False, "default", "transformers", False, False)
    assert _plain_model(plain.load()[0])
    assert fast.describe()["fast"] and not _plain_model(fast.load()[0])
    with pytest.raises(ConfigError, match="unknown option 'share_prefix'"):
        LocalBackend.from_options(share_prefix=False)  # the parts are not user options


def test_the_fast_path_runs_only_on_the_tested_transformers_releases(tmp_path, monkeypatch, caplog):
    """Another release: plain generate(), said in one log line however many backends ask."""
    import logging

    from aigc.backends.base import GenerationRequest

    assert fastpath.TESTED_TRANSFORMERS.contains(transformers.__version__)  # what these tests run on
    folder = _save_tiny(tmp_path / "m")
    monkeypatch.setattr(fastpath, "transformers_version", lambda: "5.99.0")
    monkeypatch.setattr(fastpath, "_GATE_LOGGED", False)
    with caplog.at_level(logging.INFO, logger="aigc.backends.local"):
        backend = _backend(folder, repetition_penalty=1.0)
        assert backend.describe()["fast"] is False and backend.describe()["kernels"] == "default"
        [completion] = backend.generate([GenerationRequest(prompt="w5 w6", max_new_tokens=3, temperature=0.0)])
        _backend(folder).describe()
    assert completion.completion_tokens > 0 and _plain_model(backend.load()[0])
    gate_lines = [r.getMessage() for r in caplog.records if "outside the range" in r.getMessage()]
    assert len(gate_lines) == 1 and "5.99.0" in gate_lines[0] and str(fastpath.TESTED_TRANSFORMERS) in gate_lines[0]
    assert backend.describe()["decode"] == "transformers"
    monkeypatch.setattr(fastpath, "transformers_version", lambda: transformers.__version__)
    assert _backend(folder).describe()["fast"] is True


def test_pyproject_pins_the_tested_transformers_releases():
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    [pin] = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "transformers"]
    assert pin.specifier == fastpath.TESTED_TRANSFORMERS

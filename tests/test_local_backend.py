"""Tests of the local transformers backend: a tiny GPT-2 built here, and the real embedded model (slow)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from aigc.backends import create_backend
from aigc.backends.base import GenerationRequest, Message
from aigc.backends.local import LocalBackend, LocalOptions, loaded_models
from aigc.errors import BackendError, ConfigError

PROMPTS = [
    "Once upon a time",
    "The history of the printing press begins in the fifteenth century, when",
    "Bread",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A 2-layer GPT-2 (128-token context) with the embedded tokenizer minus its chat template, saved as a user would."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from aigc.backends.local.embedded import ensure_converted

    tokenizer = AutoTokenizer.from_pretrained(ensure_converted())
    tokenizer.chat_template = None
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=64, n_positions=128, vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, initializer_range=0.2,
    )
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert not (folder / "chat_template.jinja").exists()
    return folder, tokenizer


@pytest.fixture(scope="module")
def backend(tiny_gpt2):
    # CPU float32 everywhere, so exact comparisons hold on a GPU machine too.
    return LocalBackend.from_options(model=str(tiny_gpt2[0]), device="cpu", dtype="float32", threads=1, max_batch_size=2)


def greedy(prompt: str, n: int = 8, **kw) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, max_new_tokens=n, temperature=0.0, **kw)


def test_batch_returns_completions_in_order_with_token_counts(backend, tiny_gpt2):
    tokenizer = tiny_gpt2[1]
    # Three prompt lengths, two token budgets, and max_batch_size=2: sorting, chunking and regrouping all happen.
    requests = [greedy(PROMPTS[0], 6), greedy(PROMPTS[1], 6), greedy(PROMPTS[2], 4)]
    out = backend.generate(requests)
    assert len(out) == 3
    for request, completion in zip(requests, out):
        assert completion.prompt_tokens == len(tokenizer(request.prompt)["input_ids"])
        assert 0 < completion.completion_tokens <= request.max_new_tokens
        assert completion.seconds > 0
    assert len({c.prompt_tokens for c in out}) == 3


def test_plain_prompt_used_without_chat_template(backend, tiny_gpt2):
    tokenizer = tiny_gpt2[1]
    request = GenerationRequest(
        messages=(Message(role="system", content="Be brief."), Message(role="user", content="Name a fruit.")),
        max_new_tokens=3, temperature=0.0,
    )
    [completion] = backend.generate([request])
    assert completion.prompt_tokens == len(tokenizer(request.as_plain_prompt())["input_ids"])


def test_same_seed_repeats_and_other_seed_differs(backend):
    def sampled(seed: int) -> list[str]:
        reqs = [GenerationRequest(prompt=p, max_new_tokens=12, temperature=5.0, top_p=1.0, seed=seed) for p in PROMPTS[:2]]
        return [c.text for c in backend.generate(reqs)]

    first = sampled(7)
    assert sampled(7) == first
    assert sampled(8) != first


def test_a_seeded_request_samples_alike_whatever_shares_its_call(backend):
    """Seeds are per row: a section samples the same alone or batched with another article's sections."""
    def req(prompt: str, seed: int) -> GenerationRequest:
        return GenerationRequest(prompt=prompt, max_new_tokens=10, temperature=1.5, top_p=0.95, seed=seed)

    alone = [backend.generate([req(PROMPTS[0], 1)])[0].text, backend.generate([req(PROMPTS[1], 2)])[0].text]
    together = [c.text for c in backend.generate([req(PROMPTS[0], 1), req(PROMPTS[1], 2)])]
    assert together == alone


def test_a_batch_writes_as_many_local_articles_at_once_as_fill_one_call():
    assert [LocalBackend.from_options(device="cpu").concurrent_articles(n) for n in (1, 3, 5, 8, 20)] == [16, 5, 3, 2, 1]
    assert LocalBackend.from_options(device="cpu", max_batch_size=4).concurrent_articles(3) == 1


def test_loading_generation_and_scoring_run_on_the_model_thread(tiny_gpt2, monkeypatch):
    """Torch work of a model stays on one thread, whichever thread asks (two threads' OpenMP teams ran 40% slower)."""
    import threading

    from aigc.evaluate import perplexity

    names: list[str] = []
    real_load = LocalBackend._load_fresh
    monkeypatch.setattr(LocalBackend, "_load_fresh",
                        lambda self, *key: names.append(("load", threading.current_thread().name)) or real_load(self, *key))
    backend = LocalBackend.from_options(model=str(tiny_gpt2[0]), device="cpu", dtype="bfloat16", threads=1)
    model, tokenizer = backend.load()
    hook = model.register_forward_pre_hook(lambda *_: names.append(("forward", threading.current_thread().name)))
    try:
        backend.generate([greedy("The city", 3)])
        worker = threading.Thread(target=lambda: backend.generate([greedy("The river", 3)]), name="article-2")
        worker.start()
        worker.join()
        perplexity(["The city is warm in the summer."], lm=model, tokenizer=tokenizer)
    finally:
        hook.remove()
    assert names[0] == ("load", "aigc-model")
    assert {kind for kind, _ in names} == {"load", "forward"} and len(names) > 3
    assert {name for _, name in names} == {"aigc-model"}


def test_the_embedded_models_conversion_runs_on_the_model_thread(monkeypatch, tmp_path):
    """A first run converts the GGUF with torch: on the calling thread it slowed every later generation 2x."""
    import threading

    from aigc.backends.local import backend as local

    seen: list[str] = []
    monkeypatch.setattr(local, "ensure_converted", lambda: seen.append(threading.current_thread().name) or tmp_path)
    assert LocalBackend.from_options()._model_path() == str(tmp_path)
    assert seen == ["aigc-model"]


def test_model_thread_hands_errors_back_and_runs_nested_calls_inline():
    from aigc.backends.local import run_on_model_thread

    def fail():
        raise ValueError("boom on the model thread")

    with pytest.raises(ValueError, match="boom on the model thread"):
        run_on_model_thread(fail)
    assert run_on_model_thread(lambda: run_on_model_thread(lambda: 42)) == 42  # no deadlock from within


def test_calls_from_several_threads_take_turns_on_the_model_thread(backend):
    """Two threads calling at once (articles written side by side) each get their own completions, as if alone."""
    import threading

    expected = {i: backend.generate([greedy(p, 6)])[0].text for i, p in enumerate(PROMPTS)}
    results: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, backend.generate([greedy(PROMPTS[i], 6)])[0].text))
               for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == expected


def test_greedy_batched_equals_one_at_a_time(backend):
    batched = backend.generate([greedy(p, 10) for p in PROMPTS])
    single = [backend.generate([greedy(p, 10)])[0] for p in PROMPTS]
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.completion_tokens for c in batched] == [c.completion_tokens for c in single]


def test_finish_reason_length_when_max_new_tokens_is_tiny(backend):
    [completion] = backend.generate([greedy(PROMPTS[0], 2)])
    assert completion.finish_reason == "length"
    assert completion.completion_tokens == 2


def test_stop_string_trims_text_and_finishes_with_stop(backend):
    full = backend.generate([greedy(PROMPTS[1], 12)])[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), f"pick a visible stop string from {full!r}"
    [completion] = backend.generate([greedy(PROMPTS[1], 12, stop=(stop,))])
    assert completion.text == full[: full.find(stop)]
    assert completion.finish_reason == "stop"


def test_rows_with_their_own_budget_and_stops_share_one_call_and_get_what_they_get_alone(backend, monkeypatch):
    """The outlines of a 3- and a 5-section article (other stops) or follow-ups of other lengths: one call, not two."""
    full = backend.generate([greedy(PROMPTS[1], 12)])[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), f"pick a visible stop string from {full!r}"
    requests = [greedy(PROMPTS[0], 3), greedy(PROMPTS[1], 12, stop=(stop,))]
    alone = [backend.generate([r])[0] for r in requests]
    chunks = []
    run_chunk = LocalBackend._run_chunk
    monkeypatch.setattr(LocalBackend, "_run_chunk", lambda self, *a: chunks.append(len(a[2])) or run_chunk(self, *a))
    together = backend.generate(requests)
    assert chunks == [2]
    assert [(c.text, c.completion_tokens, c.finish_reason) for c in together] == \
        [(c.text, c.completion_tokens, c.finish_reason) for c in alone]
    assert together[0].completion_tokens == 3 and together[0].finish_reason == "length"
    assert together[1].text == full[: full.find(stop)] and together[1].finish_reason == "stop"


def test_prompt_longer_than_context_does_not_crash(backend):
    long_prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 40)  # ~400 tokens, context is 128
    [completion] = backend.generate([greedy(long_prompt, 100)])
    assert completion.prompt_tokens + completion.completion_tokens <= 128
    assert completion.completion_tokens > 0


def test_model_loads_lazily_and_is_shared(tiny_gpt2):
    folder = str(tiny_gpt2[0].resolve())
    first = LocalBackend.from_options(model=str(tiny_gpt2[0]), threads=1, device="cpu", dtype="float16")
    assert not any(key[0] == folder and key[2] == "float16" for key in loaded_models())
    assert first.model_id == folder
    assert first.describe()["max_batch_size"] == "auto"
    second = create_backend("local", model=str(tiny_gpt2[0]), threads=1, device="cpu", dtype="float16")
    first.generate([greedy(PROMPTS[2], 2)])
    assert (folder, "cpu", "float16", "default", "transformers", "model dtype") in loaded_models()
    assert first.load()[0] is second.load()[0]
    info = second.describe()
    assert info["device"] == "cpu" and info["dtype"] == "float16"
    assert isinstance(info["max_batch_size"], int) and 1 <= info["max_batch_size"] <= 16


def test_model_and_tokenizer_passed_in(tiny_gpt2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2[0])
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2[0])
    backend = LocalBackend(LocalOptions(max_batch_size=4), model=model, tokenizer=tokenizer)
    assert tokenizer.padding_side == "left"
    out = backend.generate([greedy(p, 3) for p in PROMPTS])
    assert [c.prompt_tokens for c in out] == [len(tokenizer(p)["input_ids"]) for p in PROMPTS]
    with pytest.raises(ConfigError):
        LocalBackend(model=model)


def test_bad_model_path_is_a_clear_backend_error(tmp_path):
    missing = tmp_path / "no-such-model"
    backend = LocalBackend.from_options(model=str(missing))  # cheap: nothing is loaded yet
    with pytest.raises(BackendError) as info:
        backend.generate([greedy("hi", 2)])
    assert str(missing) in str(info.value)
    assert info.value.retryable is False
    assert "\n" not in str(info.value)


def test_unknown_hub_id_offline_is_a_clear_backend_error():
    backend = LocalBackend.from_options(model="aigc-tests/no-such-model")
    with pytest.raises(BackendError) as info:
        backend.generate([greedy("hi", 2)])
    assert "aigc-tests/no-such-model" in str(info.value)
    assert info.value.retryable is False


def test_typo_option_is_config_error():
    with pytest.raises(ConfigError, match="max_batch_sise"):
        LocalBackend.from_options(max_batch_sise=4)
    with pytest.raises(ConfigError, match="dtype"):
        LocalBackend.from_options(dtype="float64")


def test_embedded_model_id_without_loading():
    backend = LocalBackend.from_options()
    assert backend.model_id == "SmolLM2-135M-Instruct"


@pytest.mark.slow
def test_embedded_model_chat_batch():
    backend = LocalBackend.from_options(threads=2)
    requests = [
        GenerationRequest(messages=(Message(role="user", content=q),), max_new_tokens=24, seed=3)
        for q in ("What is the capital of France?", "Give one tip for writing a clear paragraph.")
    ]
    out = backend.generate(requests)
    assert len(out) == 2
    for completion in out:
        assert completion.finish_reason in ("stop", "length")
        assert sum(ch.isalpha() for ch in completion.text) > 10
        assert 0 < completion.completion_tokens <= 24
        ascii_letters = sum(ch.isascii() and ch.isalpha() for ch in completion.text)
        assert ascii_letters >= 0.8 * sum(ch.isalpha() for ch in completion.text)  # English, not noise
    assert [c.text for c in backend.generate(requests)] == [c.text for c in out]


def test_an_old_converted_copy_is_converted_again(tmp_path, monkeypatch):
    import json

    from aigc.backends.local import embedded

    monkeypatch.setenv("AIGC_CACHE_DIR", str(tmp_path))
    folder = embedded.converted_folder()
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    assert not embedded.is_converted()  # no marker: made by an older aigc
    (folder / "aigc-conversion.json").write_text(json.dumps({"version": embedded.CONVERSION_VERSION - 1}))
    assert not embedded.is_converted()
    (folder / "aigc-conversion.json").write_text(json.dumps({"version": embedded.CONVERSION_VERSION}))
    assert embedded.is_converted()

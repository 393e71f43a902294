"""Tests for fine-tuning: corpus loading and its errors, packing, LoRA/full training, resume, the CLI and flow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aigc import finetune as ft  # noqa: E402
from aigc.errors import ConfigError, InputError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HOUSE_CORPUS = REPO / "data" / "corpus"
PARAGRAPHS = [
    "# Why the buses run late\n\nThe city council met on Tuesday to discuss the bus routes. Residents asked for more "
    "evening service and safer stops near the schools. The transit office said new buses arrive in the spring.",
    "# How the budget works\n\nThe city collects property taxes, fees and state aid. It spends most of the money on "
    "schools, roads and parks, and the council votes on the budget every June after two public hearings.",
    "# Library hours\n\nThe library will open longer this winter. Branches open at nine in the morning and close at "
    "eight in the evening on weekdays, and the library lends laptops, tools and museum passes for free.",
    "# Spring floods\n\nMelting snow upstream raises the river every spring. The old levees near the market were not "
    "built for it, so the city spends money each year on pumps, sandbags and cleanup along Front Street.",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer GPT-2 with a 512-token byte-level BPE tokenizer trained on the house corpus (no chat template)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    texts = [p.read_text() for p in sorted(HOUSE_CORPUS.glob("*.md"))] + PARAGRAPHS
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=128, vocab_size=len(tokenizer),
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    (folder / "nested").mkdir(parents=True)
    for i, text in enumerate(PARAGRAPHS):
        (folder / ("nested" if i % 2 else ".") / f"a{i}.{'txt' if i == 3 else 'md'}").write_text(text * 2)
    return folder


def _options(corpus: Path, output: Path, model: str, **kw) -> ft.FinetuneOptions:
    defaults = dict(block_size=32, batch_size=4, max_steps=8, save_steps=100, progress=False, logging_steps=4)
    return ft.make_options(corpus=corpus, output=output, model=model, **{**defaults, **kw})


def _generate(folder: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("The city council", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4
    return tokenizer.decode(out[0])


def _check_record(record: dict, output: Path, method: str) -> None:
    on_disk = json.loads((output / ft.RESULT_FILE).read_text())
    assert on_disk == record
    assert record["method"] == method
    assert record["corpus"]["documents"] == 4 and record["corpus"]["kind"] == "text"
    assert record["corpus"]["blocks"]["train"] >= 1 and record["corpus"]["blocks"]["val"] >= 1
    assert record["corpus"]["tokens"] >= 32 * 2 and len(record["corpus"]["sha256"]) == 64
    assert record["settings"]["block_size"] == 32 and record["training"]["global_step"] == 8
    assert record["aigc_version"]
    assert record["perplexity"]["after"] < record["perplexity"]["before"]
    assert not (output / "adapter_config.json").exists()  # a plain model folder, not an adapter
    assert (output / ft.CHECKPOINTS / "checkpoint-8").is_dir()


def test_full_finetune_lowers_val_perplexity_and_saves_a_loadable_model(tiny_model, corpus, tmp_path):
    output = tmp_path / "out"
    record = ft.finetune(_options(corpus, output, tiny_model, method="full", lr=3e-3))
    _check_record(record, output, "full")
    assert record["training"]["trainable_parameters"] == record["training"]["total_parameters"]
    assert _generate(output).startswith("The city council")


def test_lora_finetune_merges_adapter_into_a_plain_model(tiny_model, corpus, tmp_path):
    from safetensors import safe_open

    output = tmp_path / "out"
    record = ft.finetune(_options(corpus, output, tiny_model, method="lora", lr=1e-2))
    _check_record(record, output, "lora")
    assert record["training"]["trainable_parameters"] < record["training"]["total_parameters"] / 10
    assert record["settings"]["lora_r"] == 8
    assert (output / ft.CHECKPOINTS / "checkpoint-8" / "adapter_model.safetensors").is_file()
    with safe_open(output / "model.safetensors", "pt") as fh:
        keys = list(fh.keys())
    assert keys and not any("lora" in k for k in keys)
    assert json.loads((output / "config.json").read_text())["use_cache"] is True
    _generate(output)
    local = pytest.importorskip("aigc.backends.local")
    from aigc.backends.base import GenerationRequest

    backend = local.LocalBackend.from_options(model=str(output))
    [completion] = backend.generate([GenerationRequest(prompt="The city", max_new_tokens=3, temperature=0)])
    assert completion.completion_tokens >= 1


def test_resume_continues_from_the_last_checkpoint(tiny_model, corpus, tmp_path):
    output = tmp_path / "out"
    first = ft.finetune(_options(corpus, output, tiny_model, method="lora", lr=1e-2, max_steps=4, save_steps=2))
    assert first["training"]["resumed_from"] is None and first["training"]["global_step"] == 4
    assert (output / ft.CHECKPOINTS / "checkpoint-4").is_dir()

    second = ft.finetune(_options(corpus, output, tiny_model, method="lora", lr=1e-2, max_steps=6, save_steps=2))
    assert second["training"]["resumed_from"] == "checkpoint-4"
    assert second["training"]["global_step"] == 6 and second["training"]["steps"] == 2
    state = json.loads((output / ft.CHECKPOINTS / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6

    # Checkpoints of a LoRA run cannot silently seed a full run.
    with pytest.raises(InputError, match="different run.*method"):
        ft.finetune(_options(corpus, output, tiny_model, method="full", max_steps=8, save_steps=2))
    # --no-resume starts over.
    fresh = ft.finetune(_options(corpus, output, tiny_model, method="full", max_steps=2, save_steps=2, resume=False))
    assert fresh["training"]["resumed_from"] is None and fresh["training"]["global_step"] == 2


def test_explicit_resume_without_checkpoints_is_an_error(tiny_model, corpus, tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        ft.finetune(_options(corpus, tmp_path / "out", tiny_model, resume=True))


def test_load_corpus_kinds(tmp_path):
    house = ft.load_corpus(HOUSE_CORPUS)
    assert house.kind == "text" and 12 <= len(house.texts) <= 20
    assert all(150 <= len(t.split()) <= 300 for t in house.texts)

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"body": "first"}\n\n{"body": "second", "id": 2}\n')
    loaded = ft.load_corpus(jsonl, text_field="body")
    assert loaded.kind == "jsonl" and loaded.texts == ["first", "second"]

    outputs = tmp_path / "outputs"
    for name in ("one", "two"):
        (outputs / name).mkdir(parents=True)
        (outputs / name / "article.md").write_text(f"---\ntitle: {name}\n---\n# Article {name}\n\nBody.")
        (outputs / name / "article.json").write_text("{}")
        (outputs / name / "outline.md").write_text("outline, not an article")
    (outputs / "notes.md").write_text("loose notes")
    past = ft.load_corpus(outputs)
    assert past.kind == "aigc-outputs" and past.texts == ["# Article one\n\nBody.", "# Article two\n\nBody."]


def test_corpus_hash_follows_the_text(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "a.md").write_text("hello")
    (folder / ".hidden.md").write_text("ignored")
    first = ft.load_corpus(folder)
    assert first.texts == ["hello"] and first.sha256 == ft.load_corpus(folder).sha256
    (folder / "a.md").write_text("hello again")
    assert ft.load_corpus(folder).sha256 != first.sha256


def _bad(tmp_path: Path, case: str) -> tuple[Path, dict]:
    if case == "missing":
        return tmp_path / "nope", {}
    if case in ("empty", "no-text-files"):
        (tmp_path / "c").mkdir()
        if case == "no-text-files":
            (tmp_path / "c" / "data.csv").write_text("a,b\n")
        return tmp_path / "c", {}
    if case == "blank-docs":
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "a.md").write_text("  \n\n")
        return tmp_path / "c", {}
    if case == "non-utf8":
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "good.md").write_text("fine")
        (tmp_path / "c" / "latin1.md").write_bytes("café".encode("latin-1"))
        return tmp_path / "c", {}
    if case == "wrong-suffix":
        (tmp_path / "c.csv").write_text("a,b")
        return tmp_path / "c.csv", {}
    path = tmp_path / "c.jsonl"
    path.write_text({
        "bad-json": '{"text": "ok"}\n{"text": oops}\n',
        "missing-field": '{"text": "ok"}\n{"body": "x", "title": "y"}\n',
        "not-object": '["text"]\n',
        "not-string": '{"text": 3}\n',
    }[case])
    return path, {}


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"nope does not exist; pass a folder"),
    ("empty", r"has no \.md or \.txt files"),
    ("no-text-files", r"has no \.md or \.txt files"),
    ("blank-docs", r"holds no text"),
    ("non-utf8", r"latin1\.md is not UTF-8 .*re-save it as UTF-8"),
    ("wrong-suffix", r"c\.csv is not \.md, \.txt or \.jsonl"),
    ("bad-json", r"c\.jsonl line 2 is not valid JSON"),
    ("missing-field", r"line 2 has no 'text' field \(keys found: body, title\); pass --text-field"),
    ("not-object", r"line 1 is a JSON list"),
    ("not-string", r"field 'text' is a int"),
])
def test_bad_corpus_is_one_clear_error(tmp_path, case, pattern):
    path, kw = _bad(tmp_path, case)
    with pytest.raises(InputError, match=pattern) as info:
        ft.load_corpus(path, **kw)
    assert "\n" not in str(info.value)


def test_too_small_corpus_names_tokens_and_a_smaller_block_size(tiny_model, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.md").write_text("A short note about the library.")
    small = ft.load_corpus(tmp_path / "c")
    with pytest.raises(InputError, match=r"has \d+ tokens; .* needs 256; .*smaller --block-size \(e\.g\. \d+\)"):
        ft.prepare_blocks(small, tiny_model, block_size=128)


def test_blocks_are_capped_to_the_context_and_keep_a_validation_block(tiny_model):
    blocks = ft.prepare_blocks(ft.load_corpus(HOUSE_CORPUS), tiny_model, block_size=1024, val_fraction=0.01)
    assert blocks.block_size == 128 and blocks.extra["block_size_requested"] == 1024
    assert len(blocks.val) == 1 and len(blocks.train) == blocks.tokens // 128 - 1
    assert tuple(blocks.train[0]["input_ids"].shape) == (128,)
    assert blocks.train[0]["labels"].tolist() == blocks.train[0]["input_ids"].tolist()


def test_bad_options_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="'lr'"):
        ft.make_options(corpus=tmp_path, output=tmp_path, lr=-1)
    with pytest.raises(ConfigError, match="'epoch'"):
        ft.make_options(corpus=tmp_path, output=tmp_path, epoch=2)


def test_cli_reports_a_bad_corpus_in_one_line(tmp_path):
    from click.testing import CliRunner

    from aigc.cli.finetune import finetune_command

    result = CliRunner().invoke(finetune_command, [str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "nope does not exist" in result.output


@pytest.mark.slow
def test_cli_runs_the_prefect_flow(tiny_model, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(tmp_path / "results"))
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # 2 busy cores: be patient
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    from click.testing import CliRunner
    from prefect.settings import (PREFECT_HOME, PREFECT_RESULTS_LOCAL_STORAGE_PATH,
                                  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings)

    from aigc.cli.finetune import finetune_command

    output = tmp_path / "out"
    args = [str(corpus), "--output", str(output), "--model", tiny_model, "--method", "full", "--max-steps", "4",
            "--block-size", "32", "--lr", "3e-3", "--save-steps", "100"]
    settings = {PREFECT_HOME: str(tmp_path / "prefect"), PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(tmp_path / "results"),
                PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180}
    with temporary_settings(updates=settings):  # in case prefect was imported before the env was set
        result = CliRunner().invoke(finetune_command, args)
    assert result.exit_code == 0, result.output
    record = json.loads((output / ft.RESULT_FILE).read_text())
    assert f"Fine-tuned model: {output}" in result.output
    assert f"{record['perplexity']['before']:.2f} -> {record['perplexity']['after']:.2f}" in result.output
    assert record["training"]["global_step"] == 4 and record["perplexity"]["after"] < record["perplexity"]["before"]

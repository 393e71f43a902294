"""Fine-tune a local causal LM on a house corpus: load, pack into blocks, train (LoRA or full), save a loadable folder."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aigc.errors import ConfigError, InputError, MissingDependencyError, validate

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".md", ".markdown", ".txt")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
RESULT_FILE = "aigc-finetune.json"
CHECKPOINTS = "checkpoints"
RUN_FILE = "aigc-run.json"
DEFAULT_LR = {"lora": 3e-4, "full": 5e-5}


class FinetuneOptions(BaseModel):
    """Everything a fine-tuning run depends on; a typo in a field is an error."""

    model_config = ConfigDict(extra="forbid")

    corpus: Path
    output: Path
    model: str = "embedded"
    method: Literal["lora", "full"] = "lora"
    text_field: str = "text"
    block_size: int = Field(256, ge=8)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    batch_size: int = Field(4, ge=1)
    seed: int = 42
    save_steps: int = Field(50, ge=1)
    logging_steps: int = Field(5, ge=1)
    resume: bool | None = None  # None: resume automatically when checkpoints exist
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: list[str] | str | None = None  # None: peft's default for the architecture, else "all-linear"
    progress: bool = True

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


def make_options(**values: Any) -> FinetuneOptions:
    """Build options, turning a validation failure into one ConfigError line naming the field."""
    return validate(FinetuneOptions, values, where="fine-tune", label="option")


@dataclass
class Corpus:
    """Documents read from the corpus path, with a hash of their names and text."""

    path: Path
    kind: str  # "text", "jsonl" or "aigc-outputs"
    texts: list[str]
    sources: list[str]
    sha256: str


@dataclass
class Blocks:
    """Token blocks ready for training: ``train`` and ``val`` are ``datasets.Dataset`` objects."""

    train: Any
    val: Any
    tokens: int
    block_size: int
    documents: int
    extra: dict = field(default_factory=dict)


def _lazy(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = "aigc[finetune]" if module == "peft" else "aigc"
        raise MissingDependencyError(f"{module} is not installed ({err}); run: pip install '{extra}'") from None


# ---------------------------------------------------------------- corpus


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read corpus file {path}: {err.strerror or err}; check its permissions") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            f"corpus file {path} is not UTF-8 text (bad byte at offset {err.start}); re-save it as UTF-8 or remove it"
        ) from None


def _strip_front_matter(text: str) -> str:
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end != -1:
            return text[end + 5 :]
    return text


def _visible_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _read_jsonl(path: Path, text_field: str) -> tuple[list[str], list[str]]:
    texts, sources = [], []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(
                f"{path} line {number} is not valid JSON ({err.msg}); each line must be one object like "
                f'{{"{text_field}": "..."}}'
            ) from None
        if not isinstance(record, dict):
            raise InputError(f"{path} line {number} is a JSON {type(record).__name__}, not an object with a {text_field!r} field")
        if text_field not in record:
            keys = ", ".join(sorted(map(str, record))) or "none"
            raise InputError(
                f"{path} line {number} has no {text_field!r} field (keys found: {keys}); pass --text-field with one of them"
            )
        value = record[text_field]
        if not isinstance(value, str):
            raise InputError(f"{path} line {number}: field {text_field!r} is a {type(value).__name__}, not a string")
        texts.append(value)
        sources.append(f"{path.name}:{number}")
    return texts, sources


def load_corpus(path: str | Path, text_field: str = "text") -> Corpus:
    """Read a folder of .md/.txt files, a JSONL file, or a folder of aigc outputs (article.md + article.json)."""
    path = Path(path).expanduser()
    hint = "pass a folder of .md/.txt files, a .jsonl file, or a folder of aigc outputs"
    if not path.exists():
        raise InputError(f"corpus path {path} does not exist; {hint}")
    if path.is_file():
        if path.suffix.lower() in JSONL_SUFFIXES + (".json",):
            kind, (texts, sources) = "jsonl", _read_jsonl(path, text_field)
        elif path.suffix.lower() in TEXT_SUFFIXES:
            kind, texts, sources = "text", [_read_text(path)], [path.name]
        else:
            raise InputError(f"corpus file {path} is not .md, .txt or .jsonl; {hint}")
    else:
        files = _visible_files(path)
        articles = [p for p in files if p.name == "article.md" and p.with_suffix(".json").is_file()]
        if articles:
            kind, chosen = "aigc-outputs", articles
        else:
            kind, chosen = "text", [p for p in files if p.suffix.lower() in TEXT_SUFFIXES]
        if not chosen:
            raise InputError(f"corpus folder {path} has no .md or .txt files (searched recursively); {hint}")
        texts = [_strip_front_matter(_read_text(p)) if kind == "aigc-outputs" else _read_text(p) for p in chosen]
        sources = [str(p.relative_to(path)) for p in chosen]
    pairs = [(s, t.strip()) for s, t in zip(sources, texts) if t.strip()]
    if not pairs:
        raise InputError(f"corpus {path} holds no text (every document is empty); add some writing to it")
    digest = hashlib.sha256()
    for source, text in sorted(pairs):
        digest.update(source.encode() + b"\0" + text.encode() + b"\0")
    return Corpus(path=path, kind=kind, texts=[t for _, t in pairs], sources=[s for s, _ in pairs], sha256=digest.hexdigest())


# ---------------------------------------------------------------- model + blocks


def resolve_model(model: str) -> str:
    """``embedded`` -> the converted embedded model folder; anything else (folder or HF id) as is."""
    if model == "embedded":
        from aigc.backends.local.embedded import ensure_converted

        return str(ensure_converted())
    return str(Path(model).expanduser()) if Path(model).expanduser().exists() else model


def load_tokenizer(model_path: str):
    transformers = _lazy("transformers")
    try:
        return transformers.AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the tokenizer of model {model_path!r} ({err}); pass --model embedded, a local folder or a cached Hugging Face id") from None


def load_model(model_path: str):
    transformers, torch = _lazy("transformers"), _lazy("torch")
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load model {model_path!r} ({err}); pass --model embedded, a local folder or a cached Hugging Face id") from None


def prepare_blocks(corpus: Corpus, model_path: str, block_size: int = 256, val_fraction: float = 0.1, seed: int = 42) -> Blocks:
    """Tokenize with ``datasets.map``, pack into ``block_size`` blocks (capped to the context), split off validation."""
    datasets = _lazy("datasets")
    from aigc.backends.local.loading import context_length

    tokenizer = load_tokenizer(model_path)
    limit = context_length(_lazy("transformers").AutoConfig.from_pretrained(model_path), tokenizer)
    size = min(block_size, limit) if limit else block_size
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [seq + [eos] if eos is not None else seq for seq in ids]}

    def pack(batch):
        flat = [t for seq in batch["input_ids"] for t in seq]
        usable = len(flat) // size * size
        blocks = [flat[i : i + size] for i in range(0, usable, size)]
        return {"input_ids": blocks, "attention_mask": [[1] * size for _ in blocks], "labels": [list(b) for b in blocks]}

    docs = datasets.Dataset.from_dict({"text": corpus.texts})
    tokenized = docs.map(tokenize, batched=True, remove_columns=["text"], desc="Tokenizing")
    tokens = sum(len(seq) for seq in tokenized["input_ids"])
    packed = tokenized.map(pack, batched=True, batch_size=None, desc=f"Packing into {size}-token blocks")
    if len(packed) < 2:
        suggest = max(8, 2 ** int(math.log2(max(tokens // 4, 8))))
        raise InputError(
            f"corpus {corpus.path} has {tokens} tokens; one training block plus one validation block of {size} tokens "
            f"needs {2 * size}; add text or use a smaller --block-size (e.g. {suggest})"
        )
    n_val = min(max(1, round(len(packed) * val_fraction)), len(packed) - 1)
    split = packed.train_test_split(test_size=n_val, seed=seed, shuffle=True)
    split.set_format("torch")
    return Blocks(train=split["train"], val=split["test"], tokens=tokens, block_size=size, documents=len(corpus.texts),
                  extra={"block_size_requested": block_size, "context_length": limit})


def evaluate_perplexity(model: Any, blocks: Any, batch_size: int = 4) -> float:
    """Perplexity of ``model`` (a loaded model or a folder/id) on packed blocks: exp of the mean token loss."""
    from aigc.perplexity import block_perplexity

    if isinstance(model, (str, Path)):
        model = load_model(str(model))
    return block_perplexity(model, blocks["input_ids"], batch_size)


# ---------------------------------------------------------------- training


def _checkpoint_to_resume(options: FinetuneOptions, ckpt_dir: Path, signature: dict) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if options.resume is False:
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        return None
    if last is None:
        if options.resume:
            raise InputError(f"--resume: {ckpt_dir} has no checkpoint to resume from; drop --resume to start fresh")
        return None
    run_file = ckpt_dir / RUN_FILE
    previous = json.loads(run_file.read_text()) if run_file.is_file() else signature
    changed = [k for k in signature if previous.get(k) != signature[k]]
    if changed:
        raise InputError(
            f"{ckpt_dir} holds checkpoints of a different run ({', '.join(changed)} changed); "
            "use a new --output folder or pass --no-resume to start over"
        )
    return last


def _apply_lora(model, options: FinetuneOptions):
    peft = _lazy("peft")
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    from transformers.pytorch_utils import Conv1D  # GPT-2's transposed linear layers

    targets = options.lora_targets or defaults.get(model.config.model_type) or "all-linear"
    conv1d = any(isinstance(m, Conv1D) for m in model.modules())
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=options.lora_r, lora_alpha=options.lora_alpha,
                             lora_dropout=options.lora_dropout, target_modules=targets, fan_in_fan_out=conv1d)
    return peft.get_peft_model(model, config)


@dataclass
class TrainResult:
    """What training did: where the model went and how fast it ran."""

    output: Path
    global_step: int
    steps: int
    seconds: float
    steps_per_second: float
    train_loss: float | None
    resumed_from: str | None
    trainable_parameters: int
    total_parameters: int


def train(blocks: Blocks, options: FinetuneOptions, model_path: str, corpus_sha: str) -> TrainResult:
    """Fine-tune with transformers ``Trainer`` (LoRA via peft, or full); save a merged model + tokenizer in ``output``."""
    transformers = _lazy("transformers")
    output = options.output.expanduser()
    ckpt_dir = output / CHECKPOINTS
    signature = {"model": model_path, "method": options.method, "corpus_sha256": corpus_sha}
    resume_from = _checkpoint_to_resume(options, ckpt_dir, signature)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / RUN_FILE).write_text(json.dumps(signature, indent=2))

    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path)
    if options.method == "lora":
        model = _apply_lora(model, options)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    args = transformers.TrainingArguments(
        output_dir=str(ckpt_dir), num_train_epochs=options.epochs, max_steps=options.max_steps or -1,
        learning_rate=options.learning_rate, per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size, seed=options.seed, data_seed=options.seed,
        save_strategy="steps", save_steps=options.save_steps, save_total_limit=2,
        logging_steps=options.logging_steps, logging_first_step=True, report_to="none",
        disable_tqdm=not options.progress, remove_unused_columns=False, label_names=["labels"],
        warmup_steps=0, dataloader_num_workers=0, dataloader_pin_memory=_lazy("torch").cuda.is_available(),
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=blocks.train,
                                   data_collator=transformers.default_data_collator, processing_class=tokenizer)
    start_step = int(json.loads((Path(resume_from) / "trainer_state.json").read_text())["global_step"]) if resume_from else 0
    if resume_from:
        log.info("Resuming from %s (step %d)", resume_from, start_step)
    started = time.perf_counter()
    outcome = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - started
    global_step = trainer.state.global_step

    final = trainer.model
    if options.method == "lora":
        final = final.merge_and_unload()
    final.config.use_cache = True  # Trainer turns the cache off for training; generation wants it back
    final.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    steps = global_step - start_step
    return TrainResult(output=output, global_step=global_step, steps=steps, seconds=round(seconds, 2),
                       steps_per_second=round(steps / seconds, 4) if seconds > 0 else 0.0,
                       train_loss=outcome.training_loss if steps else None,
                       resumed_from=Path(resume_from).name if resume_from else None,
                       trainable_parameters=trainable, total_parameters=total)


def save_result(options: FinetuneOptions, corpus: Corpus, blocks: Blocks, model_path: str,
                ppl_before: float, ppl_after: float, trained: TrainResult) -> dict:
    """Write ``output/aigc-finetune.json`` describing the run; return what it holds."""
    from aigc import __version__

    settings = options.model_dump(mode="json", exclude={"corpus", "output", "model", "progress"})
    settings.update(lr=options.learning_rate, block_size=blocks.block_size, **blocks.extra)
    if options.method != "lora":
        settings = {k: v for k, v in settings.items() if not k.startswith("lora_")}
    record = {
        "aigc_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "output": str(trained.output),
        "base_model": {"name": options.model, "path": model_path},
        "method": options.method,
        "corpus": {"path": str(corpus.path), "kind": corpus.kind, "documents": len(corpus.texts),
                   "sha256": corpus.sha256, "tokens": blocks.tokens,
                   "blocks": {"train": len(blocks.train), "val": len(blocks.val)}},
        "settings": settings,
        "perplexity": {"before": round(ppl_before, 4), "after": round(ppl_after, 4)},
        "training": {"seconds": trained.seconds, "steps": trained.steps, "global_step": trained.global_step,
                     "steps_per_second": trained.steps_per_second, "train_loss": trained.train_loss,
                     "resumed_from": trained.resumed_from, "trainable_parameters": trained.trainable_parameters,
                     "total_parameters": trained.total_parameters},
    }
    path = trained.output / RESULT_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def finetune(options: FinetuneOptions) -> dict:
    """The whole run without Prefect: corpus -> blocks -> perplexity -> train -> perplexity -> result file."""
    corpus = load_corpus(options.corpus, options.text_field)
    model_path = resolve_model(options.model)
    blocks = prepare_blocks(corpus, model_path, options.block_size, options.val_fraction, options.seed)
    before = evaluate_perplexity(model_path, blocks.val, options.batch_size)
    trained = train(blocks, options, model_path, corpus.sha256)
    after = evaluate_perplexity(str(trained.output), blocks.val, options.batch_size)
    return save_result(options, corpus, blocks, model_path, before, after, trained)

"""Prefect flow for `aigc finetune`: corpus -> blocks -> perplexity before -> train -> perplexity after -> result."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from aigc import finetune as ft

# Models and datasets are passed between tasks in memory: no caching, no result persistence.
_TASK = dict(cache_policy=NO_CACHE, persist_result=False)


@task(**_TASK)
def load_corpus(corpus: str, text_field: str) -> ft.Corpus:
    """Read the corpus documents (Markdown/text folder, JSONL file or aigc outputs)."""
    return ft.load_corpus(corpus, text_field)


@task(**_TASK)
def prepare_blocks(corpus: ft.Corpus, model_path: str, block_size: int, val_fraction: float, seed: int) -> ft.Blocks:
    """Tokenize and pack the corpus into training and validation blocks."""
    return ft.prepare_blocks(corpus, model_path, block_size, val_fraction, seed)


@task(**_TASK)
def evaluate_perplexity(model_path: str, blocks: ft.Blocks, batch_size: int) -> float:
    """Validation perplexity of the model in ``model_path``."""
    return ft.evaluate_perplexity(model_path, blocks.val, batch_size)


@task(**_TASK)
def train(blocks: ft.Blocks, options: ft.FinetuneOptions, model_path: str, corpus_sha: str) -> ft.TrainResult:
    """Fine-tune (LoRA or full), resuming from the last checkpoint, and save the merged model."""
    return ft.train(blocks, options, model_path, corpus_sha)


@task(**_TASK)
def save_result(options: ft.FinetuneOptions, corpus: ft.Corpus, blocks: ft.Blocks, model_path: str,
                before: float, after: float, trained: ft.TrainResult) -> dict:
    """Write aigc-finetune.json next to the model."""
    return ft.save_result(options, corpus, blocks, model_path, before, after, trained)


@flow(name="aigc-finetune")
def finetune_flow(options: ft.FinetuneOptions) -> dict:
    """Fine-tune a local causal LM on a house corpus; returns what aigc-finetune.json records."""
    documents = load_corpus(str(options.corpus), options.text_field)
    model_path = ft.resolve_model(options.model)
    blocks = prepare_blocks(documents, model_path, options.block_size, options.val_fraction, options.seed)
    before = evaluate_perplexity(model_path, blocks, options.batch_size)
    trained = train(blocks, options, model_path, documents.sha256)
    after = evaluate_perplexity(str(trained.output), blocks, options.batch_size)
    return save_result(options, documents, blocks, model_path, before, after, trained)

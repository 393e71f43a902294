"""Loading local models: the model thread, the process-wide model cache, context length and memory sizing."""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from aigc.errors import BackendError, MissingDependencyError

log = logging.getLogger("aigc.backends.local")

T = TypeVar("T")

#: Rows of one generate() call at most, by device kind.
BATCH_CAP = {"cpu": 16, "cuda": 64}
#: Tokens of KV cache budgeted per sequence when sizing batches from memory.
SEQ_BUDGET = 4096


def torch_modules() -> tuple[Any, Any]:
    """``(torch, transformers)``, imported on first use."""
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - torch and transformers are core dependencies
        raise MissingDependencyError(
            f"the local backend needs torch and transformers ({exc.name} is missing); "
            "run: pip install torch==2.13.0 'transformers>=5.24,<5.25'"
        ) from exc
    return torch, transformers


def context_length(config: Any, tokenizer: Any = None) -> int | None:
    """A model's context window from its config (max_position_embeddings, n_positions, ...), else the tokenizer's limit.

    ``config``: a transformers ``PretrainedConfig`` (multimodal ones are read through their text config).
    None when neither declares one.
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None


def kv_bytes_per_token(config: Any, itemsize: int) -> int:
    """Bytes of KV cache one token takes in every layer of a model of ``config``."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 12)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 12)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 768)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return 2 * layers * kv_heads * head_dim * itemsize


def available_memory(torch: Any, device: str) -> int:
    """Free bytes on ``device`` (a CUDA device's free memory, else MemAvailable; 4 GiB if unknown)."""
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3


def auto_batch_size(model: Any) -> int:
    """Rows per generate() call: the device's cap, lowered so that their KV caches take at most a quarter of free memory."""
    torch, _ = torch_modules()
    device = str(model.device)
    cap = BATCH_CAP["cuda" if device.startswith("cuda") else "cpu"]
    per_seq = kv_bytes_per_token(model.config, model.dtype.itemsize) * min(context_length(model.config) or SEQ_BUDGET,
                                                                          SEQ_BUDGET)
    return max(1, min(cap, available_memory(torch, device) // 4 // max(per_seq, 1)))


def is_path_like(model: str) -> bool:
    """A folder rather than a hub id ("org/name" has one slash and no leading dot, slash or tilde)."""
    return model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1


def prepare_tokenizer(tokenizer: Any) -> None:
    """Left padding, and a pad token (EOS) for tokenizers without one (GPT-2)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_pretrained(path: str, device: str, dtype: str, threads: int | None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a folder or cached hub id, in eval mode on ``device``; one clear line if it fails."""
    torch, transformers = torch_modules()
    if device == "cpu":
        torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        # the tokenizer on this thread, first: on a second thread while the weights were read, the load was slower
        # (the two fight over the GIL: 1.35-1.62 s against 1.16-1.40 s, 6 alternating fresh processes each)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        model.to(device)
    except Exception as exc:  # noqa: BLE001 - any loading failure becomes one clear line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        where = (
            f"folder {path}" if Path(path).is_dir()
            else f"{path!r} (not a local folder; with HF_HUB_OFFLINE=1 or no network a hub id must already be "
            "in the Hugging Face cache)"
        )
        raise BackendError(
            f"could not load local model {where}: {type(exc).__name__}: {first}; "
            "set the 'model' option to a folder saved with save_pretrained(), a cached hub id, or 'embedded'",
            retryable=False,
        ) from exc
    model.eval()
    prepare_tokenizer(tokenizer)
    return model, tokenizer


class LoadedModel:
    """A model loaded once per process, with its tokenizer and what the fast path applied to it (see ``describe()``)."""

    def __init__(self, model: Any, tokenizer: Any, applied: dict[str, str]):
        self.model, self.tokenizer, self.applied = model, tokenizer, applied


#: Models loaded in this process, shared by every LocalBackend: key (see :func:`loaded_models`) -> LoadedModel.
_MODELS: dict[tuple, LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def shared_model(key: tuple, load: Callable[[], LoadedModel]) -> LoadedModel:
    """The model loaded under ``key`` in this process, loaded by ``load()`` on the model thread the first time."""
    with _MODELS_LOCK:
        if key not in _MODELS:
            start = time.perf_counter()
            _MODELS[key] = run_on_model_thread(load)
            log.debug("model %s ready in %.1f s", key[0], time.perf_counter() - start)
        return _MODELS[key]


def loaded_models() -> list[tuple]:
    """Keys ``(path, device, dtype, linear kernels, decode step)`` of the models loaded in this process."""
    return list(_MODELS)


class _ModelThread:
    """The one thread that runs the torch work of local models in this process: loading, generating, scoring.

    Measured on a 2-core CPU: a model loaded on one thread and run on another decoded 40% slower
    than on the thread that loaded it, and articles written by several threads each brought their
    own OpenMP team. A daemon thread, so that Ctrl-C never waits for a generation to finish.
    """

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def call(self, fn: Callable[[], T]) -> T:
        if threading.current_thread() is self.thread:
            return fn()
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._serve, name="aigc-model", daemon=True)
                self.thread.start()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.jobs.put((contextvars.copy_context(), fn, future))  # the caller's context: its Prefect run, its logger
        return future.result()

    def _serve(self) -> None:
        while True:
            context, fn, future = self.jobs.get()
            try:
                future.set_result(context.run(fn))
            except BaseException as exc:  # noqa: BLE001 - the caller gets it
                future.set_exception(exc)


_MODEL_THREAD = _ModelThread()


def run_on_model_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on the thread that loads and runs local models (see :class:`_ModelThread`); its result or its error.

    Calls from several threads run one at a time, in the order they come.
    """
    return _MODEL_THREAD.call(fn)


__all__ = ["BATCH_CAP", "LoadedModel", "auto_batch_size", "available_memory", "context_length", "is_path_like",
           "kv_bytes_per_token", "load_pretrained", "loaded_models", "prepare_tokenizer", "run_on_model_thread",
           "shared_model", "torch_modules"]

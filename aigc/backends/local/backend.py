"""The local backend: a Hugging Face transformers causal LM on this machine, batched generate() with left padding."""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import hashlib
import logging
import os
import queue
import threading
import time
import weakref
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from aigc.backends.base import ARTICLE_STEPS, Backend, Completion, GenerationRequest, parse_options, trim_at_stop
from aigc.backends.local.loading import context_length as _context_length, run_on_model_thread
from aigc.backends.local.embedded import EMBEDDED_MODEL_ID, EMBEDDED_NAME, ensure_converted
from aigc.errors import BackendError, ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

#: Loaded models shared by every LocalBackend of this process:
#: (path, device, dtype, kernels, attention, decode) -> (model, tokenizer, batcher, kernels, decode).
_MODELS: dict[tuple[str, str, str, str, str, str], tuple[Any, Any, _Batcher, str, str]] = {}
_MODELS_LOCK = threading.Lock()
#: Threads writing an article with a local model now: thread id -> [nesting depth, index of its step in
#: ARTICLE_STEPS, the _Batcher of the model it called (None before its first call)]; see LocalBackend.article.
_ARTICLES: dict[int, list[Any]] = {}
_ARTICLES_LOCK = threading.Lock()
#: Articles a batch has started that have not entered LocalBackend.article yet (see LocalBackend.article_coming).
_COMING: list["_Coming"] = []
#: Every _Batcher alive (one per loaded model), to be woken when an article ends or moves on a step.
_BATCHERS: "weakref.WeakSet[_Batcher]" = weakref.WeakSet()

_BATCH_CAP = {"cpu": 16, "cuda": 64}
#: Tokens of KV cache budgeted per sequence when sizing batches from memory.
_SEQ_BUDGET = 4096
#: Rows share a prompt prefix when they begin with this many equal tokens (a chat template's system turn alone is ~30)...
_MIN_SHARED = 48
#: ...and only when computing the groups' prefixes once cuts the prefill's token slots to this share or less.
_SHARED_PAYS = 0.8


class LocalOptions(BaseModel):
    """Options of the local backend (a typo is an error, not a silent default)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("embedded", min_length=1)
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch_size: int | None = Field(None, ge=1)
    threads: int | None = Field(None, ge=1)
    top_k: int = Field(50, ge=0)
    repetition_penalty: float = Field(1.15, gt=0.0)
    no_repeat_ngram_size: int = Field(0, ge=0)
    #: CPU, float32: pack linear weights once for fast kernels (see fp16_weights); off: plain nn.Linear.
    prepack: bool = True
    #: With prepack: keep the MLP's linear weights (Llama family with the fused step; other models: every
    #: linear) as float16 for fbgemm, multiplied in float32 (half the bytes, faster; perplexity unchanged
    #: to 4 digits). Off: float32 weights in oneDNN's layout everywhere (the same results as transformers).
    fp16_weights: bool = True
    #: Compute a prompt start that several rows share (an article's sections) once, not once per row.
    share_prefix: bool = True
    #: Reserve the KV cache for the prompt and the new tokens, and write each step into it in place.
    reserve_cache: bool = True
    #: CPU: attention of each new token as two matrix products (faster than PyTorch's flash kernel for one query).
    decode_attention: bool = True
    #: CPU, float32, Llama-family models: q/k/v and gate/up fused, and each new token by aigc's own decode step.
    fused_decode: bool = True


def _torch():
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - torch and transformers are core dependencies
        raise MissingDependencyError(
            f"the local backend needs torch and transformers ({exc.name} is missing); "
            "run: pip install torch==2.13.0 'transformers>=5,<6'"
        ) from exc
    return torch, transformers


def _is_path_like(model: str) -> bool:
    """A folder rather than a hub id ("org/name" has one slash and no leading dot, slash or tilde)."""
    return model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1


def _kv_bytes_per_token(config: Any, itemsize: int) -> int:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 12)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 12)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 768)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return 2 * layers * kv_heads * head_dim * itemsize


def _available_memory(torch: Any, device: str) -> int:
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


class LocalBackend(Backend):
    """Generates with a transformers causal LM (the embedded SmolLM2 by default, GPT-2 and any HF model too)."""

    name: ClassVar[str] = "local"
    supports_chat: ClassVar[bool] = True
    supports_batching: ClassVar[bool] = True
    supports_prefill: ClassVar[bool] = True
    #: Articles of a batch at once: as many as fill one generate() call with their sections (see concurrent_articles).
    max_concurrent_articles: ClassVar[int] = 16
    merges_articles: ClassVar[bool] = True

    def __init__(self, options: LocalOptions | None = None, *, model: Any = None, tokenizer: Any = None):
        self.options = options or LocalOptions()
        if (model is None) != (tokenizer is None):
            raise ConfigError("LocalBackend: pass both 'model' and 'tokenizer', or neither")
        self._loaded: tuple[Any, Any, _Batcher, str, str] | None = None
        self._given = model
        if model is not None:
            _prepare_tokenizer(tokenizer)
            self._loaded = (model.eval(), tokenizer, _Batcher(), "default", "transformers")
        self._batch_size: int | None = self.options.max_batch_size

    @classmethod
    def from_options(cls, **kwargs: Any) -> "LocalBackend":
        """Build from keyword options, validated by :class:`LocalOptions`."""
        return cls(parse_options(LocalOptions, kwargs, "local"))

    # -- identity -------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        model = self.options.model
        if model == EMBEDDED_NAME:
            if self._given is not None:  # a model passed in: name it after itself
                return str(getattr(self._given, "name_or_path", "") or type(self._given).__name__)
            return EMBEDDED_MODEL_ID
        folder = Path(model).expanduser()
        return str(folder.resolve()) if folder.is_dir() else model

    def _device(self) -> str:
        if self._loaded is not None:
            return str(self._loaded[0].device)
        if self.options.device != "auto":
            return self.options.device
        torch, _ = _torch()
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _dtype(self) -> str:
        if self._loaded is not None:
            return str(self._loaded[0].dtype).removeprefix("torch.")
        if self.options.dtype != "auto":
            return self.options.dtype
        return "bfloat16" if self._device().startswith("cuda") else "float32"

    def _kernels(self, device: str, dtype: str) -> str:
        """How the linear layers run: "fbgemm-fp16" or "onednn-packed" (CPU float32, see :mod:`aigc.backends.fastpath`) or "default"."""
        from aigc.backends.local.fastpath import FBGEMM_FP16, ONEDNN_PACKED

        if device != "cpu" or not self.options.prepack or dtype != "float32":
            return "default"
        return FBGEMM_FP16 if self.options.fp16_weights else ONEDNN_PACKED

    def _attention(self, device: str) -> str:
        """The attention asked for: aigc's decode attention on a CPU (see :func:`fastpath.decode_attention`), else the model's own."""
        from aigc.backends.local.fastpath import DECODE_ATTENTION

        return DECODE_ATTENTION if device == "cpu" and self.options.decode_attention else "default"

    def _decode(self, kernels: str) -> str:
        """The decode step asked for: aigc's fused one (see :func:`fastpath.install_fused_decode`) with packed kernels, else transformers'."""
        from aigc.backends.local.fastpath import FUSED_DECODE, PACKED_KERNELS

        return FUSED_DECODE if kernels in PACKED_KERNELS and self.options.fused_decode else "transformers"

    def concurrent_articles(self, sections: int) -> int:
        """As many articles as put all their sections into one call (16 rows on a CPU: 5 articles of 3 sections).

        They are kept in step (see :class:`_Batcher`): their outlines share a call, then their sections do.
        Four 3-section articles at once were 1.41x faster than one after the other through the batch flow
        (benchmarks/bench.py, 4b).
        """
        rows = self._batch_size or _BATCH_CAP["cuda" if self._device().startswith("cuda") else "cpu"]
        return max(1, min(self.max_concurrent_articles, rows // max(1, sections)))

    def describe(self) -> dict:
        """Backend, model, device, dtype, linear kernels, attention, decode step and batch size ("auto" until loaded)."""
        device, dtype = self._device(), self._dtype()
        if self._loaded is not None:
            kernels, attention = self._loaded[3], getattr(self._loaded[0].config, "_attn_implementation", None) or "default"
            decode = self._loaded[4]
        else:
            kernels, attention = self._kernels(device, dtype), self._attention(device)
            decode = self._decode(kernels)
        return {
            **super().describe(),
            "device": device,
            "dtype": dtype,
            "kernels": kernels,
            "attention": attention,
            "decode": decode,
            "max_batch_size": self._batch_size or "auto",
        }

    # -- loading --------------------------------------------------------------------------------

    def _model_path(self) -> str:
        model = self.options.model
        if model == EMBEDDED_NAME:  # a first run converts the GGUF, with torch: on the model thread too
            return str(run_on_model_thread(ensure_converted))
        folder = Path(model).expanduser()
        if folder.is_dir():
            return str(folder.resolve())
        if _is_path_like(model) or folder.exists():
            raise BackendError(
                f"local model folder {model} does not exist or is not a folder; set the local backend's 'model' option to a folder "
                "with config.json and weights, a Hugging Face model id, or 'embedded'",
                retryable=False,
            )
        return model

    def load(self) -> tuple[Any, Any]:
        """Load (once per process) and return ``(model, tokenizer)``."""
        if self._loaded is None:
            path, device, dtype = self._model_path(), self._device(), self._dtype()
            kernels = self._kernels(device, dtype)
            key = (path, device, dtype, kernels, self._attention(device), self._decode(kernels))
            with _MODELS_LOCK:
                if key not in _MODELS:
                    _MODELS[key] = run_on_model_thread(lambda: self._load_fresh(*key))
                self._loaded = _MODELS[key]
        if self._batch_size is None:
            self._batch_size = self._auto_batch_size()
        return self._loaded[0], self._loaded[1]

    def _load_fresh(self, path: str, device: str, dtype: str, kernels: str, attention: str,
                    decode: str) -> tuple[Any, Any, _Batcher, str, str]:
        torch, transformers = _torch()
        if device == "cpu":
            torch.set_num_threads(self.options.threads or os.cpu_count() or 1)
        start = time.perf_counter()
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
        kernels, decode = self._speed_up(model, kernels, attention, decode)
        _prepare_tokenizer(tokenizer)
        log.info("Loaded local model %s on %s (%s, %s kernels, %s attention, %s decode step) in %.1f s", path, device,
                 dtype, kernels, model.config._attn_implementation, decode, time.perf_counter() - start)
        return model, tokenizer, _Batcher(), kernels, decode

    def _speed_up(self, model: Any, kernels: str, attention: str, decode: str) -> tuple[str, str]:
        """Apply the CPU fast path chosen by :meth:`_kernels`, :meth:`_attention` and :meth:`_decode`; return what really applies."""
        from aigc.backends.local import fastpath

        if attention == fastpath.DECODE_ATTENTION:
            fastpath.use_decode_attention(model)
        if kernels == fastpath.FBGEMM_FP16 and not fastpath.packed_kernels_available(kernels):
            log.info("fbgemm's float16-weight linear ops are not in this torch build; packing float32 weights for oneDNN")
            kernels = fastpath.ONEDNN_PACKED
        if kernels in fastpath.PACKED_KERNELS and not fastpath.packed_kernels_available(kernels):
            log.info("%s linear ops are not in this torch build; using plain nn.Linear", kernels)
            kernels = "default"
        fused = False
        if kernels in fastpath.PACKED_KERNELS:
            rows = min(self.options.max_batch_size or _BATCH_CAP["cpu"], _BATCH_CAP["cpu"])
            fused = decode == fastpath.FUSED_DECODE and fastpath.install_fused_decode(model, rows, kernels)
            # then what the fused step did not pack (all of it without one)
            if not fastpath.pack_linears(model, rows, kernels) and not fused:
                kernels = "default"  # no float32 nn.Linear in this model
        return kernels, decode if fused or decode != fastpath.FUSED_DECODE else "transformers"

    def _auto_batch_size(self) -> int:
        torch, _ = _torch()
        model = self._loaded[0]
        device = str(model.device)
        cap = _BATCH_CAP["cuda" if device.startswith("cuda") else "cpu"]
        per_seq = _kv_bytes_per_token(model.config, model.dtype.itemsize) * min(
            _context_length(model.config) or _SEQ_BUDGET, _SEQ_BUDGET
        )
        budget = _available_memory(torch, device) // 4
        return max(1, min(cap, budget // max(per_seq, 1)))

    # -- generation -----------------------------------------------------------------------------

    def _prompt_ids(self, tokenizer: Any, request: GenerationRequest) -> list[int]:
        if request.messages is not None and getattr(tokenizer, "chat_template", None):
            messages = [m.model_dump() for m in request.messages]
            if request.prefill:  # continue the start of the reply the template gave
                text = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
            else:
                text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            ids = list(tokenizer(request.as_plain_prompt())["input_ids"])
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return ids or [start]

    @contextlib.contextmanager
    def article(self) -> Iterator[None]:
        """While the block runs, this thread writes one article: its calls are merged with other articles' (see :class:`_Batcher`)."""
        me = threading.get_ident()
        with _ARTICLES_LOCK:
            entry = _ARTICLES.setdefault(me, [0, 0, None])
            entry[0] += 1
            arrived = entry[0] == 1 and bool(_COMING)
            if arrived:
                _COMING.pop(0)  # one of the articles a batch announced is here
        if arrived:
            _wake_batchers()
        try:
            yield
        finally:
            with _ARTICLES_LOCK:
                entry[0] -= 1
                if not entry[0]:
                    del _ARTICLES[me]
            _wake_batchers()  # a leader waiting for this article stops waiting

    def article_coming(self) -> "_Coming":
        """Announce an article about to start (a batch has submitted it): first calls wait up to ``lockstep_s`` for it.

        A batch's articles start a second or more apart (each is a Prefect subflow, started while the
        model already runs), so without this the first one's outline ran alone. The announcement ends
        when an article enters :meth:`article`, or on ``cancel()`` (call it when the item is done).
        """
        coming = _Coming()
        with _ARTICLES_LOCK:
            _COMING.append(coming)
        return coming

    def article_step(self, step: str) -> None:
        """The calling thread's article moves on to ``step`` (one of ``ARTICLE_STEPS``): calls of articles ahead wait for it."""
        super().article_step(step)
        index = ARTICLE_STEPS.index(step)
        with _ARTICLES_LOCK:
            entry = _ARTICLES.get(threading.get_ident())
            if entry is None:
                return
            entry[1] = index
        _wake_batchers()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """One completion per request, in order; requests with equal settings share batched generate() calls."""
        if not requests:
            return []
        model, tokenizer = self.load()
        ids = [self._prompt_ids(tokenizer, r) for r in requests]
        return self._loaded[2].run(
            list(zip(requests, ids)), lambda work: run_on_model_thread(lambda: self._run_all(model, tokenizer, work)))

    def _run_all(self, model: Any, tokenizer: Any, work: list[tuple[GenerationRequest, list[int]]]) -> list[Completion]:
        """Completions of ``work`` (request, prompt ids), in order: equal settings share chunks of the batch size, sorted by length.

        Seeds are per row (see :func:`_row_generators`), so requests with different seeds, such as
        the sections of two articles, still share a chunk.
        """
        groups: dict[tuple, list[int]] = {}
        for i, (r, _) in enumerate(work):
            groups.setdefault((r.max_new_tokens, r.temperature, r.top_p, r.stop), []).append(i)
        results: list[Completion | None] = [None] * len(work)
        size = self._batch_size or 1
        for members in groups.values():
            members.sort(key=lambda i: len(work[i][1]))
            for start in range(0, len(members), size):
                chunk = members[start : start + size]
                done = self._run_chunk(model, tokenizer, [work[i][0] for i in chunk], [work[i][1] for i in chunk])
                for i, completion in zip(chunk, done):
                    results[i] = completion
        return results  # type: ignore[return-value]

    def _fit_context(self, model: Any, tokenizer: Any, prompts: list[list[int]], max_new: int):
        """Make every prompt + max_new fit the context: shorten generation to half the window, then cut prompts from the left."""
        ctx = _context_length(model.config, tokenizer)
        longest = max(len(p) for p in prompts)
        if ctx is None or longest + max_new <= ctx:
            return prompts, max_new
        new = max(1, min(max_new, max(ctx - longest, ctx // 2)))
        if new < max_new:
            log.warning("max_new_tokens %d -> %d to fit the model's %d-token context", max_new, new, ctx)
        keep = ctx - new
        if longest > keep:
            log.warning("prompt of %d tokens cut from the left to %d to fit the model's context", longest, keep)
            prompts = [p[-keep:] for p in prompts]
        return prompts, new

    def _prefill_shared(self, torch: Any, model: Any, prompts: list[list[int]], pad_id: int, max_new: int):
        """The KV cache for generate() and, when rows share a prompt prefix that pays, the layout it was filled for.

        Returns ``(cache, layout)``: ``cache`` is None for transformers' own (the options are off, or
        the model takes no position ids); ``layout`` (see :func:`fastpath.shared_prefill_layout`) is
        None for plain left padding. With a layout, each group's prefix is already in ``cache``.
        """
        from aigc.backends.local import fastpath

        o = self.options
        params = _forward_params(model)
        if not (o.share_prefix or o.reserve_cache) or params is None:
            return None, None
        layout = None
        if o.share_prefix and len(prompts) > 1:
            groups, lengths = fastpath.prefix_groups(prompts, _MIN_SHARED)
            candidate = fastpath.shared_prefill_layout(prompts, groups, lengths, pad_id)
            if len(lengths) < len(prompts) and candidate["tokens"] <= _SHARED_PAYS * candidate["plain_tokens"]:
                layout = candidate
                log.debug("prompt prefixes shared by %d groups of %d rows: prefill of %d token slots instead of %d",
                          len(lengths), len(prompts), layout["tokens"], layout["plain_tokens"])
        width = len(layout["input_ids"][0]) if layout else max(len(p) for p in prompts)
        if o.reserve_cache:
            cache = fastpath.growing_cache(model, width + max_new)
        else:
            from transformers import DynamicCache

            cache = DynamicCache(config=model.config)
        if layout is not None:
            ids = torch.tensor(layout["prefix_ids"], device=model.device)
            mask = torch.tensor(layout["prefix_mask"], device=model.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, **keep)
            cache.batch_select_indices(torch.tensor(layout["groups"], device=model.device))  # each row its group's
        return cache, layout

    def _run_chunk(self, model: Any, tokenizer: Any, reqs: list[GenerationRequest], prompts: list[list[int]]) -> list[Completion]:
        torch, transformers = _torch()
        req = reqs[0]  # every request of a chunk has the same settings but its own seed
        generators = _row_generators(torch, [r.seed for r in reqs], prompts, model.device)
        prompts, max_new = self._fit_context(model, tokenizer, prompts, req.max_new_tokens)
        pad_id = tokenizer.pad_token_id
        cache, layout = self._prefill_shared(torch, model, prompts, pad_id, max_new)
        if layout is None:
            width = max(len(p) for p in prompts)
            layout = {"input_ids": [[pad_id] * (width - len(p)) + p for p in prompts],
                      "attention_mask": [[0] * (width - len(p)) + [1] * len(p) for p in prompts]}
        input_ids = torch.tensor(layout["input_ids"], device=model.device)
        attention = torch.tensor(layout["attention_mask"], device=model.device)
        width = input_ids.shape[1]
        eos = model.generation_config.eos_token_id
        eos_ids = {*(eos if isinstance(eos, list) else [eos] if eos is not None else []), tokenizer.eos_token_id}
        eos_ids.discard(None)
        sampled = req.temperature > 0
        settings: dict[str, Any] = dict(
            max_new_tokens=max_new,
            do_sample=False,  # sampling is done by the top-k/top-p processor below; generate() takes its pick
            temperature=1.0,  # neutral, so that a model's generation_config.json adds no warper of its own
            top_p=1.0,
            top_k=50,
            # when sampling, the sampler applies the penalty itself, in place
            repetition_penalty=1.0 if sampled else self.options.repetition_penalty,
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids),
        )
        if self.options.no_repeat_ngram_size:
            settings["no_repeat_ngram_size"] = self.options.no_repeat_ngram_size
        processors = transformers.LogitsProcessorList()
        if sampled:
            from aigc.backends.local.fastpath import top_k_top_p_sampler

            processors.append(top_k_top_p_sampler(req.temperature, self.options.top_k, req.top_p, generators,
                                                  repetition_penalty=self.options.repetition_penalty))
        extra: dict[str, Any] = {"logits_processor": processors}
        if cache is not None:
            extra["cache"] = cache
        if req.stop:
            settings["stop_strings"] = list(req.stop)
            extra["tokenizer"] = tokenizer
        start = time.perf_counter()
        extra["stopping_criteria"] = transformers.StoppingCriteriaList([_progress_criterion(len(prompts), max_new)])
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                generation_config=transformers.GenerationConfig(**settings),
                **extra,
            )
        seconds = (time.perf_counter() - start) / len(prompts)
        ends = eos_ids | {pad_id}
        completions = []
        for prompt, row in zip(prompts, out[:, width:].tolist()):
            n = next((k for k, tok in enumerate(row) if tok in ends), None)
            new_tokens = row if n is None else row[:n]
            text, stopped = trim_at_stop(tokenizer.decode(new_tokens, skip_special_tokens=True), req.stop)
            finished = stopped or n is not None
            completions.append(
                Completion(
                    text=text,
                    prompt_tokens=len(prompt),
                    completion_tokens=len(new_tokens),
                    finish_reason="stop" if finished else "length",
                    seconds=seconds,
                )
            )
        return completions


def _forward_params(model: Any) -> set[str] | None:
    """The forward() parameters of a model that aigc may hand a KV cache it filled itself, else None.

    That takes a decoder-only model whose forward() takes ``cache`` and ``position_ids`` (positions
    then follow the attention mask, which a shared prefix needs) and whose cache is transformers' dynamic one.
    """
    import inspect

    if getattr(model.config, "is_encoder_decoder", False):
        return None
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    if supports is not None and not supports():
        return None
    params = set(inspect.signature(model.forward).parameters)
    return params if {"cache", "position_ids"} <= params else None


def _row_generators(torch: Any, seeds: Sequence[int | None], prompts: Sequence[Sequence[int]], device: Any) -> list[Any]:
    """One random generator per row, seeded from the request's seed and its prompt (None: torch's global one).

    A request then samples the same way whichever other requests share its generate() call.
    """
    gens = []
    for seed, prompt in zip(seeds, prompts):
        if seed is None:
            gens.append(None)
            continue
        digest = hashlib.blake2b(f"{seed}:{','.join(map(str, prompt))}".encode(), digest_size=8).digest()
        gens.append(torch.Generator(device=device).manual_seed(int.from_bytes(digest, "big") >> 1))
    return gens


class _Batcher:
    """Runs the generate() calls of one loaded model one at a time, merging calls made at the same time.

    When several threads write articles with one model (a batch, or ``pipeline.write_article`` from
    threads), their outline and section requests are pooled into shared chunks (two articles' 16
    sections in one call gave 1.4x the tokens/s of two calls of 8 on a CPU). A thread that finds the
    model idle leads and picks what runs next:

    - the articles are kept in step: calls of articles at a later step (sections) wait, up to
      ``lockstep_s``, while an article in progress is still at an earlier one (its outline, perhaps
      retried), so that all their sections can share one call instead of running one after the other;
    - among the calls of the earliest step, it waits up to ``gather_s`` for the articles at that step
      that have not queued yet (an article's next call follows its last within a fraction of a second).

    Calls from threads that write no article (see :meth:`LocalBackend.article`) run with whatever runs
    next. A lone article never waits.
    """

    def __init__(self, gather_s: float = 0.5, lockstep_s: float = 10.0):
        self.gather_s = gather_s
        self.lockstep_s = lockstep_s
        self.cond = threading.Condition()
        self.pending: list[dict[str, Any]] = []
        self.busy = False
        _BATCHERS.add(self)

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _select(self, waited: float) -> tuple[tuple, list[dict[str, Any]], float]:
        """Who is writing (the articles in progress and the earliest step), and the pending jobs to run now
        (none yet: wait up to the returned seconds and ask again). ``waited``: seconds since who is writing
        last changed (an article started, ended, or the earliest step moved on)."""
        with _ARTICLES_LOCK:
            # articles of another model are not waited for (once they have called it)
            steps = {thread: entry[1] for thread, entry in _ARTICLES.items() if entry[2] in (None, self)}
            coming = bool(_COMING)  # articles announced by a batch, at their first step once they start
        queued = {j["thread"] for j in self.pending}
        lowest = min([*steps.values(), *(j["step"] for j in self.pending if j["step"] is not None), *([0] if coming else [])],
                     default=None)
        ready = [j for j in self.pending if j["step"] is None or j["step"] == lowest]
        who = (lowest, frozenset(steps))
        if ready:
            behind = any(step == lowest and thread not in queued for thread, step in steps.items())
            if behind and waited < self.gather_s:
                return who, [], self.gather_s - waited
            if coming and waited < self.lockstep_s:  # (the earliest step is then the first one)
                return who, [], self.lockstep_s - waited
            return who, ready, 0.0
        if waited >= self.lockstep_s:  # the article behind takes too long: do not keep the model idle
            return who, list(self.pending), 0.0
        return who, [], self.lockstep_s - waited

    def run(self, work: list, runner) -> list:
        me = threading.get_ident()
        with _ARTICLES_LOCK:
            entry = _ARTICLES.get(me)
            step = entry[1] if entry else None
            if entry:
                entry[2] = self  # this article writes with this model
        job: dict[str, Any] = {"work": work, "thread": me, "step": step}
        with self.cond:
            self.pending.append(job)
            self.cond.notify_all()  # a leader gathering callers re-checks now
            while "result" not in job and "error" not in job:
                if self.busy:
                    self.cond.wait()
                    continue
                self.busy = True
                started, writing = time.monotonic(), None
                while True:
                    who, jobs, wait = self._select(time.monotonic() - started)
                    if who != writing:  # an article came or the ones behind caught up: the window starts again
                        started, writing = time.monotonic(), who
                        continue
                    if jobs:
                        break
                    self.cond.wait(wait)
                self.pending = [j for j in self.pending if all(j is not k for k in jobs)]
                self.cond.release()
                try:
                    merged = [w for j in jobs for w in j["work"]]
                    if len(jobs) > 1:
                        log.info("generating for %d callers together (%d requests)", len(jobs), len(merged))
                    results = runner(merged)
                    start = 0
                    for j in jobs:
                        j["result"], start = results[start : start + len(j["work"])], start + len(j["work"])
                except BaseException as exc:  # noqa: BLE001 - every caller of the merged run gets the error
                    for j in jobs:
                        j["error"] = exc
                finally:
                    self.cond.acquire()
                    self.busy = False
                    self.cond.notify_all()
        if "error" in job:
            raise job["error"]
        return job["result"]


class _Coming:
    """An article announced by :meth:`LocalBackend.article_coming`."""

    def cancel(self) -> None:
        """The article will not come (its item ended before it started writing), or it came: stop waiting for it."""
        with _ARTICLES_LOCK:
            if self in _COMING:
                _COMING.remove(self)
            else:
                return
        _wake_batchers()


def _wake_batchers() -> None:
    """Every loaded model's batcher re-checks whom it waits for (an article ended or moved on a step)."""
    for batcher in list(_BATCHERS):
        batcher.wake()


def _progress_criterion(batch: int, max_new: int):
    """A stopping criterion that never stops: it logs generation progress every ~20% (long CPU runs)."""
    import torch
    from transformers import StoppingCriteria

    class Progress(StoppingCriteria):
        def __init__(self):
            self.step, self.start, self.next_mark = 0, time.perf_counter(), 0.2

        def __call__(self, input_ids, scores, **kwargs):
            self.step += 1
            if max_new >= 32 and self.step / max_new >= self.next_mark:
                elapsed = time.perf_counter() - self.start
                log.info("generating %d sequence(s): %d/%d tokens (%.0f%%), %.1f tokens/s", batch, self.step,
                         max_new, 100 * self.step / max_new, batch * self.step / max(elapsed, 1e-9))
                self.next_mark += 0.2
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return Progress()


def _prepare_tokenizer(tokenizer: Any) -> None:
    """Left padding, and a pad token (EOS) for tokenizers without one (GPT-2)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def loaded_models() -> list[tuple[str, str, str, str, str, str]]:
    """Keys (path, device, dtype, kernels, attention, decode) of the models loaded in this process."""
    return list(_MODELS)


__all__ = ["LocalBackend", "LocalOptions", "loaded_models", "run_on_model_thread"]

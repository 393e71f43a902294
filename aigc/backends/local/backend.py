"""The local backend: a transformers causal LM on this machine, batched ``generate()`` with left padding."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from aigc.backends.base import Backend, Completion, GenerationRequest, parse_options, trim_at_stop
from aigc.backends.local import fastpath as fastpath_module
from aigc.backends.local.embedded import EMBEDDED_MODEL_ID, EMBEDDED_NAME, ensure_converted
from aigc.backends.local.fastpath import FastPath
from aigc.backends.local.markers import MarkerVocab, marker_processor
from aigc.backends.local.loading import (BATCH_CAP, LoadedModel, auto_batch_size, context_length, is_path_like,
                                         load_pretrained, prepare_tokenizer, run_on_model_thread, shared_model,
                                         torch_modules)
from aigc.errors import BackendError, ConfigError

log = logging.getLogger("aigc.backends.local")


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
    #: aigc's CPU fast path (packed weights, shared prompt prefixes, a reserved KV cache, a fused decode step;
    #: see :mod:`aigc.backends.local.fastpath`); false: plain transformers ``generate()``.
    fast: bool = True


class LocalBackend(Backend):
    """Generates with a transformers causal LM (the embedded SmolLM2 by default, GPT-2 and any HF model too).

    ``fastpath``: which parts of the fast path to use when ``options.fast`` is on (all by default); the
    benchmark's ablation turns them off one at a time. Generation runs on the model thread
    (:func:`~aigc.backends.local.loading.run_on_model_thread`); calls from several threads take turns.
    """

    name: ClassVar[str] = "local"
    supports_prefill: ClassVar[bool] = True
    #: Articles of a batch whose requests share one call at most (see concurrent_articles).
    max_concurrent_articles: ClassVar[int] = 16
    #: Two candidates per section, the better kept: extra rows in one batched call are cheap here, and on
    #: three everyday articles the quality figure went from 86.7 (one) to 96.0 (two) and 96.2 (three)
    #: (meta-text 5.2% -> 1.1%; see docs/evaluation.md).
    default_section_candidates: ClassVar[int] = 2

    def __init__(self, options: LocalOptions | None = None, *, model: Any = None, tokenizer: Any = None,
                 fastpath: FastPath | None = None):
        self.options = options or LocalOptions()
        if (model is None) != (tokenizer is None):
            raise ConfigError("LocalBackend: pass both 'model' and 'tokenizer', or neither")
        self._fast = (fastpath or FastPath()) if self.options.fast else FastPath.off()
        self._loaded: LoadedModel | None = None
        self._given = model
        self._markers: tuple[Any, MarkerVocab] | None = None  # (tokenizer, its MarkerVocab)
        if model is not None:  # used as given: no packed weights, no fused step (the caller's model stays theirs)
            prepare_tokenizer(tokenizer)
            self._loaded = LoadedModel(model.eval(), tokenizer, {
                "kernels": fastpath_module.PLAIN_KERNELS, "decode": fastpath_module.PLAIN_DECODE,
                "cache_by_aigc": fastpath_module.forward_params(model) is not None})
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
            return str(self._loaded.model.device)
        if self.options.device != "auto":
            return self.options.device
        torch, _ = torch_modules()
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _dtype(self) -> str:
        if self._loaded is not None:
            return str(self._loaded.model.dtype).removeprefix("torch.")
        if self.options.dtype != "auto":
            return self.options.dtype
        return "bfloat16" if self._device().startswith("cuda") else "float32"

    def _fast_path(self) -> FastPath:
        """The parts of the fast path to use: none outside the tested transformers releases (see :func:`fastpath.gate`)."""
        return fastpath_module.gate(self._fast)

    def concurrent_articles(self, sections: int) -> int:
        """As many articles as put all their sections into one call (16 rows on a CPU: 5 articles of 3 sections).

        A batch makes one call for all its articles' outlines, then one for all their sections; four
        3-section articles written that way were 1.46x faster than one after the other (docs/performance.md).
        """
        rows = self._batch_size or BATCH_CAP["cuda" if self._device().startswith("cuda") else "cpu"]
        return max(1, min(self.max_concurrent_articles, rows // max(1, sections)))

    def describe(self) -> dict:
        """Backend, model, device, dtype, what of the fast path applies, and batch size ("auto" until loaded).

        Before loading, the kernels and decode step are the ones asked for; after, the ones in use.
        """
        device, dtype = self._device(), self._dtype()
        fast = self._fast_path()
        if self._loaded is not None:
            applied = self._loaded.applied
            kernels, decode, cache_ok = applied["kernels"], applied["decode"], applied["cache_by_aigc"]
            prefill = applied.get("prefill", fastpath_module.PLAIN_PREFILL)
        else:
            planned = fastpath_module.plan(fast, device, dtype)
            kernels, decode, prefill, cache_ok = planned["kernels"], planned["decode"], planned["prefill"], True
        return {
            **super().describe(),
            "device": device,
            "dtype": dtype,
            "fast": not fast.is_off(),
            "kernels": kernels,
            "decode": decode,
            "prefill": prefill,
            "share_prefix": fast.share_prefix and cache_ok,
            "reserve_cache": fast.reserve_cache and cache_ok,
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
        if is_path_like(model) or folder.exists():
            raise BackendError(
                f"local model folder {model} does not exist or is not a folder; set the local backend's 'model' option to a folder "
                "with config.json and weights, a Hugging Face model id, or 'embedded'",
                retryable=False,
            )
        return model

    def load(self) -> tuple[Any, Any]:
        """Load (once per process, on the model thread) and return ``(model, tokenizer)``."""
        if self._loaded is None:
            path, device, dtype = self._model_path(), self._device(), self._dtype()
            planned = fastpath_module.plan(self._fast_path(), device, dtype)
            key = (path, device, dtype, planned["kernels"], planned["decode"], planned["prefill"])
            self._loaded = shared_model(key, lambda: self._load_fresh(path, device, dtype, planned))
        if self._batch_size is None:
            self._batch_size = auto_batch_size(self._loaded.model)
        return self._loaded.model, self._loaded.tokenizer

    def _load_fresh(self, path: str, device: str, dtype: str, planned: dict[str, str]) -> LoadedModel:
        start = time.perf_counter()
        model, tokenizer = load_pretrained(path, device, dtype, self.options.threads)
        rows = min(self.options.max_batch_size or BATCH_CAP["cpu"], BATCH_CAP["cpu"])
        applied = fastpath_module.apply(model, planned, rows)
        log.info("Loaded local model %s on %s (%s, %s kernels, %s decode step, prefill in %s) in %.1f s", path, device,
                 dtype, applied["kernels"], applied["decode"], applied["prefill"], time.perf_counter() - start)
        return LoadedModel(model, tokenizer, applied)

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

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """One completion per request, in order; requests with equal settings share batched generate() calls."""
        if not requests:
            return []
        model, tokenizer = self.load()
        work = [(r, self._prompt_ids(tokenizer, r)) for r in requests]
        return run_on_model_thread(lambda: self._run_all(model, tokenizer, work))

    def _run_all(self, model: Any, tokenizer: Any, work: list[tuple[GenerationRequest, list[int]]]) -> list[Completion]:
        """Completions of ``work`` (request, prompt ids), in order: requests with the same sampler share chunks of the batch size.

        Token budgets and stop strings are per row (a row that reaches its own stops early), and so
        are seeds (see :func:`_row_generators`): the outlines of articles with different section
        counts, or the follow-up requests of articles missing one title and two, share one call.
        Beyond one chunk, rows of similar budget and prompt length go together.
        """
        groups: dict[tuple, list[int]] = {}
        for i, (r, _) in enumerate(work):
            groups.setdefault((r.temperature, r.top_p, r.penalize_prompt), []).append(i)
        results: list[Completion | None] = [None] * len(work)
        size = self._batch_size or 1
        for members in groups.values():
            members.sort(key=lambda i: (work[i][0].max_new_tokens, len(work[i][1])))
            for start in range(0, len(members), size):
                chunk = members[start : start + size]
                done = self._run_chunk(model, tokenizer, [work[i][0] for i in chunk], [work[i][1] for i in chunk])
                for i, completion in zip(chunk, done):
                    results[i] = completion
        return results  # type: ignore[return-value]

    def _fit_context(self, model: Any, tokenizer: Any, prompts: list[list[int]], max_new: int):
        """Make every prompt + max_new fit the context: shorten generation to half the window, then cut prompts from the left."""
        ctx = context_length(model.config, tokenizer)
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

    def _cache_parts(self) -> dict[str, bool]:
        """The KV-cache parts of the fast path that apply to the loaded model (keywords of :func:`fastpath.prefill_shared`)."""
        fast, cache_ok = self._fast_path(), self._loaded.applied["cache_by_aigc"]
        return {"share_prefix": fast.share_prefix and cache_ok, "reserve_cache": fast.reserve_cache and cache_ok}

    def _marker_vocab(self, tokenizer: Any) -> MarkerVocab:
        """The loaded tokenizer's :class:`MarkerVocab` (built on first use: 0.4 s for SmolLM2's 49,152 tokens)."""
        if self._markers is None or self._markers[0] is not tokenizer:
            self._markers = (tokenizer, MarkerVocab(tokenizer))
        return self._markers[1]

    def _run_chunk(self, model: Any, tokenizer: Any, reqs: list[GenerationRequest], prompts: list[list[int]]) -> list[Completion]:
        torch, transformers = torch_modules()
        req = reqs[0]  # every request of a chunk has the same sampler; seed, budget and stops are its own
        generators = _row_generators(torch, [r.seed for r in reqs], prompts, model.device)
        prompts, max_new = self._fit_context(model, tokenizer, prompts, max(r.max_new_tokens for r in reqs))
        budgets = [min(r.max_new_tokens, max_new) for r in reqs]
        pad_id = tokenizer.pad_token_id
        cache, layout = fastpath_module.prefill_shared(model, prompts, pad_id, max_new, **self._cache_parts())
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
            # when sampling, the sampler applies the penalty itself, in place; without the prompt, a processor below
            repetition_penalty=1.0 if sampled or not req.penalize_prompt else self.options.repetition_penalty,
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids),
        )
        if self.options.no_repeat_ngram_size:
            settings["no_repeat_ngram_size"] = self.options.no_repeat_ngram_size
        processors = transformers.LogitsProcessorList()
        if any(r.citation_numbers for r in reqs):  # before the sampler, which draws from what it is given
            processors.append(marker_processor(self._marker_vocab(tokenizer), [r.citation_numbers for r in reqs]))
        penalty_from = 0 if req.penalize_prompt else width
        if sampled:
            processors.append(fastpath_module.top_k_top_p_sampler(req.temperature, self.options.top_k, req.top_p, generators,
                                                  repetition_penalty=self.options.repetition_penalty,
                                                  penalty_from=penalty_from))
        elif penalty_from and self.options.repetition_penalty != 1.0:
            processors.append(transformers.RepetitionPenaltyLogitsProcessor(self.options.repetition_penalty,
                                                                             prompt_ignore_length=penalty_from))
        extra: dict[str, Any] = {"logits_processor": processors}
        if cache is not None:
            extra["cache"] = cache
        start = time.perf_counter()
        extra["stopping_criteria"] = transformers.StoppingCriteriaList(
            [_row_criterion(transformers, tokenizer, reqs, budgets, max_new)])
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
        for prompt, row, budget, r in zip(prompts, out[:, width:].tolist(), budgets, reqs):
            row = row[:budget]  # a row that reached its budget was padded after it
            n = next((k for k, tok in enumerate(row) if tok in ends), None)
            new_tokens = row if n is None else row[:n]
            text, stopped = trim_at_stop(tokenizer.decode(new_tokens, skip_special_tokens=True), r.stop)
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


def _row_criterion(transformers: Any, tokenizer: Any, reqs: Sequence[GenerationRequest], budgets: Sequence[int],
                   max_new: int):
    """The chunk's stopping criterion: each row stops at its own token budget and its own stop strings.

    It also logs generation progress every ~20% (long CPU runs).
    """
    import torch

    by_stops: dict[tuple[str, ...], list[int]] = {}
    for k, r in enumerate(reqs):
        if r.stop:
            by_stops.setdefault(tuple(r.stop), []).append(k)
    stop_checks = [(transformers.StopStringCriteria(tokenizer, list(stops)), rows) for stops, rows in by_stops.items()]
    batch = len(reqs)

    class RowStops(transformers.StoppingCriteria):
        def __init__(self):
            self.step, self.start, self.next_mark = 0, time.perf_counter(), 0.2
            self.budgets = torch.tensor(list(budgets))
            self.masks = [torch.tensor([k in rows for k in range(batch)]) for _, rows in stop_checks]

        def __call__(self, input_ids, scores, **kwargs):
            self.step += 1
            if max_new >= 32 and self.step / max_new >= self.next_mark:
                elapsed = time.perf_counter() - self.start
                log.info("generating %d sequence(s): %d/%d tokens (%.0f%%), %.1f tokens/s", batch, self.step,
                         max_new, 100 * self.step / max_new, batch * self.step / max(elapsed, 1e-9))
                self.next_mark += 0.2
            done = (self.budgets <= self.step).to(input_ids.device)
            for (check, _), mask in zip(stop_checks, self.masks):
                done |= check(input_ids, scores) & mask.to(input_ids.device)
            return done

    return RowStops()


__all__ = ["LocalBackend", "LocalOptions"]

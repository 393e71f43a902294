"""The local backend's CPU fast path: its parts, the transformers versions it is tested with, and applying it to a model.

Each part is measured by ``benchmarks/bench.py --only ablation`` (docs/performance.md) and stays only
because it pays: packed linear weights (:mod:`.kernels`), float16 MLP weights, a prompt prefix shared
by several rows computed once (:mod:`.prefix`), a KV cache reserved ahead (:mod:`.cache`) and aigc's
own decode step for Llama-family models (:mod:`.fused`). Users turn the whole of it on or off
(``LocalOptions.fast``); the parts are switched one by one only through :class:`FastPath`, which the
benchmark passes to ``LocalBackend(options, fastpath=...)``. Sampling among the top-k candidates with
a generator per row (:mod:`.sampler`) is not a switch: it is how the local backend samples.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from packaging.specifiers import SpecifierSet
from pydantic import BaseModel, ConfigDict

from aigc.backends.local.fastpath import kernels as _kernels
from aigc.backends.local.fastpath.cache import growing_cache
from aigc.backends.local.fastpath.fused import (FUSED_DECODE, blocked_bias, fused_decode_unsupported, grouped_attention,
                                                install_fused_decode, product_bias)
from aigc.backends.local.fastpath.kernels import (FBGEMM_FP16, ONEDNN_PACKED, PACKED_KERNELS, bf16_prefill_available,
                                                  fbgemm_fp16_available, mkldnn_linear_available, pack_linears,
                                                  packed_kernels_available)
from aigc.backends.local.fastpath.prefix import (best_layout, duplicate_groups, forward_params, nested_prefill_layout,
                                                 prefill_shared, prefix_groups,
                                                 shared_prefill_layout)
from aigc.backends.local.fastpath.sampler import penalize_repeats, top_k_top_p_sampler

log = logging.getLogger("aigc.backends.local")

#: The transformers releases the fast path is tested with. It reaches into transformers' internals (it
#: subclasses ``DynamicLayer``, hands ``generate()`` a cache it filled, and replaces a Llama model's
#: ``forward`` for one-token steps), so on any other release the local backend runs plain ``generate()``.
TESTED_TRANSFORMERS = SpecifierSet(">=5.24,<5.25")

#: What ``describe()`` says of the linear layers and the decode step when no part of the fast path applies.
PLAIN_KERNELS, PLAIN_DECODE = "default", "transformers"
#: What ``describe()`` says of the prefill's products: the model's own dtype, or bfloat16 copies (``bf16_prefill``).
PLAIN_PREFILL, BF16_PREFILL = "model dtype", "bfloat16"


class FastPath(BaseModel):
    """Which parts of the CPU fast path to use (all by default). Not a user option: for the benchmark's ablation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: CPU, float32: pack linear weights once for fast kernels; off: plain nn.Linear (and no fused decode step).
    prepack: bool = True
    #: With prepack: the MLP's linear weights (Llama family with the fused step; other models: every linear)
    #: as float16 for fbgemm, multiplied in float32. Off: float32 weights in oneDNN's layout everywhere.
    fp16_weights: bool = True
    #: With prepack, on a CPU that multiplies bfloat16 natively (AVX512-BF16, AMX): a prompt's prefill
    #: multiplies bfloat16 copies of the weights (about 2x faster products; decode steps unchanged).
    bf16_prefill: bool = True
    #: Compute a prompt start that several rows share (an article's sections) once, not once per row.
    share_prefix: bool = True
    #: Reserve the KV cache for the prompt and the new tokens, and write each step into it in place.
    reserve_cache: bool = True
    #: CPU, float32, Llama-family models: q/k/v and gate/up fused, and each new token by aigc's own decode step.
    fused_decode: bool = True

    @classmethod
    def off(cls) -> "FastPath":
        """Every part off: plain transformers ``generate()``."""
        return cls(**{name: False for name in cls.model_fields})

    def is_off(self) -> bool:
        return not any(self.model_dump().values())


@functools.cache
def transformers_version() -> str | None:
    """The installed transformers release (None if it is not installed)."""
    try:
        return version("transformers")
    except PackageNotFoundError:  # pragma: no cover - a core dependency
        return None


_GATE_LOGGED = False


def gate(fast: FastPath) -> FastPath:
    """``fast`` on a transformers release in :data:`TESTED_TRANSFORMERS`; every part off on any other (said once)."""
    global _GATE_LOGGED
    found = transformers_version()
    if fast.is_off() or (found is not None and TESTED_TRANSFORMERS.contains(found, prereleases=True)):
        return fast
    if not _GATE_LOGGED:
        _GATE_LOGGED = True
        log.warning("transformers %s is outside the range aigc's CPU fast path is tested with (%s): the local backend "
                    "runs plain generate(), slower; install 'transformers%s' for the fast path", found,
                    TESTED_TRANSFORMERS, TESTED_TRANSFORMERS)
    return FastPath.off()


def plan(fast: FastPath, device: str, dtype: str) -> dict[str, str]:
    """The linear kernels, decode step and prefill products that ``fast`` asks for on ``device`` in ``dtype`` (before loading)."""
    kernels = PLAIN_KERNELS
    if device == "cpu" and dtype == "float32" and fast.prepack:
        kernels = FBGEMM_FP16 if fast.fp16_weights else ONEDNN_PACKED
    decode = FUSED_DECODE if kernels in PACKED_KERNELS and fast.fused_decode else PLAIN_DECODE
    prefill = BF16_PREFILL if kernels in PACKED_KERNELS and fast.bf16_prefill else PLAIN_PREFILL
    return {"kernels": kernels, "decode": decode, "prefill": prefill}


def apply(model: Any, planned: dict[str, str], rows: int) -> dict[str, Any]:
    """Apply the kernels, decode step and prefill products of :func:`plan` to a loaded model; return what really applies.

    Falls back where this torch build lacks an op (fbgemm's float16 ops: oneDNN float32; no oneDNN:
    plain nn.Linear), the model cannot take the fused step (not a Llama: transformers' step) or the CPU
    has no bfloat16 instructions (prefill in float32).
    ``cache_by_aigc``: whether the model takes a cache filled by aigc (for ``share_prefix``/``reserve_cache``).
    """
    kernels, decode = planned["kernels"], planned["decode"]
    if kernels == FBGEMM_FP16 and not packed_kernels_available(kernels):
        log.info("fbgemm's float16-weight linear ops are not in this torch build; packing float32 weights for oneDNN")
        kernels = ONEDNN_PACKED
    if kernels in PACKED_KERNELS and not packed_kernels_available(kernels):
        log.info("%s linear ops are not in this torch build; using plain nn.Linear", kernels)
        kernels = PLAIN_KERNELS
    fused = False
    bf16 = planned.get("prefill") == BF16_PREFILL and kernels in PACKED_KERNELS and _kernels.bf16_prefill_available()
    if kernels in PACKED_KERNELS:
        fused = decode == FUSED_DECODE and install_fused_decode(model, rows, kernels, prefill_bf16=bf16)
        # then what the fused step did not pack (all of it without one)
        if not pack_linears(model, rows, kernels, prefill_bf16=bf16) and not fused:
            kernels, bf16 = PLAIN_KERNELS, False  # no float32 nn.Linear in this model
    return {"kernels": kernels, "decode": FUSED_DECODE if fused else PLAIN_DECODE,
            "prefill": BF16_PREFILL if bf16 else PLAIN_PREFILL, "cache_by_aigc": forward_params(model) is not None}


__all__ = ["BF16_PREFILL", "PLAIN_PREFILL", "bf16_prefill_available", "best_layout", "duplicate_groups", "nested_prefill_layout", "FBGEMM_FP16", "FUSED_DECODE", "FastPath", "ONEDNN_PACKED", "PACKED_KERNELS", "PLAIN_DECODE", "PLAIN_KERNELS",
           "TESTED_TRANSFORMERS", "apply", "blocked_bias", "fbgemm_fp16_available", "forward_params",
           "fused_decode_unsupported", "gate", "grouped_attention", "growing_cache", "install_fused_decode",
           "mkldnn_linear_available", "pack_linears", "packed_kernels_available", "penalize_repeats", "plan",
           "prefill_shared", "prefix_groups", "product_bias", "shared_prefill_layout", "top_k_top_p_sampler",
           "transformers_version"]

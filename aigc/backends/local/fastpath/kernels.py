"""Packed linear layers: float32 weights reordered once for oneDNN, or float16 weights packed for fbgemm.

On a CPU, batched decoding of a small model spends most of its time in the linear layers, and MKL's
general matrix multiply is slow for the few rows a decode step has (the 49,152-word output layer of
SmolLM2 took 3x longer at 8 rows than oneDNN with the weight packed once). A float16 copy of the MLP's
weights for fbgemm, which multiplies it in float32, halves the bytes those products read.

A prompt's prefill is the other kind of work: hundreds of rows a product, bound by arithmetic, not by
reading weights. On a CPU with bfloat16 dot-product instructions (AVX512-BF16, AMX) a bfloat16 copy of
each weight, multiplied with the input rounded to bfloat16, does those products in about half the time
(``prefill_bf16``); decode steps keep the float32/float16 kernels.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Sequence

log = logging.getLogger("aigc.backends.local")


def mkldnn_linear_available() -> bool:
    """Whether this torch build has oneDNN's pre-packed linear ops (CPU builds from pytorch.org do)."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(
            torch.ops.mkldnn, "_reorder_linear_weight")
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without oneDNN
        return False


@functools.cache
def bf16_prefill_available() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX) and torch has oneDNN's packed linear ops.

    Without those instructions oneDNN converts bfloat16 to float32 around float32 arithmetic: no faster.
    """
    import torch

    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:  # pragma: no cover - an older torch
        return False
    return bool(native) and mkldnn_linear_available()


@functools.cache
def fbgemm_fp16_available() -> bool:
    """Whether this torch build has fbgemm's float16-weight linear ops (x86-64 builds from pytorch.org do)."""
    import torch

    try:
        packed = torch.ops.quantized.linear_prepack_fp16(torch.ones(2, 3), None)
        return torch.ops.quantized.linear_dynamic_fp16(torch.ones(1, 3), packed).shape == (1, 2)
    except (AttributeError, RuntimeError, NotImplementedError):  # no fbgemm: ARM builds, some custom builds
        return False


#: Linear kernels of :func:`pack_linears`: float32 weights reordered for oneDNN, or float16 weights for fbgemm.
ONEDNN_PACKED = "onednn-packed"
FBGEMM_FP16 = "fbgemm-fp16"
PACKED_KERNELS = (ONEDNN_PACKED, FBGEMM_FP16)


def packed_kernels_available(kind: str) -> bool:
    """Whether this torch build runs :func:`pack_linears` of ``kind`` (one of :data:`PACKED_KERNELS`)."""
    return mkldnn_linear_available() if kind == ONEDNN_PACKED else fbgemm_fp16_available()


def _bf16_prefill_call(weight: Any, bias: Any) -> Any:
    """The product ``x @ weight.T + bias`` in bfloat16 (weight reordered once for oneDNN), returned as float32."""
    import torch

    packed = torch.ops.mkldnn._reorder_linear_weight(weight.to(torch.bfloat16), 256)
    op = torch.ops.mkldnn._linear_pointwise.default
    return lambda x: op(x.to(torch.bfloat16), packed, bias, "none", [], "").float()


def _many_positions(x: Any) -> bool:
    """Whether ``x`` (batch, positions, features) holds more than one position a row: a prefill, not a decode step."""
    return x.dim() == 3 and x.shape[1] > 1


@functools.cache
def _packed_linear_class(kind: str = ONEDNN_PACKED):
    """The module class that stands in for an ``nn.Linear`` with packed kernels of ``kind``.

    Its ``call`` attribute is the bare op with the packed weight bound (what :func:`_decode_step` calls,
    without ``nn.Module`` dispatch). With ``prefill_bf16``, ``forward`` on more than one position a row
    (a prefill) multiplies a bfloat16 copy of the weight instead (see :func:`bf16_prefill_available`).
    """
    import torch

    class PackedLinear(torch.nn.Module):
        """An ``nn.Linear`` (inference only) whose float32 weight is reordered once into oneDNN's blocked layout."""

        def __init__(self, linear: torch.nn.Linear, rows_hint: int, prefill_bf16: bool = False):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            weight = linear.weight.detach()
            # plain attributes, not buffers: the packed tensor is opaque to .to(), state_dict() and saving
            self.packed_weight = packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)
            self.bias = bias = None if linear.bias is None else linear.bias.detach()
            op = torch.ops.mkldnn._linear_pointwise.default
            self.call = lambda x: op(x, packed, bias, "none", [], "")
            self.prefill = _bf16_prefill_call(weight, bias) if prefill_bf16 else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.prefill is not None and _many_positions(x):
                return self.prefill(x)
            return self.call(x)

        def extra_repr(self) -> str:
            bf16 = ", prefill in bfloat16" if self.prefill is not None else ""
            return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN{bf16}"

    class HalfLinear(torch.nn.Module):
        """An ``nn.Linear`` (inference only) whose weight is kept as float16, packed for fbgemm, multiplied in float32.

        Inputs, bias, accumulation and outputs stay float32; only the weight is rounded to float16
        (SmolLM2's perplexity on ``data/corpus``: 38.3285 float32, 38.3261 with float16 weights). Each
        step reads half the bytes of float32 weights, and fbgemm's kernels are fast for a few rows.
        """

        def __init__(self, linear: torch.nn.Linear, rows_hint: int = 0, prefill_bf16: bool = False):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            bias = None if linear.bias is None else linear.bias.detach().contiguous()
            # a plain attribute (as PackedLinear's): opaque to .to(), state_dict() and saving
            self.packed_weight = packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().contiguous(), bias)
            op = torch.ops.quantized.linear_dynamic_fp16.default
            self.call = lambda x: op(x, packed)
            self.prefill = _bf16_prefill_call(linear.weight.detach(), bias) if prefill_bf16 else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.prefill is not None and _many_positions(x):
                return self.prefill(x)
            return self.call(x)

        def extra_repr(self) -> str:
            bf16 = ", prefill in bfloat16" if self.prefill is not None else ""
            return (f"in_features={self.in_features}, out_features={self.out_features}, float16 weights packed for "
                    f"fbgemm{bf16}")

    return HalfLinear if kind == FBGEMM_FP16 else PackedLinear


def pack_many(items: Sequence[tuple[Any, str]], rows_hint: int, prefill_bf16: bool = False) -> list[Any]:
    """Packed copies of ``(linear, kind)`` items: float16 ones on as many threads as torch uses.

    ``prefill_bf16``: each also keeps a bfloat16 copy for prefills (see ``PackedLinear``); only where
    :func:`bf16_prefill_available`.

    Each linear is an ``nn.Linear``, or a list of them to pack side by side (see :func:`side_by_side`;
    concatenated when its turn comes, so that only a few such copies exist at once).

    fbgemm packs float16 weights slowly and on one core (12 ns a weight here: 1.7 s for all of
    SmolLM2, against 0.35 s for oneDNN's reorder); the op releases the GIL, so threads share the
    work. oneDNN's reorders run on this thread meanwhile: they are fast, and their parallel parts
    would start OpenMP teams on other threads.
    """
    import torch

    prefill_bf16 = prefill_bf16 and bf16_prefill_available()

    def pack(item: tuple[Any, str]) -> Any:
        linear, kind = item
        return _packed_linear_class(kind)(side_by_side(linear) if isinstance(linear, (list, tuple)) else linear, rows_hint,
                                          prefill_bf16)

    half = [i for i, (_, kind) in enumerate(items) if kind == FBGEMM_FP16]
    workers = min(len(half), torch.get_num_threads())
    if workers <= 1:
        return [pack(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    out: list[Any] = [None] * len(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="aigc-pack") as pool:
        halves = pool.map(pack, [items[i] for i in half])
        for i, item in enumerate(items):
            if item[1] != FBGEMM_FP16:
                out[i] = pack(item)
        for i, packed in zip(half, halves):
            out[i] = packed
    return out


def _replace_linears(model: Any, rows_hint: int, kind: str, prefill_bf16: bool = False) -> int:
    """Replace every float32 CPU ``nn.Linear`` (not a subclass) of ``model`` by its packed copy; return how many."""
    import torch

    found = [(module, name, child) for module in model.modules() for name, child in module.named_children()
             if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu"]
    for (module, name, _), packed in zip(found, pack_many([(child, kind) for _, _, child in found], rows_hint,
                                                          prefill_bf16)):
        setattr(module, name, packed)
    return len(found)


def pack_linears(model: Any, rows_hint: int, kind: str = ONEDNN_PACKED, prefill_bf16: bool = False) -> int:
    """Replace every float32 ``nn.Linear`` of a CPU model by a packed copy of ``kind``; return how many.

    ``kind``: :data:`ONEDNN_PACKED` (float32 weights in oneDNN's layout, the same results) or
    :data:`FBGEMM_FP16` (float16 weights, see ``HalfLinear``). For inference only (no gradients). The
    model's own parameters (the tied embedding among them) stay as they are, so the packed copy of a
    tied output layer costs its size in memory once more (half of it with float16 weights).
    ``prefill_bf16``: see :func:`pack_many`.
    """
    if not packed_kernels_available(kind):
        log.info("%s linear ops are not in this torch build; using plain nn.Linear", kind)
        return 0
    return _replace_linears(model, rows_hint, kind, prefill_bf16)


def side_by_side(linears: Sequence[Any]) -> Any:
    """One ``nn.Linear`` computing ``linears`` (same input) side by side: their weights (and biases) concatenated."""
    import torch

    weight = torch.cat([lin.weight.detach() for lin in linears])
    biases = [lin.bias for lin in linears]
    # on the meta device: no random initialisation of weights that are replaced at once (1 s for SmolLM2)
    fused_linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=biases[0] is not None, device="meta")
    fused_linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    if biases[0] is not None:
        fused_linear.bias = torch.nn.Parameter(torch.cat([b.detach() for b in biases]), requires_grad=False)
    return fused_linear

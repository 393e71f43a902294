"""CPU fast path of the local backend: pre-packed linear weights, and sampling over the top-k candidates.

Measured by ``benchmarks/bench.py`` (README, Performance): on a CPU, batched decoding of a small model
spends most of its time in the linear layers, and MKL's general matrix multiply is slow for the few
rows a decode step has (the 49,152-word output layer of SmolLM2 took 3x longer at 8 rows than oneDNN
with the weight packed once). Hugging Face's sampling sorts the whole vocabulary for top-p and draws
over all of it; sampling among the top-k candidates gives the same distribution for a fraction of the
work.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

log = logging.getLogger(__name__)


def mkldnn_linear_available() -> bool:
    """Whether this torch build has oneDNN's pre-packed linear ops (CPU builds from pytorch.org do)."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(
            torch.ops.mkldnn, "_reorder_linear_weight")
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without oneDNN
        return False


def _packed_linear_class():
    import torch

    class PackedLinear(torch.nn.Module):
        """An ``nn.Linear`` (inference only) whose float32 weight is reordered once into oneDNN's blocked layout."""

        def __init__(self, linear: torch.nn.Linear, rows_hint: int):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            weight = linear.weight.detach()
            # plain attributes, not buffers: the packed tensor is opaque to .to(), state_dict() and saving
            self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)
            self.bias = None if linear.bias is None else linear.bias.detach()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"

    return PackedLinear


def _replace_linears(model: Any, make) -> int:
    import torch

    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear and (new := make(child)) is not child:
                setattr(module, name, new)
                count += 1
    return count


def pack_linears(model: Any, rows_hint: int) -> int:
    """Replace every float32 ``nn.Linear`` of a CPU model by a oneDNN pre-packed copy; return how many.

    For inference only (no gradients). The model's own parameters (the tied embedding among them)
    stay as they are, so the packed copy of a tied output layer costs its size in memory once more.
    """
    import torch

    if not mkldnn_linear_available():
        log.info("oneDNN pre-packed linear ops are not in this torch build; using plain nn.Linear")
        return 0
    cls = _packed_linear_class()
    return _replace_linears(
        model, lambda lin: cls(lin, rows_hint) if lin.weight.dtype == torch.float32 and lin.weight.device.type == "cpu" else lin)


def top_k_top_p_sampler(temperature: float, top_k: int, top_p: float, generators: Sequence[Any] | None = None):
    """A logits processor that draws the next token itself: temperature, then top-k, then top-p among those k.

    ``generators``: one ``torch.Generator`` (or None: the global one) per row, so that each row's draws
    depend on its own seed only, not on the rows it shares the batch with.

    It returns scores that are ``-inf`` except at the drawn token, so ``generate()`` must run with
    ``do_sample=False`` (its argmax then picks that token). The distribution is the one Hugging Face's
    temperature -> top-k -> top-p warpers and multinomial sampling give; only the random stream differs.
    ``top_k=0`` means the whole vocabulary.
    """
    import torch
    from transformers import LogitsProcessor

    if temperature <= 0:
        raise ValueError("top_k_top_p_sampler needs temperature > 0 (use greedy decoding for 0)")

    class TopKTopPSampler(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            k = scores.shape[-1] if top_k <= 0 else min(top_k, scores.shape[-1])
            values, indices = torch.topk(scores.float(), k, dim=-1)  # sorted, largest first
            probs = torch.softmax(values / temperature, dim=-1)
            if top_p < 1.0:
                before = probs.cumsum(dim=-1) - probs  # mass of the candidates ranked above each one
                probs = probs.masked_fill(before >= top_p, 0.0)  # keeps the smallest set reaching top_p
            if generators is None or not any(g is not None for g in generators):
                picks = torch.multinomial(probs, 1)
            else:
                picks = torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=generators[i])
                                   for i in range(probs.shape[0])])
            choice = indices.gather(-1, picks)
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(-1, choice, 0.0)

    return TopKTopPSampler()


__all__ = ["mkldnn_linear_available", "pack_linears", "top_k_top_p_sampler"]

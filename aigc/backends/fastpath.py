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


# -- prompt prefixes and the KV cache ----------------------------------------------------------------

def prefix_groups(prompts: Sequence[Sequence[int]], min_shared: int) -> tuple[list[int], list[int]]:
    """Group the rows whose prompts begin with the same ``min_shared`` or more tokens.

    Returns the group of each row and the length of each group's shared prefix. A prefix always
    leaves every member at least its last token, whose logits start the generation. A row that
    shares too little with every earlier group starts its own, with all of its prompt but the last
    token as the prefix.
    """
    groups: list[int] = []
    reps: list[Sequence[int]] = []  # the first prompt of each group
    lengths: list[int] = []
    for prompt in prompts:
        for g, rep in enumerate(reps):
            limit = min(lengths[g], len(prompt) - 1)
            n = 0
            while n < limit and prompt[n] == rep[n]:
                n += 1
            if n >= min_shared:
                groups.append(g)
                lengths[g] = n
                break
        else:
            groups.append(len(reps))
            reps.append(prompt)
            lengths.append(max(len(prompt) - 1, 0))
    return groups, lengths


def shared_prefill_layout(prompts: Sequence[Sequence[int]], groups: Sequence[int], lengths: Sequence[int],
                          pad_id: int) -> dict[str, Any]:
    """Token layout of a batch whose rows share group prefixes, and what it costs against plain left padding.

    Each row becomes ``[pad..., its group's prefix, pad..., the rest of its prompt]``: the prefixes,
    left-padded to the longest, fill the first ``width`` columns, so that one forward pass of the
    groups (``prefix_ids``) caches them for every row; the rests follow, left-padded too. Positions
    come from the attention mask (``generate()`` numbers the real tokens of each row 0, 1, 2, ...),
    so the padding in the middle changes nothing. ``tokens``: token slots computed by the prefill,
    against ``plain_tokens`` for one left-padded batch.
    """
    width = max(lengths)
    prefix_ids, prefix_mask = [], []
    for g, n in enumerate(lengths):
        first = groups.index(g)
        prefix_ids.append([pad_id] * (width - n) + list(prompts[first][:n]))
        prefix_mask.append([0] * (width - n) + [1] * n)
    rests = [list(p[lengths[g]:]) for p, g in zip(prompts, groups)]
    rest_width = max(len(r) for r in rests)
    input_ids, mask = [], []
    for p, g, rest in zip(prompts, groups, rests):
        pad = rest_width - len(rest)
        input_ids.append(prefix_ids[g] + [pad_id] * pad + rest)
        mask.append(prefix_mask[g] + [0] * pad + [1] * len(rest))
    return {
        "groups": list(groups), "prefix_ids": prefix_ids, "prefix_mask": prefix_mask, "input_ids": input_ids,
        "attention_mask": mask,
        "tokens": len(lengths) * width + len(prompts) * rest_width,
        "plain_tokens": len(prompts) * max(len(p) for p in prompts),
    }


def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A dynamic cache layer that writes new keys and values into room reserved ahead, not by concatenation.

        ``DynamicLayer`` concatenates at every step, copying the whole cache of the layer each time
        (8% of batched decoding on a CPU). This one reserves ``capacity`` positions (the prompt plus
        the new tokens), writes each step in place and hands attention a view of the filled part.
        If anything else replaces its tensors (a batch reorder, a crop), it copies them into new room.
        """

        def __init__(self, capacity: int = 0, **kwargs: Any):
            super().__init__(**kwargs)
            self.capacity = capacity
            self._view = self._room_k = self._room_v = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            used, new = self.get_seq_length(), key_states.shape[-2]
            own = self._view is not None and self.keys is self._view
            if not own or used + new > self._room_k.shape[-2]:
                room = max(used + new, self.capacity, 2 * used)
                shape = (*key_states.shape[:2], room, key_states.shape[-1])
                room_k, room_v = key_states.new_empty(shape), value_states.new_empty(
                    (*value_states.shape[:2], room, value_states.shape[-1]))
                if used:
                    room_k[:, :, :used] = self.keys
                    room_v[:, :, :used] = self.values
                self._room_k, self._room_v = room_k, room_v
            self._room_k[:, :, used : used + new] = key_states
            self._room_v[:, :, used : used + new] = value_states
            self.keys = self._view = self._room_k[:, :, : used + new]
            self.values = self._room_v[:, :, : used + new]
            return self.keys, self.values

        def reset(self) -> None:
            self._view = self._room_k = self._room_v = None
            super().reset()

    return GrowingLayer


def growing_cache(model: Any, capacity: int):
    """A ``DynamicCache`` for ``model`` whose full-attention layers reserve ``capacity`` positions (see GrowingLayer).

    Layers of other kinds (sliding windows) stay as transformers makes them.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    layer_cls = _growing_layer_class()
    cache.layers = [layer_cls(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


# -- attention of one new token -------------------------------------------------------------------

#: Name under which :func:`use_decode_attention` registers its attention with transformers.
DECODE_ATTENTION = "aigc_cpu_decode"


def decode_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                     scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any):
    """Attention for transformers' AttentionInterface: two matrix products for one new token, sdpa otherwise.

    At a decode step (one query per row) on a CPU, PyTorch's flash kernel took 0.65-0.83 ms per layer
    at batch 16 against 0.50 ms for ``softmax(q k^T) v`` written out; query heads are grouped over
    their key/value heads as transformers' ``pack_gqa`` does, so nothing is copied. Prefill, dropout,
    soft-capping and position biases go to transformers' own sdpa function.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (query.shape[2] != 1 or dropout or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None
            or kwargs.get("output_attentions")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)  # the query heads of each key/value head
    scores = torch.matmul(q, key.transpose(-1, -2)) * (scaling if scaling is not None else dim**-0.5)
    if attention_mask is not None:  # (batch, 1, 1, keys): True, or 0.0, where a key may be attended
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # (batch, kv_heads, groups, dim)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def use_decode_attention(model: Any) -> bool:
    """Switch ``model`` (an sdpa model) to :func:`decode_attention`; False if it cannot switch."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(DECODE_ATTENTION, sdpa_mask)
    try:
        model.set_attn_implementation(DECODE_ATTENTION)
    except (ValueError, ImportError) as exc:  # pragma: no cover - a model that keeps its own attention
        log.info("attention stays sdpa: %s", exc)
        return False
    return model.config._attn_implementation == DECODE_ATTENTION


__all__ = ["DECODE_ATTENTION", "decode_attention", "growing_cache", "mkldnn_linear_available", "pack_linears",
           "prefix_groups", "shared_prefill_layout", "top_k_top_p_sampler", "use_decode_attention"]

"""CPU fast path of the local backend: pre-packed linear weights, and sampling over the top-k candidates.

Measured by ``benchmarks/bench.py`` (README, Performance): on a CPU, batched decoding of a small model
spends most of its time in the linear layers, and MKL's general matrix multiply is slow for the few
rows a decode step has (the 49,152-word output layer of SmolLM2 took 3x longer at 8 rows than oneDNN
with the weight packed once). A float16 copy of the MLP's weights for fbgemm, which multiplies it in
float32, halves the bytes those products read and makes them 1.5x and 1.7x faster at 16 rows.
Hugging Face's sampling sorts the whole vocabulary for top-p and draws over all of it; sampling among
the top-k candidates gives the same distribution for a fraction of the work.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, NamedTuple, Sequence

log = logging.getLogger(__name__)


def mkldnn_linear_available() -> bool:
    """Whether this torch build has oneDNN's pre-packed linear ops (CPU builds from pytorch.org do)."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(
            torch.ops.mkldnn, "_reorder_linear_weight")
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without oneDNN
        return False


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


@functools.cache
def _packed_linear_class(kind: str = ONEDNN_PACKED):
    """The module class that stands in for an ``nn.Linear`` with packed kernels of ``kind``.

    Its ``call`` attribute is the bare op with the packed weight bound (what :func:`_decode_step` calls,
    without ``nn.Module`` dispatch).
    """
    import torch

    class PackedLinear(torch.nn.Module):
        """An ``nn.Linear`` (inference only) whose float32 weight is reordered once into oneDNN's blocked layout."""

        def __init__(self, linear: torch.nn.Linear, rows_hint: int):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            weight = linear.weight.detach()
            # plain attributes, not buffers: the packed tensor is opaque to .to(), state_dict() and saving
            self.packed_weight = packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)
            self.bias = bias = None if linear.bias is None else linear.bias.detach()
            op = torch.ops.mkldnn._linear_pointwise.default
            self.call = lambda x: op(x, packed, bias, "none", [], "")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.call(x)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"

    class HalfLinear(torch.nn.Module):
        """An ``nn.Linear`` (inference only) whose weight is kept as float16, packed for fbgemm, multiplied in float32.

        Inputs, bias, accumulation and outputs stay float32; only the weight is rounded to float16
        (SmolLM2's perplexity on ``data/corpus``: 38.3285 float32, 38.3261 with float16 weights). Each
        step reads half the bytes of float32 weights, and fbgemm's kernels are fast for a few rows.
        """

        def __init__(self, linear: torch.nn.Linear, rows_hint: int = 0):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            bias = None if linear.bias is None else linear.bias.detach().contiguous()
            # a plain attribute (as PackedLinear's): opaque to .to(), state_dict() and saving
            self.packed_weight = packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().contiguous(), bias)
            op = torch.ops.quantized.linear_dynamic_fp16.default
            self.call = lambda x: op(x, packed)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.call(x)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, float16 weights packed for fbgemm"

    return HalfLinear if kind == FBGEMM_FP16 else PackedLinear


def _pack_many(items: Sequence[tuple[Any, str]], rows_hint: int) -> list[Any]:
    """Packed copies of ``(linear, kind)`` items: float16 ones on as many threads as torch uses.

    Each linear is an ``nn.Linear``, or a list of them to pack side by side (see :func:`_side_by_side`;
    concatenated when its turn comes, so that only a few such copies exist at once).

    fbgemm packs float16 weights slowly and on one core (12 ns a weight here: 1.7 s for all of
    SmolLM2, against 0.35 s for oneDNN's reorder); the op releases the GIL, so threads share the
    work. oneDNN's reorders run on this thread meanwhile: they are fast, and their parallel parts
    would start OpenMP teams on other threads.
    """
    import torch

    def pack(item: tuple[Any, str]) -> Any:
        linear, kind = item
        return _packed_linear_class(kind)(_side_by_side(linear) if isinstance(linear, (list, tuple)) else linear, rows_hint)

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


def _replace_linears(model: Any, rows_hint: int, kind: str) -> int:
    """Replace every float32 CPU ``nn.Linear`` (not a subclass) of ``model`` by its packed copy; return how many."""
    import torch

    found = [(module, name, child) for module in model.modules() for name, child in module.named_children()
             if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu"]
    for (module, name, _), packed in zip(found, _pack_many([(child, kind) for _, _, child in found], rows_hint)):
        setattr(module, name, packed)
    return len(found)


def pack_linears(model: Any, rows_hint: int, kind: str = ONEDNN_PACKED) -> int:
    """Replace every float32 ``nn.Linear`` of a CPU model by a packed copy of ``kind``; return how many.

    ``kind``: :data:`ONEDNN_PACKED` (float32 weights in oneDNN's layout, the same results) or
    :data:`FBGEMM_FP16` (float16 weights, see ``HalfLinear``). For inference only (no gradients). The
    model's own parameters (the tied embedding among them) stay as they are, so the packed copy of a
    tied output layer costs its size in memory once more (half of it with float16 weights).
    """
    if not packed_kernels_available(kind):
        log.info("%s linear ops are not in this torch build; using plain nn.Linear", kind)
        return 0
    return _replace_linears(model, rows_hint, kind)


def top_k_top_p_sampler(temperature: float, top_k: int, top_p: float, generators: Sequence[Any] | None = None,
                        repetition_penalty: float = 1.0):
    """A logits processor that draws the next token itself: temperature, then top-k, then top-p among those k.

    ``generators``: one ``torch.Generator`` (or None: the global one) per row, so that each row's draws
    depend on its own seed only, not on the rows it shares the batch with. ``repetition_penalty``: Hugging
    Face's (CTRL's) penalty on every token already in the row, applied first, in place (see
    :func:`penalize_repeats`); ``generate()`` must then run without its own.

    It returns scores that are ``-inf`` except at the drawn token, so ``generate()`` must run with
    ``do_sample=False`` (its argmax then picks that token). Float32 ``scores`` are overwritten with them
    (``generate()`` hands the processors its own float32 copy of each step's logits). The distribution is
    the one Hugging Face's temperature -> top-k -> top-p warpers and multinomial sampling give; only the
    random stream differs.
    ``top_k=0`` means the whole vocabulary.
    """
    import torch
    from transformers import LogitsProcessor

    if temperature <= 0:
        raise ValueError("top_k_top_p_sampler needs temperature > 0 (use greedy decoding for 0)")

    class TopKTopPSampler(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if repetition_penalty != 1.0:
                scores = penalize_repeats(input_ids, scores, repetition_penalty)
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
            # in place: a fresh 3 MB tensor per step (batch 16, 49,152 words) cost more than the draw itself
            out = scores if scores.dtype == torch.float32 else torch.empty_like(scores)
            return out.fill_(float("-inf")).scatter_(-1, choice, 0.0)

    return TopKTopPSampler()


def penalize_repeats(input_ids: Any, scores: Any, penalty: float) -> Any:
    """Hugging Face's ``RepetitionPenaltyLogitsProcessor``, in place on float32 ``scores``: the same numbers.

    Each token already in a row has its score divided by ``penalty`` (multiplied where negative).
    Transformers' processor pads the scores by a column and scatters into a copy: two fresh copies of
    the logits per step (3 MB each at batch 16 over SmolLM2's 49,152 words). Rows holding ids past the
    output layer (a larger embedding) go to transformers' processor, which leaves those ids out.
    """
    import torch

    if input_ids.numel() == 0:
        return scores
    if scores.dtype != torch.float32 or int(input_ids.max()) >= scores.shape[-1]:
        from transformers import RepetitionPenaltyLogitsProcessor

        return RepetitionPenaltyLogitsProcessor(penalty)(input_ids, scores)
    seen = scores.gather(1, input_ids)
    return scores.scatter_(1, input_ids, torch.where(seen < 0, seen * penalty, seen / penalty))


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


@functools.cache
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
            or kwargs.get("output_attentions") or (attention_mask is not None and attention_mask.shape[1:3] != (1, 1))):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, _, dim = query.shape
    q = query.reshape(batch, key.shape[1], heads // key.shape[1], dim) * (scaling if scaling is not None else dim**-0.5)
    bias = None
    if attention_mask is not None:  # (batch, 1, 1, keys): True, or 0.0, where a key may be attended
        bias = blocked_bias(~attention_mask, q.dtype) if attention_mask.dtype == torch.bool else attention_mask
        bias = product_bias(bias.expand(batch, 1, 1, key.shape[2]), key.shape[1])
    out = grouped_attention(q, key, value, bias)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2), None


def blocked_bias(blocked: Any, dtype: Any) -> Any:
    """An additive attention bias of ``dtype``: ``-inf`` where ``blocked`` (a bool tensor) is True, else 0."""
    import torch

    return torch.zeros(blocked.shape, dtype=dtype, device=blocked.device).masked_fill_(blocked, float("-inf"))


def product_bias(bias: Any, kv_heads: int) -> Any:
    """A (batch, 1, 1, keys) additive bias as :func:`grouped_attention` takes it: (batch x kv_heads, 1, keys)."""
    batch, keys = bias.shape[0], bias.shape[-1]
    return bias.expand(batch, kv_heads, 1, keys).reshape(batch * kv_heads, 1, keys)


def grouped_attention(query: Any, key: Any, value: Any, bias: Any = None) -> Any:
    """``softmax(q k^T + bias) v`` for one new token per row, query heads grouped by their key/value head.

    ``query``: (batch, kv_heads, groups, dim), already scaled; ``key``/``value``: (batch, kv_heads, keys, dim);
    ``bias``: None or a float tensor of (batch x kv_heads, 1, keys) (see :func:`product_bias`), ``-inf``
    where a key may not be attended. The products run as (batch x kv_heads) matrix products of a few rows
    each, the bias added inside ``baddbmm``; a reserved cache's view merges those two dimensions without
    a copy. Returns (batch, kv_heads, groups, dim); query head ``h`` is ``(h // groups, h % groups)``, as
    transformers' ``repeat_kv`` pairs them. Softmax is float32 whatever the dtype.
    """
    import torch

    batch, kv_heads, groups, dim = query.shape
    q = query.reshape(batch * kv_heads, groups, dim)
    keys = key.reshape(batch * kv_heads, -1, dim).transpose(1, 2)
    scores = torch.bmm(q, keys) if bias is None else torch.baddbmm(bias, q, keys)
    if scores.dtype == torch.float32:
        probs = scores.softmax(-1)
    else:
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    return torch.bmm(probs, value.reshape(batch * kv_heads, -1, dim)).view(batch, kv_heads, groups, dim)


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


# -- one decode step of a Llama-family model -------------------------------------------------------

#: What ``LocalBackend.describe()`` calls the decode step of :func:`install_fused_decode`.
FUSED_DECODE = "aigc-fused"


def fused_decode_unsupported(model: Any) -> str | None:
    """Why :func:`install_fused_decode` cannot take ``model``, or None when it can.

    It takes a Llama-architecture causal LM (SmolLM2, Llama, TinyLlama...) whose linear layers are
    still plain float32 ``nn.Linear`` on the CPU, with SiLU gating and RMS norms.
    """
    import torch

    config = model.config
    if getattr(config, "model_type", None) != "llama" or getattr(config, "is_encoder_decoder", False):
        return f"model type {getattr(config, 'model_type', None)!r} is not 'llama'"
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return "the model's activation is not SiLU or it splits its linear layers (pretraining_tp)"
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not layers or not hasattr(model.model, "rotary_emb") or not hasattr(model.model, "norm"):
        return "the model has no model.layers, model.rotary_emb or model.norm"
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        linears = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")] + [
            getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if any(type(lin) is not torch.nn.Linear or lin.weight.dtype != torch.float32 or lin.weight.device.type != "cpu"
               for lin in linears):
            return "its linear layers are not plain float32 nn.Linear on the CPU"
        if not all(hasattr(norm, "variance_epsilon") and hasattr(norm, "weight")
                   for norm in (layer.input_layernorm, layer.post_attention_layernorm)):
            return "its norms are not RMS norms"
    return None


@functools.cache
def _shared_output_class():
    import torch

    class SharedOutput(torch.nn.Module):
        """One projection (q, k or v; gate or up) read off a fused linear that computes them all at once.

        Transformers' own forward (prefill, scoring) still calls ``q_proj``, ``k_proj`` and ``v_proj``
        in turn on one input: the first computes the fused product and keeps it, the others slice
        it while their input is the same tensor (else they compute it again), and the last lets it go.
        """

        def __init__(self, fused: torch.nn.Module, start: int, stop: int, memo: dict, role: str):
            super().__init__()
            self.fused, self.start, self.stop, self.role = fused, start, stop, role
            self.in_features, self.out_features = fused.in_features, stop - start
            self._memo = memo

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            memo = self._memo
            if self.role == "first" or memo.get("x") is not x:
                memo["x"], memo["y"] = x, self.fused(x)
            out = memo["y"][..., self.start : self.stop]
            if self.role == "last":
                memo.clear()
            return out

        def extra_repr(self) -> str:
            return f"out_features {self.start}:{self.stop} of a fused linear of {self.fused.out_features}"

    return SharedOutput


def _side_by_side(linears: Sequence[Any]) -> Any:
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


def _shared_outputs(fused: Any, linears: Sequence[Any]) -> list[Any]:
    """A SharedOutput standing in for each of ``linears``, read off ``fused`` (their packed side-by-side linear)."""
    memo: dict = {}
    parts, start = [], 0
    cls = _shared_output_class()
    for i, lin in enumerate(linears):
        role = "first" if i == 0 else "last" if i == len(linears) - 1 else "middle"
        parts.append(cls(fused, start, start + lin.out_features, memo, role))
        start += lin.out_features
    return parts


class _FusedLayer(NamedTuple):
    """What :func:`_decode_step` reads of one Llama layer: read once at install, not looked up in every step."""

    input_norm: Any  # RMS norm weight
    input_eps: Any  # its epsilon, a 0-dim float32 tensor
    qkv: Any  # a packed linear's ``call``: q, k and v side by side
    o_proj: Any  # a packed linear's ``call``
    post_norm: Any
    post_eps: Any
    gate_up: Any  # a packed linear's ``call``: gate and up side by side
    down_proj: Any  # a packed linear's ``call``


def install_fused_decode(model: Any, rows_hint: int, kind: str = ONEDNN_PACKED) -> bool:
    """Give a Llama-family CPU float32 model aigc's own decode step; False (model untouched) if it cannot take one.

    Each layer's q/k/v projections become one pre-packed linear, and so do gate/up (at batch 16 the
    fused products run faster than three or two small ones). A forward call for one new token per
    row into a dynamic KV cache (every ``generate()`` step after the first) then runs
    :func:`_decode_step`: the same arithmetic as transformers' forward, without its per-module
    dispatch. Every other call (prefill, scoring, training-style calls) goes to transformers' forward,
    whose projections read the fused products. The MLP's linears are packed as ``kind`` (see
    :func:`pack_linears`), whose ops this torch build must have; q/k/v, o and the output layer as
    oneDNN float32 where ``kind`` is float16 and oneDNN is there, else as ``kind`` too.
    """
    reason = fused_decode_unsupported(model)
    if reason is None and not packed_kernels_available(kind):
        reason = f"{kind} linear ops are not in this torch build"
    if reason is not None:
        log.info("decode step stays transformers': %s", reason)
        return False
    import torch

    # float16 weights for the MLP only: there fbgemm gains most (1.5x and 1.7x a product at 16 rows); q/k/v and o
    # gained 8% and -6%, and the output layer 23% for 0.4 s more packing at every start (see pack_linears)
    other = ONEDNN_PACKED if kind == FBGEMM_FP16 and mkldnn_linear_available() else kind
    layers, unpacked = model.model.layers, []
    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear and head.weight.dtype == torch.float32:  # as pack_linears would
        unpacked.append((head, other))
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        unpacked += [([attn.q_proj, attn.k_proj, attn.v_proj], other), (attn.o_proj, other),
                     ([mlp.gate_proj, mlp.up_proj], kind), (mlp.down_proj, kind)]
    packed = iter(_pack_many(unpacked, rows_hint))
    if unpacked[0][0] is head:
        model.set_output_embeddings(next(packed))
    fused_layers = []
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv, attn.o_proj, gate_up, mlp.down_proj = next(packed), next(packed), next(packed), next(packed)
        attn.q_proj, attn.k_proj, attn.v_proj = _shared_outputs(qkv, [attn.q_proj, attn.k_proj, attn.v_proj])
        mlp.gate_proj, mlp.up_proj = _shared_outputs(gate_up, [mlp.gate_proj, mlp.up_proj])
        first, second = layer.input_layernorm, layer.post_attention_layernorm
        fused_layers.append(_FusedLayer(
            first.weight, torch.tensor(float(first.variance_epsilon), dtype=torch.float32), qkv.call, attn.o_proj.call,
            second.weight, torch.tensor(float(second.variance_epsilon), dtype=torch.float32), gate_up.call,
            mlp.down_proj.call))
    model._aigc_fused_layers = fused_layers
    original = model.forward

    @functools.wraps(original)  # its signature too: callers inspect which arguments forward() takes
    def forward(*args: Any, **kwargs: Any):
        if not args and _decode_step_applies(model, kwargs):
            return _decode_step(model, kwargs)
        return original(*args, **kwargs)

    model.forward = forward
    return True


#: forward() arguments the decode step understands; any other (inputs_embeds, labels, ...) goes to transformers.
_STEP_ARGS = {"input_ids", "attention_mask", "position_ids", "cache", "past_key_values", "use_cache", "logits_to_keep",
              "return_dict", "cache_position", "output_attentions", "output_hidden_states"}


def _decode_step_applies(model: Any, kwargs: dict) -> bool:
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    ids = kwargs.get("input_ids")
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if (not kwargs.keys() <= _STEP_ARGS or ids is None or ids.dim() != 2 or ids.shape[1] != 1 or torch.is_grad_enabled()
            or kwargs.get("return_dict") is False or kwargs.get("output_attentions")
            or kwargs.get("output_hidden_states") or kwargs.get("use_cache") is False):
        return False
    if not isinstance(cache, DynamicCache) or len(cache.layers) != len(model.model.layers):
        return False
    if not all(type(layer) in (DynamicLayer, _growing_layer_class()) and layer.is_initialized for layer in cache.layers):
        return False
    mask = kwargs.get("attention_mask")
    seen = cache.get_seq_length()
    if mask is not None and (mask.dim() != 2 or mask.shape[1] != seen + 1):
        return False
    return cache.layers[0].keys.shape[0] == ids.shape[0]


def _rms_norm(x: Any, weight: Any, eps: Any) -> Any:
    """transformers' Llama RMS norm of float32 rows, ``x / sqrt(mean(x^2) + eps) * weight``, in five ops.

    ``eps``: a 0-dim tensor. For a decode step's few rows, one reduction and an ``addcmul`` beat
    ``F.rms_norm`` (several passes and copies) and the mean of squares written out op by op.
    """
    import torch

    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x * torch.addcmul(eps, norm, norm, value=1.0 / x.shape[-1]).rsqrt_() * weight


def _decode_step(model: Any, kwargs: dict):
    """Logits of one new token per row, the KV cache updated: transformers' Llama forward, written out.

    The rotary embedding of all query and key heads is one ``addcmul``: ``rotate_half(x)`` is ``x`` rolled
    by half a head with the first half negated, so the sign goes into ``sin``, and the attention scaling
    into the query heads' ``cos`` and ``sin``. Attention is :func:`grouped_attention`, its bias made once per step.
    The packed linear layers are called as bare ops (their ``call``), with what the step needs of each
    layer read once at install (:class:`_FusedLayer`): a profiled step at batch 16 spent 85 of its 105 ms
    in ops, the rest in Python and dispatch, and these calls cut it (6.6% faster per step, interleaved).
    """
    import torch
    import torch.nn.functional as F
    from transformers.modeling_outputs import CausalLMOutputWithPast

    inner = model.model
    ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    batch = ids.shape[0]
    positions = kwargs.get("position_ids")
    if positions is None:  # as transformers' forward: the cache's length (RoPE sees only differences of positions)
        positions = torch.full((batch, 1), cache.get_seq_length(), device=ids.device)
    hidden = inner.embed_tokens(ids)[:, 0]  # (batch, hidden)
    first = inner.layers[0].self_attn
    dim = first.head_dim
    heads, kv_heads = first.q_proj.out_features // dim, first.k_proj.out_features // dim
    groups = heads // kv_heads
    cos, sin = inner.rotary_emb(hidden, positions)  # (batch, 1, dim)
    half = dim // 2
    sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    scale = hidden.new_ones(heads + kv_heads, 1)
    scale[:heads] = first.scaling
    cos, sin = cos * scale, sin * scale  # (batch, heads + kv_heads, dim)
    bias = None
    if mask is not None and not bool(mask.all()):
        bias = product_bias(blocked_bias(mask == 0, hidden.dtype)[:, None, None, :], kv_heads)
    qk_size = (heads + kv_heads) * dim
    for i, layer in enumerate(model._aigc_fused_layers):
        x = _rms_norm(hidden, layer.input_norm, layer.input_eps)
        y = layer.qkv(x)  # q, k, v side by side
        qk = y[:, :qk_size].view(batch, heads + kv_heads, dim)
        qk = torch.addcmul(qk * cos, qk.roll(half, -1), sin)
        keys, values = cache.update(qk[:, heads:, None], y[:, qk_size:].view(batch, kv_heads, 1, dim), i)
        out = grouped_attention(qk[:, :heads].view(batch, kv_heads, groups, dim), keys, values, bias)
        hidden = hidden + layer.o_proj(out.view(batch, -1))
        x = _rms_norm(hidden, layer.post_norm, layer.post_eps)
        gate, up = layer.gate_up(x).chunk(2, dim=-1)
        x = F.silu(gate).mul_(up)
        hidden = hidden + layer.down_proj(x)
    norm = inner.norm
    logits = model.lm_head(_rms_norm(hidden, norm.weight, hidden.new_tensor(norm.variance_epsilon)))
    return CausalLMOutputWithPast(logits=logits[:, None, :], cache=cache)


__all__ = ["DECODE_ATTENTION", "FBGEMM_FP16", "FUSED_DECODE", "ONEDNN_PACKED", "PACKED_KERNELS", "blocked_bias",
           "decode_attention", "fbgemm_fp16_available", "fused_decode_unsupported", "grouped_attention",
           "growing_cache", "install_fused_decode", "mkldnn_linear_available", "pack_linears",
           "packed_kernels_available", "penalize_repeats", "prefix_groups", "product_bias", "shared_prefill_layout",
           "top_k_top_p_sampler", "use_decode_attention"]

"""aigc's own decode step for Llama-family CPU models: fused q/k/v and gate/up, packed kernels, grouped attention."""

from __future__ import annotations

import functools
import logging
from typing import Any, NamedTuple, Sequence

from aigc.backends.local.fastpath.cache import growing_layer_class
from aigc.backends.local.fastpath.kernels import (FBGEMM_FP16, ONEDNN_PACKED, mkldnn_linear_available, pack_many,
                                                  packed_kernels_available)

log = logging.getLogger("aigc.backends.local")

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


def install_fused_decode(model: Any, rows_hint: int, kind: str = ONEDNN_PACKED, prefill_bf16: bool = False) -> bool:
    """Give a Llama-family CPU float32 model aigc's own decode step; False (model untouched) if it cannot take one.

    Each layer's q/k/v projections become one pre-packed linear, and so do gate/up (at batch 16 the
    fused products run faster than three or two small ones). A forward call for one new token per
    row into a dynamic KV cache (every ``generate()`` step after the first) then runs
    :func:`_decode_step`: the same arithmetic as transformers' forward, without its per-module
    dispatch. Every other call (prefill, scoring, training-style calls) goes to transformers' forward,
    whose projections read the fused products. The MLP's linears are packed as ``kind`` (see
    :func:`pack_linears`), whose ops this torch build must have; q/k/v, o and the output layer as
    oneDNN float32 where ``kind`` is float16 and oneDNN is there, else as ``kind`` too.
    ``prefill_bf16``: the prefill's products in bfloat16 (see :func:`pack_many`).
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
    packed = iter(pack_many(unpacked, rows_hint, prefill_bf16))
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
    if not all(type(layer) in (DynamicLayer, growing_layer_class()) and layer.is_initialized for layer in cache.layers):
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


# -- attention of one new token per row ----------------------------------------------------------------

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

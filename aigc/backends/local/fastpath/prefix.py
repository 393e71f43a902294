"""A prompt prefix that several rows share (an article's sections), computed once per group of rows."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from aigc.backends.local.fastpath.cache import growing_cache

log = logging.getLogger("aigc.backends.local")

#: Rows share a prompt prefix when they begin with this many equal tokens (a chat template's system turn alone is ~30)...
MIN_SHARED = 48
#: ...and only when computing the groups' prefixes once cuts the prefill's token slots to this share or less.
SHARED_PAYS = 0.8


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


def duplicate_groups(prompts: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """Group the rows whose prompts are the same (a section's candidates): each group's prefix is all of its
    prompt but the last token. The other grouping :func:`prefill_shared` weighs against :func:`prefix_groups`,
    whose first match can join rows on a short common start (the system turn) and so share none of a long
    prompt that two candidates have in full."""
    index: dict[tuple[int, ...], int] = {}
    groups: list[int] = []
    lengths: list[int] = []
    for prompt in prompts:
        key = tuple(prompt)
        if key not in index:
            index[key] = len(lengths)
            lengths.append(max(len(prompt) - 1, 0))
        groups.append(index[key])
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


def nested_prefill_layout(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, Any] | None:
    """A layout in two levels: rows that begin alike (an article's sections: the system turn, the outline) share
    that start, and rows alike (a section's candidates) share the rest of their prompt too.

    Each row becomes ``[its outer group's prefix | its inner group's middle | the rest of its prompt]``, each
    part left-padded to its longest. :func:`prefill_shared` computes the outer prefixes once per outer group
    (``prefix_ids``), the middles once per inner group on top of them (``middle_ids``, whose outer group is
    ``middle_outer``), and copies each inner group's cache to its rows (``groups``). None when there are not
    two levels to share (no common start, or no identical prompts).
    """
    outer, outer_len = prefix_groups(prompts, MIN_SHARED)
    inner, inner_len = duplicate_groups(prompts)
    if len(outer_len) == len(prompts) or len(inner_len) == len(prompts) or len(inner_len) == len(outer_len):
        return None
    first = {g: inner.index(g) for g in range(len(inner_len))}
    middle_outer = [outer[first[g]] for g in range(len(inner_len))]
    middles = [list(prompts[first[g]][outer_len[middle_outer[g]]:inner_len[g]]) for g in range(len(inner_len))]
    width, mid_width = max(outer_len), max(len(m) for m in middles)
    if mid_width == 0:
        return None
    prefix_ids, prefix_mask = [], []
    for o, n in enumerate(outer_len):
        prompt = prompts[outer.index(o)]
        prefix_ids.append([pad_id] * (width - n) + list(prompt[:n]))
        prefix_mask.append([0] * (width - n) + [1] * n)
    middle_ids = [[pad_id] * (mid_width - len(m)) + m for m in middles]
    middle_mask = [[0] * (mid_width - len(m)) + [1] * len(m) for m in middles]
    rests = [list(p[inner_len[g]:]) for p, g in zip(prompts, inner)]
    rest_width = max(len(r) for r in rests)
    input_ids, mask = [], []
    for o, g, rest in zip(outer, inner, rests):
        pad = rest_width - len(rest)
        input_ids.append(prefix_ids[o] + middle_ids[g] + [pad_id] * pad + rest)
        mask.append(prefix_mask[o] + middle_mask[g] + [0] * pad + [1] * len(rest))
    return {
        "groups": list(inner), "prefix_ids": prefix_ids, "prefix_mask": prefix_mask, "middle_ids": middle_ids,
        "middle_mask": middle_mask, "middle_outer": middle_outer, "input_ids": input_ids, "attention_mask": mask,
        "tokens": len(outer_len) * width + len(inner_len) * mid_width + len(prompts) * rest_width,
        "plain_tokens": len(prompts) * max(len(p) for p in prompts),
    }


def best_layout(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, Any] | None:
    """The cheapest of the groupings' layouts (rows beginning alike, rows alike, both nested), or None when none
    cuts the prefill to :data:`SHARED_PAYS` of plain left padding."""
    layouts = [shared_prefill_layout(prompts, groups, lengths, pad_id)
               for groups, lengths in (prefix_groups(prompts, MIN_SHARED), duplicate_groups(prompts))
               if len(lengths) < len(prompts)]
    nested = nested_prefill_layout(prompts, pad_id)
    layouts += [nested] if nested is not None else []
    best = min(layouts, key=lambda c: c["tokens"], default=None)
    return best if best is not None and best["tokens"] <= SHARED_PAYS * best["plain_tokens"] else None


def forward_params(model: Any) -> set[str] | None:
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


def prefill_shared(model: Any, prompts: list[list[int]], pad_id: int, max_new: int, *, share_prefix: bool,
                   reserve_cache: bool) -> tuple[Any, dict[str, Any] | None]:
    """The KV cache for generate() and, when rows share a prompt prefix that pays, the layout it was filled for.

    Returns ``(cache, layout)``: ``cache`` is None for transformers' own (both parts off, or the model
    takes no position ids); ``layout`` (see :func:`shared_prefill_layout`) is None for plain left
    padding. With a layout, each group's prefix is already in ``cache``, copied to each of its rows.
    """
    import torch

    params = forward_params(model)
    if not (share_prefix or reserve_cache) or params is None:
        return None, None
    layout = None
    if share_prefix and len(prompts) > 1:
        layout = best_layout(prompts, pad_id)
        if layout is not None:
            nested = f" ({len(layout['middle_ids'])} subgroups)" if "middle_ids" in layout else ""
            log.debug("prompt prefixes shared by %d groups%s of %d rows: prefill of %d token slots instead of %d",
                      len(layout["prefix_ids"]), nested, len(prompts), layout["tokens"], layout["plain_tokens"])
    width = len(layout["input_ids"][0]) if layout else max(len(p) for p in prompts)
    if reserve_cache:
        cache = growing_cache(model, width + max_new)
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
            if "middle_ids" in layout:  # nested: each inner group's middle on top of its outer group's prefix
                cache.batch_select_indices(torch.tensor(layout["middle_outer"], device=model.device))
                middle = torch.tensor(layout["middle_ids"], device=model.device)
                full = torch.cat([mask[layout["middle_outer"]],
                                  torch.tensor(layout["middle_mask"], device=model.device)], dim=-1)
                positions = (full.cumsum(-1) - 1).clamp(min=0)[:, -middle.shape[1]:]
                model(input_ids=middle, attention_mask=full, position_ids=positions, cache=cache, use_cache=True,
                      **keep)
        cache.batch_select_indices(torch.tensor(layout["groups"], device=model.device))  # each row its group's
    return cache, layout

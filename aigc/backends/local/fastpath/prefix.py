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
    first = _first_rows(groups)
    prefix_ids, prefix_mask, width = _left_padded([prompts[first[g]][:n] for g, n in enumerate(lengths)], pad_id)
    rest_ids, rest_mask, rest_width = _left_padded([p[lengths[g]:] for p, g in zip(prompts, groups)], pad_id)
    return {
        "groups": list(groups), "prefix_ids": prefix_ids, "prefix_mask": prefix_mask,
        "input_ids": [prefix_ids[g] + r for g, r in zip(groups, rest_ids)],
        "attention_mask": [prefix_mask[g] + m for g, m in zip(groups, rest_mask)],
        "tokens": len(lengths) * width + len(prompts) * rest_width,
        "plain_tokens": len(prompts) * max(len(p) for p in prompts),
    }


def _first_rows(groups: Sequence[int]) -> dict[int, int]:
    """The first row of each group."""
    first: dict[int, int] = {}
    for row, g in enumerate(groups):
        first.setdefault(g, row)
    return first


def _left_padded(parts: Sequence[Sequence[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]], int]:
    """``parts`` left-padded to the longest: (ids, attention mask, width)."""
    width = max((len(p) for p in parts), default=0)
    ids = [[pad_id] * (width - len(p)) + list(p) for p in parts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in parts]
    return ids, mask, width


Grouping = tuple[list[int], list[int]]


def nested_prefill_layout(prompts: Sequence[Sequence[int]], pad_id: int, *, outer_groups: Grouping | None = None,
                          inner_groups: Grouping | None = None) -> dict[str, Any] | None:
    """A layout in two levels: rows that begin alike (an article's sections: the system turn, the outline) share
    that start, and rows alike (a section's candidates) share the rest of their prompt too.

    Each row becomes ``[its outer group's prefix | its inner group's middle | the rest of its prompt]``, each
    part left-padded to its longest. :func:`prefill_shared` computes the outer prefixes once per outer group
    (``prefix_ids``), the middles once per inner group on top of them (``middle_ids``, whose outer group is
    ``middle_outer``), and copies each inner group's cache to its rows (``groups``). None when there are not
    two levels to share (no common start, or no identical prompts). ``outer_groups``/``inner_groups``: the rows'
    :func:`prefix_groups` and :func:`duplicate_groups` when the caller has them.
    """
    outer, outer_len = outer_groups or prefix_groups(prompts, MIN_SHARED)
    inner, inner_len = inner_groups or duplicate_groups(prompts)
    if len(outer_len) == len(prompts) or len(inner_len) == len(prompts) or len(inner_len) == len(outer_len):
        return None
    first, first_outer = _first_rows(inner), _first_rows(outer)
    middle_outer = [outer[first[g]] for g in range(len(inner_len))]
    middle_ids, middle_mask, mid_width = _left_padded(
        [prompts[first[g]][outer_len[middle_outer[g]]:n] for g, n in enumerate(inner_len)], pad_id)
    if mid_width == 0:
        return None
    prefix_ids, prefix_mask, width = _left_padded([prompts[first_outer[o]][:n] for o, n in enumerate(outer_len)],
                                                  pad_id)
    rest_ids, rest_mask, rest_width = _left_padded([p[inner_len[g]:] for p, g in zip(prompts, inner)], pad_id)
    return {
        "groups": list(inner), "prefix_ids": prefix_ids, "prefix_mask": prefix_mask, "middle_ids": middle_ids,
        "middle_mask": middle_mask, "middle_outer": middle_outer,
        "input_ids": [prefix_ids[o] + middle_ids[g] + r for o, g, r in zip(outer, inner, rest_ids)],
        "attention_mask": [prefix_mask[o] + middle_mask[g] + m for o, g, m in zip(outer, inner, rest_mask)],
        "tokens": len(outer_len) * width + len(inner_len) * mid_width + len(prompts) * rest_width,
        "plain_tokens": len(prompts) * max(len(p) for p in prompts),
    }


def best_layout(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, Any] | None:
    """The cheapest of the groupings' layouts (rows beginning alike, rows alike, both nested), or None when none
    cuts the prefill to :data:`SHARED_PAYS` of plain left padding."""
    outer, inner = prefix_groups(prompts, MIN_SHARED), duplicate_groups(prompts)
    layouts = [shared_prefill_layout(prompts, groups, lengths, pad_id) for groups, lengths in (outer, inner)
               if len(lengths) < len(prompts)]
    nested = nested_prefill_layout(prompts, pad_id, outer_groups=outer, inner_groups=inner)
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

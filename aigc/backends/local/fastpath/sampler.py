"""Sampling among the top-k candidates, with one generator per row and transformers' repetition penalty in place."""

from __future__ import annotations

from typing import Any, Sequence


def top_k_top_p_sampler(temperature: float, top_k: int, top_p: float, generators: Sequence[Any] | None = None,
                        repetition_penalty: float = 1.0, penalty_from: int = 0):
    """A logits processor that draws the next token itself: temperature, then top-k, then top-p among those k.

    ``generators``: one ``torch.Generator`` (or None: the global one) per row, so that each row's draws
    depend on its own seed only, not on the rows it shares the batch with. ``repetition_penalty``: Hugging
    Face's (CTRL's) penalty on every token already in the row, applied first, in place (see
    :func:`penalize_repeats`); ``generate()`` must then run without its own. ``penalty_from``: the column
    where the penalised tokens start (the prompt's width: only the reply's tokens; 0: the prompt's too).

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
                scores = penalize_repeats(input_ids[:, penalty_from:], scores, repetition_penalty)
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

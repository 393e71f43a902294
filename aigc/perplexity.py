"""Perplexity under a local causal LM, exp(mean token NLL): of texts (sliding windows) or of packed token blocks."""

from __future__ import annotations

import math
from typing import Any, Sequence

#: A piece to score: (index of the text it belongs to, token ids, how many of its last tokens are targets).
Piece = tuple[int, Sequence[int], int]


def load_lm(model: str | None = None) -> tuple[Any, Any, str]:
    """(model, tokenizer, model id) of a local causal LM, loaded once per process by the local backend.

    ``model``: None or "embedded" (SmolLM2), a folder saved with ``save_pretrained``, or a cached hub id.
    A measurement scores with the model's own weights: on a CPU its float32 linear weights are packed
    as they are, not rounded to float16 as for writing, and multiplied in float32, not in bfloat16 as a
    prompt's prefill (the fast path's ``fp16_weights`` and ``bf16_prefill`` parts are off).
    """
    from aigc.backends.local import FastPath, LocalBackend, LocalOptions

    backend = LocalBackend(LocalOptions(model=model or "embedded"),
                           fastpath=FastPath(fp16_weights=False, bf16_prefill=False))
    lm, tokenizer = backend.load()
    return lm, tokenizer, backend.model_id


def perplexity(texts: Sequence[str], model: str | None = None, *, batch_size: int = 2, window: int | None = None,
               stride: int | None = None, lm: Any = None, tokenizer: Any = None) -> list[float | None]:
    """Perplexity of each text under a causal LM, in batches, sliding over long texts.

    A text longer than ``window`` tokens (default: the model's context, at most 512) is scored in
    windows starting every ``stride`` tokens (default window/2); each token is scored once, with
    the context its window gives. A text of fewer than 2 tokens gets None. Pass ``lm`` and
    ``tokenizer`` to use an already loaded model instead of ``model``. Runs on the model thread.
    """
    from aigc.backends.local.loading import context_length, run_on_model_thread

    if lm is None or tokenizer is None:
        lm, tokenizer, _ = load_lm(model)
    window = max(2, min(window or 512, context_length(lm.config, tokenizer) or 512))
    stride = max(1, min(stride or window // 2, window - 1))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    pieces: list[Piece] = []
    for i, text in enumerate(texts):
        ids = tokenizer(text)["input_ids"]
        prev_end = 0
        for begin in range(0, max(len(ids) - 1, 1), stride):
            end = min(begin + window, len(ids))
            pieces.append((i, ids[begin:end], min(end - prev_end, end - begin - 1)))
            prev_end = end
            if end >= len(ids):
                break
    nll, count = run_on_model_thread(lambda: token_nll(lm, pieces, len(texts), batch_size=batch_size, pad=pad))
    return [math.exp(n / c) if c else None for n, c in zip(nll, count)]


def block_perplexity(lm: Any, blocks: Sequence[Sequence[int]], batch_size: int = 4) -> float:
    """Perplexity pooled over packed token blocks (every token after a block's first is a target)."""
    nll, count = token_nll(lm, [(0, ids, len(ids) - 1) for ids in blocks], 1, batch_size=batch_size)
    return math.exp(nll[0] / count[0])


def token_nll(lm: Any, pieces: Sequence[Piece], n_texts: int, *, batch_size: int, pad: int = 0
              ) -> tuple[list[float], list[int]]:
    """Summed negative log-likelihood of each piece's target tokens, and their count, added up per text.

    Pieces of similar length are batched together (right-padded with ``pad``). The model is put in
    eval mode for the scoring and back in the mode it was in afterwards.
    """
    import torch

    nll, count = [0.0] * n_texts, [0] * n_texts
    pieces = sorted((p for p in pieces if p[2] > 0), key=lambda p: len(p[1]))
    device = next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(pieces), batch_size):
                chunk = pieces[start : start + batch_size]
                width = max(len(p[1]) for p in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                labels = torch.full((len(chunk), width), -100, dtype=torch.long)
                for row, (_, w, n_target) in enumerate(chunk):
                    ids[row, : len(w)] = torch.as_tensor(w)
                    mask[row, : len(w)] = 1
                    labels[row, len(w) - n_target : len(w)] = torch.as_tensor(w[len(w) - n_target :])
                logits = lm(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                losses = torch.nn.functional.cross_entropy(
                    logits[:, :-1].transpose(1, 2), labels[:, 1:].to(device), ignore_index=-100, reduction="none"
                ).sum(dim=1)
                for row, (i, _, n_target) in enumerate(chunk):
                    nll[i] += float(losses[row])
                    count[i] += n_target
    finally:
        lm.train(was_training)
    return nll, count

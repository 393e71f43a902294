"""llama.cpp decoding several sequences in parallel in one context, as llama.cpp's ``examples/batched`` does.

llama-cpp-python's high-level ``Llama`` API runs one sequence at a time; this module drives its low-level
API instead: each chunk of ``batch`` prompts is prefilled in one ``llama_decode`` call (one ``seq_id`` per
prompt, logits only on each prompt's last token), then every live sequence adds one token per
``llama_decode`` call, each sampled with its own sampler chain, until EOS/EOG or ``max_new``.

Smoke run (8 short chat prompts)::

    HF_HUB_OFFLINE=1 python benchmarks/llamacpp_batched.py --batch 8 --new 32
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import Llama
from llama_cpp import _internals as internals
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

#: How many recent tokens the repetition penalty looks at (``Llama``'s ``last_n_tokens_size`` default).
PENALTY_LAST_N = 64


def make_llm(gguf_path: str | Path, n_ctx_per_seq: int = 512, max_batch: int = 16, threads: int | None = None) -> Llama:
    """A ``Llama`` whose context holds ``max_batch`` sequences of ``n_ctx_per_seq`` tokens each.

    ``Llama.__init__`` has no ``n_seq_max`` argument, so the context it creates is replaced by one with the
    same parameters plus ``n_seq_max=max_batch`` (the replacement is freed with the ``Llama``). ``n_batch``
    is the whole context, so any chunk's prefill fits in one ``llama_decode`` call; ``n_ubatch`` stays 512.
    """
    n_threads = threads or os.cpu_count() or 1
    n_ctx = n_ctx_per_seq * max_batch
    llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads,
                n_threads_batch=n_threads, verbose=False)
    llm.context_params.n_seq_max = max_batch
    ctx = internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=False)
    llm._ctx.close()
    llm._ctx = llm._stack.enter_context(contextlib.closing(ctx))
    llm.reset()
    return llm


def chat_prompt_ids(llm: Llama, messages: list[dict[str, Any]]) -> list[int]:
    """Token ids of ``messages`` in the model's chat template plus the generation prompt.

    Uses the GGUF's own Jinja template the way ``create_chat_completion`` does for the default
    ``chat_template.*`` formats (the embedded SmolLM2 model's case).
    """
    name = llm.chat_format or "chat_template.default"
    key = "tokenizer.chat_template" if name == "chat_template.default" else f"tokenizer.{name}"
    template = llm.metadata.get(key) or llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ValueError(f"{llm.model_path} has no chat template in its GGUF metadata")

    def text(token: int) -> str:
        return llm.detokenize([token], special=True).decode("utf-8", "replace") if token != -1 else ""

    formatter = Jinja2ChatFormatter(template=template, eos_token=text(llm.token_eos()),
                                    bos_token=text(llm.token_bos()), add_generation_prompt=True)
    result = formatter(messages=messages)
    return llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)


def _sampler_chain(n_vocab: int, *, temperature: float, top_p: float, top_k: int, repeat_penalty: float,
                   seed: int) -> llama_cpp.llama_sampler_p:
    """One sequence's sampler chain: penalties, top-k, top-p, temperature, dist (greedy when temperature <= 0)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(
        chain, llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, repeat_penalty, 0.0, 0.0))
    if temperature <= 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(top_k))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
    return chain


def _put(batch: llama_cpp.llama_batch, token: int, pos: int, seq_id: int, logits: bool) -> int:
    """Append one token to ``batch`` (like ``common_batch_add``); return its index in the batch."""
    i = batch.n_tokens
    batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = logits
    batch.n_tokens = i + 1
    return i


def _decode(ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch) -> None:
    if (rc := llama_cpp.llama_decode(ctx, batch)) != 0:
        raise RuntimeError(f"llama_decode failed with {rc} ({batch.n_tokens} tokens)")


def run_batched(llm: Llama, prompts: list[list[int]], max_new: int, batch: int, *, temperature: float = 0.7,
                top_p: float = 0.9, top_k: int = 50, repeat_penalty: float = 1.15, seed: int = 7) -> dict[str, Any]:
    """Decode each prompt (token ids) for up to ``max_new`` new tokens, ``batch`` sequences per ``llama_decode``.

    Prompts run in chunks of ``batch``; within a chunk each sequence has its own ``seq_id`` and sampler
    chain (seeded ``seed + prompt index``, so a prompt samples alike at any batch size) and stops at
    EOS/EOG, which is neither counted nor kept in its text. The KV memory is cleared before each chunk.
    Returns ``{"tokens": new tokens generated, "seconds": wall time, "texts": text per prompt}``.
    """
    ctx, model = llm.ctx, llm.model
    vocab = llama_cpp.llama_model_get_vocab(model)
    memory = llama_cpp.llama_get_memory(ctx)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    n_seq_max, n_ctx_seq, n_batch = (llama_cpp.llama_n_seq_max(ctx), llama_cpp.llama_n_ctx_seq(ctx),
                                     llama_cpp.llama_n_batch(ctx))
    if batch < 1 or batch > n_seq_max or max_new < 1:
        raise ValueError(f"need 1 <= batch <= {n_seq_max} (the context's n_seq_max) and max_new >= 1")
    chunks = [list(range(start, min(start + batch, len(prompts)))) for start in range(0, len(prompts), batch)]
    if any(not p or len(p) + max_new > n_ctx_seq for p in prompts):
        raise ValueError(f"every prompt must be non-empty and fit {n_ctx_seq} tokens with its {max_new} new ones")
    prefill = max(sum(len(prompts[i]) for i in chunk) for chunk in chunks) if chunks else 0
    if prefill > n_batch:
        raise ValueError(f"a chunk's prefill of {prefill} tokens exceeds n_batch {n_batch}")

    outputs: list[list[int]] = [[] for _ in prompts]
    lbatch = llama_cpp.llama_batch_init(max(prefill, batch, 1), 0, 1)
    samplers: list[llama_cpp.llama_sampler_p] = []
    started = time.perf_counter()
    try:
        for chunk in chunks:
            llama_cpp.llama_memory_clear(memory, True)
            samplers = [_sampler_chain(n_vocab, temperature=temperature, top_p=top_p, top_k=top_k,
                                       repeat_penalty=repeat_penalty, seed=seed + i) for i in chunk]
            lbatch.n_tokens = 0
            rows: dict[int, int] = {}  # seq_id -> batch index of its token whose logits to sample
            for seq, i in enumerate(chunk):
                for pos, token in enumerate(prompts[i]):
                    rows[seq] = _put(lbatch, token, pos, seq, pos == len(prompts[i]) - 1)
            _decode(ctx, lbatch)
            positions = [len(prompts[i]) for i in chunk]
            while rows:
                nxt: dict[int, int] = {}
                lbatch.n_tokens = 0
                for seq, row in rows.items():
                    token = llama_cpp.llama_sampler_sample(samplers[seq], ctx, row)  # also accepts the token
                    out = outputs[chunk[seq]]
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        continue
                    out.append(token)
                    if len(out) < max_new:
                        nxt[seq] = _put(lbatch, token, positions[seq], seq, True)
                        positions[seq] += 1
                rows = nxt
                if rows:
                    _decode(ctx, lbatch)
            for sampler in samplers:
                llama_cpp.llama_sampler_free(sampler)
            samplers = []
        seconds = time.perf_counter() - started
    finally:
        for sampler in samplers:
            llama_cpp.llama_sampler_free(sampler)
        llama_cpp.llama_batch_free(lbatch)
        llama_cpp.llama_memory_clear(memory, True)
        llm.reset()  # the high-level API's prefix cache no longer matches the KV memory
    texts = [llm.detokenize(out).decode("utf-8", "replace") for out in outputs]
    return {"tokens": sum(len(out) for out in outputs), "seconds": seconds, "texts": texts}


SMOKE_TOPICS = ["rain", "bicycles", "bread", "the sea", "libraries", "owls", "winter", "trains"]


def main() -> None:
    """Smoke run: one sentence about each of ``--prompts`` topics, printing tokens/s and the texts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="sequences per llama_decode call")
    parser.add_argument("--new", type=int, default=16, help="max new tokens per prompt")
    parser.add_argument("--prompts", type=int, default=8, help="how many prompts (cycling through 8 topics)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all CPUs)")
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: aigc's embedded model)")
    args = parser.parse_args()
    if args.model is None:
        from aigc.backends.local.embedded import GGUF_FILE, gguf_folder

        args.model = gguf_folder() / GGUF_FILE
    llm = make_llm(args.model, max_batch=max(args.batch, 1), threads=args.threads)
    prompts = [chat_prompt_ids(llm, [{"role": "user", "content": f"Write one sentence about {topic}."}])
               for topic in (SMOKE_TOPICS * args.prompts)[:args.prompts]]
    run_batched(llm, prompts[:1], 1, 1)  # warm-up (page in the weights, start the threads), not timed
    result = run_batched(llm, prompts, args.new, args.batch)
    print(f"batch {args.batch}: {result['tokens']} tokens in {result['seconds']:.2f} s = "
          f"{result['tokens'] / result['seconds']:.1f} tokens/s")
    for text in result["texts"]:
        print(f"  {text!r}")


if __name__ == "__main__":
    main()

"""Part 1, local: 8 sections with one plain transformers generate() each (every peer's baseline) vs aigc's one batched call."""

from __future__ import annotations

from parts.common import local_backend, measure, say, section_set, target, warm


class PlainGenerate:
    """The baseline every peer uses: the same model as plain transformers (nn.Linear, fp32) and ``generate(do_sample=True)``.

    Same prompts (aigc's chat formatting and prefill), same settings: temperature, top_p, top_k 50,
    repetition_penalty 1.15; several requests share one left-padded ``generate()`` call. Its torch work
    runs on aigc's model thread, as aigc's does: in one process, torch on a second thread (a second
    OpenMP team) slowed both models' decoding.
    """

    def __init__(self):
        from aigc.backends.local import run_on_model_thread

        run_on_model_thread(self._load)

    def _load(self):
        import torch
        import transformers

        from aigc.backends.local import LocalBackend
        from aigc.backends.local.embedded import ensure_converted
        from aigc.backends.local.loading import prepare_tokenizer

        path = ensure_converted()
        self.torch = torch
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        prepare_tokenizer(self.tokenizer)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.prompt_ids = LocalBackend()._prompt_ids  # the backend's own prompt formatting (no model is loaded)

    def generate(self, requests) -> list:
        from aigc.backends.local import run_on_model_thread

        return run_on_model_thread(lambda: self._generate(requests))

    def _generate(self, requests) -> list:
        from types import SimpleNamespace

        torch, tok = self.torch, self.tokenizer
        ids = [self.prompt_ids(tok, r) for r in requests]
        width, r = max(map(len, ids)), requests[0]
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in ids])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])
        torch.manual_seed(r.seed or 0)
        sampling = dict(do_sample=True, temperature=r.temperature, top_p=r.top_p, top_k=50) if r.temperature > 0 else dict(
            do_sample=False, temperature=1.0, top_p=1.0)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=r.max_new_tokens,
                                      repetition_penalty=1.15, pad_token_id=pad, eos_token_id=tok.eos_token_id, **sampling)
        done = []
        for row in out[:, width:].tolist():
            n = next((k for k, t in enumerate(row) if t in (tok.eos_token_id, pad)), len(row))
            done.append(SimpleNamespace(completion_tokens=n))
        return done


def bench_local(ctx: dict) -> dict:
    """One plain generate() per section (every peer's baseline) vs aigc's batched path, 8 sections."""
    n, new = 8, ctx["new_tokens"]
    backend = local_backend()  # aigc's defaults: auto batch size, auto dtype, CPU fast path
    plain = PlainGenerate()
    warm(backend)
    warm(plain)
    say(f"local: 8 sections x {new} new tokens, sampled, {backend.describe()}")
    requests = section_set(n, new)
    base_name = "plain generate(), one per section (baseline)"
    res = measure({base_name: (plain, requests, True),
                   "plain generate(), all 8 in one batch": (plain, requests, False),
                   "aigc batched (one call)": (backend, requests, False)}, ctx["reps"])
    base, batched = res[base_name], res["aigc batched (one call)"]
    ratio = batched["tps"] / base["tps"]
    ctx["shared"]["fp32 sampled b8"] = batched
    import torch
    return {"title": "1. Section expansion, 8 sections (embedded SmolLM2-135M): plain transformers vs aigc's local backend",
            "settings": {"new_tokens": new, "sections": n, "decoding": "temperature 0.7, top_p 0.9, top_k 50, "
                         "repetition_penalty 1.15", "backend": backend.describe(), "torch_threads": torch.get_num_threads()},
            "rows": [{"path": k, "new tokens": v["tokens"], "seconds": v["seconds"], "tokens/s": v["tps"],
                      "ratio to baseline": v["tps"] / base["tps"]} for k, v in res.items()],
            "raw": res, "targets": [target("batch 8 >= 4x one generate() per section", ratio, 4.0, higher=True)]}

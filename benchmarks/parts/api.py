"""Parts 6 and 6b, api: the openai backend's concurrency against a stub server, and optionally a real transformers serve."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from parts.common import med, say, section_set, target


class _Stub(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions that takes ``delay`` seconds per request."""

    delay = 0.5
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "bench"}]})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        time.sleep(self.delay)
        text = "Cities hold heat because stone and asphalt store it. " * 4
        self._send({"id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()),
                    "model": request.get("model", "stub"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140}})


def api_runs(base_url: str, model: str, requests, concurrencies, reps: int) -> dict:
    from aigc.backends.base import generate_with_prefill
    from aigc.backends.openai import OpenAIBackend, OpenAIOptions

    out = {c: [] for c in concurrencies}
    for rep in range(reps):
        for c in concurrencies:
            backend = OpenAIBackend(OpenAIOptions(model=model, base_url=base_url, concurrency=c, max_retries=0))
            started = time.perf_counter()
            done = generate_with_prefill(backend, requests)
            out[c].append({"seconds": time.perf_counter() - started, "tokens": sum(x.completion_tokens for x in done)})
            backend.close()
            say(f"  rep {rep + 1} concurrency {c}: {len(requests)} requests in {out[c][-1]['seconds']:.2f} s")
    return out


def bench_api(ctx: dict) -> dict:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    say(f"api: stub server at {url}, {_Stub.delay} s per request, 16 section requests")
    try:
        runs = api_runs(url, "stub", section_set(16, 128), (1, 8), ctx["reps"])
    finally:
        server.shutdown()
        server.server_close()
    seq, conc = med([r["seconds"] for r in runs[1]]), med([r["seconds"] for r in runs[8]])
    return {"title": "6. openai backend, 16 section requests, stub server taking 0.5 s per request",
            "rows": [{"concurrency": 1, "seconds": seq, "speed-up": 1.0},
                     {"concurrency": 8, "seconds": conc, "speed-up": seq / conc}],
            "raw": {str(k): v for k, v in runs.items()},
            "targets": [target("concurrency 8 >= 5x sequential", seq / conc, 5.0, higher=True)]}


def bench_serve(ctx: dict) -> dict:
    from aigc.backends.local.embedded import ensure_converted
    from aigc.serving import start_transformers_serve

    say("serve: starting transformers serve (not timed)")
    n, new = 4, ctx["serve_tokens"]
    with start_transformers_serve(ensure_converted()) as server:
        say(f"serve: up in {server.startup_seconds:.1f} s; {n} requests x {new} tokens")
        api_runs(server.base_url, server.model_name, section_set(1, 4), (1,), 1)  # warm-up
        runs = api_runs(server.base_url, server.model_name, section_set(n, new), (1, 4), ctx["reps"])
    seq, conc = med([r["seconds"] for r in runs[1]]), med([r["seconds"] for r in runs[4]])
    return {"title": f"6b. openai backend against a real `transformers serve` ({n} requests x {new} tokens, CPU)",
            "settings": {"startup_s": round(server.startup_seconds, 1)},
            "rows": [{"concurrency": 1, "seconds": seq, "speed-up": 1.0},
                     {"concurrency": 4, "seconds": conc, "speed-up": seq / conc}],
            "raw": {str(k): v for k, v in runs.items()}, "targets": []}

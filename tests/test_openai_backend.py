"""Tests of the openai backend: faults injected through a mock HTTP transport, and a real ``transformers serve`` on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from aigc.backends import get_backend
from aigc.backends.base import GenerationRequest, Message
from aigc.backends.openai import OpenAIBackend, OpenAIOptions
from aigc.errors import BackendError, ConfigError

KEY = "sk-test-SECRET-4f1c9a7e"
URL = "https://api.example.test/v1"


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_CUSTOM_HEADERS", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


def chat(text: str, **kw) -> GenerationRequest:
    return GenerationRequest(messages=(Message(role="user", content=text),), **kw)


def chat_body(content: str, finish: str = "stop", prompt_tokens: int = 7, completion_tokens: int = 3) -> dict:
    return {
        "id": "c1", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def text_body(text: str, finish: str = "stop") -> dict:
    return {
        "id": "t1", "object": "text_completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": finish, "text": text, "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def make_backend(handler, monkeypatch, *, key: str | None = KEY, **options) -> OpenAIBackend:
    """A backend that builds its own client from options, over a mock transport calling ``handler``."""
    if key is not None:
        monkeypatch.setenv("OPENAI_API_KEY", key)
    options.setdefault("base_url", URL)
    options.setdefault("model", "test-model")
    http_client = httpx2.Client(transport=httpx2.MockTransport(handler))
    return OpenAIBackend(OpenAIOptions(**options), http_client=http_client)


class Recorder:
    """A mock-transport handler that records requests and answers from a list of (status, body) pairs."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.calls: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.calls.append(request)
        status, body = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        # a tiny Retry-After keeps the client's own backoff fast in tests
        return httpx2.Response(status, json=body, headers={"retry-after-ms": "1"})

    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.calls]


def test_chat_request_is_sent_with_every_setting_and_mapped_back(monkeypatch):
    rec = Recorder((200, chat_body("Hello.", finish="length", prompt_tokens=11, completion_tokens=4)))
    backend = make_backend(rec, monkeypatch)
    req = chat("Say hello", max_new_tokens=4, temperature=0.2, top_p=0.5, stop=("END",), seed=42)
    [out] = backend.generate([req])

    assert (out.text, out.prompt_tokens, out.completion_tokens, out.finish_reason) == ("Hello.", 11, 4, "length")
    call = rec.calls[0]
    assert call.url.path == "/v1/chat/completions"
    assert call.headers["authorization"] == f"Bearer {KEY}"
    body = rec.bodies()[0]
    assert body["model"] == "test-model"
    assert body["messages"] == [{"role": "user", "content": "Say hello"}]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop"], body["seed"]) == (
        4, 0.2, 0.5, ["END"], 42)


def test_plain_prompts_and_use_completions_go_to_the_completions_endpoint(monkeypatch):
    rec = Recorder((200, text_body(" world")))
    backend = make_backend(rec, monkeypatch)
    [out] = backend.generate([GenerationRequest(prompt="Hello")])
    assert out.text == " world" and out.finish_reason == "stop"
    assert rec.calls[0].url.path == "/v1/completions"
    assert rec.bodies()[0]["prompt"] == "Hello"
    assert "seed" not in rec.bodies()[0] and "stop" not in rec.bodies()[0]

    rec2 = Recorder((200, text_body("x")))
    backend2 = make_backend(rec2, monkeypatch, use_completions=True)
    backend2.generate([chat("Write about owls")])
    assert rec2.calls[0].url.path == "/v1/completions"
    assert rec2.bodies()[0]["prompt"] == chat("Write about owls").as_plain_prompt()


def test_more_than_four_stops_sends_four_and_cuts_at_the_rest(monkeypatch):
    rec = Recorder((200, chat_body("one two STOP5 three", finish="length")))
    backend = make_backend(rec, monkeypatch)
    [out] = backend.generate([chat("x", stop=("S1", "S2", "S3", "S4", "STOP5"))])
    assert rec.bodies()[0]["stop"] == ["S1", "S2", "S3", "S4"]
    assert out.text == "one two " and out.finish_reason == "stop"


def test_a_stop_string_echoed_by_the_server_is_cut(monkeypatch):
    rec = Recorder((200, chat_body("Intro text\n## Next", finish="stop")))
    [out] = make_backend(rec, monkeypatch).generate([chat("x", stop=("## ",))])
    assert out.text == "Intro text\n"


def test_429_then_200_is_retried_and_succeeds(monkeypatch):
    rec = Recorder((429, {"error": {"message": "slow down"}}), (200, chat_body("ok")))
    backend = make_backend(rec, monkeypatch, max_retries=3)
    [out] = backend.generate([chat("hi")])
    assert out.text == "ok"
    assert len(rec.calls) == 2


def test_500_forever_ends_as_retryable_backend_error_after_max_retries(monkeypatch):
    rec = Recorder((500, {"error": {"message": "boom"}}))
    backend = make_backend(rec, monkeypatch, max_retries=2)
    with pytest.raises(BackendError) as info:
        backend.generate([chat("hi")])
    assert info.value.retryable is True
    assert len(rec.calls) == 3  # one try + max_retries
    msg = str(info.value)
    assert "500" in msg and "'test-model'" in msg and URL in msg and "\n" not in msg


def test_401_is_not_retried_and_never_shows_the_key(monkeypatch):
    # a server that echoes the key it was sent, as some do
    rec = Recorder((401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}))
    backend = make_backend(rec, monkeypatch, max_retries=4)
    with pytest.raises(BackendError) as info:
        backend.generate([chat("hi")])
    err = info.value
    assert err.retryable is False
    assert len(rec.calls) == 1
    msg = str(err)
    assert msg.startswith("openai: 401 Unauthorized from https://api.example.test/v1 for model 'test-model'")
    assert "OPENAI_API_KEY" in msg
    assert KEY not in msg and KEY not in repr(err) and err.__cause__ is None
    assert KEY not in json.dumps(backend.describe())


@pytest.mark.parametrize("status", [400, 403, 404])
def test_client_errors_are_not_retryable(monkeypatch, status):
    rec = Recorder((status, {"error": {"message": "no such model"}}))
    backend = make_backend(rec, monkeypatch, max_retries=3)
    with pytest.raises(BackendError) as info:
        backend.generate([chat("hi")])
    assert info.value.retryable is False and len(rec.calls) == 1
    assert str(info.value).startswith(f"openai: {status} ") and "no such model" in str(info.value)


def test_connection_errors_are_retried_and_a_read_timeout_is_not(monkeypatch):
    calls = []

    def refuse(request):
        calls.append(request)
        raise httpx2.ConnectError("simulated", request=request)

    with pytest.raises(BackendError) as info:
        make_backend(refuse, monkeypatch, max_retries=1).generate([chat("hi")])
    assert info.value.retryable is True and len(calls) == 2
    assert "'test-model'" in str(info.value) and "after 2 attempts" in str(info.value)

    calls.clear()

    def silent(request):
        calls.append(request)
        raise httpx2.ReadTimeout("simulated", request=request)

    with pytest.raises(BackendError) as info:
        make_backend(silent, monkeypatch, max_retries=3).generate([chat("hi", max_new_tokens=100)])
    # the server took the request and said nothing: asking again would only queue more work on it
    assert info.value.retryable is False and len(calls) == 1
    assert "no answer within 80 s (30 s + 100 tokens / 2 tokens/s)" in str(info.value)


def test_missing_key_is_a_config_error_naming_the_variable(monkeypatch):
    with pytest.raises(ConfigError, match=r"^OPENAI_API_KEY is not set; export OPENAI_API_KEY=\.\.\."):
        OpenAIBackend.from_options(model="m")
    with pytest.raises(ConfigError, match="MY_LLM_KEY is not set"):
        OpenAIBackend.from_options(model="m", base_url="https://llm.example.test/v1", api_key_env="MY_LLM_KEY")


def test_option_typos_and_bad_values_name_the_field():
    with pytest.raises(ConfigError, match="'concurency'"):
        OpenAIBackend.from_options(concurency=4)
    with pytest.raises(ConfigError, match="'concurrency'"):
        OpenAIBackend.from_options(concurrency=0, base_url="http://127.0.0.1:1/v1")


def test_describe_records_settings_and_base_url_from_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "https://proxy.example.test/v1")
    backend = OpenAIBackend.from_options(model="gpt-x", concurrency=3)
    assert backend.model_id == "gpt-x"
    assert backend.describe() == {
        "backend": "openai", "model": "gpt-x", "base_url": "https://proxy.example.test/v1", "concurrency": 3,
    }
    assert OpenAIBackend.max_concurrent_articles == 4


class _CannedChat(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("authorization"), "body": body})
        data = json.dumps(chat_body("local answer")).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_loopback_base_url_needs_no_key():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CannedChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        backend = OpenAIBackend.from_options(model="local", base_url=url)
        [out] = backend.generate([chat("hi")])
        backend.close()
    finally:
        server.shutdown()
        server.server_close()
    assert out.text == "local answer"
    assert _CannedChat.seen[-1]["path"] == "/v1/chat/completions"
    assert _CannedChat.seen[-1]["auth"] == "Bearer not-needed"


def _echo_handler(delay: float, state: dict):
    lock = threading.Lock()

    def handler(request):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        try:
            time.sleep(delay)
            content = json.loads(request.content)["messages"][0]["content"]
            return httpx2.Response(200, json=chat_body(f"echo {content}"))
        finally:
            with lock:
                state["now"] -= 1

    return handler


def test_requests_run_concurrently_and_keep_their_order(monkeypatch):
    state = {"now": 0, "peak": 0}
    backend = make_backend(_echo_handler(0.3, state), monkeypatch, concurrency=8)
    outs = backend.generate([chat(f"request {i}") for i in range(8)])
    assert [o.text for o in outs] == [f"echo request {i}" for i in range(8)]
    assert state["peak"] > 1


def test_concurrency_is_bounded(monkeypatch):
    state = {"now": 0, "peak": 0}
    backend = make_backend(_echo_handler(0.1, state), monkeypatch, concurrency=2)
    outs = backend.generate([chat(f"r{i}") for i in range(5)])
    assert [o.text for o in outs] == [f"echo r{i}" for i in range(5)]
    assert state["peak"] == 2


def test_generate_works_inside_a_running_event_loop(monkeypatch):
    """Prefect runs tasks inside an event loop; the backend must not start its own loop there."""
    state = {"now": 0, "peak": 0}
    backend = make_backend(_echo_handler(0.0, state), monkeypatch, concurrency=4)

    async def main():
        return backend.generate([chat("a"), chat("b"), chat("c")])

    outs = asyncio.run(main())
    assert [o.text for o in outs] == ["echo a", "echo b", "echo c"]


def test_an_injected_client_is_used_as_is(monkeypatch):
    import openai

    rec = Recorder((200, chat_body("from injected")))
    client = openai.OpenAI(api_key=KEY, base_url=URL, max_retries=0,
                           http_client=httpx2.Client(transport=httpx2.MockTransport(rec)))
    backend = OpenAIBackend(OpenAIOptions(model="m", base_url=URL), client=client)  # no key in env: fine
    assert backend.generate([chat("hi")])[0].text == "from injected"


# -- a real OpenAI-compatible server ----------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from aigc.backends.local.embedded import ensure_converted
    from aigc.serving import start_transformers_serve

    log = tmp_path_factory.mktemp("serve") / "server.log"
    with start_transformers_serve(ensure_converted(), log_path=log, env={"OMP_NUM_THREADS": "1"}) as server:
        yield server
    assert not server.is_running()


@pytest.mark.slow
def test_real_transformers_serve_answers_a_batch(served):
    assert served.base_url.startswith("http://127.0.0.1:") and served.base_url.endswith("/v1")
    backend = OpenAIBackend(OpenAIOptions(model=served.model_name, base_url=served.base_url, concurrency=2))
    reqs = [chat("Name a colour.", max_new_tokens=16, temperature=0.0),
            chat("Name an animal.", max_new_tokens=16, temperature=0.0)]
    outs = backend.generate(reqs)
    assert len(outs) == 2
    for out in outs:
        assert out.text.strip()
        assert out.prompt_tokens > 0 and 0 < out.completion_tokens <= 16
        assert out.finish_reason in ("stop", "length")
    backend.close()


@pytest.mark.slow
def test_real_server_through_the_registry_and_a_wrong_model_name(served):
    backend = get_backend("openai", model=served.model_name, base_url=served.base_url)
    assert isinstance(backend, OpenAIBackend)
    [out] = backend.generate([GenerationRequest(prompt="The sky is", max_new_tokens=8, temperature=0.0)])
    assert out.text.strip() and out.completion_tokens > 0

    wrong = OpenAIBackend.from_options(model="SmolLM2", base_url=served.base_url, max_retries=0)
    with pytest.raises(BackendError) as info:
        wrong.generate([chat("hi", max_new_tokens=4)])
    assert info.value.retryable is False and "400" in str(info.value) and "pinned" in str(info.value)


# -- faults from real servers on 127.0.0.1 ------------------------------------------------------


class _Faulty(BaseHTTPRequestHandler):
    """Answers every POST as ``mode`` says: "500" always, "badjson" a 200 that is not JSON, "ok" a reply."""

    mode = "ok"
    hits: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers["content-length"]))
        type(self).hits.append({"auth": self.headers.get("authorization"), "path": self.path})
        status, data = {
            "500": (500, b'{"error": {"message": "boom"}}'),
            "badjson": (200, b'{"id": "x", "choices": [ {oops'),
            "ok": (200, json.dumps(chat_body("fine")).encode()),
        }[type(self).mode]
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def faulty():
    """A real HTTP server on loopback whose answers a test chooses (``_Faulty.mode``)."""
    _Faulty.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Faulty)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_server():
    """A socket on loopback that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", held
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


def test_a_silent_server_gives_up_within_the_read_timeout_with_one_line(silent_server):
    url, held = silent_server
    backend = OpenAIBackend.from_options(model="m", base_url=url, timeout=2, max_retries=3)
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        backend.generate([chat("hi")])
    seconds = time.monotonic() - started
    assert 1.9 < seconds < backend.give_up_seconds(256) and seconds < 5
    assert len(held) == 1  # asked once: a read timeout is not retried
    msg = str(info.value)
    assert msg.startswith(f"openai: no answer within 2 s (-o timeout) from {url} for model 'm'") and "\n" not in msg


def test_the_default_read_timeout_grows_with_the_expected_output():
    backend = OpenAIBackend.from_options(model="m", base_url="http://127.0.0.1:9/v1")
    assert backend.read_timeout(100) == 80 and backend.read_timeout(400) == 230
    # 3 attempts of (10 s connect + read), two waits of at most 60 s
    assert backend.give_up_seconds(100) == 3 * 90 + 2 * 60


def test_a_closed_port_is_tried_max_retries_plus_one_times_and_says_so():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    backend = OpenAIBackend.from_options(model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2)
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        backend.generate([chat("hi")])
    seconds = time.monotonic() - started
    msg = str(info.value)
    assert msg.startswith(f"openai: cannot connect from http://127.0.0.1:{port}/v1 for model 'm'")
    assert "after 3 attempts in" in msg and info.value.retryable and "\n" not in msg
    assert 1.4 < seconds < 5  # waits of 0.5 s and 1 s between the attempts


def test_always_500_makes_exactly_max_retries_plus_one_requests(faulty):
    _Faulty.mode = "500"
    backend = OpenAIBackend.from_options(model="m", base_url=faulty, max_retries=2)
    with pytest.raises(BackendError) as info:
        backend.generate([chat("hi")])
    assert len(_Faulty.hits) == 3
    assert str(info.value).startswith(f"openai: 500 Internal Server Error from {faulty} for model 'm': server error")
    assert "after 3 attempts" in str(info.value)

    _Faulty.hits = []
    with pytest.raises(BackendError, match=r"\(1 attempt; max_retries=0\)$"):
        OpenAIBackend.from_options(model="m", base_url=faulty, max_retries=0).generate([chat("hi")])
    assert len(_Faulty.hits) == 1


def test_malformed_json_in_a_200_names_the_server_in_one_line(faulty):
    _Faulty.mode = "badjson"
    with pytest.raises(BackendError) as info:
        OpenAIBackend.from_options(model="m", base_url=faulty).generate([chat("hi")])
    msg = str(info.value)
    assert msg.startswith(f"openai: {faulty} answered with a body that is not an OpenAI-compatible JSON reply")
    assert "\n" not in msg and info.value.retryable is False and len(_Faulty.hits) == 1


def test_credentials_in_the_url_go_in_a_header_and_nowhere_else(faulty, caplog):
    import logging

    _Faulty.mode = "ok"
    secret_url = faulty.replace("http://", "http://alice:s3cret-pw@")
    caplog.set_level(logging.DEBUG)
    backend = OpenAIBackend.from_options(model="m", base_url=secret_url)
    assert backend.generate([chat("hi")])[0].text == "fine"
    assert _Faulty.hits[-1]["auth"] == "Basic " + base64.b64encode(b"alice:s3cret-pw").decode()
    assert backend.describe()["base_url"] == faulty
    assert "s3cret" not in caplog.text and "HTTP Request" in caplog.text  # the HTTP log line, without the password
    _Faulty.mode = "500"
    with pytest.raises(BackendError) as info:
        OpenAIBackend.from_options(model="m", base_url=secret_url, max_retries=0).generate([chat("hi")])
    assert "s3cret" not in str(info.value) and faulty in str(info.value)


def test_stashed_credentials_leave_the_url_and_come_back_from_the_environment(faulty, monkeypatch):
    from aigc import credentials

    monkeypatch.delenv(credentials.AUTH_ENV, raising=False)
    public = credentials.stash(faulty.replace("http://", "http://bob:pw%40x@"))
    assert public == faulty and os.environ[credentials.AUTH_ENV] == "bob:pw%40x"
    _Faulty.mode = "ok"
    OpenAIBackend.from_options(model="m", base_url=public).generate([chat("hi")])
    assert _Faulty.hits[-1]["auth"] == "Basic " + base64.b64encode(b"bob:pw@x").decode()
    with pytest.raises(ConfigError, match="other credentials"):
        credentials.stash(faulty.replace("http://", "http://eve:other@"))
    assert credentials.redact("GET http://bob:pw@h:1/v1 and https://x:y@z/") == "GET http://***@h:1/v1 and https://***@z/"

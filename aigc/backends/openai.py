"""The ``openai`` backend: any OpenAI-compatible HTTP API (OpenAI, vLLM, ``transformers serve``), requests run concurrently.

Retries live here, in one place (Prefect does not retry the steps that call a backend): a request that
could not connect, or got 408, 409, 429 or 5xx, is sent again up to ``max_retries`` times, after
0.5, 1, 2, ... s (at most 8 s) or the server's Retry-After (at most 60 s). A server that accepted the
request but said nothing for the read timeout is not asked again. Time to give up on one request, at most:
``(max_retries + 1) * (connect_timeout + read timeout) + max_retries * 60 s``, where the read timeout is
``timeout`` when set, else ``READ_START_SECONDS + max_new_tokens / min_tokens_per_second``
(:meth:`OpenAIBackend.read_timeout`); messages say how many attempts were made.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, ClassVar, Sequence
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from aigc import credentials
from aigc.backends.base import Backend, Completion, GenerationRequest, parse_options, trim_at_stop
from aigc.errors import BackendError, ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_PLACEHOLDER_KEY = "not-needed"
MAX_API_STOPS = 4  # the OpenAI API accepts at most four stop sequences
#: Read timeout before the first token, on top of the time the expected output takes (see OpenAIOptions).
READ_START_SECONDS = 30.0
#: Waits between attempts: 0.5 s, doubled each time, at most BACKOFF_MAX; a Retry-After up to RETRY_AFTER_MAX.
BACKOFF_FIRST, BACKOFF_MAX, RETRY_AFTER_MAX = 0.5, 8.0, 60.0
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
_HINTS = {
    400: "the server rejected the request",
    401: "check {env}",
    403: "the key in {env} may not have access to this model",
    404: "check the model name and base_url",
    408: "the server timed out",
    409: "the server reported a conflict",
    422: "the server rejected the request",
    429: "rate limited; lower --concurrency or try again later",
}


class OpenAIOptions(BaseModel):
    """Settings of the ``openai`` backend. The API key is read from the environment variable named by ``api_key_env``."""

    model_config = ConfigDict(extra="forbid")

    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)
    #: Attempts after the first for connection errors, 408, 409, 429 and 5xx (the only retries aigc makes).
    max_retries: int = Field(2, ge=0)
    #: Seconds to open a connection.
    connect_timeout: float = Field(10.0, gt=0)
    #: Seconds to wait for an answer; by default READ_START_SECONDS + max_new_tokens / min_tokens_per_second.
    timeout: float | None = Field(None, gt=0)
    #: The slowest generation speed still waited for (a CPU server answering several requests in turn is slow).
    min_tokens_per_second: float = Field(2.0, gt=0)
    use_completions: bool = False


def is_loopback(url: str | None) -> bool:
    """Whether ``url`` points at this machine (127.0.0.0/8, ::1, localhost)."""
    if not url:
        return False
    host = (urlsplit(url).hostname or "").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_public_url = credentials.public_url


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OpenAIBackend(Backend):
    """Chat or text completions from an OpenAI-compatible server; transient failures are retried by the client."""

    name: ClassVar[str] = "openai"
    max_concurrent_articles: ClassVar[int] = 4

    def __init__(
        self, options: OpenAIOptions | None = None, *, client: Any = None, http_client: Any = None
    ) -> None:
        self.options = options or OpenAIOptions()
        given = self.options.base_url or os.environ.get("OPENAI_BASE_URL")
        # credentials in the URL (or in AIGC_BASE_URL_AUTH) go in a header; the URL kept and logged has none
        self._auth = credentials.basic_auth(given) if given else None
        self.base_url = _public_url(given) if given else DEFAULT_BASE_URL
        self._client = client
        self._http_client = http_client
        self._lock = threading.Lock()
        # Text completions continue a plain prompt, so a template's reply prefill ("1.") is kept.
        self.supports_prefill = self.options.use_completions
        if client is None:
            self._api_key()  # fail fast on a missing key, but don't keep it

    @classmethod
    def from_options(cls, **options: Any) -> "OpenAIBackend":
        """Build from keyword options; an unknown or invalid option is a ConfigError naming it."""
        return cls(parse_options(OpenAIOptions, options, "openai"))

    @property
    def model_id(self) -> str:
        return self.options.model

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "model": self.options.model,
            "base_url": _public_url(self.base_url),
            "concurrency": self.options.concurrency,
        }

    # -- client -------------------------------------------------------------
    def _api_key(self) -> str:
        env = self.options.api_key_env
        key = os.environ.get(env, "").strip()
        if key:
            return key
        if is_loopback(self.base_url):
            return LOCAL_PLACEHOLDER_KEY
        raise ConfigError(f"{env} is not set; export {env}=... (or --api-key-env NAME)")

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import openai
                except ImportError:  # pragma: no cover - openai is a core dependency
                    raise MissingDependencyError("the openai backend needs the openai package: pip install aigc") from None
                self._client = openai.OpenAI(
                    api_key=self._api_key(),
                    base_url=self.base_url,
                    max_retries=0,  # aigc's own loop retries (_one), with true counts and a bounded time
                    timeout=openai.Timeout(self.options.timeout or 600.0, connect=self.options.connect_timeout),
                    default_headers={"Authorization": self._auth} if self._auth else None,
                    http_client=self._http_client,
                )
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None and hasattr(self._client, "close"):
                self._client.close()
            self._client = None

    # -- generation ---------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """One completion per request, in order; up to ``concurrency`` requests are in flight at once."""
        requests = list(requests)
        if not requests:
            return []
        client = self._get_client()
        if len(requests) == 1 or self.options.concurrency == 1:
            return [self._one(client, r) for r in requests]
        workers = min(self.options.concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aigc-openai") as pool:
            futures = [pool.submit(self._one, client, r) for r in requests]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in pending:
                fut.cancel()
            for fut in futures:  # raise the first failure in request order
                if fut in done and fut.exception() is not None:
                    raise fut.exception()
            return [fut.result() for fut in futures]

    def read_timeout(self, max_new_tokens: int) -> float:
        """Seconds to wait for the answer to a request of ``max_new_tokens`` once connected."""
        if self.options.timeout is not None:
            return self.options.timeout
        return READ_START_SECONDS + max_new_tokens / self.options.min_tokens_per_second

    def give_up_seconds(self, max_new_tokens: int) -> float:
        """The longest one request can take before it fails: every attempt timing out, the longest waits between."""
        retries = self.options.max_retries
        per_try = self.options.connect_timeout + self.read_timeout(max_new_tokens)
        return (retries + 1) * per_try + retries * RETRY_AFTER_MAX

    def _one(self, client: Any, request: GenerationRequest) -> Completion:
        """One request, sent again after transient failures (connection, 408, 409, 429, 5xx) up to max_retries times."""
        started = time.perf_counter()
        for attempt in range(1, self.options.max_retries + 2):
            try:
                return self._send(client, request, started)
            except _Attempt as failed:
                err = failed.error
                last = attempt > self.options.max_retries or not err.retryable
                wait = None if last else _wait_before(failed.cause, attempt)
                if wait is None:
                    raise BackendError(_with_attempts(str(err), attempt, time.perf_counter() - started, err.retryable,
                                                      failed.cause), retryable=err.retryable) from None
                log.info("openai: attempt %d failed (%s); again in %.1f s", attempt, err, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, client: Any, request: GenerationRequest, started: float) -> Completion:
        import openai

        common: dict[str, Any] = {
            "model": self.options.model,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "timeout": openai.Timeout(self.read_timeout(request.max_new_tokens), connect=self.options.connect_timeout),
        }
        if request.stop:
            common["stop"] = list(request.stop[:MAX_API_STOPS])
        if request.seed is not None:
            common["seed"] = request.seed
        try:
            if request.messages is not None and not self.options.use_completions:
                messages = [{"role": m.role, "content": m.content} for m in request.messages]
                resp = client.chat.completions.create(messages=messages, **common)
                choice = _first_choice(resp, self)
                text = choice.message.content or ""
            else:
                resp = client.completions.create(prompt=request.as_plain_prompt(), **common)
                choice = _first_choice(resp, self)
                text = choice.text or ""
        except openai.OpenAIError as err:
            raise _Attempt(self._map_error(err, request.max_new_tokens), err) from None
        except ValueError as err:  # a 200 whose body is not JSON (json.JSONDecodeError), or not the API's shape
            raise BackendError(self._redact(
                f"openai: {self.base_url} answered with a body that is not an OpenAI-compatible JSON reply for model "
                f"{self.options.model!r} ({_one_line(str(err), 80)}); is base_url the server's API, such as "
                "http://host:8000/v1?"), retryable=False) from None
        finish = {"length": "length", "content_filter": "error"}.get(choice.finish_reason or "stop", "stop")
        # the API takes four stops and may echo the one it stopped at (transformers serve does): cut client-side
        text, cut = trim_at_stop(text, request.stop)
        if cut:
            finish = "stop"
        usage = getattr(resp, "usage", None)
        return Completion(
            text=text,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            finish_reason=finish,
            seconds=time.perf_counter() - started,
        )

    def _map_error(self, err: Exception, max_new_tokens: int) -> BackendError:
        """One line naming the status, server and model; never the key. Transient kinds are retryable."""
        import openai

        where = f"from {self.base_url} for model {self.options.model!r}"
        status = getattr(err, "status_code", None)
        if isinstance(err, openai.APITimeoutError):
            cause = err.__cause__
            if cause is not None and "connect" in type(cause).__name__.lower():
                msg, retryable = (f"openai: cannot connect {where} within {self.options.connect_timeout:g} s "
                                  "(connect_timeout); is the server running and reachable?"), True
            else:
                read = self.read_timeout(max_new_tokens)
                how = ("-o timeout" if self.options.timeout is not None else
                       f"{READ_START_SECONDS:g} s + {max_new_tokens} tokens / {self.options.min_tokens_per_second:g} "
                       "tokens/s")
                msg, retryable = (f"openai: no answer within {read:g} s ({how}) {where}: the server took the request "
                                  "and did not reply; is it overloaded or stuck? (-o timeout=SECONDS waits longer)"), False
        elif isinstance(err, openai.APIConnectionError):
            cause = _one_line(repr(err.__cause__)) if err.__cause__ else "connection error"
            msg, retryable = f"openai: cannot connect {where} ({cause}); is the server running?", True
        elif isinstance(err, openai.APIStatusError) and status is not None:
            retryable = status in (408, 409, 429) or status >= 500
            reason = getattr(err.response, "reason_phrase", "") or ""
            hint = _HINTS.get(status, "server error" if status >= 500 else "request failed")
            msg = f"openai: {status} {reason} {where}: {hint.format(env=self.options.api_key_env)}"
            detail = _one_line(_server_detail(err))
            if detail and not retryable:
                msg += f": {detail}"
        else:
            msg, retryable = f"openai: {type(err).__name__} {where}: {_one_line(str(err))}", False
        return BackendError(self._redact(msg), retryable=retryable)

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.options.api_key_env, "").strip()
        client_key = getattr(self._client, "api_key", "") or ""
        for secret in {key, client_key} - {"", LOCAL_PLACEHOLDER_KEY}:
            text = text.replace(secret, "***")
        return text


class _Attempt(Exception):
    """One failed attempt: the mapped error and the client's exception (for Retry-After)."""

    def __init__(self, error: BackendError, cause: Exception):
        super().__init__(str(error))
        self.error, self.cause = error, cause


def _retry_after(err: Exception) -> float | None:
    """The server's Retry-After (``retry-after-ms`` or ``retry-after`` seconds), if it sent one."""
    headers = getattr(getattr(err, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) * scale)
        except (KeyError, TypeError, ValueError):
            continue
    return None


def _wait_before(err: Exception, attempt: int) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``; None when the server asks for longer than RETRY_AFTER_MAX."""
    asked = _retry_after(err)
    if asked is not None:
        return asked if asked <= RETRY_AFTER_MAX else None
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempt - 1))


def _with_attempts(msg: str, attempts: int, seconds: float, retryable: bool, err: Exception) -> str:
    """The error line with the true number of attempts (the client itself never retries)."""
    if attempts > 1:
        return f"{msg} (after {attempts} attempts in {seconds:.1f} s)"
    asked = _retry_after(err)
    if retryable and asked is not None and asked > RETRY_AFTER_MAX:
        return f"{msg} (the server asks to wait {asked:.0f} s; not retried)"
    return msg + (" (1 attempt; max_retries=0)" if retryable else "")


def _server_detail(err: Any) -> str:
    """The server's own words from an error body: OpenAI's ``error.message``, FastAPI's ``detail``, or the SDK message."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, str):
            return inner
        if isinstance(inner, dict):
            for name in ("message", "detail"):
                if isinstance(inner.get(name), str) and inner[name]:
                    return inner[name]
    return getattr(err, "message", "") or ""


def _first_choice(resp: Any, backend: OpenAIBackend) -> Any:
    choices = getattr(resp, "choices", None)
    if not choices:
        raise BackendError(
            f"openai: {_public_url(backend.base_url)} returned no choices for model {backend.options.model!r}",
            retryable=False,
        )
    return choices[0]

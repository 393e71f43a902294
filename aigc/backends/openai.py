"""The ``openai`` backend: any OpenAI-compatible HTTP API (OpenAI, vLLM, ``transformers serve``), requests run concurrently."""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, ClassVar, Sequence
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from aigc.backends.base import Backend, Completion, GenerationRequest, parse_options, trim_at_stop
from aigc.errors import BackendError, ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_PLACEHOLDER_KEY = "not-needed"
MAX_API_STOPS = 4  # the OpenAI API accepts at most four stop sequences
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
    max_retries: int = Field(4, ge=0)
    # Seconds per request. Generous: a local server on a CPU answers one request at a time.
    timeout: float = Field(600.0, gt=0)
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


def _public_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, safe to log and record."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


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
        self.base_url = self.options.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
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
                    max_retries=self.options.max_retries,
                    timeout=self.options.timeout,
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

    def _one(self, client: Any, request: GenerationRequest) -> Completion:
        import openai

        started = time.perf_counter()
        common: dict[str, Any] = {
            "model": self.options.model,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
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
            raise self._map_error(err) from None
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

    def _map_error(self, err: Exception) -> BackendError:
        """One line naming the status, server and model; never the key. Transient kinds are retryable."""
        import openai

        where = f"from {_public_url(self.base_url)} for model {self.options.model!r}"
        retries = getattr(self._client, "max_retries", None)
        after = f"after {retries} retries" if retries else "without retries"
        status = getattr(err, "status_code", None)
        if isinstance(err, openai.APITimeoutError):
            msg, retryable = f"openai: request timed out {after} {where}", True
        elif isinstance(err, openai.APIConnectionError):
            cause = _one_line(repr(err.__cause__)) if err.__cause__ else "connection error"
            msg, retryable = f"openai: cannot connect {after} {where} ({cause}); is the server running?", True
        elif isinstance(err, openai.APIStatusError) and status is not None:
            retryable = status in (408, 409, 429) or status >= 500
            reason = getattr(err.response, "reason_phrase", "") or ""
            hint = _HINTS.get(status, "server error" if status >= 500 else "request failed")
            hint = hint.format(env=self.options.api_key_env) + (f" ({after})" if retryable else "")
            msg = f"openai: {status} {reason} {where}: {hint}"
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

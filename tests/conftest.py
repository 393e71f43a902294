"""Shared test set-up: offline, temporary Prefect home and outputs, and a fake backend registered like a real one."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import ClassVar, Sequence

# Before anything imports Prefect: a private Prefect home and result store for this test session,
# unless CI points the tests at a running server (PREFECT_API_URL).
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="aigc-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PREFECT_HOME", str(_SESSION_TMP / "prefect"))
os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(_SESSION_TMP / "results"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest  # noqa: E402

from aigc.backends import register_backend, unregister_backend  # noqa: E402
from aigc.backends.base import Backend, Completion, GenerationRequest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


#: Outline titles the fake writes when no reply is queued (as many as any test asks for).
FAKE_TITLES = ["Background and history", "How it works", "Costs and funding", "Effects on health", "Who is affected",
               "Rules and laws", "Technology used", "Public opinion", "Famous examples", "Common mistakes",
               "Effects on nature", "Work and jobs", "Schools and learning", "Travel and transport", "Food and farming",
               "Sports and games", "Art and music", "Money and markets", "Safety tips", "The road ahead"]


def default_reply(request: GenerationRequest, number: int) -> str:
    """What the fake writes when no reply is queued, chosen by the request's purpose (never by its prompt text).

    An outline is a numbered list of :data:`FAKE_TITLES`; anything else is a few sentences that name
    the reply's number, so a test can tell replies apart.
    """
    if request.purpose == "outline":
        text = "\n".join(f"{i}. {t}" for i, t in enumerate(FAKE_TITLES, 1))
        return text.removeprefix(request.prefill)
    return (f"This is reply {number} of the fake model, in plain words. It gives the reader one clear example "
            f"of the matter. It ends with a short summary of what matters most.")


class FakeBackend(Backend):
    """A backend for tests in the manner of llm's mock model: queued replies, a record of every call.

    ``enqueue(*texts)`` queues replies, used in request order; with the queue empty it answers with
    :func:`default_reply`, or raises ``fail`` when set. ``calls`` holds each batch of requests it was asked.
    """

    name: ClassVar[str] = "fake"
    supports_prefill: ClassVar[bool] = True

    def __init__(self, model: str = "fake-model", fail: Exception | None = None):
        self._model = model
        self.queue: deque[str] = deque()
        self.fail = fail
        self.calls: list[list[GenerationRequest]] = []
        self._lock = threading.Lock()

    def enqueue(self, *texts: str) -> "FakeBackend":
        self.queue.extend(texts)
        return self

    @property
    def model_id(self) -> str:
        return self._model

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        with self._lock:
            self.calls.append(list(requests))
            if self.fail is not None:
                raise self.fail
            out = []
            for r in requests:
                text = self.queue.popleft() if self.queue else default_reply(r, len(self.requests))
                out.append(Completion(text=text, prompt_tokens=10, completion_tokens=len(text.split()),
                                      finish_reason="stop", seconds=0.01))
            return out

    @property
    def requests(self) -> list[GenerationRequest]:
        return [r for batch in self.calls for r in batch]


def pytest_sessionfinish(session, exitstatus):
    """The session's Prefect home and results go with it (a run of the suite left them in /tmp)."""
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture
def fake_backend():
    """A fresh FakeBackend, registered as "fake" for the test (``get_backend("fake")`` returns it), then unregistered."""
    backend = FakeBackend()
    register_backend("fake", lambda **options: backend)
    yield backend
    unregister_backend("fake")


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path, monkeypatch):
    """Articles go to a temporary outputs folder; templates are the repository's."""
    monkeypatch.setenv("AIGC_OUTPUTS_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("AIGC_TEMPLATES_DIR", str(REPO / "templates"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    # credentials taken out of a --base-url go to this variable (aigc.credentials): never from one test to the next
    monkeypatch.setenv("AIGC_BASE_URL_AUTH", "")
    monkeypatch.delenv("AIGC_BASE_URL_AUTH")


@pytest.fixture
def templates_copy(tmp_path, monkeypatch) -> Path:
    """A private copy of templates/ that a test may edit; AIGC_TEMPLATES_DIR points at it."""
    import shutil

    dest = tmp_path / "templates"
    shutil.copytree(REPO / "templates", dest)
    monkeypatch.setenv("AIGC_TEMPLATES_DIR", str(dest))
    return dest

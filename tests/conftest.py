"""Shared test set-up: offline, temporary Prefect home and outputs, and a fake backend registered like a real one."""

from __future__ import annotations

import os
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Callable, ClassVar, Sequence

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

from aigc.backends import register_backend  # noqa: E402
from aigc.backends.base import Backend, Completion, GenerationRequest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def default_reply(request: GenerationRequest) -> str:
    """An outline when asked for one (prefill '1.'), else a few sentences naming the section."""
    if request.prefill.startswith("1."):
        n = 5
        text = request.messages[-2].content if request.messages else ""
        words = text.split()
        for before, word in zip(words, words[1:]):  # "exactly N": a topic may hold digits too ("Flow test 60025261")
            if before == "exactly" and word.isdigit():
                n = int(word)
                break
        return "".join(f" Part {chr(65 + i)} of the story\n{i + 2}." for i in range(n))[: -len(f"\n{n + 1}.")]
    user = request.messages[-1].content if request.messages else request.prompt
    title = user.split('Write section', 1)[-1].split('"')[1] if "Write section" in user else "the topic"
    return (
        f"This part explains {title.lower()} in plain words. It gives the reader one clear example. "
        f"It ends with a short summary of what matters most about {title.lower()}."
    )


class FakeBackend(Backend):
    """Canned replies (a queue, then a function), and a history of every batch it was asked."""

    name: ClassVar[str] = "fake"
    supports_prefill: ClassVar[bool] = True
    instances: ClassVar[list["FakeBackend"]] = []

    def __init__(self, model: str = "fake-model", replies: Sequence[str] = (),
                 reply: Callable[[GenerationRequest], str] = default_reply, fail: Exception | None = None):
        self._model = model
        self.replies = deque(replies)
        self.reply = reply
        self.fail = fail
        self.calls: list[list[GenerationRequest]] = []
        self._lock = threading.Lock()
        FakeBackend.instances.append(self)

    @property
    def model_id(self) -> str:
        return self._model

    def generate(self, requests):
        with self._lock:
            self.calls.append(list(requests))
            if self.fail is not None:
                raise self.fail
            out = []
            for r in requests:
                text = self.replies.popleft() if self.replies else self.reply(r)
                out.append(Completion(text=text, prompt_tokens=10, completion_tokens=len(text.split()),
                                      finish_reason="stop", seconds=0.01))
            return out

    @property
    def requests(self) -> list[GenerationRequest]:
        return [r for batch in self.calls for r in batch]


@pytest.fixture
def fake_backend():
    """A fresh FakeBackend, also what `get_backend("fake")` returns during the test."""
    from aigc import backends

    backend = FakeBackend()
    register_backend("fake", lambda **options: backend)
    yield backend
    backends._REGISTRY.pop("fake", None)
    for key in [k for k in backends._INSTANCES if k[0] == "fake"]:
        backends._INSTANCES.pop(key)


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path, monkeypatch):
    """Articles go to a temporary outputs folder; templates are the repository's."""
    monkeypatch.setenv("AIGC_OUTPUTS_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("AIGC_TEMPLATES_DIR", str(REPO / "templates"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def templates_copy(tmp_path, monkeypatch) -> Path:
    """A private copy of templates/ that a test may edit; AIGC_TEMPLATES_DIR points at it."""
    import shutil

    dest = tmp_path / "templates"
    shutil.copytree(REPO / "templates", dest)
    monkeypatch.setenv("AIGC_TEMPLATES_DIR", str(dest))
    return dest

"""A fake backend for worker processes: answers by request purpose after a delay, and logs what it wrote where.

Named in a batch file as ``backend: tests.plugins.worker_fake:WorkerFake`` (importable with the repository on
PYTHONPATH), so separate ``prefect worker`` processes build it without any registration. Each call appends
``<worker> <pid> <purpose> <topic>`` lines to the file in ``AIGC_FAKE_LOG`` (the worker's own), so a test can tell
which worker wrote which article and how often.
"""

from __future__ import annotations

import os
import time
from typing import ClassVar, Sequence

from aigc.backends.base import Backend, Completion, GenerationRequest


class WorkerFake(Backend):
    """Outlines of three titles, sections of two sentences; ``delay`` seconds per call."""

    name: ClassVar[str] = "worker-fake"
    max_concurrent_articles: ClassVar[int] = 2

    def __init__(self, delay: float = 0.0):
        self.delay = float(delay)

    @classmethod
    def from_options(cls, **options) -> "WorkerFake":
        return cls(**options)

    @property
    def model_id(self) -> str:
        return "worker-fake"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        time.sleep(self.delay)
        log = os.environ.get("AIGC_FAKE_LOG")
        if log:
            who = os.environ.get("AIGC_FAKE_WORKER", "?")
            with open(log, "a", encoding="utf-8") as fh:
                for r in requests:
                    topic = " ".join(m.content for m in r.messages) if r.messages else r.prompt
                    fh.write(f"{who} {os.getpid()} {r.purpose} {_topic(topic)}\n")
        return [Completion(text=_reply(r), completion_tokens=20) for r in requests]


def _topic(prompt: str) -> str:
    """The "Topic N" marker the tests put in every topic (never used to choose the reply)."""
    words = prompt.replace('"', " ").split()
    for i, word in enumerate(words[:-1]):
        if word == "Topic" and words[i + 1].strip(".,:;").isdigit():
            return f"Topic-{words[i + 1].strip('.,:;')}"
    return "?"


def _reply(request: GenerationRequest) -> str:
    if request.purpose == "outline":
        text = "1. Where it starts\n2. What changes\n3. What to do next"
        return text.removeprefix(request.prefill)
    return ("This part explains the matter in plain words, with one example from a real city. "
            "It ends with a short note on what a reader can do next.")

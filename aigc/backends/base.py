"""The backend interface: a batch of generation requests in, a batch of completions out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aigc.errors import ConfigError, validate

OptionsT = TypeVar("OptionsT", bound=BaseModel)

def parse_options(model: type[OptionsT], options: dict[str, Any], backend: str) -> OptionsT:
    """Validate a backend's options; a typo or bad value is one ConfigError line naming the option."""
    return validate(model, options, where=f"{backend} backend", label="option")


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class GenerationRequest(BaseModel):
    """What to generate: chat messages or a plain prompt, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    #: Whether a local model's repetition penalty also weighs the prompt's tokens (transformers' way); False:
    #: only the reply's, so that the model may take names and numbers from passages in its prompt.
    penalize_prompt: bool = True
    #: The note numbers a citation marker "[n]" may give (a grounded section's passages): a local model cannot
    #: write any other number after "[" (see aigc.backends.local.markers); empty: no constraint. Never sent.
    citation_numbers: tuple[int, ...] = ()
    #: What the request is for ("outline", "section", "title", ...): for logs, progress and test fakes; never sent.
    purpose: str = ""

    @model_validator(mode="after")
    def _one_input(self) -> "GenerationRequest":
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        return self

    def as_plain_prompt(self) -> str:
        """The request as plain text, for models without a chat template (GPT-2)."""
        if self.prompt is not None:
            return self.prompt
        messages = list(self.messages or ())
        prefill = messages.pop().content if messages and messages[-1].role == "assistant" else ""
        parts = [m.content.strip() for m in messages if m.role != "assistant"]
        return "\n\n".join(p for p in parts if p) + "\n\n" + prefill

    @property
    def prefill(self) -> str:
        """The start of the reply given by a trailing assistant message ("" if none)."""
        if self.messages and self.messages[-1].role == "assistant":
            return self.messages[-1].content
        return ""

    def without_prefill(self) -> "GenerationRequest":
        """The request with a trailing assistant message removed (for backends that would answer it)."""
        if not self.prefill:
            return self
        return self.model_copy(update={"messages": self.messages[:-1]})


class Completion(BaseModel):
    """One generated text and how it ended."""

    model_config = ConfigDict(extra="forbid")

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Literal["stop", "length", "error"] = "stop"
    seconds: float = 0.0


class Backend(ABC):
    """Turns a batch of requests into a batch of completions, in the same order.

    Capabilities are declared as class attributes so the pipeline can plan
    without trial and error.
    """

    name: ClassVar[str]
    #: Whether a trailing assistant message is continued (prefill), rather than answered.
    supports_prefill: ClassVar[bool] = False
    #: How many articles a batch puts into one step's call (see :meth:`concurrent_articles`).
    max_concurrent_articles: ClassVar[int] = 1
    #: Candidates written per section when an article does not say (the best is kept): extra rows are
    #: cheap in a batched local call, but each costs a full request on an API.
    default_section_candidates: ClassVar[int] = 1

    @property
    @abstractmethod
    def model_id(self) -> str:
        """A stable name for the model, used in records and cache keys."""

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Generate one completion per request, in order."""

    def concurrent_articles(self, sections: int) -> int:
        """How many articles of ``sections`` sections a batch writes together: their outline requests share one
        ``generate()`` call, then their section requests share the next (a local model: as many as fill one
        batch of rows; an API: requests in flight)."""
        return max(1, int(self.max_concurrent_articles))

    def describe(self) -> dict:
        """Settings worth recording (never secrets)."""
        return {"backend": self.name, "model": self.model_id}

    def close(self) -> None:  # pragma: no cover - optional hook
        """Release resources."""


def trim_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the first stop string in it; say whether one was found (a no-op when none is there)."""
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def generate_with_prefill(backend: Backend, requests: Sequence[GenerationRequest]) -> list[Completion]:
    """Generate, continuing each request's prefill where the backend can, and return full replies.

    A backend with ``supports_prefill`` continues the trailing assistant message and the prefill is
    put back in front of its text; other backends get the request without it.
    """
    if backend.supports_prefill:
        completions = backend.generate(list(requests))
        return [c.model_copy(update={"text": r.prefill + c.text}) for r, c in zip(requests, completions)]
    return backend.generate([r.without_prefill() for r in requests])

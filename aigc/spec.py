"""What to write: the validated inputs of one article, and the prompt variables derived from them."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aigc.errors import InputError, validate

#: Tokens per English word for budgeting (byte-level BPE tokenizers average ~1.3-1.4).
TOKENS_PER_WORD = 1.4


class ArticleSpec(BaseModel):
    """The inputs of one article. Everything that changes the text is here (and in the templates)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str = Field(..., description="What the article is about")
    style: str = "article"
    sections: int = Field(5, ge=1, le=20)
    words: int = Field(800, ge=30, le=20000)
    seed: int = 0
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    backend: str = "local"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    outline: tuple[str, ...] | None = None
    #: Outlines asked for at once (one batched call); their titles are pooled and the best chosen.
    outline_candidates: int = Field(4, ge=1, le=16)
    #: Candidates written for each section in the same call, the best kept; None: the backend's default.
    section_candidates: int | None = Field(None, ge=1, le=8)
    #: Documents the article is grounded in (folders, files, saved datasets; docs/sources.md); None: none.
    sources: tuple[str, ...] | None = None
    #: The text field of JSONL, CSV, Parquet and dataset sources.
    text_field: str = "text"

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        # control characters (NUL, escape sequences, ...) would go raw into the files and the index
        v = " ".join("".join(c if c.isspace() or unicodedata.category(c) != "Cc" else "" for c in v).split())
        if not v:
            raise ValueError("the topic is empty; give what the article is about, e.g. \"Urban heat islands\"")
        if len(v) > 300:
            raise ValueError(f"the topic is {len(v)} characters long; keep it under 300")
        return v

    @field_validator("sources", mode="before")
    @classmethod
    def _sources(cls, v: Any) -> tuple[str, ...] | None:
        if v is None:
            return None
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)) or not all(isinstance(p, str) for p in v):
            raise ValueError("give a list of folders or files, e.g. [notes/, briefings.jsonl]")
        paths = tuple(p.strip() for p in v if p.strip())
        return paths or None

    @field_validator("backend_options")
    @classmethod
    def _no_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if "key" in key.lower() and key != "api_key_env":
                raise ValueError(f"backend option {key!r} looks like a secret; pass API keys through the environment")
        return v

    @classmethod
    def build(cls, source: str = "input", **values: Any) -> "ArticleSpec":
        """Validate, turning pydantic's errors into one InputError line naming the field."""
        return validate(cls, values, where=source, error=InputError)

    # -- derived values ------------------------------------------------------------
    @property
    def section_words(self) -> int:
        return max(20, round(self.words / self.sections))

    @property
    def section_tokens(self) -> int:
        """New-token budget of one section: its words plus headroom for ending a sentence."""
        return int(self.section_words * TOKENS_PER_WORD * 1.3) + 16

    @property
    def outline_tokens(self) -> int:
        return 24 * self.sections + 40

    def template_context(self, **extra: Any) -> dict[str, Any]:
        """Variables every template sees. User text goes in as data, never as template source."""
        return {
            "topic": self.topic,
            "style": self.style,
            "n_sections": self.sections,
            "words": self.words,
            "section_words": self.section_words,
            **extra,
        }

    def key(self) -> str:
        """A short hash of the inputs, used to recognise an article already written."""
        data = self.model_dump(mode="json")
        if not data.get("sources"):  # an article without sources keeps the key it had before sources existed
            data.pop("sources", None)
            data.pop("text_field", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

"""aigc: scheduled, template-driven long-form writing with language models."""

__version__ = "0.1.0"

"""The local backend: a transformers causal LM on this machine (the embedded SmolLM2 by default), with a CPU fast path."""

from aigc.backends.local.backend import LocalBackend, LocalOptions, loaded_models
from aigc.backends.local.loading import context_length, run_on_model_thread

__all__ = ["LocalBackend", "LocalOptions", "context_length", "loaded_models", "run_on_model_thread"]

"""The local backend: a transformers causal LM on this machine (the embedded SmolLM2 by default), with a CPU fast path.

``backend`` is the Backend itself, ``loading`` loads models once per process on one model thread,
``embedded`` converts the default model once, and ``fastpath/`` is the CPU fast path, one module per technique.
"""

from aigc.backends.local.backend import LocalBackend, LocalOptions
from aigc.backends.local.fastpath import FastPath
from aigc.backends.local.loading import context_length, loaded_models, run_on_model_thread

__all__ = ["FastPath", "LocalBackend", "LocalOptions", "context_length", "loaded_models", "run_on_model_thread"]

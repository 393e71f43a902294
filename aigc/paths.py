"""Where aigc keeps its caches, templates and outputs (each overridable by an environment variable)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Root of aigc's caches: ``AIGC_CACHE_DIR``, else ``~/.cache/aigc``."""
    env = os.environ.get("AIGC_CACHE_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aigc"
    return base.expanduser()


def outputs_dir() -> Path:
    """Where articles are written: ``AIGC_OUTPUTS_DIR``, else ``./outputs``."""
    return Path(os.environ.get("AIGC_OUTPUTS_DIR", "outputs")).expanduser()


def templates_dir() -> Path:
    """Style packs: ``AIGC_TEMPLATES_DIR``, else ``./templates`` if present, else the repository's."""
    env = os.environ.get("AIGC_TEMPLATES_DIR")
    if env:
        return Path(env).expanduser()
    local = Path("templates")
    if (local / "base").is_dir():
        return local
    return REPO_ROOT / "templates"

"""Which version of the writing steps made a text: aigc's version plus a hash of the step code."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from aigc import __version__

#: The modules whose code decides an outline's or a section's text (prompting, parsing, cleanup).
STEP_MODULES = ("spec.py", "outline.py", "sections.py", "cleanup.py", "backends/base.py")


@functools.cache
def steps_version() -> str:
    """``0.1.0+<hash>``: changes when the code that turns model output into text changes.

    Cached outlines and sections and the "already written" check key on it, so a fix to
    parsing or cleanup is not hidden behind results made by the old code.
    """
    root = Path(__file__).parent
    h = hashlib.sha256(__version__.encode())
    for name in STEP_MODULES:
        h.update((root / name).read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"

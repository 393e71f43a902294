"""The error tree: every failure a user can cause or meet is an AigcError with one clear line."""

from __future__ import annotations


class AigcError(Exception):
    """Root of aigc's errors. ``str(err)`` is the one line the CLI prints."""


class ConfigError(AigcError):
    """A bad option, setting or input value; the message names the field and the fix."""


class InputError(ConfigError):
    """Bad user input (topic, outline, batch file); names the file, line or field."""


class TemplateError(AigcError):
    """A template is missing, has a syntax error or uses an undefined variable."""

    def __init__(self, message: str, *, template: str | None = None, line: int | None = None):
        where = ""
        if template:
            where = f"{template}:{line}: " if line else f"{template}: "
        super().__init__(f"{where}{message}")
        self.template = template
        self.line = line


class OutlineError(AigcError):
    """The model could not produce a usable outline."""


class OutputError(AigcError):
    """Outputs could not be written."""


class BackendError(AigcError):
    """A backend failed. ``retryable`` says whether trying again may help (429, 5xx, timeouts)."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class MissingDependencyError(BackendError):
    """An optional library is not installed; the message names the extra to install."""

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


def validate(model: type, values: dict, *, where: str, label: str = "", error: type[AigcError] = ConfigError):
    """Build the pydantic ``model`` from ``values``; its first validation error becomes one ``error`` line.

    ``<where>: <label> 'field': <message>`` (``<where>: field: <message>`` without a label), and for a
    field the model does not have: ``<where>: unknown <label> 'field'; known <label>s: ...``.
    """
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "input"
        noun = label or "field"
        if first["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields)
            raise error(f"{where}: unknown {noun} {field!r}; known {noun}s: {known}") from None
        msg = first["msg"].removeprefix("Value error, ")
        raise error(f"{where}: {label} {field!r}: {msg}" if label else f"{where}: {field}: {msg}") from None

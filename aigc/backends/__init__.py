"""Backend registry: built-in backends and third-party ones from the ``aigc.backends`` entry-point group."""

from __future__ import annotations

import threading
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Callable

from aigc.backends.base import Backend, Completion, GenerationRequest, Message
from aigc.errors import ConfigError

__all__ = [
    "Backend",
    "Completion",
    "GenerationRequest",
    "Message",
    "available_backends",
    "get_backend",
    "register_backend",
    "unregister_backend",
    "create_backend",
]

_BUILTIN: dict[str, str] = {
    "local": "aigc.backends.local:LocalBackend",
    "openai": "aigc.backends.openai:OpenAIBackend",
}
_REGISTRY: dict[str, Callable[..., Backend]] = {}
_INSTANCES: dict[tuple, Backend] = {}
_LOCK = threading.Lock()


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    """Register a backend class (or factory) under ``name``; later registrations win."""
    _REGISTRY[name] = factory
    for key in [k for k in _INSTANCES if k[0] == name]:
        _INSTANCES.pop(key)


def unregister_backend(name: str) -> None:
    """Forget a backend registered with :func:`register_backend` (and its shared instances); built-ins stay."""
    _REGISTRY.pop(name, None)
    for key in [k for k in _INSTANCES if k[0] == name]:
        _INSTANCES.pop(key)


def _load(target: str) -> Callable[..., Backend]:
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


def _entry_point_targets() -> dict[str, Any]:
    try:
        return {ep.name: ep for ep in entry_points(group="aigc.backends")}
    except Exception:  # pragma: no cover - broken metadata
        return {}


def available_backends() -> list[str]:
    """Names of every backend aigc can build."""
    return sorted(set(_BUILTIN) | set(_REGISTRY) | set(_entry_point_targets()))


def _factory(name: str) -> Callable[..., Backend]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTIN:
        return _load(_BUILTIN[name])
    eps = _entry_point_targets()
    if name in eps:
        return eps[name].load()
    if ":" in name:  # "package.module:Class": a plugin importable here (and on every worker), no registration needed
        return _plugin(name)
    raise ConfigError(
        f"unknown backend {name!r}; choose one of: {', '.join(available_backends())}"
    )


def _plugin(target: str) -> Callable[..., Backend]:
    try:
        found = _load(target)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"backend {target!r}: cannot import it ({err}); give module:Class of an importable "
                          "Backend subclass") from None
    if not (isinstance(found, type) and issubclass(found, Backend)):
        raise ConfigError(f"backend {target!r} is not a subclass of aigc.backends.Backend")
    return found


def create_backend(name: str, **options: Any) -> Backend:
    """Build a new backend instance from its name and options."""
    factory = _factory(name)
    from_options = getattr(factory, "from_options", None)
    return from_options(**options) if from_options else factory(**options)


def get_backend(name: str, **options: Any) -> Backend:
    """A shared backend instance for these options (a local model loads once per process)."""
    key = (name, tuple(sorted((k, repr(v)) for k, v in options.items())))
    with _LOCK:
        backend = _INSTANCES.get(key)
        if backend is None:
            backend = create_backend(name, **options)
            _INSTANCES[key] = backend
        return backend

"""Start a real OpenAI-compatible server (``transformers serve``) on loopback, for tests, benchmarks and docs."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from aigc.errors import BackendError, ConfigError, MissingDependencyError

HOST = "127.0.0.1"
_SERVE_PACKAGES = ("fastapi", "uvicorn", "openai", "pydantic")


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    # progress bars redraw with \r: keep the last state of each line
    tail = [line.rsplit("\r", 1)[-1] for line in text.splitlines()[-lines:]]
    return "\n".join(tail)


@dataclass
class ServerHandle:
    """A running ``transformers serve`` process. Send ``model_name`` as the ``model`` of each request."""

    process: subprocess.Popen
    port: int
    model_name: str
    log_path: Path
    startup_seconds: float = 0.0
    _log_file: object = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def is_running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        return _log_tail(self.log_path, lines)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.process.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _served_model(port: int) -> str | None:
    """The first model id ``GET /v1/models`` lists, or None while the server is not answering."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/v1/models", timeout=2) as resp:
            data = json.load(resp).get("data") or []
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return data[0].get("id", "") if data else ""


def start_transformers_serve(
    model_folder: Path,
    port: int | None = None,
    *,
    continuous_batching: bool = False,
    log_path: Path | None = None,
    startup_timeout: float = 180.0,
    env: Mapping[str, str] | None = None,
) -> ServerHandle:
    """Run ``transformers serve FOLDER`` on 127.0.0.1 (CPU, offline) and wait until ``/v1/models`` answers.

    The server is pinned to the folder: clients must send its absolute path (``handle.model_name``) as the model.
    Use it as a context manager so the process group is stopped on exit.
    """
    folder = Path(model_folder).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model_folder {folder} has no config.json; pass a transformers model folder")
    missing = [name for name in _SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(
            f"transformers serve needs {', '.join(missing)}; run: pip install 'aigc[serve]'"
        )
    port = port or free_port()
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="aigc-serve-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "transformers.cli.transformers", "serve", str(folder),
        "--host", HOST, "--port", str(port), "--device", "cpu",
    ]
    if continuous_batching:
        cmd.append("--continuous-batching")
    child_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        **(env or {}),
    }
    log_file = open(log_path, "ab")
    started = time.monotonic()
    process = subprocess.Popen(
        cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=child_env, start_new_session=True,
    )
    handle = ServerHandle(process, port, str(folder), log_path, _log_file=log_file)
    try:
        while True:
            served = _served_model(port)
            if served is not None:
                handle.model_name = served or str(folder)
                handle.startup_seconds = time.monotonic() - started
                return handle
            if process.poll() is not None:
                raise BackendError(
                    f"transformers serve exited with code {process.returncode} before answering on port {port};"
                    f" log {log_path}:\n{_log_tail(log_path)}"
                )
            if time.monotonic() - started > startup_timeout:
                raise BackendError(
                    f"transformers serve did not answer GET /v1/models on port {port} within {startup_timeout:.0f} s;"
                    f" log {log_path}:\n{_log_tail(log_path)}"
                )
            time.sleep(0.25)
    except BaseException:
        handle.stop()
        raise

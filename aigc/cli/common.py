"""What every ``aigc`` command shares: one-line errors, quiet tracebacks, ``--outline`` and backend option parsing."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, NoReturn

import click

from aigc.errors import AigcError, InputError

STYLE_HELP = "Style pack: a folder of templates/ (article, report, news, blog, or your own)."


def _fail(err: Exception) -> NoReturn:
    """End the command with the error's one line and exit code 1."""
    raise click.ClickException(str(err)) from None


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn an AigcError raised inside the block into the command's one-line error."""
    try:
        yield
    except AigcError as err:
        _fail(err)


@contextlib.contextmanager
def prefect_server_lost() -> Iterator[None]:
    """A Prefect server that went away while the flow ran: its one line, and exit 1 at once.

    What was written is kept (files only ever appear complete). The exit skips the interpreter's exit
    hooks: Prefect's events worker would otherwise try each event it could not send again, about 7 s
    each, and a 6-item batch whose server died took 4 more minutes to exit after its error line.
    """
    import httpx

    try:
        yield
    except httpx.TransportError as err:
        from aigc.credentials import redact

        url = os.environ.get("PREFECT_API_URL") or "a temporary server"
        cause = _aigc_cause(err)  # e.g. a distributing batch that gave up on the server, then could not report it
        line = (f"Error: {cause}" if cause else
                f"Error: lost the Prefect server ({url}): {type(err).__name__}: {err}; articles written so far are "
                "kept; run the same command again once the server is back")
        click.echo(redact(line), err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _aigc_cause(err: BaseException) -> AigcError | None:
    """The AigcError that ``err`` was raised while handling, if any."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, AigcError):
            return err
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return None


def read_outline(value: str | None) -> tuple[str, ...] | None:
    """--outline: a file (one title per line) or '-' for stdin; '1.'/'-' list marks are fine."""
    if value is None:
        return None
    if value == "-":
        text, source = sys.stdin.read(), "--outline (stdin)"
    else:
        path = Path(value)
        if not path.is_file():
            raise InputError(f"--outline {value}: no such file (give a file with one section title per line)")
        try:
            text, source = path.read_text("utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"--outline {value}: cannot read it as UTF-8 text ({err})") from None
    from aigc.outline_parse import given_outline

    return tuple(given_outline(text.splitlines(), source=source))


def parse_option_pairs(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``-o KEY=VALUE`` pairs; VALUE is read as JSON when it parses (true, 8, 0.5), else as text."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"-o {pair!r}: give KEY=VALUE, e.g. -o max_batch_size=8")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


def backend_options(model: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                    concurrency: int | None = None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Backend options from CLI flags (``-o`` pairs first, then the named flags); only those given are set."""
    from aigc.credentials import stash

    options = parse_option_pairs(extra)
    named = {"model": model, "base_url": base_url, "api_key_env": api_key_env, "concurrency": concurrency}
    options.update({k: v for k, v in named.items() if v})
    if isinstance(options.get("base_url"), str):  # user:password@ goes to the environment, never into a flow run
        options["base_url"] = stash(options["base_url"])
    return options


def check_local_model(spec, where: str) -> None:
    """A local model given as a folder must exist: said now, not after a Prefect run has started."""
    from aigc.backends.local.loading import is_path_like

    model = spec.backend_options.get("model")
    if spec.backend == "local" and isinstance(model, str) and is_path_like(model):
        if not Path(model).expanduser().is_dir():
            raise InputError(f"{where}: model {model}: no such folder; give a folder saved with save_pretrained(), "
                             "a cached hub id, or 'embedded'")


class _NoAigcTracebacks(logging.Filter):
    """Log an aigc error as its one line, without the traceback (Prefect logs failed runs with one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, AigcError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_tracebacks() -> None:
    """Install the filter on every handler of the root and Prefect loggers (after Prefect set them up)."""
    loggers = [logging.getLogger()] + [
        logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("prefect")
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, _NoAigcTracebacks) for f in handler.filters):
                handler.addFilter(_NoAigcTracebacks())

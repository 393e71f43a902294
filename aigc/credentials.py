"""Credentials in server URLs (``http://user:password@host/v1``): kept out of specs, logs, records and Prefect.

A URL's ``user:password`` part is moved into the environment variable :data:`AUTH_ENV` of this process
(:func:`stash`), so everything that is stored or logged (the article's inputs, Prefect flow parameters,
records, artifacts, HTTP log lines) holds the URL without it; the ``openai`` backend reads it back from
there (:func:`basic_auth`). A worker on another machine needs the same variable in its environment.
"""

from __future__ import annotations

import base64
import os
import re
from urllib.parse import unquote, urlsplit, urlunsplit

from aigc.errors import ConfigError

#: ``user:password`` for servers given without credentials in their URL (set by :func:`stash`, or by you).
AUTH_ENV = "AIGC_BASE_URL_AUTH"
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def split(url: str) -> tuple[str, str | None]:
    """``url`` without its ``user:password@`` part, and that part (None when there is none)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=host)), userinfo


def public_url(url: str) -> str:
    """``url`` without credentials: safe to log, record and store."""
    return split(url)[0]


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def stash(url: str) -> str:
    """Move the credentials of ``url`` into :data:`AUTH_ENV` and return the URL without them."""
    public, userinfo = split(url)
    if userinfo is None:
        return url
    held = os.environ.get(AUTH_ENV)
    if held and held != userinfo:
        raise ConfigError(f"base_url {public}: other credentials than those already in {AUTH_ENV}; "
                          "a run takes one user:password for its servers")
    os.environ[AUTH_ENV] = userinfo
    return public


def basic_auth(url: str) -> str | None:
    """The ``Authorization: Basic`` value for ``url``: its own credentials, else :data:`AUTH_ENV`'s (None: none)."""
    userinfo = split(url)[1] or os.environ.get(AUTH_ENV, "").strip() or None
    if userinfo is None:
        return None
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return f"Basic {token}"

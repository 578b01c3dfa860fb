"""Secrets kept out of what a run writes: values of secret-looking keys, URL passwords.

Every writer (the saved config, the environment report, the CLI) redacts through this
module, which needs nothing but the standard library.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "looks_secret", "redact_secrets", "redact_url"]

REDACTED = "***"
"""What :func:`redact_secrets` puts in place of a secret."""

# Markers that mean "secret" wherever they appear in a key, even run together with
# other words ("dbpassword", "openaiapikey").
_SECRET_KEY_MARKERS = ("password", "passwd", "secret", "apikey", "privatekey", "credentials")
# "token" only as a word of its own ("hf_token", "accessToken", "token"): as a substring
# it would hide ordinary settings such as "max_tokens" or "tokenizer".
_SECRET_KEY_WORDS = frozenset({"token"})
_KEY_WORD_BOUNDARY = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

# scheme://user:password@host - the password may itself contain '@' (greedy up to the
# last '@' before the path), never '/', '?', '#' or whitespace.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)[^/?#\s]+@")


def redact_secrets(data: Any) -> Any:
    """A deep copy of ``data`` with secrets replaced by ``"***"``.

    The value of every mapping key that looks secret (contains, case-insensitively and
    with ``-`` read as ``_``: password, passwd, secret, token, api_key, apikey,
    private_key, credentials) is replaced, whatever it holds; a ``None`` value stays
    ``None`` (there is nothing to hide, and it shows the secret was not set). In every
    string, the password of a URL ``scheme://user:password@host`` is replaced.
    Mappings come back as dicts, lists as lists, tuples as tuples.
    """
    if isinstance(data, Mapping):
        return {
            key: REDACTED if value is not None and looks_secret(key) else redact_secrets(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [redact_secrets(item) for item in data]
    if isinstance(data, tuple):
        return tuple(redact_secrets(item) for item in data)
    if isinstance(data, str):
        return redact_url(data)
    return copy.deepcopy(data)


def redact_url(text: str) -> str:
    """``text`` with the password of every URL ``scheme://user:password@host`` replaced."""
    return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", text)


def looks_secret(key: object) -> bool:
    """Whether the value of mapping key ``key`` is a secret (see :func:`redact_secrets`).

    Only strings can look secret; ``token`` counts only as a word of its own.
    """
    if not isinstance(key, str):
        return False
    words = [word.lower() for word in _KEY_WORD_BOUNDARY.split(key) if word]
    joined = "".join(words)
    return any(m in joined for m in _SECRET_KEY_MARKERS) or not _SECRET_KEY_WORDS.isdisjoint(words)

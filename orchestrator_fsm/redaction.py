"""Secrets kept out of what a run writes: values of secret-looking keys, URL passwords.

Every writer (the saved config, the environment report, the CLI) redacts through this
module, which needs nothing but the standard library.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "looks_secret", "redact_argv", "redact_secrets", "redact_url"]

REDACTED = "***"
"""What :func:`redact_secrets` puts in place of a secret."""

# Markers that mean "secret" wherever they appear in a key, even run together with
# other words ("dbpassword", "openaiapikey").
_SECRET_KEY_MARKERS = ("password", "passwd", "secret", "apikey", "privatekey", "credentials")
# A key whose last word is or ends in "token"/"tokens" ("hf_token", "accessToken",
# "authtoken", "tokens") holds tokens, unless a quantity comes first ("max_tokens",
# "num_tokens"): those count them. "tokenizer" or "token_limit" end in other words.
_TOKEN_ENDINGS = ("token", "tokens")
_QUANTITY_WORDS = frozenset({"max", "min", "num", "n", "total", "count"})
# "--set key=value" (or "--set=key=value") on a command line.
_SET_OPTIONS = ("--set",)
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
    kind = type(data)
    # The usual types first, by exact type (an ABC isinstance check costs more).
    if kind is str:
        return redact_url(data)
    if kind is dict or isinstance(data, Mapping):
        return {
            key: REDACTED if value is not None and looks_secret(key) else redact_secrets(value)
            for key, value in data.items()
        }
    if data is None or kind is int or kind is float or kind is bool:
        return data
    if isinstance(data, list):
        return [redact_secrets(item) for item in data]
    if isinstance(data, tuple):
        return tuple(redact_secrets(item) for item in data)
    if isinstance(data, str):  # a subclass of str (the exact type returned above)
        return redact_url(data)
    if isinstance(data, (int, float)):  # a subclass (an IntEnum): immutable, nothing to copy
        return data
    return copy.deepcopy(data)


def redact_url(text: str) -> str:
    """``text`` with the password of every URL ``scheme://user:password@host`` replaced."""
    if "://" not in text:  # no URL, nothing to replace (and no pattern to run)
        return text
    return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", text)


def looks_secret(key: object) -> bool:
    """Whether the value of mapping key ``key`` is a secret (see :func:`redact_secrets`).

    Only strings can look secret. Tokens are recognised by the key's last word
    (``tokens``, ``auth_token``, ``authtoken``, ``accessToken``), except after a
    quantity word (``max_tokens``, ``num_tokens`` count tokens; they hold none).
    """
    if not isinstance(key, str):
        return False
    return _looks_secret(key)


@functools.lru_cache(maxsize=4096)
def _looks_secret(key: str) -> bool:
    # A config has a few hundred keys at most and they recur run after run.
    words = [word.lower() for word in _KEY_WORD_BOUNDARY.split(key) if word]
    if not words:
        return False
    if any(marker in "".join(words) for marker in _SECRET_KEY_MARKERS):
        return True
    return words[-1].endswith(_TOKEN_ENDINGS) and _QUANTITY_WORDS.isdisjoint(words[:-1])


def _redact_assignment(text: str) -> str:
    key, sep, value = text.partition("=")
    if sep and value and looks_secret(key.rsplit(".", 1)[-1]):
        return f"{key}={REDACTED}"
    return redact_url(text)


def redact_argv(argv: list[str] | tuple[str, ...]) -> list[str]:
    """A command line with the values of secret ``--set key=value`` overrides and the
    passwords of URLs replaced by ``"***"`` (``--set=key=value`` too)."""
    redacted: list[str] = []
    after_set = False
    for arg in argv:
        if after_set:
            redacted.append(_redact_assignment(arg))
        elif any(arg.startswith(f"{option}=") for option in _SET_OPTIONS):
            option, _, assignment = arg.partition("=")
            redacted.append(f"{option}={_redact_assignment(assignment)}")
        else:
            redacted.append(redact_url(arg))
        after_set = arg in _SET_OPTIONS
    return redacted

"""Redaction on its own: URL passwords, secret-looking keys, and no heavy imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from orchestrator_fsm import redaction
from orchestrator_fsm.redaction import (
    REDACTED,
    looks_secret,
    redact_argv,
    redact_secrets,
    redact_url,
)


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("https://user:tok3n@github.com/o/r.git", "https://user:***@github.com/o/r.git"),
        ("mysql+pymysql://u:p@ss@h/db", "mysql+pymysql://u:***@h/db"),
        ("https://user@host/path", "https://user@host/path"),
        ("no url here", "no url here"),
    ],
)
def test_redact_url_hides_only_the_password(text: str, redacted: str) -> None:
    assert redact_url(text) == redacted


@pytest.mark.parametrize("key", ["password", "dbPassword", "HF_TOKEN", "openai-api-key"])
def test_secret_looking_keys_look_secret(key: str) -> None:
    assert looks_secret(key)


@pytest.mark.parametrize("key", ["max_tokens", "tokenizer", "name", 3, None])
def test_ordinary_and_non_string_keys_do_not_look_secret(key: object) -> None:
    assert not looks_secret(key)


def test_redact_secrets_uses_the_same_marker_as_redact_url() -> None:
    assert redact_secrets({"token": "t", "url": "a://u:p@h"}) == {
        "token": REDACTED,
        "url": f"a://u:{REDACTED}@h",
    }


def test_redaction_module_needs_neither_config_nor_torch() -> None:
    # Loaded by path, apart from the package (whose root imports everything).
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("redaction", {redaction.__file__!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.redact_secrets({{"password": "x"}}) == {{"password": "***"}}
        heavy = sorted(m for m in sys.modules if m.startswith(("torch", "orchestrator_fsm")))
        print(heavy)
        """
    )

    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "key", ["tokens", "authtoken", "auth_token", "AUTH_TOKENS", "hfToken", "api_tokens"]
)
def test_plural_and_joined_token_keys_are_secret(key: str) -> None:
    assert looks_secret(key)


@pytest.mark.parametrize("key", ["max_tokens", "num_tokens", "token_limit", "tokenizer"])
def test_keys_that_count_or_configure_tokens_are_not_secret(key: str) -> None:
    assert not looks_secret(key)


def test_redact_argv_hides_secret_overrides_and_url_passwords() -> None:
    argv = [
        "orchestrator-fsm", "run", "r.yaml",
        "--set", "tracking.api_key=sk-live-1",
        "--set=db.password=hunter2",
        "--set", "training.epochs=3",
        "--set", "dataset.url=https://me:pw@example.org/d",
    ]  # fmt: skip
    assert redact_argv(argv) == [
        "orchestrator-fsm", "run", "r.yaml",
        "--set", f"tracking.api_key={REDACTED}",
        f"--set=db.password={REDACTED}",
        "--set", "training.epochs=3",
        "--set", f"dataset.url=https://me:{REDACTED}@example.org/d",
    ]  # fmt: skip

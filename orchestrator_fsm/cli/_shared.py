"""What every sub-command shares: the exit codes, plain printing, loading the recipe."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from orchestrator_fsm.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from orchestrator_fsm.config import Config

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "config_or_exit_code",
    "hash_seed_env",
    "print_config_error",
    "recipe_label",
    "say",
    "split_bare_overrides",
]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
_HASH_SEED_ENV: Final = "PYTHONHASHSEED"


def say(console: Console, text: str | Text, style: str | None = None) -> None:
    """Print without markup, highlighting or wrapping: paths and messages stay intact."""
    from rich.text import Text

    console.print(
        text if isinstance(text, Text) else Text(text, style=style or ""),
        soft_wrap=True,
        highlight=False,
    )


def print_config_error(err: Console, exc: ConfigError, fallback_source: str | None) -> None:
    """Every problem of ``exc``, one line each, prefixed with the file it is in."""
    source = exc.source or fallback_source or "<in-memory config>"
    if not exc.problems:
        say(err, f"error: invalid config in {source}: {exc}", "red")
        return
    count = len(exc.problems)
    # A value an override gave is the command line's, not the file's.
    from_file = [path for path, _ in exc.problems if path not in exc.overridden]
    where = source if from_file else "the command line"
    if from_file and exc.overridden:
        where = f"{source} and the command line"
    say(err, f"error: invalid config in {where} ({count} problem{'s' * (count != 1)}):", "red")
    for path, message in exc.problems:
        if path in exc.overridden:
            say(err, f"  command line: {path}: {message}")
        else:
            say(err, f"  {source}: {path}: {message}" if path else f"  {source}: {message}")


def _load_config(
    recipe: str | None, overrides: Sequence[str], schema: Mapping[str, type] | None
) -> Config:
    from orchestrator_fsm.config import Config

    if recipe is not None:
        return Config.from_recipe(Path(recipe), overrides=overrides, schema=schema)
    from orchestrator_fsm.demo import demo_recipe

    with demo_recipe() as path:
        return Config.from_recipe(path, overrides=overrides, schema=schema)


def hash_seed_env(cfg: Config) -> dict[str, str]:
    """What ``run`` adds to this environment to run ``cfg``: ``PYTHONHASHSEED`` set to
    the recipe's seed for a reproducible recipe when the variable is unset; else none."""
    if _HASH_SEED_ENV in os.environ or not cfg.hardware.reproducible:
        return {}
    return {_HASH_SEED_ENV: str(cfg.training.seed)}


def split_bare_overrides(args: argparse.Namespace) -> None:
    """Move bare ``key=value`` arguments (``args.bare``) into ``args.overrides``, after
    the ``--set`` ones; a ``RECIPE`` argument that is one (``run training.seed=1``,
    with no such file) is an override of the bundled recipe."""
    bare = list(getattr(args, "bare", None) or [])
    recipe = getattr(args, "recipe", None)
    if recipe is not None and "=" in recipe and not Path(recipe).exists():
        bare.insert(0, recipe)
        args.recipe = None
    args.bare = bare
    args.overrides = [*args.overrides, *bare]


def recipe_label(recipe: str | None) -> str:
    """How messages name the ``RECIPE`` argument (absent: the bundled demo recipe)."""
    return recipe if recipe is not None else "the bundled demo recipe"


def config_or_exit_code(
    args: argparse.Namespace, err: Console, schema: Mapping[str, type] | None = None
) -> Config | int:
    """The config of ``args.recipe`` with ``args.overrides`` (and the pipeline's
    ``schema``); or, once the problem is printed, the exit code for a recipe that is
    invalid or cannot be read."""
    try:
        return _load_config(args.recipe, args.overrides, schema)
    except ConfigError as exc:
        print_config_error(err, exc, args.recipe)
        return EXIT_USAGE
    except OSError as exc:
        say(err, f"error: cannot read the recipe {recipe_label(args.recipe)}: {exc}", "red")
        return EXIT_USAGE

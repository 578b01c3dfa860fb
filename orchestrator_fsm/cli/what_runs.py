"""What ``run`` and a sweep's members run: the entry a command line and a recipe choose
(a script, a callable, or the bundled demo only when asked), and the config read
before that entry's schema is known."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator_fsm._specs import is_script_spec
from orchestrator_fsm.cli._shared import EXIT_USAGE, config_or_exit_code, print_config_error
from orchestrator_fsm.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator_fsm.config import Config

__all__ = ["chosen_entry", "config_without_schema", "script_recipe"]


def config_without_schema(args: argparse.Namespace, err: Console) -> Config | int:
    """The recipe's config, before the entry's schema is known (the recipe may name the
    entry); a script without a recipe runs on a recipe of defaults
    (:func:`script_recipe`). The exit code once a problem is printed."""
    if args.recipe is not None or args.script is None:
        return config_or_exit_code(args, err)
    from orchestrator_fsm.config import Config

    try:
        return Config.from_dict(script_recipe(args.script), overrides=args.overrides)
    except ConfigError as exc:
        print_config_error(err, exc, None)
        return EXIT_USAGE


def script_recipe(script: str) -> dict[str, object]:
    """The recipe ``run --script SCRIPT`` runs on when given none: the required keys
    named after the script, seed 0, and every other setting its default."""
    from orchestrator_fsm._fs import slugify

    name = slugify(Path(script).stem, fallback="script")
    return {
        "dataset": {"name": name},
        "architecture": {"name": name},
        "training": {"seed": 0},
        "hardware": {"project_name": name},
    }


def chosen_entry(args: argparse.Namespace, cfg: Config) -> tuple[str, list[str] | None] | str:
    """What runs: ``(spec, None)`` for a callable, ``(path, arguments)`` for a script;
    or the one-line reason nothing can.

    ``--script`` or ``--entry`` first, then the recipe's ``entry`` (a relative file is
    the recipe's folder's); the bundled demo pipeline only on the bundled recipe. A
    recipe that names no entry is refused rather than trained by the demo."""
    from orchestrator_fsm.demo import DEMO_ENTRY

    given = args.script_args
    if args.script is not None and args.entry is not None:
        return "give --script or --entry, not both"
    if args.script is not None:
        return args.script, list(given or ())
    if args.entry is not None:
        spec = args.entry
    elif cfg.entry is not None:
        spec = _beside_recipe(cfg.entry, cfg.source)
    elif args.recipe is None:
        spec = DEMO_ENTRY
    else:
        return (
            f"{args.recipe} names no entry: add `entry: path/to/train.py` (a script) or "
            "`entry: module:function` to it, or give --script or --entry "
            f"(--entry {DEMO_ENTRY} trains the bundled demo on it)"
        )
    if is_script_spec(spec):
        return spec, list(given or ())
    if given is not None:
        return f"the arguments after `--` are a script's, and {spec!r} is a function"
    return spec, None


def _beside_recipe(spec: str, recipe: Path | None) -> str:
    """``spec`` as the recipe at ``recipe`` means it: a relative file path (a script, or
    ``file.py:function``) is in the recipe's folder."""
    file_part = spec if is_script_spec(spec) else spec.rpartition(":")[0]
    is_file = file_part.endswith(".py") or "/" in file_part
    if recipe is None or not is_file or Path(file_part).expanduser().is_absolute():
        return spec
    where = os.path.relpath(recipe.parent / file_part)
    return where if is_script_spec(spec) else f"{where}:{spec.rpartition(':')[2]}"

"""Reading a run's rerun bundle, ``reports/rerun.json``.

The bundle is written by phase 5 (:mod:`orchestrator_fsm.phases.bundle`, which lists
its sections); :func:`read_bundle` reads it back for ``rerun`` and ``diff`` (the latest
attempt's, or a named attempt's kept in ``reports/attempts/<n>/``), and
:func:`saved_config` finds the config it names.
:func:`working_directory` runs a block in the directory a run was started from.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from orchestrator_fsm.layout import BUNDLE_FILE, attempt_reports, bundle_file, config_file
from orchestrator_fsm.phases.bundle import BUNDLE_FORMAT, bundle_attempt

__all__ = [
    "BundleError",
    "read_bundle",
    "saved_config",
    "working_directory",
]


class BundleError(ValueError):
    """A run directory without a readable rerun bundle; the message names the file."""


def read_bundle(run_dir: Path | str, attempt: int | None = None) -> dict[str, Any]:
    """The bundle of the run in ``run_dir``: its latest attempt's (``reports/rerun.json``),
    or attempt ``attempt``'s (that one, when it is the latest attempt's; else the copy a
    later attempt kept in ``reports/attempts/<n>/``). :class:`BundleError` naming the
    file when there is none or it is not a bundle."""
    latest = _read(Path(run_dir), bundle_file(Path(run_dir)))
    if attempt is None or bundle_attempt(latest) == attempt:
        return latest
    target = attempt_reports(Path(run_dir), attempt) / BUNDLE_FILE
    if not target.is_file():
        raise BundleError(
            f"{target} does not exist: {run_dir} kept no bundle of attempt {attempt} (its "
            f"latest bundle is attempt {bundle_attempt(latest)}'s; `inspect` lists its attempts)"
        )
    return _read(Path(run_dir), target)


def _read(run_dir: Path, target: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise BundleError(f"{run_dir} is not a directory")
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(
            f"{target} does not exist: {run_dir} is not a run directory, or its run was "
            f"made before rerun bundles were written"
        ) from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {target}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{target} is not a rerun bundle of format {BUNDLE_FORMAT}")
    return data


def saved_config(run_dir: Path, bundle: Mapping[str, Any]) -> Path:
    """The saved config ``bundle`` (of the run in ``run_dir``) names: its ``config.file``
    inside the run directory, else ``reports/config.yaml``."""
    config = bundle.get("config")
    named = config.get("file") if isinstance(config, Mapping) else None
    inside = isinstance(named, str) and named and not os.path.isabs(named)
    if inside and isinstance(named, str) and ".." not in Path(named).parts:
        return Path(run_dir) / named
    return config_file(Path(run_dir))


@contextlib.contextmanager
def working_directory(path: str | None) -> Iterator[None]:
    """Within the block, the working directory is ``path`` (when it exists)."""
    if path is None or not os.path.isdir(path):
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)

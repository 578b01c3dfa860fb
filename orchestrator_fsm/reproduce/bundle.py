"""Reading a run's rerun bundle, ``reports/rerun.json``.

The bundle is written by phase 5 (:mod:`orchestrator_fsm.phases.bundle`, which lists
its sections); :func:`read_bundle` reads it back for ``rerun`` and ``diff``.
:func:`working_directory` runs a block in the directory a run was started from.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator_fsm.layout import bundle_file
from orchestrator_fsm.phases.bundle import BUNDLE_FORMAT

__all__ = [
    "BundleError",
    "read_bundle",
    "working_directory",
]


class BundleError(ValueError):
    """A run directory without a readable rerun bundle; the message names the file."""


def read_bundle(run_dir: Path | str) -> dict[str, Any]:
    """The bundle of the run in ``run_dir``; :class:`BundleError` naming the file when
    there is none or it is not a bundle."""
    target = bundle_file(Path(run_dir))
    if not Path(run_dir).is_dir():
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

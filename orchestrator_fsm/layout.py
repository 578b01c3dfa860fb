"""Every name in a run directory and in the output directory: the one owner.

A run directory is ``<output_dir>/<run_id>``. Writers (the phases, the recorder) and
readers (``inspect``, ``runs``, ``rerun``, ``diff``, sweeps, observers) ask this
module for a path rather than spelling a file name, so a name changes in one place.
:func:`output_root` is the one normalisation of ``telemetry.output_dir`` (``~`` and
``$VARS`` expanded, made absolute): the run directory, the lock identity, the job
index, ``runs`` and sweeps all go through it, so they agree on where runs are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = [
    "BUNDLE_FILE",
    "CHECKPOINTS_DIR",
    "CONFIG_FILE",
    "GIT_INFO_FILE",
    "JOB_INDEX_DIR",
    "JOURNAL_FILE",
    "LOGS_DIR",
    "LOG_FILE",
    "METRICS_FILE",
    "RANKS_DIR",
    "REPORTS_DIR",
    "REPORT_FILE",
    "REQUIREMENTS_FILE",
    "RESERVE_FILE",
    "RUN_FILE",
    "RUN_SUBDIRECTORIES",
    "STDOUT_LOG",
    "SWEEPS_DIR",
    "SWEEP_FILE",
    "bundle_file",
    "config_file",
    "expand_output_dir",
    "git_info_file",
    "job_entry_file",
    "metrics_file",
    "output_root",
    "rank_file",
    "sweep_dir",
]

# In the run directory itself.
#: The run's record, rewritten atomically as the run goes (rank 0).
RUN_FILE: Final = "run.json"
#: One JSON line per lifecycle transition, appended (rank 0).
JOURNAL_FILE: Final = "lifecycle.jsonl"
#: Rank 0's metrics log; rank N writes ``metrics.rank<N>.jsonl``.
METRICS_FILE: Final = "metrics.jsonl"
#: The folder where each rank other than 0 keeps its record.
RANKS_DIR: Final = "ranks"
#: Space held back so that the last word of a run fits on a full disk.
RESERVE_FILE: Final = ".run.json.reserve"

#: The sub-folders every run directory gets, in creation order.
RUN_SUBDIRECTORIES: Final = ("logs", "reports", "checkpoints", "figures", "exports", "database")
LOGS_DIR: Final = "logs"
REPORTS_DIR: Final = "reports"
CHECKPOINTS_DIR: Final = "checkpoints"

# In logs/.
#: The run's log file (every rank's records, rank-marked).
LOG_FILE: Final = "run.log"
#: What the process wrote to its stdout/stderr while the run was live.
STDOUT_LOG: Final = "stdout.log"

# In reports/.
#: The resolved, redacted config the run ran with.
CONFIG_FILE: Final = "config.yaml"
#: The git state of the code the run ran (commit, branch, dirty files, diff).
GIT_INFO_FILE: Final = "git_info.txt"
#: The installed distributions, pip-freeze style.
REQUIREMENTS_FILE: Final = "requirements.txt"
#: The environment report of phase 7.
REPORT_FILE: Final = "environment.json"
#: What ``rerun`` needs to run the run again and to say what drifted.
BUNDLE_FILE: Final = "rerun.json"

# In the output directory.
#: The folder that holds one entry per distributed job (rank 0's word to the others).
JOB_INDEX_DIR: Final = ".jobs"
#: The folder that holds the sweeps' records, one folder per sweep.
SWEEPS_DIR: Final = "sweeps"
#: A sweep's record in its folder.
SWEEP_FILE: Final = "sweep.json"


def expand_output_dir(output_dir: Path | str) -> Path:
    """``telemetry.output_dir`` with ``~`` and ``$VARS`` expanded, still relative when
    it was: the same folder as :func:`output_root`, spelled for showing to a user."""
    return Path(os.path.expandvars(os.path.expanduser(os.fspath(output_dir))))


def output_root(output_dir: Path | str) -> Path:
    """``telemetry.output_dir`` as every reader and writer uses it: ``~`` and
    ``$VARS`` expanded, made absolute (against the working directory) and normalised
    (``..`` folded). Symlinks are kept as written."""
    return Path(os.path.abspath(expand_output_dir(output_dir)))


def metrics_file(root: Path, rank: int) -> Path:
    """Where rank ``rank`` appends its metrics in the run directory ``root``."""
    return root / (METRICS_FILE if rank == 0 else f"metrics.rank{rank}.jsonl")


def rank_file(root: Path, rank: int) -> Path:
    """Where rank ``rank`` (> 0) keeps its own record in the run directory ``root``."""
    return root / RANKS_DIR / f"rank{rank}.json"


def config_file(root: Path) -> Path:
    """The saved resolved config of the run in ``root``."""
    return Path(root) / REPORTS_DIR / CONFIG_FILE


def bundle_file(root: Path) -> Path:
    """The rerun bundle of the run in ``root``."""
    return Path(root) / REPORTS_DIR / BUNDLE_FILE


def git_info_file(root: Path) -> Path:
    """The git state file of the run in ``root``."""
    return Path(root) / REPORTS_DIR / GIT_INFO_FILE


def job_entry_file(output_dir: Path | str, key: str) -> Path:
    """Where the entry of job ``key`` lives in the output directory ``output_dir``."""
    return output_root(output_dir) / JOB_INDEX_DIR / f"{key}.json"


def sweep_dir(output_dir: Path | str, sweep_id: str) -> Path:
    """Where the record of sweep ``sweep_id`` is kept in ``output_dir``."""
    return output_root(output_dir) / SWEEPS_DIR / sweep_id

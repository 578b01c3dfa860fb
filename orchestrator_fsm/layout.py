"""Every name in a run directory and in the output directory: the one owner.

A run directory is ``<output_dir>/<run_id>``. Writers (the phases, the recorder) and
readers (``inspect``, ``runs``, ``rerun``, ``diff``, sweeps, observers) ask this
module for a path rather than spelling a file name, so a name changes in one place.
:func:`output_root` is the one normalisation of ``telemetry.output_dir`` (``~`` and
``$VARS`` expanded, made absolute): the run directory, the lock identity, the job
index, ``runs`` and sweeps all go through it, so they agree on where runs are.
:class:`RunPaths` is the layout of one run directory, and how a fresh one is named
and claimed.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Final

import attrs

from orchestrator_fsm._fs import slugify
from orchestrator_fsm.redaction import redact_url

__all__ = [
    "ATTEMPTS_DIR",
    "BUNDLE_FILE",
    "CHECKPOINTS_DIR",
    "CHECKPOINT_SUFFIX",
    "CONFIG_FILE",
    "GIT_DIFF_FILE",
    "GIT_INFO_FILE",
    "JOB_INDEX_DIR",
    "JOURNAL_FILE",
    "LOGS_DIR",
    "LOG_FILE",
    "METRICS_FILE",
    "PAGE_FILE",
    "RANKS_DIR",
    "REPORTS_DIR",
    "REPORT_FILE",
    "REQUIREMENTS_FILE",
    "RERUNS_FILE",
    "RESERVE_FILE",
    "RUN_FILE",
    "RUN_SUBDIRECTORIES",
    "STDOUT_LOG",
    "SWEEPS_DIR",
    "SWEEP_FILE",
    "RunPaths",
    "attempt_reports",
    "bundle_file",
    "checkpoint_file",
    "checkpoint_name_step",
    "config_file",
    "expand_output_dir",
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
#: One JSON line per rerun of the run (appended by ``orchestrator-fsm rerun``).
RERUNS_FILE: Final = "reruns.jsonl"
#: The self-contained HTML page ``orchestrator-fsm report`` writes (in a run directory,
#: or in the output directory or sweep folder it compares the runs of).
PAGE_FILE: Final = "report.html"
#: The folder where each rank other than 0 keeps its record.
RANKS_DIR: Final = "ranks"
#: Space held back so that the last word of a run fits on a full disk.
RESERVE_FILE: Final = ".run.json.reserve"

#: The sub-folders every run directory gets, in creation order.
RUN_SUBDIRECTORIES: Final = ("logs", "reports", "checkpoints", "figures", "exports", "database")
LOGS_DIR: Final = "logs"
REPORTS_DIR: Final = "reports"
CHECKPOINTS_DIR: Final = "checkpoints"

# In checkpoints/ (see orchestrator_fsm.checkpoints; other files there are the user's).
#: A checkpoint's file name ends so: ``ckpt-<step>.pt`` for the run's (rank 0's),
#: ``ckpt-<step>.rank<N>.pt`` for rank N's own (per-rank checkpoints).
CHECKPOINT_SUFFIX: Final = ".pt"
_CHECKPOINT_PREFIX: Final = "ckpt-"
# Zero-padded so that `ls` lists them in step order (larger steps just grow longer).
_CHECKPOINT_STEP_DIGITS: Final = 9
_CHECKPOINT_NAME: Final = re.compile(r"ckpt-(\d+)(?:\.rank(\d+))?\.pt")

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
#: ``git diff HEAD`` of the checkout (capped), when it had changes.
GIT_DIFF_FILE: Final = "git_diff.patch"
#: The installed distributions, pip-freeze style.
REQUIREMENTS_FILE: Final = "requirements.txt"
#: The environment report of phase 7.
REPORT_FILE: Final = "environment.json"
#: What ``rerun`` needs to run the run again and to say what drifted.
BUNDLE_FILE: Final = "rerun.json"
#: The folder holding a copy of the entry's file (the script, or the file of its
#: function) as it ran: ``rerun`` runs it where there is no git checkout to rebuild.
ENTRY_COPY_DIR: Final = "entry"
#: The folder that keeps an earlier attempt's ``config.yaml`` and ``rerun.json`` once a
#: later attempt of the run wrote its own (``reports/attempts/<n>/``).
ATTEMPTS_DIR: Final = "attempts"

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


def entry_copy(root: Path, name: str) -> Path:
    """Where the run in ``root`` keeps the copy of its entry file named ``name``."""
    return Path(root) / REPORTS_DIR / ENTRY_COPY_DIR / Path(name).name


def bundle_file(root: Path) -> Path:
    """The rerun bundle of the run in ``root``."""
    return Path(root) / REPORTS_DIR / BUNDLE_FILE


def attempt_reports(root: Path, attempt: int) -> Path:
    """Where the run in ``root`` keeps attempt ``attempt``'s config and rerun bundle
    (``CONFIG_FILE``, ``BUNDLE_FILE``) once a later attempt wrote its own:
    ``reports/attempts/<attempt>/``. The latest attempt's are in ``reports/``."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    return Path(root) / REPORTS_DIR / ATTEMPTS_DIR / str(attempt)


def checkpoint_file(folder: Path, step: int, rank: int | None = None) -> Path:
    """The checkpoint of ``step`` in ``folder`` (a run's ``checkpoints/``): the run's
    when ``rank`` is None, rank ``rank``'s own otherwise."""
    if step < 0:
        raise ValueError(f"a checkpoint's step must be 0 or more, got {step}")
    own = "" if rank is None else f".rank{rank}"
    name = f"{_CHECKPOINT_PREFIX}{step:0{_CHECKPOINT_STEP_DIGITS}d}{own}{CHECKPOINT_SUFFIX}"
    return Path(folder) / name


def checkpoint_name_step(name: str) -> tuple[int, int | None] | None:
    """``(step, rank)`` of a file named by :func:`checkpoint_file` (rank None: the
    run's); None for any other name."""
    found = _CHECKPOINT_NAME.fullmatch(name)
    if found is None:
        return None
    return int(found.group(1)), None if found.group(2) is None else int(found.group(2))


def job_entry_file(output_dir: Path | str, key: str) -> Path:
    """Where the entry of job ``key`` lives in the output directory ``output_dir``."""
    return output_root(output_dir) / JOB_INDEX_DIR / f"{key}.json"


def sweep_dir(output_dir: Path | str, sweep_id: str) -> Path:
    """Where the record of sweep ``sweep_id`` is kept in ``output_dir``."""
    return output_root(output_dir) / SWEEPS_DIR / sweep_id


# -- one run directory: its name and its layout ----------------------------------------

# A name slug longer than this would make directory names unwieldy (and, with two of
# them, could approach the 255-byte limit of common file systems).
_NAME_SLUG_MAX: Final = 40
_HASH_CHARS: Final = 6
_SUFFIX_BYTES: Final = 2
# Each attempt collides with probability (runs started in the same second) / 65536;
# 32 consecutive collisions mean something other than chance is going on.
_MAX_CREATE_ATTEMPTS: Final = 32
_HEX_DIGITS: Final = frozenset("0123456789abcdef")


def _random_suffix() -> str:
    """Four hex digits from the OS's CSPRNG; never touches the user's seeded generators."""
    return secrets.token_hex(_SUFFIX_BYTES)


def _utc_timestamp(now: datetime | None) -> str:
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    else:
        now = now.astimezone(timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S")


def _hash_prefix(config_hash: str) -> str:
    prefix = str(config_hash).strip().lower()[:_HASH_CHARS]
    if len(prefix) < _HASH_CHARS or not set(prefix) <= _HEX_DIGITS:
        raise ValueError(
            f"config_hash must start with at least {_HASH_CHARS} hexadecimal digits, "
            f"got {config_hash!r}"
        )
    return prefix


def _ensure_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR,
            "the output directory for runs exists but is not a directory",
            str(output_dir),
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise type(exc)(
            exc.errno,
            f"cannot create the output directory for runs ({exc.strerror})",
            str(output_dir),
        ) from exc


def _claim_run_directory(output_dir: Path, prefix: str) -> Path:
    """Create ``output_dir/<prefix>-<rand4>`` exclusively and return it."""
    tried: list[str] = []
    for _ in range(_MAX_CREATE_ATTEMPTS):
        candidate = output_dir / f"{prefix}-{_random_suffix()}"
        try:
            os.mkdir(candidate)
        except FileExistsError:
            # Someone else (another launch this same second) owns this name: draw again.
            tried.append(candidate.name)
            continue
        except OSError as exc:
            raise type(exc)(
                exc.errno,
                f"cannot create a run directory in the output directory {output_dir} "
                f"({exc.strerror})",
                str(candidate),
            ) from exc
        return candidate
    raise FileExistsError(
        errno.EEXIST,
        f"could not claim a fresh run directory in {output_dir} after "
        f"{_MAX_CREATE_ATTEMPTS} attempts: every random suffix was taken "
        f"(last tried: {', '.join(tried[-3:])})",
        str(output_dir),
    )


@attrs.frozen
class RunPaths:
    """The directory layout of one run.

    ``root`` is ``<output_dir>/<run_id>``; the other paths are its sub-folders. Make a
    new run with :meth:`create`, or describe an existing one with :meth:`from_root`.
    """

    run_id: str
    root: Path
    logs: Path
    reports: Path
    checkpoints: Path
    figures: Path
    exports: Path
    database: Path

    @classmethod
    def from_root(cls, root: Path | str) -> RunPaths:
        """The layout of the existing run directory ``root`` (its name is the run id).

        Raises ``FileNotFoundError`` (or ``NotADirectoryError``) naming ``root`` when it
        is not an existing directory. Sub-folders are not checked: a run that failed
        early may lack some of them.
        """
        root = Path(root).absolute()
        if not root.exists():
            raise FileNotFoundError(errno.ENOENT, "the run directory does not exist", str(root))
        if not root.is_dir():
            raise NotADirectoryError(
                errno.ENOTDIR, "the run directory path is not a directory", str(root)
            )
        return cls._layout(root)

    @classmethod
    def create(
        cls,
        output_dir: Path | str,
        dataset: str,
        architecture: str,
        config_hash: str,
        *,
        now: datetime | None = None,
        on_claimed: Callable[[RunPaths], None] | None = None,
    ) -> RunPaths:
        """Create a fresh run directory with all its sub-folders and return its layout.

        ``output_dir`` is created (with parents) when missing. The run id is
        ``YYYYMMDD-HHMMSS-<dataset>-<architecture>-<hash6>-<rand4>``: the UTC time
        (``now``, default the current time; a naive ``now`` is taken as UTC), the two
        names (any URL password dropped) reduced to ``[a-z0-9_-]``, the first six hex
        digits of ``config_hash`` and four random hex digits. When the name is taken,
        another suffix is drawn; after 32 taken names ``FileExistsError`` is raised.
        Cost does not depend on how many runs ``output_dir`` already holds.

        ``on_claimed`` is called with the layout as soon as the directory is claimed,
        before the sub-folders are made: whatever stops the run from then on, the
        caller knows the directory exists (and can record the run in it).

        Raises ``ValueError`` when ``config_hash`` does not start with six hex digits,
        and an ``OSError`` naming the path when ``output_dir`` is a file or is not
        writable.
        """
        output_dir = output_root(output_dir)
        prefix = "-".join(
            (
                _utc_timestamp(now),
                slugify(redact_url(dataset), max_length=_NAME_SLUG_MAX, fallback="dataset"),
                slugify(redact_url(architecture), max_length=_NAME_SLUG_MAX, fallback="model"),
                _hash_prefix(config_hash),
            )
        )
        _ensure_output_dir(output_dir)
        root = _claim_run_directory(output_dir, prefix)
        paths = cls._layout(root)
        if on_claimed is not None:
            on_claimed(paths)
        for name in RUN_SUBDIRECTORIES:
            os.mkdir(root / name)
        return paths

    @classmethod
    def _layout(cls, root: Path) -> RunPaths:
        return cls(
            run_id=root.name,
            root=root,
            **{name: root / name for name in RUN_SUBDIRECTORIES},
        )

    def get_config_path(self) -> Path:
        """Where the run's resolved config is saved: ``reports/config.yaml``."""
        return self.reports / CONFIG_FILE

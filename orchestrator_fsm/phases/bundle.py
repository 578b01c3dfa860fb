"""The rerun bundle: ``reports/rerun.json``, everything needed to run a run again.

Written by rank 0 in the manifest step (phase 5) from what that step recorded (the
redacted config, the requirement lines, the git state: data, not files read back), and
completed at cleanup with the native libraries the process then had mapped (CUDA,
cuDNN and NCCL load lazily, at first use, so only a late look sees them). It names
the run's attempt that wrote it (``attempt``); a later attempt of the run (a resume, a
restart) first keeps the earlier one's bundle and config in ``reports/attempts/<n>/``
(:func:`keep_earlier_attempt`), then writes its own here. Sections:

- ``command``: the command line (secrets redacted), the working directory, the
  interpreter;
- ``recipe``: the recipe file and its SHA-256 when it was read; ``config``: the saved
  resolved config (``config.yaml``) and the dotted keys whose values are redacted
  there; ``overrides``: the overrides as given, in order (secret values as ``***``);
- ``entry``: the pipeline as given (``module:function`` or ``file.py:function``), the
  file it lives in and that file's SHA-256 (``None`` in library use, where the caller
  runs its own code);
- ``seeds``: the seed tree (:meth:`SeedTree.as_dict`, without the seeds handed out);
- ``git``: commit, branch, dirty flag, the diff's size and SHA-256 and whether it was
  truncated in ``git_diff.patch`` (:meth:`GitState.bundle_record`);
- ``packages``: ``{name: version}`` of the installed distributions;
- ``environment``: :func:`~orchestrator_fsm.environment.collect_environment`;
- ``launch``: how the job was launched (:func:`launch_section`): the launcher, the
  world size, the processes per node, the number of nodes, torchrun's restart limit
  and, inside a SLURM job, the job's own variables; what ``rerun`` relaunches (or
  refuses to) from;
- ``loaded_libraries``: the native libraries mapped into the process at cleanup
  (path and soname from ``/proc/self/maps``; ``None`` where there is no such file).
  Library files are never hashed: the path and the version-bearing soname say which
  build was loaded at a cost of about a millisecond.

:func:`snapshot` is "what would run now" (config, recipe, overrides, entry, seeds, git,
packages, environment): the bundle writes it, ``orchestrator-fsm rerun`` compares it
with a bundle. Reading a bundle is :mod:`orchestrator_fsm.reproduce.bundle`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from orchestrator_fsm._fs import atomic_write_bytes, atomic_write_json, atomic_write_text, json_text
from orchestrator_fsm.environment import collect_environment, loaded_libraries
from orchestrator_fsm.layout import (
    BUNDLE_FILE,
    CONFIG_FILE,
    attempt_reports,
    bundle_file,
    config_file,
    entry_copy,
)
from orchestrator_fsm.redaction import REDACTED, redact_argv

if TYPE_CHECKING:
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.distributed import Launch
    from orchestrator_fsm.git_state import GitState
    from orchestrator_fsm.run_context import RunContext

__all__ = [
    "BUNDLE_FORMAT",
    "RunSnapshot",
    "bundle_attempt",
    "describe_entry",
    "keep_earlier_attempt",
    "launch_section",
    "packages_of",
    "record_loaded_libraries",
    "redacted_keys",
    "redacted_overrides",
    "seed_summary",
    "sha256_file",
    "snapshot",
    "write_bundle",
]

BUNDLE_FORMAT: Final = 1


def sha256_file(path: Path) -> str | None:
    """The SHA-256 of the file at ``path``; ``None`` when it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return hashlib.sha256(data).hexdigest()


def redacted_overrides(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with the values of secret keys (and URL passwords) as ``***``."""
    return [redact_argv(["--set", text])[1] for text in overrides]


def redacted_keys(data: Any, prefix: str = "") -> list[str]:
    """The dotted keys of ``data`` whose value was redacted (holds ``***``)."""
    keys: list[str] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            keys += redacted_keys(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            keys += redacted_keys(value, f"{prefix}[{index}]")
    elif isinstance(data, str) and (data == REDACTED or f":{REDACTED}@" in data):
        keys.append(prefix)
    return keys


def describe_entry(
    spec: str | None, argv: Iterable[str] | None = None, *, process: bool = False
) -> dict[str, Any] | None:
    """The entry ``spec`` as given, its kind, the file it lives in and that file's
    SHA-256; a script's ``argv`` (its arguments, secrets redacted) too.

    The kind is ``script`` (run as ``__main__`` by ``orchestrator-fsm run``),
    ``python`` (``process``: the script this process runs, whose own code made the
    orchestrator), ``file`` (``file.py:function``) or ``module`` (``module:function``).

    A module entry is looked up as ``run`` looks it up (the working directory first);
    its own file is hashed, not the modules it imports."""
    if spec is None:
        return None
    from orchestrator_fsm.entry import entry_search_path, is_script_spec

    if is_script_spec(spec):
        script = Path(spec).expanduser().resolve()
        return {
            "spec": spec,
            "kind": "python" if process else "script",
            "path": str(script),
            "sha256": sha256_file(script),
            "argv": redact_argv(list(argv or ())),
        }
    module_part = spec.rpartition(":")[0]
    path: str | None = None
    if module_part.endswith(".py") or "/" in module_part or os.sep in module_part:
        path = str(Path(module_part).expanduser().resolve())
        kind = "file"
    else:
        kind = "module"
        module = sys.modules.get(module_part)
        origin = getattr(module, "__file__", None)
        if origin is None:
            with entry_search_path(spec), contextlib.suppress(ImportError, ValueError):
                found = importlib.util.find_spec(module_part)
                origin = None if found is None else found.origin
        path = None if origin is None else str(Path(origin).resolve())
    return {
        "spec": spec,
        "kind": kind,
        "path": path,
        "sha256": None if path is None else sha256_file(Path(path)),
    }


def seed_summary(seed: int, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """The seed tree of ``seed`` as the bundle keeps it (the standard seeds)."""
    from orchestrator_fsm.seeds import SeedTree

    seeds = SeedTree(seed, rank, world_size).as_dict()
    seeds.pop("derived", None)
    return seeds


def packages_of(requirements: Iterable[str]) -> dict[str, str]:
    """``{name: version}`` from ``name==version`` lines (a direct-URL install keeps
    its marker after the version); comment and blank lines are skipped."""
    packages: dict[str, str] = {}
    for line in requirements:
        if not line or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        packages[name.lower()] = version
    return packages


def _count(env: Mapping[str, str], *names: str) -> int | None:
    """The first of ``names`` set in ``env`` to a positive integer; ``None`` if none is."""
    for name in names:
        text = env.get(name, "").strip()
        if text.isdigit() and int(text) > 0:
            return int(text)
    return None


_SLURM_KEPT: Final = {
    "job_id": ("SLURM_JOB_ID", "SLURM_JOBID"),
    "array_job_id": ("SLURM_ARRAY_JOB_ID",),
    "array_task_id": ("SLURM_ARRAY_TASK_ID",),
    "step_id": ("SLURM_STEP_ID", "SLURM_STEPID"),
    "job_name": ("SLURM_JOB_NAME",),
    "partition": ("SLURM_JOB_PARTITION",),
    "submit_dir": ("SLURM_SUBMIT_DIR",),
    "nodelist": ("SLURM_JOB_NODELIST", "SLURM_NODELIST"),
}


def launch_section(launch: Launch, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The bundle's ``launch`` section: ``launcher``, ``world_size``,
    ``local_world_size`` (processes per node), ``nodes`` and ``max_restarts`` (torchrun's
    ``--max-restarts``; ``None`` elsewhere), ``job_id`` (the :class:`Launch`'s), and
    ``slurm``, the job's own variables (job id, array task, step, name, partition,
    submit directory, node list, node and task counts) inside a SLURM job, else ``None``.

    ``nodes`` is what the launcher said: torchrun's ``GROUP_WORLD_SIZE``, the srun
    step's node count, 1 for a single process or when every rank is on this node
    (``local_world_size == world_size``); ``None`` when nothing said (a launcher that
    exports ``WORLD_SIZE`` but no per-node count)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    nodes: int | None = None
    if launch.launcher == "torchrun":
        nodes = _count(env, "GROUP_WORLD_SIZE")
    elif launch.launcher == "slurm":
        nodes = _count(env, "SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES")
    if nodes is None and (
        launch.world_size == 1
        or (launch.local_world_size == launch.world_size and "LOCAL_WORLD_SIZE" in env)
        or (launch.launcher == "slurm" and launch.local_world_size == launch.world_size)
    ):
        nodes = 1
    slurm: dict[str, Any] | None = None
    if _count(env, "SLURM_JOB_ID", "SLURM_JOBID") is not None:
        slurm = {
            key: next((env[name] for name in names if env.get(name, "").strip()), None)
            for key, names in _SLURM_KEPT.items()
        }
        slurm["nodes"] = _count(env, "SLURM_JOB_NUM_NODES", "SLURM_NNODES")
        slurm["ntasks"] = _count(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
    return {
        "launcher": launch.launcher,
        "world_size": launch.world_size,
        "local_world_size": launch.local_world_size,
        "nodes": nodes,
        "max_restarts": (
            _count(env, "TORCHELASTIC_MAX_RESTARTS") or 0 if launch.launcher == "torchrun" else None
        ),
        "job_id": launch.job_id,
        "slurm": slurm,
    }


@attrs.frozen
class RunSnapshot:
    """What a run runs: the resolved config as saved (plain data, secrets redacted)
    and the bundle's sections ``recipe, overrides, entry, seeds, git, packages,
    environment``, in that order."""

    config: Any
    sections: Mapping[str, Any]


def snapshot(
    cfg: Config,
    entry: str | None,
    *,
    entry_argv: Iterable[str] | None = None,
    entry_is_process: bool = False,
    config: Any,
    recipe: Path | str | None,
    git: GitState | None,
    requirements: Iterable[str],
    launch_env: Mapping[str, str],
    rank: int = 0,
    world_size: int = 1,
) -> RunSnapshot:
    """What would run now: the one description the bundle writes and ``rerun`` compares.

    ``config`` is the redacted plain data of ``cfg`` (what ``config.yaml`` holds),
    ``recipe`` the recipe file (hashed now), ``git`` the checkout's state,
    ``requirements`` the ``name==version`` lines, ``launch_env`` the allow-listed
    variables as the run is given them; ``entry``, ``rank`` and ``world_size`` as the
    run has them.
    """
    return RunSnapshot(
        config=config,
        sections={
            "recipe": {
                "path": None if recipe is None else str(recipe),
                "sha256": None if recipe is None else sha256_file(Path(recipe)),
            },
            "overrides": redacted_overrides(cfg.overrides),
            "entry": describe_entry(entry, entry_argv, process=entry_is_process),
            "seeds": seed_summary(cfg.training.seed, rank, world_size),
            "git": None if git is None else git.bundle_record(),
            "packages": packages_of(requirements),
            "environment": collect_environment(launch_env),
        },
    )


def write_bundle(
    run: RunContext,
    *,
    config: Any,
    git: GitState | None,
    requirements: Iterable[str],
    invocation: Mapping[str, Any],
) -> Path:
    """Phase 5's part: the bundle of ``run`` from what the step recorded (``config``,
    ``git``, ``requirements``; ``invocation`` is how the process was started), written
    atomically. The saved config's SHA-256 is that of the file on disk."""
    paths = run.require_paths()
    saved = config_file(paths.root)
    now = snapshot(
        run.cfg,
        run.entry,
        entry_argv=run.entry_argv,
        entry_is_process=run.entry_is_process,
        config=config,
        recipe=run.cfg.source,
        git=git,
        requirements=requirements,
        launch_env=run.launch_env,
        rank=run.rank,
        world_size=run.world_size,
    )
    entry = now.sections["entry"]
    if entry is not None:
        entry = {**entry, "saved": _keep_entry_file(paths.root, entry.get("path"))}
    bundle: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "run_id": paths.run_id,
        "attempt": run.attempt,
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": {
            "argv": redact_argv(invocation["argv"]),
            "cwd": invocation["cwd"],
            "python_executable": invocation["python_executable"],
        },
        "config": {
            "file": str(saved.relative_to(paths.root)),
            "sha256": sha256_file(saved),
            "redacted_keys": redacted_keys(config),
        },
        "rerun_of": None if run.rerun_of is None else str(run.rerun_of),
        **now.sections,
        "entry": entry,
        "launch": launch_section(run.launch),
        "loaded_libraries": None,
    }
    target = bundle_file(paths.root)
    text = json_text(bundle)
    atomic_write_text(target, text)
    run.bundle = text
    return target


_ENTRY_COPY_MAX_BYTES: Final = 4 * 1024 * 1024


def _keep_entry_file(root: Path, path: str | None) -> str | None:
    """Copy the entry's file at ``path`` into the run (``reports/entry/``); its path
    in the run directory, or None when there is no such file, it is larger than
    4 MiB (not a script) or cannot be copied."""
    if path is None:
        return None
    source = Path(path)
    try:
        if not source.is_file() or source.stat().st_size > _ENTRY_COPY_MAX_BYTES:
            return None
        target = entry_copy(root, source.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, source.read_bytes())
    except OSError:
        return None
    return str(target.relative_to(root))


def bundle_attempt(bundle: Mapping[str, Any]) -> int:
    """The attempt of the run that wrote ``bundle``: its ``attempt``, 1 for a bundle
    written before bundles said (or with a value that is not a positive integer)."""
    number = bundle.get("attempt")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        return 1
    return number


def keep_earlier_attempt(run: RunContext) -> Path | None:
    """Before this attempt writes its config and bundle over ``reports/``'s: the ones an
    earlier attempt of the run wrote, copied to ``reports/attempts/<n>/`` (the config
    first, then the bundle naming that copy: a folder with its bundle is whole), so a
    resumed run, even with another config (``--force``), never loses what an earlier
    attempt ran. The folder; None when there was nothing to keep (a first attempt, or
    no readable bundle). Raises the ``OSError`` of a failed copy."""
    root = run.require_paths().root
    try:
        bundle = json.loads(bundle_file(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(bundle, dict):
        return None
    number = bundle_attempt(bundle)
    if number >= run.attempt:
        return None
    folder = attempt_reports(root, number)
    if (folder / BUNDLE_FILE).is_file():
        return folder  # kept already (an attempt after it stopped before its own bundle)
    folder.mkdir(parents=True, exist_ok=True)
    saved = config_file(root)
    if saved.is_file():
        atomic_write_bytes(folder / CONFIG_FILE, saved.read_bytes())
    config = bundle.get("config")
    if isinstance(config, dict):
        bundle["config"] = {**config, "file": str((folder / CONFIG_FILE).relative_to(root))}
    bundle["attempt"] = number
    atomic_write_json(folder / BUNDLE_FILE, bundle)
    return folder


# The bundle's last key before cleanup, as json_text writes a key of the top level (a
# raw newline and two spaces: strings hold newlines escaped, deeper keys more spaces).
_NO_LIBRARIES_YET: Final = '\n  "loaded_libraries": null'


def _completed(text: str, libraries: list[dict[str, str]] | None) -> str | None:
    """The bundle ``text`` (as :func:`json_text` wrote it) with ``libraries`` in place
    of its ``loaded_libraries: null``: the text ``json_text`` gives for the completed
    bundle, without encoding all of it again. None when ``text`` has no such key."""
    head, found, tail = text.partition(_NO_LIBRARIES_YET)
    if not found:
        return None
    listed = json_text(libraries)[:-1].replace("\n", "\n  ")
    return f'{head}\n  "loaded_libraries": {listed}{tail}'


def record_loaded_libraries(run: RunContext) -> None:
    """At cleanup (rank 0, once the bundle exists): add the libraries mapped now."""
    if not run.is_main_process or run.paths is None:
        return
    target = bundle_file(run.paths.root)
    written, run.bundle = run.bundle, None
    text = None if written is None else _completed(written, loaded_libraries())
    if text is None:  # written by another process (a resumed attempt's first one)
        try:
            bundle = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(bundle, dict):
            return
        bundle["loaded_libraries"] = loaded_libraries()
        text = json_text(bundle)
    with contextlib.suppress(OSError):
        atomic_write_text(target, text)

"""``RunContext``: what every lifecycle step is given, and what the steps fill in.

A step is a plain function ``step(run) -> Undo | None`` in the module of its phase. It
reads the config and the injected dependencies from ``run`` and records what it
produced (paths, logger, device, applied thread count) back on it, so the next steps,
the run recorder and the orchestrator's public attributes see the same values. This
module sits below the lifecycle and the phases, which both read the context.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from orchestrator_fsm.distributed import Launch
from orchestrator_fsm.environment import launch_environment
from orchestrator_fsm.errors import LifecycleError
from orchestrator_fsm.run_log import LOGGER_NAME

if TYPE_CHECKING:
    import torch

    from orchestrator_fsm.config import Config
    from orchestrator_fsm.git_state import GitState
    from orchestrator_fsm.layout import RunPaths
    from orchestrator_fsm.protocols import (
        AuditSaverProtocol,
        InfraManagerProtocol,
        ReporterProtocol,
        TimeTrackerProtocol,
    )
    from orchestrator_fsm.seeds import SeedTree

__all__ = ["RERUN_OF_ENV", "RUN_DIR_FILE_ENV", "Dependencies", "Manifest", "RunContext"]

#: Set by ``orchestrator-fsm rerun`` for a run made from Python (``python train.py``),
#: which it reruns as that command: the run directory it reruns (recorded as
#: ``rerun_of``), and the file the new run's directory is written to once it ends.
RERUN_OF_ENV: Final = "ORCHESTRATOR_FSM_RERUN_OF"
RUN_DIR_FILE_ENV: Final = "ORCHESTRATOR_FSM_RUN_DIR_FILE"


@attrs.frozen
class Manifest:
    """What phase 5 recorded, as data: the saved config (plain, redacted), the
    ``name==version`` lines of the installed distributions and the git state
    (``None`` outside a checkout)."""

    config: Any
    requirements: tuple[str, ...]
    git: GitState | None


@attrs.frozen
class Dependencies:
    """The parts a run is built from, each either injected or the package's default."""

    infra: InfraManagerProtocol
    reporter: ReporterProtocol
    time_tracker: TimeTrackerProtocol
    audit_saver: AuditSaverProtocol
    log_initializer: Callable[..., Any]
    seed_setter: Callable[..., Any]
    thread_applier: Callable[..., Any]
    system_configurator: Callable[..., Any]
    static_dir_setup: Callable[..., Any]
    device_resolver: Callable[..., Any]


@attrs.define(eq=False)
class RunContext:
    """One run's config, dependencies and place in the job, plus what its steps made."""

    cfg: Config
    deps: Dependencies
    rank: int
    local_rank: int
    world_size: int
    seed_tree: SeedTree
    launch: Launch = attrs.field(factory=Launch)
    """The launch this run is part of (launcher, ranks, ``job_id``, ``restart_count``);
    its ranks and world size are the ones above."""
    paths: RunPaths | None = None
    logger: logging.Logger | None = None
    device: torch.device | None = None
    applied_threads: int = 0
    determinism_applied: Mapping[str, object] | None = None
    """The seed and determinism flags as phase 1 left them (``phases.determinism.
    determinism_settings``), compared at cleanup with what the program left."""
    thread_basis: str | None = None
    """Why phase 2 applied that many threads (see ``phases.runtime.choose_cpu_threads``);
    ``"thread_applier"`` when an injected applier chose another count."""
    resume_from: Path | None = None
    """A run directory the caller asked to continue (``resume=``, ``run --resume``)."""
    force_resume: bool = False
    """Continue ``resume_from`` even when its config differs from this one."""
    sweep: tuple[str, int] | None = None
    """The sweep this run is a member of: its id and the member's number."""
    entry: str | None = None
    """The pipeline as the command line named it (``--entry module:function`` or
    ``file.py:function``), or the script run as ``__main__`` (``--script train.py``, or
    the script of a run made from Python): recorded in ``run.json`` and the rerun bundle."""
    entry_argv: tuple[str, ...] | None = None
    """The arguments ``entry`` was given when it is a script (its ``sys.argv[1:]``);
    ``None`` for a callable."""
    entry_is_process: bool = False
    """Whether ``entry`` is the script this process runs (``python train.py``, whose
    own code made the orchestrator), not one ``orchestrator-fsm run`` ran."""
    rerun_of: Path | None = None
    """The run directory this run reruns (``orchestrator-fsm rerun``)."""
    launch_env: Mapping[str, str] = attrs.field(factory=launch_environment)
    """The allow-listed environment variables as the run was given them (before phase 2
    exports its thread counts), for the rerun bundle."""
    resumed: bool = False
    """Whether phase 3 reopened the run directory of an earlier attempt of the job."""
    attempt: int = 1
    """The number of this attempt of the run (from 1), known once its record is started."""
    start_record: Callable[[], None] = attrs.field(default=lambda: None)
    """Writes the run's first record into the directory phase 3 just made."""
    manifest: Manifest | None = None
    """What phase 5 recorded (rank 0): the report and the rerun bundle are made from it,
    not from its files read back."""
    bundle: str | None = None
    """The rerun bundle's text as phase 5 wrote it, until cleanup completes it."""

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def log(self) -> logging.Logger:
        """The run's logger once phase 4 made it, else the package's logger."""
        return self.logger if self.logger is not None else logging.getLogger(LOGGER_NAME)

    def require_paths(self) -> RunPaths:
        """The run directory; the table orders every step that needs it after phase 3."""
        if self.paths is None:
            raise LifecycleError("this step needs the run directory, which phase 3 creates")
        return self.paths

"""This process's place in a distributed launch, read from the launcher's environment.

:func:`discover_launch` reads the variables a launcher leaves in each process's
environment and returns a :class:`Launch`: which launcher it was, the process's global
and local rank, the world and node sizes, and the identity of the job across its ranks,
nodes and restarts. Nothing here initialises a process group.

torchrun (and everything built on ``torch.distributed.run``) exports ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``,
``TORCHELASTIC_RUN_ID`` and ``TORCHELASTIC_RESTART_COUNT`` to every worker. SLURM's
``srun`` exports ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``,
``SLURM_STEP_ID`` and ``SLURM_STEP_NUM_TASKS`` to each task of a job step; the batch
script that ``sbatch`` runs sees the job's variables (``SLURM_JOB_ID``,
``SLURM_NTASKS``, even ``SLURM_PROCID=0``) but is one process, not one of the tasks.
Other launchers (Kubeflow's PyTorchJob without torchrun, DeepSpeed's and MPI-style
launchers, a hand-written ``torch.multiprocessing.spawn``) set ``RANK``/``WORLD_SIZE``
and the rendezvous endpoint ``MASTER_ADDR``/``MASTER_PORT`` only; :func:`current_launch`
also reads an initialised ``torch.distributed`` process group.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Final, Literal

import attrs

__all__ = [
    "LAUNCHER_ENV_VARS",
    "Launch",
    "LauncherName",
    "current_launch",
    "discover_launch",
    "env_text",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "process_group_place",
    "slurm_master_endpoint",
]

LauncherName = Literal["torchrun", "slurm", "plain"]

TORCHRUN_LAYOUT_VARS: Final = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK")
"""Any of these marks a torchrun-style launch; their values then describe the layout."""
TORCHRUN_IDENTITY_VARS: Final = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")
SLURM_STEP_VARS: Final = (
    "SLURM_STEP_ID",
    "SLURM_STEPID",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_NTASKS",
    "SLURM_STEP_TASKS_PER_NODE",
)
SLURM_IDENTITY_VARS: Final = (
    "SLURM_JOB_ID",
    "SLURM_JOBID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_RESTART_COUNT",
)
#: The rendezvous endpoint every process of a torch.distributed launch is given.
RENDEZVOUS_VARS: Final = ("MASTER_ADDR", "MASTER_PORT")
#: Every variable :func:`discover_launch` reads (tests clear them to simulate no launcher).
LAUNCHER_ENV_VARS: Final = (
    TORCHRUN_LAYOUT_VARS
    + TORCHRUN_IDENTITY_VARS
    + SLURM_STEP_VARS
    + SLURM_IDENTITY_VARS
    + RENDEZVOUS_VARS
)

_log = logging.getLogger("orchestrator_fsm.distributed")

# torchrun without --rdzv-id passes its default, the literal "none", as the run id.
_NO_RUN_ID: Final = frozenset({"", "none"})
# Step ids above this are Slurm's special steps (batch script, extern container,
# interactive step, pending step), whose single process is not one of srun's tasks.
_MAX_NORMAL_STEP_ID: Final = 0xFFFFFFF0
_SPECIAL_STEP_NAMES: Final = frozenset({"batch", "extern", "interactive"})
_TASKS_PER_NODE_ITEM: Final = re.compile(r"(\d+)(?:\(x(\d+)\))?")


def _non_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be an integer >= 0, got {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, got {value!r}")


@attrs.frozen
class Launch:
    """Where this process stands in its job, as its launcher (or the caller) said.

    ``launcher`` is ``"torchrun"`` (torchrun's variables are set), ``"slurm"`` (this is
    one task of an ``srun`` step) or ``"plain"`` (a single process, possibly a batch
    script inside a SLURM job). ``rank``/``world_size`` are global, ``local_rank``/
    ``local_world_size`` count the processes of this node, ``node_rank`` numbers the
    node. ``job_id`` is the same string on every rank and node of one job and across
    its restarts (None when the launcher gives none); ``restart_count`` is 0 on a job's
    first attempt and above 0 on every later one. ``rendezvous`` is
    ``"MASTER_ADDR:MASTER_PORT"`` when the launcher gave both and nothing else names the
    job (no ``job_id``; not a single-node torchrun, whose agent does); else None.
    ``group_run`` is set when a ``torch.distributed`` process group was initialised as
    the orchestrator was made: the number of the orchestrator among those this process
    made in a process group (0 for the first); every rank makes its orchestrators in
    the same order, so the number is the same on every rank of one run. The default is
    a plain rank 0 of 1.
    """

    launcher: LauncherName = attrs.field(
        default="plain", validator=attrs.validators.in_(("torchrun", "slurm", "plain"))
    )
    rank: int = attrs.field(default=0, validator=_non_negative)
    local_rank: int = attrs.field(default=0, validator=_non_negative)
    world_size: int = attrs.field(default=1, validator=_positive)
    local_world_size: int = attrs.field(default=1, validator=_positive)
    node_rank: int = attrs.field(default=0, validator=_non_negative)
    job_id: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(str))
    )
    restart_count: int = attrs.field(default=0, validator=_non_negative)
    rendezvous: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(str))
    )
    group_run: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_non_negative)
    )

    def __attrs_post_init__(self) -> None:
        if self.rank >= self.world_size:
            raise ValueError(f"rank {self.rank} is not below world_size {self.world_size}")
        if self.local_rank >= self.local_world_size:
            raise ValueError(
                f"local_rank {self.local_rank} is not below local_world_size "
                f"{self.local_world_size}"
            )

    @property
    def is_main_process(self) -> bool:
        """Whether this is global rank 0, the process that writes the run's files."""
        return self.rank == 0

    def as_dict(self) -> dict[str, object]:
        """The fields as plain JSON-able data."""
        return attrs.asdict(self)


def _int_var(env: Mapping[str, str], name: str, *, minimum: int, meaning: str) -> int | None:
    """``env[name]`` as an int >= ``minimum``; None when the variable is absent.

    A variable that is present but does not hold such an integer is an error rather
    than a reason to fall back, so a broken launcher never silently becomes rank 0.
    """
    raw = env.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(
            f"environment variable {name}={raw!r} is not a valid {meaning}: "
            f"expected an integer >= {minimum}"
        )
    return value


def _int_or(env: Mapping[str, str], name: str, default: int, *, minimum: int, meaning: str) -> int:
    """:func:`_int_var`, with ``default`` for an absent variable."""
    value = _int_var(env, name, minimum=minimum, meaning=meaning)
    return default if value is None else value


def _first_present(env: Mapping[str, str], *names: str) -> str | None:
    return next((name for name in names if name in env), None)


def env_text(env: Mapping[str, str], *names: str) -> str | None:
    """The value of the first of ``names`` set to something other than blanks, stripped;
    None when none is (how launch discovery and the job's ending read SLURM's ids)."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


@attrs.frozen
class _Layout:
    """What a launcher's variables say, before explicit arguments and checks apply.

    ``sources`` names, per field, the variable the value came from, for error messages.
    ``rank`` None: torchrun variables without ``RANK``. ``world_size``/
    ``local_world_size`` None: not said (one node of ``world_size`` is then assumed).
    """

    rank: int | None
    local_rank: int
    world_size: int | None
    local_world_size: int | None
    node_rank: int
    sources: Mapping[str, str]


_PLAIN_LAYOUT: Final = _Layout(
    rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0, sources={}
)


def _torchrun_layout(env: Mapping[str, str]) -> _Layout:
    return _Layout(
        rank=_int_var(env, "RANK", minimum=0, meaning="global rank"),
        local_rank=_int_or(env, "LOCAL_RANK", 0, minimum=0, meaning="local rank"),
        world_size=_int_var(env, "WORLD_SIZE", minimum=1, meaning="world size"),
        local_world_size=_int_var(env, "LOCAL_WORLD_SIZE", minimum=1, meaning="local world size"),
        node_rank=_int_or(env, "GROUP_RANK", 0, minimum=0, meaning="node rank"),
        sources={
            "rank": "RANK",
            "local_rank": "LOCAL_RANK",
            "world_size": "WORLD_SIZE",
            "local_world_size": "LOCAL_WORLD_SIZE",
        },
    )


def _slurm_step(env: Mapping[str, str]) -> str | None:
    """The id of the srun step this process is a task of, or None outside one.

    The batch script, the extern container and the interactive step are steps too,
    but each is one process of its own, not one of a step's tasks.
    """
    name = _first_present(env, "SLURM_STEP_ID", "SLURM_STEPID")
    if name is None:
        return None
    raw = env[name].strip()
    if raw.lower() in _SPECIAL_STEP_NAMES:
        return None
    step = _int_or(env, name, 0, minimum=0, meaning="job step id")
    return None if step > _MAX_NORMAL_STEP_ID else str(step)


def _tasks_on_node(env: Mapping[str, str], node: int) -> int | None:
    """Tasks on node ``node`` from ``SLURM_STEP_TASKS_PER_NODE`` (e.g. ``2(x3),1``)."""
    name = "SLURM_STEP_TASKS_PER_NODE"
    if name not in env:
        return None
    counts: list[int] = []
    for item in env[name].strip().split(","):
        match = _TASKS_PER_NODE_ITEM.fullmatch(item.strip())
        if match is None:
            raise ValueError(
                f"environment variable {name}={env[name]!r} is not a valid task count per "
                "node: expected comma-separated counts such as '2(x3),1'"
            )
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    if node >= len(counts):
        raise ValueError(
            f"environment variable {name}={env[name]!r} lists {len(counts)} nodes, but "
            f"this is node {node} (SLURM_NODEID)"
        )
    return counts[node]


def _slurm_layout(env: Mapping[str, str]) -> _Layout:
    """The layout of one task of an srun step."""
    local_rank = _int_or(env, "SLURM_LOCALID", 0, minimum=0, meaning="local rank")
    node_rank = _int_or(env, "SLURM_NODEID", 0, minimum=0, meaning="node rank")
    world_name = _first_present(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") or "SLURM_NTASKS"
    tasks_here = _tasks_on_node(env, node_rank)
    return _Layout(
        rank=_int_or(env, "SLURM_PROCID", 0, minimum=0, meaning="global rank"),
        local_rank=local_rank,
        world_size=_int_or(env, world_name, 1, minimum=1, meaning="world size"),
        # Without a count per node, the local rank bounds it from below.
        local_world_size=local_rank + 1 if tasks_here is None else tasks_here,
        node_rank=node_rank,
        sources={
            "rank": "SLURM_PROCID",
            "local_rank": "SLURM_LOCALID",
            "world_size": world_name,
            "local_world_size": "SLURM_STEP_TASKS_PER_NODE",
        },
    )


def _slurm_job_id(env: Mapping[str, str], step: str | None) -> str | None:
    """``<job>`` or ``<array job>_<task>``, plus ``.<step>`` inside an srun step."""
    array_job = env_text(env, "SLURM_ARRAY_JOB_ID")
    array_task = env_text(env, "SLURM_ARRAY_TASK_ID")
    if array_job is not None and array_task is not None:
        job: str | None = f"{array_job}_{array_task}"
    else:
        job = env_text(env, "SLURM_JOB_ID", "SLURM_JOBID")
    if job is None:
        return None
    return job if step is None else f"{job}.{step}"


def discover_launch(
    environ: Mapping[str, str] | None = None,
    *,
    rank: int | None = None,
    local_rank: int | None = None,
    world_size: int | None = None,
) -> Launch:
    """This process's :class:`Launch`, read from ``environ`` (default ``os.environ``).

    Rules, first match wins:

    1. Any of torchrun's ``RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK``
       is set: a ``"torchrun"`` launch laid out by those variables alone (they win over
       SLURM's, since ``srun torchrun ...`` leaves both). ``RANK`` is required once
       ``LOCAL_RANK`` > 0 or ``WORLD_SIZE`` > 1 — a local rank never makes a process
       global rank 0, since two rank 0s would both write the run directory. A
       ``RANK`` > 0 without ``WORLD_SIZE`` is only warned about (the world is taken
       to be ``RANK`` + 1): this rank's guess touches only its own files.
    2. Inside an srun step (``SLURM_STEP_ID``/``SLURM_STEPID`` names a normal step): a
       ``"slurm"`` task with rank ``SLURM_PROCID``, local rank ``SLURM_LOCALID``, node
       ``SLURM_NODEID`` and world size ``SLURM_STEP_NUM_TASKS`` (else ``SLURM_NTASKS``).
    3. Otherwise ``"plain"``: rank 0 of 1, even in an sbatch batch script whose
       environment says ``SLURM_NTASKS=4`` — the script is one process, not four.

    ``job_id`` is the SLURM job whenever there is one (``SLURM_JOB_ID``, or
    ``<SLURM_ARRAY_JOB_ID>_<SLURM_ARRAY_TASK_ID>`` for an array task, plus
    ``.<SLURM_STEP_ID>`` inside an srun step): it survives a requeue, while torchrun's
    run id may be a fresh uuid per torchrun invocation. Outside SLURM it is
    ``TORCHELASTIC_RUN_ID``, except torchrun's placeholder ``"none"``. ``restart_count``
    adds ``TORCHELASTIC_RESTART_COUNT`` (torchrun launches) and ``SLURM_RESTART_COUNT``,
    so it is 0 exactly on a job's first attempt. ``rendezvous`` is
    ``MASTER_ADDR:MASTER_PORT`` when both are set and nothing else names the job: no
    ``job_id``, and not a single-node torchrun (its agent process names the job).

    ``rank``, ``local_rank`` and ``world_size``, when given, replace what the
    environment says (and a missing ``RANK`` is then no error); without ``world_size``
    the world grows to hold an explicit rank. Raises ``ValueError`` naming the variable
    and its value for a malformed or inconsistent environment.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    torchrun = any(name in env for name in TORCHRUN_LAYOUT_VARS)
    step = _slurm_step(env)
    launcher: LauncherName
    if torchrun:
        launcher, layout = "torchrun", _torchrun_layout(env)
    elif step is not None:
        launcher, layout = "slurm", _slurm_layout(env)
    else:
        launcher, layout = "plain", _PLAIN_LAYOUT
    settled = _settle(layout, env, rank=rank, local_rank=local_rank, world_size=world_size)

    restart_count = _int_or(env, "SLURM_RESTART_COUNT", 0, minimum=0, meaning="restart count")
    job_id = _slurm_job_id(env, step)
    torchrun_agent = any(name in env for name in TORCHRUN_IDENTITY_VARS)
    if torchrun:
        restart_count += _int_or(
            env, "TORCHELASTIC_RESTART_COUNT", 0, minimum=0, meaning="restart count"
        )
        run_id = env.get("TORCHELASTIC_RUN_ID", "").strip()
        if job_id is None and run_id.lower() not in _NO_RUN_ID:
            job_id = run_id
    agent_names_it = torchrun_agent and settled.world_size == settled.local_world_size
    return attrs.evolve(
        settled,
        launcher=launcher,
        job_id=job_id,
        restart_count=restart_count,
        rendezvous=None if job_id is not None or agent_names_it else _rendezvous(env),
    )


def _rendezvous(env: Mapping[str, str]) -> str | None:
    """``MASTER_ADDR:MASTER_PORT`` when both are set."""
    address, port = (env_text(env, name) for name in RENDEZVOUS_VARS)
    if address is None or port is None:
        return None
    return f"{address}:{port}"


def _settle(
    layout: _Layout,
    env: Mapping[str, str],
    *,
    rank: int | None,
    local_rank: int | None,
    world_size: int | None,
) -> Launch:
    """The layout with the explicit values put in, checked for consistency."""
    sources = dict(layout.sources)
    for name, value in (("rank", rank), ("local_rank", local_rank), ("world_size", world_size)):
        if value is not None:
            sources[name] = name

    def said(field: str, value: int) -> str:
        return f"{sources.get(field, field)}={value}"

    chosen_local = layout.local_rank if local_rank is None else local_rank
    chosen_rank = layout.rank if rank is None else rank
    present = ", ".join(f"{name}={env[name]!r}" for name in TORCHRUN_LAYOUT_VARS if name in env)
    if chosen_rank is None:
        # Deriving a rank (say GROUP_RANK * LOCAL_WORLD_SIZE + LOCAL_RANK) would guess at
        # a launcher that did not say; a wrong guess makes two processes rank 0, and both
        # would write the run directory. torchrun itself always exports RANK.
        if chosen_local > 0 or (world_size or layout.world_size or 1) > 1:
            raise ValueError(
                f"the environment has {present} but no RANK: a local rank does not say "
                "which process is global rank 0, and a wrong guess makes two processes "
                "rank 0 that both write the run directory. Launch with torchrun (which "
                "sets RANK), export RANK, or pass rank= explicitly"
            )
        chosen_rank = 0
    if world_size is not None:
        chosen_world = world_size
    elif layout.world_size is None:
        if chosen_rank > 0 and rank is None:
            # Not corrupting: this rank joins rank 0's run and writes only its own files;
            # what it guesses is its own count of the world (its seed tree, its record).
            _log.warning(
                "the environment has %s but no WORLD_SIZE: rank %d assumes a world of %d "
                "processes (export WORLD_SIZE or pass world_size= to say)",
                present,
                chosen_rank,
                chosen_rank + 1,
            )
        chosen_world = chosen_rank + 1
    elif rank is not None:
        chosen_world = max(layout.world_size, chosen_rank + 1)  # grows to hold rank=
    else:
        chosen_world = layout.world_size
    if chosen_rank >= chosen_world:
        raise ValueError(
            f"{said('rank', chosen_rank)} is not below {said('world_size', chosen_world)}"
        )
    local_world = chosen_world if layout.local_world_size is None else layout.local_world_size
    if local_rank is not None:
        local_world = max(local_world, local_rank + 1)
    elif chosen_local >= local_world:
        raise ValueError(
            f"{said('local_rank', chosen_local)} is not below "
            f"{said('local_world_size', local_world)}"
        )
    return Launch(
        rank=chosen_rank,
        local_rank=chosen_local,
        world_size=chosen_world,
        local_world_size=local_world,
        node_rank=layout.node_rank,
    )


#: Orchestrators this process made while a process group was initialised (see
#: ``Launch.group_run``).
_GROUP_RUNS: Final = itertools.count()


def process_group_place() -> tuple[int, int] | None:
    """``(rank, world_size)`` in the default ``torch.distributed`` process group when
    one is initialised in this process, else None. torch is not imported for this:
    without ``torch.distributed`` imported there is no process group."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return int(dist.get_rank()), int(dist.get_world_size())


def current_launch(
    *,
    rank: int | None = None,
    local_rank: int | None = None,
    world_size: int | None = None,
) -> Launch:
    """This process's :class:`Launch` for a run starting now: :func:`discover_launch` of
    ``os.environ`` and the explicit values, completed by the ``torch.distributed``
    process group when one is initialised (``torch.multiprocessing.spawn`` gives its
    processes no variables): the group's rank and world size stand where neither the
    caller nor the environment gives one, ``group_run`` numbers the run in the group,
    and without a launcher's layout one node is assumed (local rank = rank; pass
    ``local_rank=`` on several nodes). Raises ``ValueError`` as :func:`discover_launch`.
    """
    place = process_group_place()
    if place is None:
        return discover_launch(rank=rank, local_rank=local_rank, world_size=world_size)
    group_rank, group_world = place
    env = os.environ
    said = any(name in env for name in TORCHRUN_LAYOUT_VARS) or _slurm_step(env) is not None
    chosen_rank = rank if rank is not None else (None if said else group_rank)
    chosen_world = world_size if world_size is not None else (None if said else group_world)
    launch = discover_launch(env, rank=chosen_rank, local_rank=local_rank, world_size=chosen_world)
    if not said and local_rank is None:
        launch = attrs.evolve(launch, local_rank=launch.rank, local_world_size=launch.world_size)
    return attrs.evolve(launch, group_run=next(_GROUP_RUNS))


def _reference_layout(env: Mapping[str, str]) -> tuple[str, str, str] | None:
    """The variables naming rank, local rank and world size: torchrun's when any is
    set, SLURM's inside an srun step, else None (a single process)."""
    if any(name in env for name in TORCHRUN_LAYOUT_VARS):
        return "RANK", "LOCAL_RANK", "WORLD_SIZE"
    if _slurm_step(env) is not None:
        world = _first_present(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") or "SLURM_NTASKS"
        return "SLURM_PROCID", "SLURM_LOCALID", world
    return None


def _reference_read(index: int, default: int) -> int:
    # The reference reads each variable on its own, with its default when absent; how
    # the variables agree is discover_launch's business. A malformed value raises
    # ValueError, as int() does for the reference.
    names = _reference_layout(os.environ)
    if names is None:
        return default
    raw = os.environ.get(names[index])
    return default if raw is None else int(raw.strip())


def get_rank() -> int:
    """Global rank of this process, read as the reference reads it: ``RANK`` (inside an
    srun step without torchrun's variables, ``SLURM_PROCID``), 0 when unset."""
    return _reference_read(0, 0)


def get_local_rank() -> int:
    """Rank of this process on its node: ``LOCAL_RANK`` (in an srun step,
    ``SLURM_LOCALID``), 0 when unset."""
    return _reference_read(1, 0)


def get_world_size() -> int:
    """Number of processes in the launch: ``WORLD_SIZE`` (in an srun step,
    ``SLURM_STEP_NUM_TASKS``/``SLURM_NTASKS``), 1 when unset."""
    return _reference_read(2, 1)


def slurm_master_endpoint(
    environ: MutableMapping[str, str] | None = None,
) -> tuple[str, str] | None:
    """Under SLURM, fill in ``MASTER_ADDR`` and ``MASTER_PORT`` where they are unset, as
    Lightning's ``SLURMEnvironment`` derives them, and return ``(addr, port)``.

    ``MASTER_ADDR`` is the first host of ``SLURM_NODELIST`` (else
    ``SLURM_JOB_NODELIST``): ``node[3-5,7]`` gives ``node3``, ``a,b`` gives ``a``.
    ``MASTER_PORT`` is 15000 plus the last four digits of ``SLURM_JOB_ID`` (12910
    without one), so every task of a job agrees and two jobs on one node rarely clash.
    A value already set (by the user, torchrun) is kept. Outside SLURM (no node list)
    nothing is set and the result is ``(MASTER_ADDR, MASTER_PORT)`` when both are set,
    else ``None``. ``environ`` defaults to ``os.environ``; call this before
    ``init_process_group`` (its default ``env://`` reads these two variables).
    """
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    nodes = (env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST") or "").strip()
    if nodes and not env.get("MASTER_ADDR"):
        # The first host of the list: "n[3-5,7],m2" -> "n3", "a,b" -> "a", "h1 h2" -> "h1".
        first = re.match(r"\s*([^,\s\[]*)(?:\[([^\],\-]*))?", nodes)
        assert first is not None  # the pattern matches any string
        env["MASTER_ADDR"] = first.group(1) + (first.group(2) or "")
    if nodes and not env.get("MASTER_PORT"):
        digits = re.sub(r"\D", "", env.get("SLURM_JOB_ID", ""))
        env["MASTER_PORT"] = str(15000 + int(digits[-4:])) if digits else "12910"
    addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    return (addr, port) if addr and port else None

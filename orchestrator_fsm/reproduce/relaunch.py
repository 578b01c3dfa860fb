"""How ``orchestrator-fsm rerun`` starts a run again: as the original was launched, or not
at all.

:func:`plan_relaunch` reads the bundle's ``launch`` section (and, for a bundle written
before it existed, the world size of its seeds and the hosts of the rank records) and
gives a :class:`Relaunch`: one process for a single-process run, or ``python -m
torch.distributed.run --standalone --nproc_per_node=<world size>`` from the rerun's own
interpreter for a job whose ranks all ran on one node (torchrun sets every variable a
one-node launcher does). A job it cannot recreate on this machine (several nodes, a
SLURM job, or nothing recorded says how many nodes) is a
:class:`RelaunchRefused` whose one-line message names what and gives the command to run
by hand (:func:`by_hand`).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from orchestrator_fsm.lifecycle.ending import SchedulerJob

__all__ = [
    "TORCHRUN_OMP_THREADS",
    "Relaunch",
    "RelaunchRefused",
    "by_hand",
    "plan_relaunch",
]

TORCHRUN_OMP_THREADS: Final = "1"
"""What torchrun exports as ``OMP_NUM_THREADS`` to the workers of a node with more than
one process when the variable is not set (``torch.distributed.run``)."""


class RelaunchRefused(ValueError):
    """The run cannot be relaunched here; the message is the one line to show."""


@attrs.frozen
class Relaunch:
    """How the rerun is started: ``world_size`` processes on this node, under torchrun
    when there are more than one (``max_restarts`` as the original's torchrun had it)."""

    world_size: int = 1
    max_restarts: int = 0

    @property
    def torchrun(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        """``one process`` or ``torchrun, N ranks on one node``."""
        if not self.torchrun:
            return "one process"
        return f"torchrun, {self.world_size} ranks on one node"

    def command(
        self,
        python: str,
        run_argv: Sequence[str],
        program: Sequence[str] = ("-m", "orchestrator_fsm"),
    ) -> list[str]:
        """The command line starting ``program`` (default ``orchestrator-fsm``; a
        script's path for a run made from Python) with ``run_argv`` (``run ...``) from
        interpreter ``python``: directly, or under torchrun with a standalone rendezvous
        on this node."""
        if not self.torchrun:
            return [python, *program, *run_argv]
        launcher = [
            python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes=1",
            f"--nproc_per_node={self.world_size}",
        ]
        if self.max_restarts:
            launcher.append(f"--max-restarts={self.max_restarts}")
        return [*launcher, *program, *run_argv]

    def launcher_environment(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The allow-listed variables the launcher itself will give the ranks, beyond
        ``environ`` (default ``os.environ``): torchrun's ``OMP_NUM_THREADS=1`` when it is
        not set and a node runs several processes. What the drift check adds to "now"
        so that it compares what the ranks will really be given."""
        env: Mapping[str, str] = os.environ if environ is None else environ
        if self.torchrun and "OMP_NUM_THREADS" not in env:
            return {"OMP_NUM_THREADS": TORCHRUN_OMP_THREADS}
        return {}


def _positive(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def _hosts(records: Sequence[Any]) -> list[str]:
    """The distinct hosts the records' processes ran on, in rank order."""
    hosts: list[str] = []
    for record in records:
        host = getattr(record, "host", None)
        if isinstance(host, str) and host and host not in hosts:
            hosts.append(host)
    return hosts


def plan_relaunch(original: Path, bundle: Mapping[str, Any], run_argv: Sequence[str]) -> Relaunch:
    """How to start the run in ``original`` (whose bundle is ``bundle``) again; raises
    :class:`RelaunchRefused` when that cannot be done on this machine. ``run_argv``
    (``run CONFIG --entry ...``) goes into the by-hand command of a refusal."""
    launch = bundle.get("launch")
    launch = launch if isinstance(launch, Mapping) else {}
    seeds = bundle.get("seeds")
    seeds = seeds if isinstance(seeds, Mapping) else {}
    world = _positive(launch.get("world_size")) or _positive(seeds.get("world_size")) or 1
    if world == 1:
        return Relaunch()
    from orchestrator_fsm.lifecycle.record import read_run

    try:
        record = read_run(original)
        hosts = _hosts([record, *record.ranks])
    except (OSError, ValueError):
        hosts = []
    launcher = launch.get("launcher")
    launcher = launcher if isinstance(launcher, str) else None
    per_node = _positive(launch.get("local_world_size"))
    nodes = _positive(launch.get("nodes"))
    if len(hosts) > 1:
        nodes = max(nodes or 0, len(hosts))
    elif nodes is None and launcher != "slurm":
        # Nothing said how many nodes (a bundle older than the section, or a launcher
        # without a per-node count): every record names this one host.
        nodes = 1 if len(hosts) == 1 else None
    slurm = launch.get("slurm")
    slurm = slurm if isinstance(slurm, Mapping) else None
    # torchrun exports every variable a one-node launch by another launcher does
    # (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so it recreates those.
    if slurm is None and launcher != "slurm" and nodes == 1:
        return Relaunch(world, _positive(launch.get("max_restarts")) or 0)
    raise RelaunchRefused(
        _refusal(original, bundle, run_argv, world, launcher, nodes, per_node, slurm, hosts)
    )


def _refusal(
    original: Path,
    bundle: Mapping[str, Any],
    run_argv: Sequence[str],
    world: int,
    launcher: str | None,
    nodes: int | None,
    per_node: int | None,
    slurm: Mapping[str, Any] | None,
    hosts: Sequence[str],
) -> str:
    where = f"on {nodes} nodes" if nodes is not None and nodes > 1 else "on one node"
    if nodes is None:
        where = "on an unknown number of nodes"
    if hosts and len(hosts) > 1:
        where += f" ({', '.join(hosts)})"
    if slurm is not None:
        known = SchedulerJob.from_json(slurm)
        job = "?" if known is None else known.label
        what = (
            f"as torchrun ranks inside SLURM job {job}"
            if launcher == "torchrun"
            else f"as the tasks of SLURM job {job}"
        )
    elif launcher == "torchrun":
        what = "under torchrun"
    elif launcher is None:
        what = "by a launcher its bundle does not record"
    else:
        what = f"launched by {launcher}"
    command = by_hand(bundle, run_argv, world, launcher, nodes, per_node, slurm is not None)
    cwd = (bundle.get("command") or {}).get("cwd")
    place = f"from {cwd}, " if isinstance(cwd, str) and cwd else ""
    return (
        f"cannot rerun {original}: its {world} ranks ran {what} {where}, and rerun "
        f"relaunches only one process or a one-node torchrun here; rerun it by hand, "
        f"{place}{command}, then compare: orchestrator-fsm diff {original} NEW_RUN_DIR"
    )


def by_hand(
    bundle: Mapping[str, Any],
    run_argv: Sequence[str],
    world: int,
    launcher: str | None,
    nodes: int | None,
    per_node: int | None,
    in_slurm: bool,
) -> str:
    """The command line that relaunches the job as it ran (a shell line, quoted)."""
    python = (bundle.get("command") or {}).get("python_executable") or "python"
    run = shlex.join(["-m", "orchestrator_fsm", *run_argv])
    count = nodes if nodes is not None else "N"
    allocation = "one node" if nodes == 1 else f"{count} nodes"
    if per_node is None and nodes is not None and world % nodes == 0:
        per_node = world // nodes
    if launcher in (None, "torchrun"):
        torchrun = (
            f"{shlex.quote(python)} -m torch.distributed.run --nnodes={count} "
            f"--nproc_per_node={per_node or 'M'} --rdzv-backend=c10d"
        )
        if in_slurm:
            return (
                f"in a SLURM allocation of {allocation}: srun --nodes={count} "
                f"--ntasks-per-node=1 {torchrun} --rdzv-endpoint=$(scontrol show hostnames "
                '"$SLURM_JOB_NODELIST" | head -n 1):29500 --rdzv-id="$SLURM_JOB_ID" '
                f"{run}"
            )
        return (
            f"on each of the {count} nodes: {torchrun} --rdzv-endpoint=FIRST_NODE:29500 "
            f"--rdzv-id=SAME_ID {run}"
        )
    tasks = f"--nodes={count} --ntasks={world}"
    if per_node is not None and nodes is not None and per_node * nodes == world:
        tasks += f" --ntasks-per-node={per_node}"
    if in_slurm or launcher == "slurm":
        return f"in a SLURM allocation of {allocation}: srun {tasks} {shlex.quote(python)} {run}"
    return f"with {launcher} as before, {world} processes running: {shlex.quote(python)} {run}"

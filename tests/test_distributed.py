"""Where a process stands in its job, read from what torchrun or SLURM left in its env."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import run_torchrun

from orchestrator_fsm.distributed import (
    LAUNCHER_ENV_VARS,
    Launch,
    discover_launch,
    get_local_rank,
    get_rank,
    get_world_size,
)


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


STANDALONE_UUID = "0f6b4a8e-3c1d-4e55-9b7a-2d9e1f0c8a61"

# What torchrun --standalone --nproc-per-node=4 gives its third worker.
TORCHRUN_STANDALONE = {
    "RANK": "2",
    "LOCAL_RANK": "2",
    "WORLD_SIZE": "4",
    "LOCAL_WORLD_SIZE": "4",
    "GROUP_RANK": "0",
    "GROUP_WORLD_SIZE": "1",
    "ROLE_RANK": "2",
    "ROLE_NAME": "default",
    "MASTER_ADDR": "localhost",
    "MASTER_PORT": "41733",
    "TORCHELASTIC_RUN_ID": STANDALONE_UUID,
    "TORCHELASTIC_RESTART_COUNT": "0",
    "TORCHELASTIC_MAX_RESTARTS": "0",
}
# torchrun --nnodes=2 --nproc-per-node=4 --rdzv-id=exp42: the second worker of node 1.
TORCHRUN_TWO_NODES = {
    **TORCHRUN_STANDALONE,
    "RANK": "5",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "8",
    "GROUP_RANK": "1",
    "GROUP_WORLD_SIZE": "2",
    "ROLE_RANK": "5",
    "MASTER_ADDR": "node0",
    "TORCHELASTIC_RUN_ID": "exp42",
}
# The job's variables, as sbatch --nodes=2 --ntasks=4 gives its batch script.
SBATCH_JOB = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOBID": "4242",
    "SLURM_JOB_NAME": "train",
    "SLURM_NTASKS": "4",
    "SLURM_NPROCS": "4",
    "SLURM_NNODES": "2",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_TASKS_PER_NODE": "2(x2)",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_SUBMIT_DIR": "/home/user/project",
}
# srun inside that job: task 3, the second task of node 1, in step 0.
SRUN_STEP = {
    **SBATCH_JOB,
    "SLURM_STEP_ID": "0",
    "SLURM_STEPID": "0",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
}
# Task 3 of the array sbatch --array=0-7 (job ids 5000..5007), in its batch script.
SLURM_ARRAY_TASK = {
    **SBATCH_JOB,
    "SLURM_JOB_ID": "5003",
    "SLURM_JOBID": "5003",
    "SLURM_ARRAY_JOB_ID": "5000",
    "SLURM_ARRAY_TASK_ID": "3",
    "SLURM_ARRAY_TASK_COUNT": "8",
}

LAUNCHES: dict[str, tuple[dict[str, str], Launch]] = {
    "plain python": ({}, Launch()),
    "torchrun standalone, 4 processes": (
        TORCHRUN_STANDALONE,
        Launch("torchrun", 2, 2, 4, 4, 0, job_id=STANDALONE_UUID),
    ),
    "torchrun on 2 nodes": (TORCHRUN_TWO_NODES, Launch("torchrun", 5, 1, 8, 4, 1, job_id="exp42")),
    "torchrun on 2 nodes without --rdzv-id": (
        {**TORCHRUN_TWO_NODES, "TORCHELASTIC_RUN_ID": "none"},
        # Nothing names the job but the endpoint every node was given.
        Launch("torchrun", 5, 1, 8, 4, 1, job_id=None, rendezvous="node0:41733"),
    ),
    "torchrun after one restart": (
        {**TORCHRUN_TWO_NODES, "TORCHELASTIC_RESTART_COUNT": "1"},
        Launch("torchrun", 5, 1, 8, 4, 1, job_id="exp42", restart_count=1),
    ),
    "srun, 4 tasks over 2 nodes": (SRUN_STEP, Launch("slurm", 3, 1, 4, 2, 1, job_id="4242.0")),
    "srun in the second step": (
        {**SRUN_STEP, "SLURM_STEP_ID": "1", "SLURM_STEPID": "1"},
        Launch("slurm", 3, 1, 4, 2, 1, job_id="4242.1"),
    ),
    "sbatch batch script with SLURM_NTASKS=4": (SBATCH_JOB, Launch(job_id="4242")),
    "sbatch batch step that names its step id": (
        {**SBATCH_JOB, "SLURM_STEP_ID": "4294967291"},
        Launch(job_id="4242"),
    ),
    "SLURM array task, batch script": (SLURM_ARRAY_TASK, Launch(job_id="5000_3")),
    "SLURM array task, srun step": (
        {**SLURM_ARRAY_TASK, **{k: v for k, v in SRUN_STEP.items() if "STEP" in k}},
        Launch("slurm", 0, 0, 4, 2, 0, job_id="5000_3.0"),
    ),
    "requeued SLURM job, srun step": (
        {**SRUN_STEP, "SLURM_RESTART_COUNT": "1"},
        Launch("slurm", 3, 1, 4, 2, 1, job_id="4242.0", restart_count=1),
    ),
    "requeued SLURM job, batch script": (
        {**SBATCH_JOB, "SLURM_RESTART_COUNT": "1"},
        Launch(job_id="4242", restart_count=1),
    ),
    "srun torchrun: torchrun's ranks, SLURM's job": (
        {**SRUN_STEP, **TORCHRUN_TWO_NODES, "SLURM_RESTART_COUNT": "1"},
        Launch("torchrun", 5, 1, 8, 4, 1, job_id="4242.0", restart_count=1),
    ),
    "torchrun in a batch script: the job survives a requeue, the uuid would not": (
        {**SBATCH_JOB, **TORCHRUN_STANDALONE},
        Launch("torchrun", 2, 2, 4, 4, 0, job_id="4242"),
    ),
    "LOCAL_RANK=0 alone": ({"LOCAL_RANK": "0"}, Launch("torchrun")),
}


@pytest.mark.parametrize(("environ", "expected"), LAUNCHES.values(), ids=LAUNCHES.keys())
def test_discover_launch_reads_realistic_environments(
    environ: dict[str, str], expected: Launch
) -> None:
    assert discover_launch(environ) == expected


def test_a_requeue_is_recognisable_as_the_same_job() -> None:
    first = discover_launch(SRUN_STEP)
    again = discover_launch({**SRUN_STEP, "SLURM_RESTART_COUNT": "1"})
    assert (first.job_id, first.restart_count) == ("4242.0", 0)
    assert (again.job_id, again.restart_count) == ("4242.0", 1)


def test_every_rank_of_a_job_carries_the_same_job_id() -> None:
    ranks = [
        discover_launch(
            {**SRUN_STEP, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % 2)}
            | {"SLURM_NODEID": str(rank // 2)}
        )
        for rank in range(4)
    ]
    assert [launch.rank for launch in ranks] == [0, 1, 2, 3]
    assert [launch.node_rank for launch in ranks] == [0, 0, 1, 1]
    assert {launch.job_id for launch in ranks} == {"4242.0"}


@pytest.mark.parametrize(
    "environ",
    [{"LOCAL_RANK": "1", "WORLD_SIZE": "2"}, {"LOCAL_RANK": "1"}, {"WORLD_SIZE": "2"}],
    ids=["LOCAL_RANK=1 WORLD_SIZE=2", "LOCAL_RANK=1", "WORLD_SIZE=2"],
)
def test_a_local_rank_without_rank_never_makes_global_rank_zero(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError) as raised:
        discover_launch(environ)
    message = str(raised.value)
    for name, value in environ.items():
        assert f"{name}={value!r}" in message
    assert "no RANK" in message


def test_group_rank_and_local_world_size_do_not_stand_in_for_rank() -> None:
    environ = {"LOCAL_RANK": "1", "GROUP_RANK": "1", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "4"}
    with pytest.raises(ValueError, match="no RANK"):
        discover_launch(environ)


def test_a_rank_without_a_world_size_is_a_warning_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue 22: this rank's guess of the world touches only its own files, so it is
    # warned about; only a guess that could make a second rank 0 is an error.
    with caplog.at_level(logging.WARNING, logger="orchestrator_fsm.distributed"):
        launch = discover_launch({"RANK": "3"})
    assert (launch.rank, launch.world_size) == (3, 4)
    assert "RANK='3' but no WORLD_SIZE" in caplog.text


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RANK": "4", "WORLD_SIZE": "4"}, r"RANK=4 is not below WORLD_SIZE=4"),
        (
            {"RANK": "1", "LOCAL_RANK": "2", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"},
            r"LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2",
        ),
        ({**SRUN_STEP, "SLURM_PROCID": "4"}, r"SLURM_PROCID=4 is not below SLURM_STEP_NUM_TASKS=4"),
        (
            {**SRUN_STEP, "SLURM_LOCALID": "2"},
            r"SLURM_LOCALID=2 is not below SLURM_STEP_TASKS_PER_NODE=2",
        ),
        (
            {**SRUN_STEP, "SLURM_NODEID": "2"},
            r"SLURM_STEP_TASKS_PER_NODE='2\(x2\)' lists 2 nodes, but this is node 2",
        ),
    ],
)
def test_an_inconsistent_layout_names_the_variables(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        discover_launch(environ)


@pytest.mark.parametrize(
    ("base", "name"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0"}, "RANK"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, "LOCAL_RANK"),
        ({"RANK": "0"}, "WORLD_SIZE"),
        (TORCHRUN_STANDALONE, "LOCAL_WORLD_SIZE"),
        (TORCHRUN_STANDALONE, "GROUP_RANK"),
        (TORCHRUN_STANDALONE, "TORCHELASTIC_RESTART_COUNT"),
        (SRUN_STEP, "SLURM_PROCID"),
        (SRUN_STEP, "SLURM_LOCALID"),
        (SRUN_STEP, "SLURM_NODEID"),
        (SRUN_STEP, "SLURM_STEP_NUM_TASKS"),
        (SRUN_STEP, "SLURM_STEP_ID"),
        (SRUN_STEP, "SLURM_STEP_TASKS_PER_NODE"),
        (SBATCH_JOB, "SLURM_RESTART_COUNT"),
    ],
)
@pytest.mark.parametrize("bad", ["abc", "1.5", "", "-1"])
def test_malformed_value_names_the_variable_and_the_value(
    base: dict[str, str], name: str, bad: str
) -> None:
    with pytest.raises(ValueError) as raised:
        discover_launch({**base, name: bad})
    assert f"{name}={bad!r}" in str(raised.value)


def test_slurm_task_variables_outside_a_step_are_not_read() -> None:
    # A batch script's SLURM_PROCID is the job's, not this process's place in a step.
    assert discover_launch({**SBATCH_JOB, "SLURM_PROCID": "abc"}) == Launch(job_id="4242")


def test_a_malformed_torchrun_value_is_not_papered_over_by_slurm() -> None:
    with pytest.raises(ValueError, match="RANK='zero'"):
        discover_launch({**SRUN_STEP, "RANK": "zero", "WORLD_SIZE": "4"})


def test_surrounding_whitespace_is_tolerated() -> None:
    environ = {"RANK": " 1", "LOCAL_RANK": " 1\n", "WORLD_SIZE": "2 ", "TORCHELASTIC_RUN_ID": " x "}
    assert discover_launch(environ) == Launch("torchrun", 1, 1, 2, 2, 0, job_id="x")


def test_explicit_values_win_over_the_environment() -> None:
    launch = discover_launch(TORCHRUN_TWO_NODES, rank=1, local_rank=0, world_size=2)
    assert (launch.rank, launch.local_rank, launch.world_size) == (1, 0, 2)
    assert (launch.launcher, launch.job_id) == ("torchrun", "exp42")


def test_an_explicit_rank_settles_a_missing_rank() -> None:
    launch = discover_launch({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}, rank=1)
    assert (launch.rank, launch.local_rank, launch.world_size) == (1, 1, 2)


def test_without_a_world_size_the_world_grows_to_hold_an_explicit_rank() -> None:
    launch = discover_launch({}, rank=2, local_rank=1)
    assert (launch.rank, launch.local_rank, launch.world_size, launch.local_world_size) == (
        2,
        1,
        3,
        2,
    )


def test_an_explicit_rank_outside_an_explicit_world_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"rank=3 is not below world_size=2"):
        discover_launch({}, rank=3, world_size=2)


def test_discovery_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SRUN_STEP.items():
        monkeypatch.setenv(name, value)
    assert discover_launch() == discover_launch(SRUN_STEP)


@pytest.mark.parametrize("environ", [e for e, _ in LAUNCHES.values()], ids=LAUNCHES.keys())
def test_the_rank_readers_agree_with_discover_launch_on_a_consistent_launch(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    launch = discover_launch()
    assert (get_rank(), get_local_rank(), get_world_size()) == (
        launch.rank,
        launch.local_rank,
        launch.world_size,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rank": 2, "world_size": 2}, "rank 2 is not below world_size 2"),
        ({"local_rank": 1}, "local_rank 1 is not below local_world_size 1"),
        ({"world_size": 0}, "world_size must be an integer >= 1, got 0"),
        ({"restart_count": -1}, "restart_count must be an integer >= 0, got -1"),
    ],
)
def test_a_launch_cannot_describe_an_impossible_layout(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Launch(**fields)


def test_a_launch_is_plain_data() -> None:
    launch = discover_launch(SRUN_STEP)
    assert json.loads(json.dumps(launch.as_dict())) == launch.as_dict()
    assert Launch(**launch.as_dict()) == launch  # type: ignore[arg-type]
    assert not launch.is_main_process
    assert attrs.evolve(launch, rank=0).is_main_process


PRINT_LAUNCH = """\
import json
from orchestrator_fsm.distributed import discover_launch
print(json.dumps(discover_launch().as_dict()), flush=True)
"""


@pytest.mark.slow
def test_a_real_torchrun_launch_gives_each_worker_its_place(tmp_path: Path) -> None:
    script = tmp_path / "print_launch.py"
    script.write_text(PRINT_LAUNCH, encoding="utf-8")
    stdout, _ = run_torchrun(tmp_path, script, nproc=2, timeout_s=120)
    launches = sorted(
        (json.loads(line) for line in stdout.splitlines() if line.startswith("{")),
        key=lambda launch: launch["rank"],
    )
    assert [launch["rank"] for launch in launches] == [0, 1]
    assert [launch["local_rank"] for launch in launches] == [0, 1]
    assert {launch["world_size"] for launch in launches} == {2}
    assert {launch["local_world_size"] for launch in launches} == {2}
    assert {launch["launcher"] for launch in launches} == {"torchrun"}
    job_ids = {launch["job_id"] for launch in launches}
    assert len(job_ids) == 1 and None not in job_ids

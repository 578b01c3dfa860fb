"""How a job ended, as the record says it: a signal sent to the whole job blames no rank,
the scheduler's word makes it ``cancelled``, ``preempted`` or ``timeout`` (and nothing
else does), attempts are written once, every rank keeps every attempt, the raw SLURM
job id is read from the environment, and a refused launch is one line.

Real processes: torchrun with two ranks signalled as a process group, the console
command, Ctrl-C typed at a pty. The same under a real SLURM (scancel, time limit,
preemption, requeue, arrays) is in tests/slurm/test_slurm.py, one job per scenario.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cli, minimal_recipe, only_run_dir

from orchestrator_fsm import Config, RootOrchestrator
from orchestrator_fsm.lifecycle.ending import SchedulerJob, ending_of, scheduler_job
from orchestrator_fsm.lifecycle.record import read_run
from orchestrator_fsm.mlflow_observer import MLFLOW_STATUS
from orchestrator_fsm.status import STATUSES

WAIT_S = 120.0

# A user's script: enter the run, say so with a file per rank, then work until stopped.
SCRIPT = textwrap.dedent(
    """
    import os, pathlib, sys, time
    from orchestrator_fsm import Config, RootOrchestrator

    recipe, marks = sys.argv[1], pathlib.Path(sys.argv[2])
    fail_rank = int(sys.argv[3]) if len(sys.argv) > 3 else -1
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    with RootOrchestrator(Config.from_recipe(recipe)) as orch:
        mark = marks / f"entered-{orch.rank}-{attempt}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"
        mark.write_text(str(orch.paths.root))
        if orch.rank == fail_rank and attempt == 0:
            raise ValueError(f"rank {orch.rank} lost its data")
        time.sleep(float(os.environ.get("WORK_S", "300")))
    """
)


def _env(**extra: str) -> dict[str, str]:
    from orchestrator_fsm.distributed import LAUNCHER_ENV_VARS

    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV_VARS}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _write(tmp_path: Path) -> tuple[Path, Path, Path]:
    recipe = tmp_path / "recipe.yaml"
    data = minimal_recipe(tmp_path)
    data["telemetry"]["heartbeat_s"] = 0
    data.setdefault("infrastructure", {})["join_timeout_s"] = 120
    recipe.write_text(yaml.safe_dump(data), encoding="utf-8")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT, encoding="utf-8")
    marks = tmp_path / "marks"
    marks.mkdir()
    return recipe, script, marks


def _wait_marks(marks: Path, count: int, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(list(marks.glob("entered-*"))) < count:
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the job exited with {proc.returncode} too early:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {count} ranks entered the run in {WAIT_S}s")
        time.sleep(0.05)


@contextlib.contextmanager
def _torchrun(
    script: Path, recipe: Path, marks: Path, *extra: str, restarts: int = 0
) -> Iterator[subprocess.Popen[str]]:
    """torchrun with two ranks of ``script``, in a process group of its own (the job,
    signalled whole); killed, group and all, if the test leaves it running."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", f"--max-restarts={restarts}", "--monitor-interval=0.2"]
    proc = subprocess.Popen(
        [*command, str(script), str(recipe), str(marks), *extra],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)


def _sigterm_job(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to every process of the job, as a scheduler sends it; wait for its end."""
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=WAIT_S)


# -- a signal sent to the whole job -------------------------------------------------------


@pytest.mark.slow
def test_a_sigterm_to_the_whole_torchrun_job_blames_no_rank(tmp_path: Path) -> None:
    # Before, rank 0 folded the ranks' records and blamed whichever ended first: rank 1
    # in 18 of 20 such runs. Three runs in a row: a timing race would show.
    for run in range(3):
        base = tmp_path / f"job{run}"
        base.mkdir()
        recipe, script, marks = _write(base)
        with _torchrun(script, recipe, marks) as proc:
            _wait_marks(marks, 2, proc)
            _sigterm_job(proc)
        record = read_run(only_run_dir(base / "outputs"))
        assert record.failed_rank is None, (run, record.error)
        assert record.status == "interrupted" and record.effective_status == "interrupted"
        assert record.interruption is not None and record.interruption.signal == "SIGTERM"
        assert record.interruption.evidence is None  # nothing told more than the signal
        assert record.attempts[-1].reason == "SIGTERM"
        rank1 = record.ranks[0] if record.ranks else None
        assert rank1 is None or rank1.status == "interrupted"


@pytest.mark.slow
def test_a_rank_that_failed_before_the_signal_is_still_the_one_blamed(tmp_path: Path) -> None:
    recipe, script, marks = _write(tmp_path)
    # Rank 1 fails; torchrun then stops rank 0 with SIGTERM: rank 1 ended the job.
    with _torchrun(script, recipe, marks, "1") as proc:
        proc.communicate(timeout=WAIT_S)
    record = read_run(only_run_dir(tmp_path / "outputs"))
    assert record.status == "failed" and record.failed_rank == 1
    assert record.attempts[-1].reason == "rank 1: ValueError: rank 1 lost its data"


@pytest.mark.slow
def test_every_rank_keeps_every_attempt_and_a_closed_attempt_stays_as_written(
    tmp_path: Path,
) -> None:
    recipe, script, marks = _write(tmp_path)
    with _torchrun(script, recipe, marks, "1", restarts=1) as proc:
        _wait_marks(marks, 4, proc)  # both ranks of attempt 1, then of attempt 2
        root = only_run_dir(tmp_path / "outputs")
        rank1 = json.loads((root / "ranks" / "rank1.json").read_text(encoding="utf-8"))
        first = read_run(root).attempts[0]
        _sigterm_job(proc)
    # Before, ranks/rank1.json held only the attempt running now.
    assert [a["number"] for a in rank1["attempts"]] == [1, 2]
    assert rank1["attempts"][0]["status"] == "failed"
    assert rank1["attempts"][0]["reason"] == "ValueError: rank 1 lost its data"
    record = read_run(root)
    assert record.attempts[0] == first  # attempt 2's end rewrote nothing of attempt 1
    assert [a.status for a in record.attempts] == ["failed", "interrupted"]
    final = json.loads((root / "ranks" / "rank1.json").read_text(encoding="utf-8"))
    assert [a["status"] for a in final["attempts"]] == ["failed", "interrupted"]


# -- what tells more than the signal -------------------------------------------------------


def _job(**fields: Any) -> SchedulerJob:
    return SchedulerJob(scheduler="slurm", job_id="28", **fields)


NOW = datetime(2026, 12, 7, 4, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"JobState": "COMPLETING", "Reason": "TimeLimit"}, "timeout"),
        ({"JobState": "TIMEOUT", "Reason": "None"}, "timeout"),
        ({"JobState": "CANCELLED", "Reason": "None"}, "cancelled"),
        ({"JobState": "PREEMPTED", "Reason": "None"}, "preempted"),
        ({"JobState": "RUNNING", "PreemptTime": "2026-12-07T03:59:58"}, "preempted"),
        ({"JobState": "COMPLETING", "Reason": "None", "Restarts": "1"}, "preempted"),
        ({"JobState": "REQUEUED", "Reason": "None"}, "preempted"),
        # `scancel --signal=TERM`: the job runs on; only the signal is known.
        ({"JobState": "RUNNING", "Reason": "None", "Restarts": "0"}, "interrupted"),
    ],
)
def test_slurm_says_how_the_job_ended(fields: dict[str, str], status: str) -> None:
    found, interruption = ending_of(signal.SIGTERM, NOW, _job(), query=lambda _: fields)
    assert found == status
    assert interruption.signal == "SIGTERM"
    assert interruption.scheduler_state == fields["JobState"]
    assert (interruption.evidence is None) == (status == "interrupted")


def test_slurmstepd_line_tells_what_completing_hides(tmp_path: Path) -> None:
    # COMPLETING masks CANCELLED: slurmstepd's line in the job's output says it.
    out = tmp_path / "slurm-28.out"
    out.write_text(
        "slurmstepd-n1: error: *** JOB 28 ON n1 CANCELLED AT 2026-12-07T03:00:00 ***\n"
        "step\nslurmstepd-n1: error: *** JOB 27 ON n1 CANCELLED AT 2026-12-07T04:00:00 ***\n",
        encoding="utf-8",
    )
    fields = {"JobState": "COMPLETING", "Reason": "None", "StdErr": str(out)}
    since = NOW.astimezone().replace(tzinfo=None).astimezone(timezone.utc)
    query = lambda _: fields  # noqa: E731
    # An earlier attempt's line (03:00) and another job's (27) are not this one's.
    status, interruption = ending_of(signal.SIGTERM, NOW, _job(), since=since, query=query)
    assert status == "interrupted" and interruption.scheduler_state == "COMPLETING"
    stamp = NOW.astimezone().strftime("%Y-%m-%dT%H:%M:%S")
    for due, expected in [("", "cancelled"), (" DUE TO TIME LIMIT", "timeout")]:
        line = f"slurmstepd-n1: error: *** JOB 28 ON n1 CANCELLED AT {stamp}{due} ***\n"
        out.write_text(line, encoding="utf-8")
        status, interruption = ending_of(signal.SIGTERM, NOW, _job(), since=since, query=query)
        assert status == expected
        assert interruption.evidence == f"SLURM: JOB 28 ON n1 CANCELLED AT {stamp}{due}"


def test_a_job_that_ended_before_this_attempt_started_is_not_this_ones() -> None:
    # A job id copied from another environment names someone else's (old) job.
    old = NOW.astimezone().replace(tzinfo=None) - timedelta(hours=1)
    fields = {"JobState": "CANCELLED", "Reason": "None", "EndTime": old.isoformat()}
    status, interruption = ending_of(
        signal.SIGTERM, NOW, _job(), since=NOW - timedelta(minutes=1), query=lambda _: fields
    )
    assert (status, interruption.scheduler_state) == ("interrupted", None)


def test_the_end_time_slurm_announced_makes_a_late_signal_a_timeout() -> None:
    job = _job(end_time=NOW)
    early, _ = ending_of(signal.SIGTERM, NOW - timedelta(minutes=1), job, query=lambda _: None)
    late, interruption = ending_of(signal.SIGTERM, NOW, job, query=lambda _: None)
    assert (early, late) == ("interrupted", "timeout")
    assert interruption.evidence is not None and "end time" in interruption.evidence


def test_without_a_scheduler_only_the_signal_is_recorded() -> None:
    status, interruption = ending_of(signal.SIGTERM, NOW, None, in_terminal_foreground=lambda: True)
    assert (status, interruption.signal, interruption.evidence) == ("interrupted", "SIGTERM", None)
    status, _ = ending_of(signal.SIGINT, NOW, None, in_terminal_foreground=lambda: False)
    assert status == "interrupted"
    status, interruption = ending_of(signal.SIGINT, NOW, None, in_terminal_foreground=lambda: True)
    assert status == "cancelled" and interruption.evidence is not None


def test_the_raw_slurm_job_and_array_task_are_read_from_the_environment() -> None:
    job = scheduler_job(
        {"SLURM_JOB_ID": "29", "SLURM_ARRAY_JOB_ID": "27", "SLURM_ARRAY_TASK_ID": "1"}
    )
    assert job is not None and (job.job_id, job.label) == ("29", "27_1")
    assert scheduler_job({}) is None


def test_every_status_has_an_mlflow_status() -> None:
    finals = [s for s in STATUSES if s not in ("running", "refused")]
    assert {s: MLFLOW_STATUS[s] for s in finals} == {
        "completed": "FINISHED",
        "failed": "FAILED",
        "interrupted": "KILLED",
        "cancelled": "KILLED",
        "preempted": "KILLED",
        "timeout": "FAILED",
        "crashed": "FAILED",
    }


# -- a refused launch ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_refused_launch_is_one_line_naming_the_holder_and_the_log(tmp_path: Path) -> None:
    data = minimal_recipe(tmp_path, infrastructure={"lock": {"timeout_s": 0}})
    data["infrastructure"]["lock"]["path"] = str(tmp_path / "run.lock")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data), encoding="utf-8")
    (tmp_path / "entries.py").write_text("def nap(orch):\n    pass\n", encoding="utf-8")
    holder = minimal_recipe(tmp_path / "holder")
    holder["infrastructure"]["lock"]["path"] = str(tmp_path / "run.lock")
    with RootOrchestrator(Config.from_dict(holder)) as orch:
        result = cli("run", str(recipe), "--entry", "entries.py:nap", cwd=tmp_path)
        holder_run = orch.paths.root.name
    assert result.returncode == 1
    # Before, the step's error came with a whole traceback on the console.
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("refused in step 'acquire_lock': LockContendedError:")
    assert f"pid {os.getpid()}" in line and holder_run in line
    run = only_run_dir(tmp_path / "outputs")
    log = run / "logs" / "run.log"
    assert line.endswith(f"the traceback is in {log}")
    assert "Traceback" in log.read_text(encoding="utf-8")


# -- Ctrl-C at a terminal ------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_at_the_terminal_is_cancelled(tmp_path: Path) -> None:
    import pty
    import select

    recipe, _, marks = _write(tmp_path)
    entries = tmp_path / "entries.py"
    entries.write_text(
        "import pathlib, time\n"
        "def wait(orch):\n"
        f"    pathlib.Path({str(marks / 'entered-0')!r}).write_text('yes')\n"
        "    time.sleep(120)\n",
        encoding="utf-8",
    )
    command = [sys.executable, "-m", "orchestrator_fsm", "run", str(recipe), "--entry"]
    pid, terminal = pty.fork()  # the child leads a session whose terminal is ours
    if pid == 0:
        os.chdir(tmp_path)
        os.execvpe(command[0], [*command, "entries.py:wait"], _env())
    output = b""
    try:
        deadline = time.monotonic() + WAIT_S
        while not list(marks.glob("entered-*")):
            assert time.monotonic() < deadline, "the run never entered the pipeline"
            time.sleep(0.05)
        os.write(terminal, b"\x03")  # what pressing Ctrl-C types
        deadline = time.monotonic() + WAIT_S
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            assert time.monotonic() < deadline, "the run did not end after Ctrl-C"
            if select.select([terminal], [], [], 0.1)[0]:  # never a read that blocks
                with contextlib.suppress(OSError):
                    output += os.read(terminal, 65536)
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(terminal)
    record = read_run(only_run_dir(tmp_path / "outputs"))
    assert record.status == "cancelled", output.decode(errors="replace")
    assert record.interruption is not None and record.interruption.signal == "SIGINT"
    assert record.interruption.evidence == "SIGINT in its terminal's foreground (Ctrl-C)"

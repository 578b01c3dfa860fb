"""Runs side by side under the default run lock, refused duplicates, and ``orchestrator-fsm runs``.

Every run and every listing here is the real command in its own process; the default
lock directory is the test's own (``XDG_CACHE_HOME``), so the default lock settings
are the ones under test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, cli_command, minimal_recipe, wait_for, write_recipe

from orchestrator_fsm.cli.runs import parse_since
from orchestrator_fsm.lifecycle.record import read_run

# Its module-scoped runs (four real launches) are costly: one xdist worker runs the whole
# module so they are made once, not once per worker (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("test_runs")

ENTRIES = """
import os
import time
from pathlib import Path


def _released(orch):
    return (Path(orch.cfg.telemetry.output_dir).parent / "release").exists()


def hold(orch):
    (orch.paths.root / "entered").write_text(str(os.getpid()))
    while not _released(orch):
        time.sleep(0.02)
    orch.log_summary({"acc": 0.5})


def score(orch):
    orch.log_metrics({"loss": 0.25}, step=3)
    orch.log_summary({"acc": 0.75, "f1": 0.5, "auc": 0.25, "top5": 1.0})


def only_metrics(orch):
    orch.log_metrics({"loss": 0.125}, step=7)


def boom(orch):
    raise RuntimeError("boom in the pipeline")


def die(orch):
    os._exit(3)
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), COLUMNS="250")


@pytest.fixture
def entries(tmp_path: Path) -> Path:
    path = tmp_path / "entries.py"
    path.write_text(ENTRIES, encoding="utf-8")
    return path


def default_lock_recipe(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A recipe with the default lock settings (no ``infrastructure`` section)."""
    data = minimal_recipe(tmp_path)
    del data["infrastructure"]
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


@pytest.fixture
def launch(tmp_path: Path, env: dict[str, str]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            cli_command(*argv),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    (tmp_path / "release").touch()
    for proc in started:
        if proc.poll() is None:
            try:
                proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def entered(tmp_path: Path) -> dict[int, Path]:
    """The run directories whose ``hold`` entry is running, by the pid that runs it."""
    return {
        int(marker.read_text()): marker.parent
        for marker in (tmp_path / "outputs").glob("*/entered")
        if marker.read_text()
    }


def root_of(proc: subprocess.Popen[str], tmp_path: Path) -> Path:
    """The run directory that ``proc`` (running ``hold``) is inside, once it is."""

    def mine() -> list[Path]:
        return [root for pid, root in entered(tmp_path).items() if pid == proc.pid]

    return wait_for(mine, proc)[0]


def listing(tmp_path: Path, env: dict[str, str], *argv: str) -> list[dict[str, Any]]:
    result = cli("runs", *argv, "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    runs: list[dict[str, Any]] = json.loads(result.stdout)
    return runs


@pytest.mark.slow
def test_two_seeds_and_two_recipes_run_side_by_side_while_a_duplicate_launch_is_refused(
    tmp_path: Path,
    env: dict[str, str],
    entries: Path,
    launch: Callable[..., subprocess.Popen[str]],
) -> None:
    first = write_recipe(tmp_path, default_lock_recipe(tmp_path), "first.yaml")
    other = write_recipe(
        tmp_path, default_lock_recipe(tmp_path, dataset={"name": "other_data"}), "other.yaml"
    )
    hold = f"{entries}:hold"
    seed_1 = launch("run", str(first), "--entry", hold)
    seed_2 = launch("run", str(first), "--entry", hold, "--set", "training.seed=7")
    unrelated = launch("run", str(other), "--entry", hold)
    # All three are inside their pipelines at the same time, each holding its run lock.
    roots = {proc.pid: root_of(proc, tmp_path) for proc in (seed_1, seed_2, unrelated)}

    duplicate = cli("run", str(first), "--entry", hold, cwd=tmp_path, env=env)

    assert duplicate.returncode == 1, duplicate.stdout + duplicate.stderr
    assert "status: refused" in duplicate.stdout
    assert "the run lock is taken" in duplicate.stderr
    assert roots[seed_1.pid].name in duplicate.stderr  # the holder's run is named
    (tmp_path / "release").touch()
    for proc in (seed_1, seed_2, unrelated):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert out.rstrip().endswith("status: completed")

    runs = listing(tmp_path, env)
    assert sorted(run["status"] for run in runs) == ["completed"] * 3 + ["refused"]
    (refused,) = [run for run in runs if run["status"] == "refused"]
    assert refused["error"]["type"] == "LockContendedError"
    assert roots[seed_1.pid].name in refused["error"]["message"]
    assert f"pid {seed_1.pid}" in refused["error"]["message"]
    assert read_run(refused["root"]).status == "refused"
    assert [run["run_id"] for run in listing(tmp_path, env, "--status", "refused")] == [
        refused["run_id"]
    ]
    inspected = cli("inspect", refused["root"], "--json", cwd=tmp_path, env=env)
    assert json.loads(inspected.stdout)["effective_status"] == "refused"
    shown = " ".join(cli("inspect", refused["root"], cwd=tmp_path, env=env).stdout.split())
    assert "refused at the run lock: LockContendedError: the run lock is taken" in shown


@pytest.mark.slow
def test_a_duplicate_with_a_lock_timeout_says_whom_it_waits_for_then_runs(
    tmp_path: Path,
    env: dict[str, str],
    entries: Path,
    launch: Callable[..., subprocess.Popen[str]],
) -> None:
    recipe = write_recipe(tmp_path, default_lock_recipe(tmp_path))
    hold = f"{entries}:hold"
    holder = launch("run", str(recipe), "--entry", hold)
    holder_root = root_of(holder, tmp_path)
    waiter = launch(
        "run", str(recipe), "--entry", hold, "--set", "infrastructure.lock.timeout_s=300"
    )

    def waiting_logs() -> list[Path]:
        logs = (tmp_path / "outputs").glob("*/logs/run.log")
        return [log for log in logs if "waiting for run" in log.read_text(encoding="utf-8")]

    (waiter_log,) = wait_for(waiting_logs, waiter)
    assert waiter_log.parent.parent != holder_root
    (tmp_path / "release").touch()
    holder_out, _ = holder.communicate(timeout=120)
    waiter_out, _ = waiter.communicate(timeout=120)

    assert holder.returncode == 0, holder_out
    assert waiter.returncode == 0, waiter_out
    assert f"waiting for run {holder_root.name} (pid {holder.pid} on host " in waiter_out
    (line,) = [
        line
        for line in waiter_log.read_text(encoding="utf-8").splitlines()
        if "waiting for run" in line
    ]
    assert f"waiting for run {holder_root.name} (pid {holder.pid} on host " in line
    assert ") since 20" in line and line.endswith("; waiting up to 300s")
    assert sorted(run["status"] for run in listing(tmp_path, env)) == ["completed"] * 2


@pytest.mark.slow
def test_project_scope_keeps_every_run_of_the_project_apart(
    tmp_path: Path,
    env: dict[str, str],
    entries: Path,
    launch: Callable[..., subprocess.Popen[str]],
) -> None:
    recipe = write_recipe(
        tmp_path, default_lock_recipe(tmp_path, infrastructure={"lock": {"scope": "project"}})
    )
    holder = launch("run", str(recipe), "--entry", f"{entries}:hold")
    root_of(holder, tmp_path)

    other_seed = cli(
        "run",
        str(recipe),
        "--entry",
        f"{entries}:score",
        "--set",
        "training.seed=9",
        cwd=tmp_path,
        env=env,
    )

    assert other_seed.returncode == 1
    assert "status: refused" in other_seed.stdout
    assert "orchestrator-fsm.lock" in other_seed.stderr  # the project's one lock file


@pytest.fixture(scope="module")
def made_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four real runs, one after the other, by entry: completed, failed, crashed, metrics."""
    base = tmp_path_factory.mktemp("made-runs")
    env = dict(os.environ, XDG_CACHE_HOME=str(base / "cache"))
    entries = base / "entries.py"
    entries.write_text(ENTRIES, encoding="utf-8")
    recipe = write_recipe(base, default_lock_recipe(base))
    for function in ("score", "boom", "die", "only_metrics"):
        cli("run", str(recipe), "--entry", f"{entries}:{function}", cwd=base, env=env)
    return base / "outputs"


@pytest.fixture
def finished_runs(
    tmp_path: Path, env: dict[str, str], made_runs: Path
) -> dict[str, dict[str, Any]]:
    """A copy of :func:`made_runs` in ``tmp_path / "outputs"``, as listed, by entry."""
    shutil.copytree(made_runs, tmp_path / "outputs")
    by_entry = {run["entry"].rpartition(":")[2]: run for run in listing(tmp_path, env)}
    assert sorted(by_entry) == ["boom", "die", "only_metrics", "score"]
    return by_entry


@pytest.mark.slow
def test_runs_lists_newest_first_with_true_status_attempts_metrics_and_entry(
    tmp_path: Path, env: dict[str, str], finished_runs: dict[str, dict[str, Any]]
) -> None:
    runs = listing(tmp_path, env)
    assert [run["entry"].rpartition(":")[2] for run in runs] == [
        "only_metrics",
        "die",
        "boom",
        "score",
    ]
    assert [run["started_at"] for run in runs] == sorted(
        (run["started_at"] for run in runs), reverse=True
    )
    assert {name: run["status"] for name, run in finished_runs.items()} == {
        "score": "completed",
        "boom": "failed",
        "die": "crashed",  # run.json still says running; its process is gone
        "only_metrics": "completed",
    }
    assert finished_runs["die"]["recorded_status"] == "running"
    assert finished_runs["score"]["summary"] == {"acc": 0.75, "f1": 0.5, "auc": 0.25, "top5": 1.0}
    assert finished_runs["score"]["metrics"] == {"loss": 0.25}
    assert finished_runs["boom"]["error"]["message"] == "boom in the pipeline"
    assert all(run["attempts"] == 1 for run in runs)

    table = cli("runs", "outputs", cwd=tmp_path, env=env)
    assert table.returncode == 0, table.stderr
    header, *rows, footer = table.stdout.rstrip().splitlines()
    assert header.split() == [
        "run",
        "id",
        "status",
        "attempts",
        "started",
        "duration",
        "key",
        "metrics",
        "entry",
    ]
    assert footer == "4 runs in outputs"
    assert [row.split()[0] for row in rows] == [run["run_id"] for run in runs]
    cells = {row.split()[0]: row for row in rows}
    score_row = cells[finished_runs["score"]["run_id"]]
    # The summary is the key result; three values (run.json keeps them sorted) and a count.
    assert "acc=0.75, auc=0.25, f1=0.5, +1 more" in score_row
    assert score_row.split()[1:3] == ["completed", "1"]
    assert "loss=0.125" in cells[finished_runs["only_metrics"]["run_id"]]
    assert cells[finished_runs["die"]["run_id"]].split()[1] == "crashed"
    assert cells[finished_runs["score"]["run_id"]].rstrip().endswith(":score")


@pytest.mark.slow
def test_runs_filters_by_status_name_and_since(
    tmp_path: Path, env: dict[str, str], finished_runs: dict[str, dict[str, Any]]
) -> None:
    def ids(*argv: str) -> set[str]:
        return {run["run_id"] for run in listing(tmp_path, env, *argv)}

    every = {run["run_id"] for run in finished_runs.values()}
    assert ids("--status", "crashed") == {finished_runs["die"]["run_id"]}
    assert ids("--status", "failed", "--status", "completed") == every - {
        finished_runs["die"]["run_id"]
    }
    boom_id = finished_runs["boom"]["run_id"]
    assert ids("--name", boom_id[-4:].upper()) == {boom_id}
    assert ids("--since", "1h") == every
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()
    assert ids("--since", tomorrow) == set()
    newest_start = max(run["started_at"] for run in finished_runs.values())
    assert ids("--since", newest_start) == {finished_runs["only_metrics"]["run_id"]}

    table = cli("runs", "--status", "refused", cwd=tmp_path, env=env)
    assert table.returncode == 0
    assert table.stdout.strip() == "0 runs matching the filters in outputs"


@pytest.mark.slow
def test_runs_leaves_out_hidden_entries_files_and_folders_without_a_record(
    tmp_path: Path, env: dict[str, str], finished_runs: dict[str, dict[str, Any]]
) -> None:
    outputs = tmp_path / "outputs"
    score_root = Path(finished_runs["score"]["root"])
    shutil.copytree(score_root, outputs / ".hidden-copy")
    (outputs / ".jobs").mkdir(exist_ok=True)
    (outputs / "notes").mkdir()
    (outputs / "README.txt").write_text("not a run\n")
    torn = outputs / "torn-run"
    torn.mkdir()
    (torn / "run.json").write_text('{"run_id": "torn-r')

    result = cli("runs", cwd=tmp_path, env=env)

    assert result.returncode == 0, result.stderr
    rows = result.stdout.rstrip().splitlines()[1:-1]
    assert {row.split()[0] for row in rows} == {run["run_id"] for run in finished_runs.values()}
    assert result.stdout.rstrip().endswith("4 runs in outputs (1 folder without run.json left out)")
    assert (
        "warning: skipped outputs/torn-run: outputs/torn-run/run.json is not valid JSON"
        in " ".join(result.stderr.split())
    )


def test_runs_of_a_folder_that_is_not_there_or_a_bad_since_is_a_usage_error(
    tmp_path: Path, env: dict[str, str]
) -> None:
    missing = cli("runs", cwd=tmp_path, env=env)
    assert missing.returncode == 2
    assert "outputs is not a directory; expected an output directory" in missing.stderr
    (tmp_path / "outputs").mkdir()
    bad = cli("runs", "--since", "last tuesday", cwd=tmp_path, env=env)
    assert bad.returncode == 2
    assert "argument --since: expected an age such as 30m" in bad.stderr
    assert "got 'last tuesday'" in bad.stderr
    empty = cli("runs", cwd=tmp_path, env=env)
    assert (empty.returncode, empty.stdout.strip()) == (0, "0 runs in outputs")


@pytest.mark.slow
def test_inspect_of_an_output_directory_points_to_runs(
    tmp_path: Path, env: dict[str, str], finished_runs: dict[str, dict[str, Any]]
) -> None:
    result = cli("inspect", "outputs", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "list them with `orchestrator-fsm runs outputs`" in " ".join(result.stderr.split())


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("3d", timedelta(days=3)),
        ("1w", timedelta(weeks=1)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_since_takes_an_age_before_now(text: str, age: timedelta) -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
    assert parse_since(text, now) == now - age


def test_since_takes_iso_dates_and_times_local_unless_they_carry_an_offset() -> None:
    assert parse_since("2026-12-01T09:30+02:00") == datetime(
        2026, 12, 1, 7, 30, tzinfo=timezone.utc
    )
    local = parse_since("2026-12-01")
    assert local == datetime(2026, 12, 1).astimezone()
    assert local.tzinfo is not None
    with pytest.raises(ValueError, match="expected an age such as 30m"):
        parse_since("2h ago")


def test_the_listing_benchmark_runs_on_a_small_tree_and_cleans_up(tmp_path: Path) -> None:
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.runs", "--runs", "42", "--repeats", "1"],
        cwd=repo,
        env=dict(os.environ, TMPDIR=str(temp_root)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["runs"] == 42
    assert sum(result["statuses"].values()) == 42
    assert set(result["statuses"]) == {"completed", "failed", "interrupted", "refused", "crashed"}
    assert {"list_runs", "command: runs DIR", "command: --version"} <= set(result["ms"])
    assert list(temp_root.iterdir()) == []

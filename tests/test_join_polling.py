"""What a waiting rank's poll costs: a rank above 0 waiting to join rank 0's run reads
the job's entry and rank 0's ``run.json``, and nothing else, however many ranks the job
has and however many records of an earlier attempt lie in ``ranks/``. Counted with an
audit hook on ``open()`` in a real waiting process (torchrun's variables, rank 1 of
1,000, on a restart), until its join timeout runs out."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import minimal_recipe

from orchestrator_fsm.config import Config
from orchestrator_fsm.distributed import LAUNCHER_ENV_VARS, Launch
from orchestrator_fsm.layout import job_entry_file
from orchestrator_fsm.lifecycle.job_index import JobEntry, job_key, write_job_entry

pytestmark = pytest.mark.slow

WORLD = 1000
OLD_RANK_RECORDS = 300
JOIN_TIMEOUT_S = 2.0

# The waiting rank: every open() noted (path, monotonic time) by an audit hook, then a
# RootOrchestrator that waits for rank 0 until its join timeout runs out.
WAITER = textwrap.dedent(
    """
    import json, sys, time
    recipe, log = sys.argv[1], sys.argv[2]
    opens = []

    def hook(event, args):
        if event == "open" and args:
            opens.append((str(args[0]), time.monotonic()))

    sys.addaudithook(hook)
    from orchestrator_fsm import Config, RootOrchestrator

    try:
        with RootOrchestrator(Config.from_recipe(recipe)):
            error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    with open(log, "w", encoding="utf-8") as handle:
        json.dump({"error": error, "opens": opens}, handle)
    """
)


def lay_out(tmp_path: Path, rank_0_state: str, latest_restart: int) -> tuple[Path, Path, Path]:
    """An output directory as a restarted job (attempt 2, restart 1) of ``WORLD`` ranks
    leaves it while rank 0 is in ``rank_0_state`` and its record's latest attempt has
    ``latest_restart``; ``ranks/`` still holds the records of the attempt before. The
    recipe, the entry and the run directory."""
    output = tmp_path / "outputs"
    recipe = tmp_path / "recipe.yaml"
    data = minimal_recipe(tmp_path)
    data.setdefault("infrastructure", {})["join_timeout_s"] = JOIN_TIMEOUT_S
    data["telemetry"]["heartbeat_s"] = 0
    recipe.write_text(yaml.safe_dump(data), encoding="utf-8")
    config_hash = Config.from_recipe(recipe).config_hash()
    launch = Launch(
        launcher="torchrun",
        rank=1,
        local_rank=1,
        world_size=WORLD,
        local_world_size=8,
        job_id="polling-test",
        restart_count=1,
    )
    key = job_key(launch, config_hash)
    assert key is not None
    root = output / "run-1"
    (root / "ranks").mkdir(parents=True)
    attempts: list[dict[str, Any]] = [{"number": 1, "restart_count": 0, "status": "failed"}]
    if latest_restart == 1:
        attempts.append({"number": 2, "restart_count": 1, "status": "running"})
    record = {
        "run_id": "run-1",
        "status": "running",
        "state": rank_0_state,
        "rank": 0,
        "world_size": WORLD,
        "restart_count": latest_restart,
        "config_hash": config_hash,
        "attempts": attempts,
    }
    (root / "run.json").write_text(json.dumps(record), encoding="utf-8")
    journal = [{"step": "provision", "dest": "guarded", "ok": True}] * 20
    (root / "lifecycle.jsonl").write_text("".join(json.dumps(line) + "\n" for line in journal))
    for rank in range(1, OLD_RANK_RECORDS + 1):
        old = {"rank": rank, "restart_count": 0, "status": "failed", "state": "cleaned"}
        (root / "ranks" / f"rank{rank}.json").write_text(json.dumps(old), encoding="utf-8")
    entry = JobEntry(
        job=key,
        restart_count=1,
        written_at=datetime.now(timezone.utc),
        root=root,
        run_id="run-1",
        attempt=len(attempts),
        config_hash=config_hash,
    )
    write_job_entry(output, entry)
    return recipe, job_entry_file(output, key), root


def wait(tmp_path: Path, recipe: Path) -> dict[str, Any]:
    script = tmp_path / "waiter.py"
    script.write_text(WAITER, encoding="utf-8")
    log = tmp_path / "opens.json"
    base = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV_VARS}
    env = {
        **base,
        "OMP_NUM_THREADS": "1",
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": str(WORLD),
        "LOCAL_WORLD_SIZE": "8",
        "GROUP_RANK": "0",
        "GROUP_WORLD_SIZE": str(WORLD // 8),
        "TORCHELASTIC_RUN_ID": "polling-test",
        "TORCHELASTIC_RESTART_COUNT": "1",
    }
    done = subprocess.run(
        [sys.executable, str(script), str(recipe), str(log)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert log.exists(), done.stderr[-3000:]
    result: dict[str, Any] = json.loads(log.read_text(encoding="utf-8"))
    return result


@pytest.mark.parametrize(
    ("rank_0_state", "latest_restart"),
    [("guarded", 1), ("ready", 0)],
    ids=["rank 0 not READY yet", "READY only in the attempt before"],
)
def test_a_waiting_ranks_poll_opens_the_entry_and_run_json_only(
    tmp_path: Path, rank_0_state: str, latest_restart: int
) -> None:
    recipe, entry, root = lay_out(tmp_path, rank_0_state, latest_restart)
    result = wait(tmp_path, recipe)

    # Neither state is rank 0's READY for this attempt: the rank waits its timeout out.
    assert result["error"] is not None
    assert result["error"].startswith("InfrastructureError: rank 1 waited"), result["error"]
    assert "never became ready" in result["error"]
    polls = [t for path, t in result["opens"] if path == str(entry)]
    in_run = [path for path, _ in result["opens"] if path.startswith(str(root))]
    assert len(polls) >= 3, result["opens"][-20:]
    # One run.json per poll. Before, every poll also read lifecycle.jsonl and every
    # record in ranks/: 302 files per poll here, 1,000 at the job's size.
    assert set(in_run) == {str(root / "run.json")}, sorted(set(in_run))[:5]
    assert len(in_run) <= len(polls)
    # Every wait stays bounded by the join timeout, and no sleep passes the longest.
    assert polls[-1] - polls[0] <= JOIN_TIMEOUT_S + 0.5
    assert all(b - a <= 0.5 + 0.2 for a, b in itertools.pairwise(polls))

"""``orchestrator-fsm report``: the page of a run (or of several) opened in a real
headless Chromium: no network request, no script error, the key elements visible at
1280 px and on a phone, and a screenshot of each kind kept.

Screenshots go to ``$ORCHESTRATOR_FSM_TEST_ARTIFACTS`` when set (``make test`` sets
``test-artifacts/``), else to a pytest temporary folder.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import Browser, chromium_path
from tests.conftest import cli, only_run_dir, run_dirs, write_recipe

# Its module-scoped fixtures are costly (a headless Chromium): one xdist
# worker runs the whole module so they are made once, not once per worker (conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_report_page")]

# Each rank logs "loss" and "acc" per step; FAIL_RANK fails at FAIL_STEP (in the first
# attempt only, when ONLY_ATTEMPT is set); START is where a resumed attempt goes on.
PIPELINE = textwrap.dedent(
    """
    import os, time

    def main(orch):
        orch.log_environment_report()
        fail_rank = int(os.environ.get("FAIL_RANK", "-1"))
        fail_step = int(os.environ.get("FAIL_STEP", "0"))
        only = os.environ.get("ONLY_ATTEMPT")
        failing = orch.rank == fail_rank and (only is None or int(only) == orch.attempt.number)
        steps = int(os.environ.get("STEPS", "6"))
        for step in range(int(os.environ.get("START", "1")), steps + 1):
            orch.log_metrics({"loss": 1.0 / (step + orch.rank), "acc": 0.1 * step}, step=step)
            if failing and step == fail_step:
                raise RuntimeError(f"rank {orch.rank} ran out of data at step {step}")
            time.sleep(float(os.environ.get("STEP_S", "0.02")))
        orch.log_summary({"final_loss": 1.0 / steps})
    """
)


def _entry(tmp_path: Path) -> str:
    (tmp_path / "pipeline.py").write_text(PIPELINE, encoding="utf-8")
    return f"{tmp_path / 'pipeline.py'}:main"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium here (make test installs Debian's chromium)")
    with Browser(executable) as opened:
        yield opened


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("ORCHESTRATOR_FSM_TEST_ARTIFACTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


def report(path: Path, cwd: Path) -> Path:
    """``orchestrator-fsm report PATH``; the page it says it wrote."""
    result = cli("report", str(path), cwd=cwd)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("report: "), result.stdout
    page = Path(line.removeprefix("report: "))
    assert page.is_file()
    return page


def look(browser: Browser, page: Path, name: str, artifacts: Path) -> None:
    """Open ``page`` at 1280 px and on a phone, screenshot both as ``name``, and check
    it fetched nothing but itself, raised no script error and does not overflow the
    phone's width."""
    browser.viewport(1280, 900)
    browser.open(page)
    assert browser.requests == [page.absolute().as_uri()]
    assert browser.errors == []
    assert browser.evaluate("document.querySelectorAll('script').length") == 0
    ids = browser.evaluate("Array.from(document.querySelectorAll('[id]')).map(e => e.id)")
    assert len(ids) == len(set(ids)), f"{name}: ids repeat"
    browser.screenshot(artifacts / f"{name}-1280.png")
    browser.viewport(390, 844, mobile=True)
    # A mobile viewport widens to what the page needs: the page must need no more.
    width = browser.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"{name}: the page is {width}px wide on a 390px phone"
    browser.screenshot(artifacts / f"{name}-phone.png", full_page=False)
    browser.viewport(1280, 900)
    # Printed: no navigation bar.
    browser.call("Emulation.setEmulatedMedia", session=True, media="print")
    assert not visible(browser, "nav")
    browser.screenshot(artifacts / f"{name}-print.png")
    browser.call("Emulation.setEmulatedMedia", session=True, media="")
    assert browser.errors == []


def visible(browser: Browser, selector: str) -> bool:
    """Whether the element ``selector`` has a size and is not hidden."""
    return bool(
        browser.evaluate(
            f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return false; const r = e.getBoundingClientRect();
            const s = getComputedStyle(e);
            return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none';
            }})()"""
        )
    )


def classes(browser: Browser, selector: str) -> list[str]:
    found = browser.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
        " return e ? Array.from(e.classList) : null; })()"
    )
    assert found is not None, f"no {selector} on the page"
    return list(found)


def series_count(browser: Browser, metric: str) -> int:
    return int(
        browser.evaluate(
            f"document.querySelectorAll('figure[data-metric={json.dumps(metric)}] "
            "path.series').length"
        )
    )


def test_a_completed_run_shows_its_path_metrics_and_non_finite_values(
    tmp_path: Path, browser: Browser, artifacts: Path
) -> None:
    result = cli("run", str(write_recipe(tmp_path)), "--entry", _entry(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path / "outputs")
    rerun = cli("rerun", str(run), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    (again,) = [d for d in run_dirs(tmp_path / "outputs") if d != run]
    # A metrics file may hold what log_metrics refuses (an older version, a hand-made
    # file): NaN and infinities are drawn as marks, not dropped.
    with (run / "metrics.jsonl").open("a", encoding="utf-8") as handle:
        for step, value in ((7, math.nan), (8, math.inf), (9, -math.inf)):
            line = {"kind": "metrics", "rank": 0, "attempt": 1, "step": step, "loss": value}
            handle.write(json.dumps(line) + "\n")
    page = report(run, tmp_path)
    assert page == run / "report.html"
    look(browser, page, "completed", artifacts)
    assert browser.evaluate("document.getElementById('run-status').textContent") == "completed"
    assert "reached" in classes(browser, "#a1-state-cleaned")
    assert "reached" in classes(browser, "#a1-edge-reported-cleaned-cleanup")
    assert visible(browser, "#a1-state-cleaned")
    assert series_count(browser, "loss") == 1 and series_count(browser, "acc") == 1
    kinds = browser.evaluate(
        "Array.from(document.querySelectorAll('figure[data-metric=\"loss\"] .non-finite'))"
        ".map(e => e.dataset.kind)"
    )
    assert sorted(kinds) == ["+inf", "-inf", "NaN"]
    assert visible(browser, "figure[data-metric='loss'] svg.plot")
    assert visible(browser, "#attempt-1 svg.gantt")
    assert browser.evaluate("document.querySelector('#config pre').textContent").count("seed")
    link = browser.evaluate("document.querySelector('#reruns a').href")
    assert link == again.as_uri()
    assert "identical" in browser.evaluate("document.getElementById('reruns').textContent")
    environment = browser.evaluate("document.getElementById('environment').textContent")
    assert "determinism" in environment and "seeds" in environment
    assert visible(browser, "#environment details[open] table")


def test_a_failed_run_highlights_the_failed_step_and_the_rollback(
    tmp_path: Path, browser: Browser, artifacts: Path
) -> None:
    # A CPU-only torch cannot give the CUDA device asked for: resolve_device fails
    # after the lock was taken, and the rollback undoes every step before it.
    recipe = write_recipe(tmp_path, hardware={"device": "cuda"})
    result = cli("run", str(recipe), "--entry", _entry(tmp_path), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    run = only_run_dir(tmp_path / "outputs")
    page = report(run, tmp_path)
    look(browser, page, "failed", artifacts)
    assert "failed" in classes(browser, "#a1-edge-guarded-ready-resolve_device")
    assert "failed" in classes(browser, "#a1-state-guarded")
    assert "rolled_back" in classes(browser, "#a1-edge-any_live-failed-rollback")
    assert "failed" in classes(browser, "#a1-state-failed")
    assert visible(browser, "#a1-edge-guarded-ready-resolve_device")
    assert browser.evaluate("document.querySelector('.failed-step').textContent") == (
        "resolve_device"
    )
    undone = browser.evaluate("document.querySelector('#attempt-1').textContent")
    assert "the undos of acquire_lock, persist_manifest, init_logging" in " ".join(undone.split())
    assert browser.evaluate("document.querySelectorAll('#attempt-1 .bar.failed').length") == 1
    ending = browser.evaluate("document.getElementById('ending').textContent")
    assert "DeviceError" in ending and "device.py" in ending


def test_a_torchrun_job_with_a_failing_rank_shows_each_rank(
    tmp_path: Path, browser: Browser, artifacts: Path
) -> None:
    from orchestrator_fsm.distributed import LAUNCHER_ENV_VARS

    recipe = write_recipe(
        tmp_path, telemetry={"heartbeat_s": 0}, infrastructure={"join_timeout_s": 120}
    )
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV_VARS}
    # Rank 1 fails at step 3; rank 0 is still working when torchrun stops it.
    env.update(OMP_NUM_THREADS="1", FAIL_RANK="1", FAIL_STEP="3", STEPS="40", STEP_S="0.25")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "orchestrator_fsm", "run", str(recipe), "--entry", _entry(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode != 0
    (run,) = run_dirs(tmp_path / "outputs")
    page = report(run, tmp_path)
    look(browser, page, "torchrun", artifacts)
    assert browser.evaluate("document.getElementById('run-status').textContent") == "failed"
    labels = browser.evaluate(
        "Array.from(document.querySelectorAll('#attempt-1 .row-label')).map(e => e.textContent)"
    )
    assert labels == ["rank 0", "rank 1"]
    assert series_count(browser, "loss") == 2
    ending = browser.evaluate("document.getElementById('ending').textContent")
    assert "failed rank" in ending and "rank 1 ran out of data" in ending
    assert browser.evaluate("document.querySelectorAll('#attempt-1 .marker.failure').length") >= 1
    ranks = browser.evaluate("document.getElementById('ranks').textContent")
    assert "rank 1 ran out of data at step 3" in ranks


def test_a_resumed_run_shows_both_attempts(
    tmp_path: Path, browser: Browser, artifacts: Path
) -> None:
    recipe = write_recipe(tmp_path)
    entry = _entry(tmp_path)
    env = {**os.environ, "FAIL_RANK": "0", "FAIL_STEP": "3", "ONLY_ATTEMPT": "1"}
    first = cli("run", str(recipe), "--entry", entry, cwd=tmp_path, env=env)
    assert first.returncode == 1, first.stderr
    run = only_run_dir(tmp_path / "outputs")
    env["START"] = "3"
    again = cli("run", str(recipe), "--entry", entry, "--resume", str(run), cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    page = report(run, tmp_path)
    look(browser, page, "resumed", artifacts)
    statuses = browser.evaluate(
        "Array.from(document.querySelectorAll('.attempt')).map(e => e.dataset.status)"
    )
    assert statuses == ["failed", "completed"]
    # The pipeline raised in attempt 1 (after its environment report): the state it
    # ran in is marked, and its bar.
    assert "failed" in classes(browser, "#a1-state-reported")
    assert "reached" in classes(browser, "#a2-state-cleaned")
    assert browser.evaluate("document.querySelectorAll('#attempt-1 .bar.failed').length") == 1
    assert browser.evaluate("document.querySelectorAll('#attempt-1 .marker.requeue').length") == 1
    assert series_count(browser, "loss") == 2  # rank 0 in attempt 1, rank 0 in attempt 2
    dashes = browser.evaluate(
        "Array.from(document.querySelectorAll('figure[data-metric=\"loss\"] path.series'))"
        ".map(e => e.getAttribute('stroke-dasharray'))"
    )
    assert dashes[0] is None and dashes[1]


def test_a_sweep_gives_one_page_comparing_its_runs(
    tmp_path: Path, browser: Browser, artifacts: Path
) -> None:
    recipe = write_recipe(tmp_path)
    result = cli(
        "run", str(recipe), "--entry", _entry(tmp_path), "-m", "training.seed=1,2", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    page = report(sweep, tmp_path)
    assert page == sweep / "report.html"
    look(browser, page, "sweep", artifacts)
    rows = browser.evaluate("document.querySelectorAll('#runs-table tr').length")
    assert rows == 3  # the header and two runs
    assert "training.seed=1" in browser.evaluate("document.getElementById('runs').textContent")
    assert series_count(browser, "loss") == 2
    verdict = browser.evaluate("document.getElementById('diff-verdict').textContent")
    assert verdict == "identical"
    diff = browser.evaluate("document.getElementById('diff').textContent")
    assert "training.seed" in diff
    # Each run got its own page, linked from the table.
    links = browser.evaluate(
        "Array.from(document.querySelectorAll('#runs-table a')).map(a => a.href)"
    )
    assert len(links) == 2 and all(link.endswith("/report.html") for link in links)
    for root in run_dirs(tmp_path / "outputs"):
        if root.name != "sweeps":
            assert (root / "report.html").is_file()
    # The output directory itself: the same comparison, its sweeps' folder left out.
    page = report(tmp_path / "outputs", tmp_path)
    assert page == tmp_path / "outputs" / "report.html"
    look(browser, page, "outputs", artifacts)
    assert browser.evaluate("document.querySelectorAll('#runs-table tr').length") == 3


def test_report_of_a_folder_with_no_runs_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("report", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "holds no run.json" in result.stderr

"""How long ``orchestrator-fsm report`` takes on a big run, how big the page is, and how
long Chromium takes to render it.

``python -m benchmarks.report_page [--points N] [--ranks R] [--repeats K]`` (from the
repository root) runs a real run (``RootOrchestrator``, one process) in a
:class:`~benchmarks._common.Sandbox`, then gives it ``R`` ranks (default 16): a record
for each rank above 0 in ``ranks/`` (rank 0's, with its rank, pid and start moved) and
one metrics file per rank, ``N`` values in all (default 100,000: two metrics per line,
``N / (2 R)`` steps per rank), a few of them NaN or infinite. Then, ``K`` times each:

- the command, ``orchestrator-fsm report RUN_DIR``, in a fresh interpreter (target
  under 3 s; wall and CPU time, the latter what other work on a loaded machine does
  not inflate), and the page's size (target under 5 MB);
- opening the page in headless Chromium (``tests/browser.py``) from navigation to
  the load event and a forced layout (target under 2 s).

Figures are milliseconds (min / median / p90 / max). Not a test: nothing fails on a
slow number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import Sandbox, summarize

__all__ = ["main", "make_big_run"]


def make_big_run(sandbox: Sandbox, points: int, ranks: int) -> Path:
    """A real run directory with ``ranks`` ranks and ``points`` metric values in all."""
    from orchestrator_fsm import Config, RootOrchestrator
    from orchestrator_fsm.layout import metrics_file, rank_file

    with RootOrchestrator(Config.from_recipe(sandbox.recipe("big"))) as orch:
        orch.log_metrics({"loss": 1.0, "accuracy": 0.0}, step=0)
    assert orch.paths is not None
    root = orch.paths.root
    record = json.loads((root / "run.json").read_text(encoding="utf-8"))
    record["world_size"] = ranks
    (root / "run.json").write_text(json.dumps(record), encoding="utf-8")
    steps = max(1, points // (2 * ranks))
    (root / "ranks").mkdir(exist_ok=True)
    for rank in range(ranks):
        lines = []
        for step in range(steps):
            loss = math.exp(-step / steps * 3) + 0.05 * math.sin(step / 7 + rank)
            if rank == 3 and step in (steps // 3, steps // 2):
                loss = math.nan if step == steps // 3 else math.inf
            line = {"time": "2026-01-01T00:00:00+00:00", "kind": "metrics", "rank": rank,
                    "attempt": 1, "step": step, "loss": loss,
                    "accuracy": 1 - math.exp(-step / steps * 4)}  # fmt: skip
            lines.append(json.dumps(line))
        metrics_file(root, rank).write_text("\n".join(lines) + "\n", encoding="utf-8")
        if rank:
            own = dict(record, rank=rank, pid=100_000 + rank, metrics={}, summary={})
            rank_file(root, rank).write_text(json.dumps(own), encoding="utf-8")
    return root


def _report(sandbox: Sandbox, root: Path) -> tuple[float, float]:
    """The command's wall time and CPU time (user + system: what a loaded machine's
    other work does not inflate)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "orchestrator_fsm", "report", str(root)],
        env=sandbox.env(bytecode_cache=True),
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _render(page: Path, repeats: int) -> list[float]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.browser import Browser, chromium_path

    executable = chromium_path()
    if executable is None:
        raise SystemExit("no chromium on PATH: the render time needs it")
    times = []
    with Browser(executable) as browser:
        browser.viewport(1280, 900)
        for _ in range(repeats):
            browser.open(Path(os.devnull))  # not cached between rounds
            started = time.perf_counter()
            browser.open(page)
            browser.evaluate("document.body.getBoundingClientRect().height")
            times.append(time.perf_counter() - started)
            assert browser.errors == [], browser.errors
            assert browser.requests == [page.as_uri()], browser.requests
    return times


def measure(points: int, ranks: int, repeats: int) -> dict[str, Any]:
    with Sandbox("report") as sandbox:
        root = make_big_run(sandbox, points, ranks)
        _report(sandbox, root)  # the bytecode cache, as a user's installed package has it
        load = os.getloadavg()[0]
        command = [_report(sandbox, root) for _ in range(repeats)]
        page = root / "report.html"
        size = page.stat().st_size
        render = _render(page, repeats)
    return {
        "points": points,
        "ranks": ranks,
        "command_ms": summarize([wall for wall, _ in command]),
        "command_cpu_ms": summarize([cpu for _, cpu in command]),
        "page_bytes": size,
        "render_ms": summarize(render),
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report_page")
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--ranks", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    result = measure(args.points, args.ranks, args.repeats)
    print(json.dumps(result, indent=2))
    verdicts = {
        "command under 3 s": result["command_ms"]["median"] < 3000,
        "page under 5 MB": result["page_bytes"] < 5 * 1024 * 1024,
        "render under 2 s": result["render_ms"]["median"] < 2000,
    }
    for target, met in verdicts.items():
        print(f"{target}: {'met' if met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

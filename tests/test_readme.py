"""The README's examples run as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)


def the_block(marker: str) -> str:
    """The README's one python block that contains ``marker``."""
    (block,) = [block for block in python_blocks() if marker in block]
    return block


def run_in(tmp_path: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    """``command`` run in ``tmp_path`` with its own cache directory; it must succeed."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def run_example(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run as a script in ``tmp_path`` (holding a copy of examples/recipes)."""
    shutil.copytree(ROOT / "examples" / "recipes", tmp_path / "examples" / "recipes")
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    return run_in(tmp_path, [sys.executable, str(script)])


@pytest.mark.slow
def test_readme_quickstart_runs_and_ends_cleaned(tmp_path: Path) -> None:
    quickstart = the_block("orch.log_environment_report()          # phase 7")
    step_by_step = the_block("orch.machine.can_advance()")
    result = run_example(tmp_path, quickstart + step_by_step)
    lines = result.stdout.split()
    assert lines[0] == "cleaned"
    assert lines[1:] == [
        "seeded",
        "configured",
        "provisioned",
        "logged",
        "persisted",
        "guarded",
        "ready",
        "reported",
        "cleaned",
    ]
    runs = sorted((tmp_path / "outputs").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert (run / "run.json").is_file()
        assert (run / "reports" / "config.yaml").is_file()


def test_readme_reading_a_run_back_works_on_a_real_run(tmp_path: Path) -> None:
    from orchestrator_fsm import Config, RootOrchestrator

    reading = the_block('run = read_run("outputs/')
    assert "read_run(" in reading
    cfg = Config.from_dict(
        {
            "dataset": {"name": "synthetic_shapes"},
            "architecture": {"name": "mini_cnn"},
            "training": {"seed": 7},
            "telemetry": {"output_dir": str(tmp_path / "outputs")},
            "infrastructure": {"lock": {"path": str(tmp_path / "run.lock")}},
        }
    )
    with RootOrchestrator(cfg) as orch:
        pass
    assert orch.paths is not None
    script = re.sub(r'read_run\("[^"]*"\)', f"read_run({str(orch.paths.root)!r})", reading)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    first, *timeline = result.stdout.splitlines()
    assert first.startswith("completed None {")
    assert timeline[0].startswith("created -> seeded seed")
    assert timeline[-1].startswith("ready -> cleaned cleanup")


def test_readme_sampler_example_covers_every_sample_once() -> None:
    example = the_block("DistributedSampler(")
    result = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"]


@pytest.mark.slow
def test_readme_metrics_example_logs_and_reads_back(tmp_path: Path) -> None:
    example = the_block('orch.log_summary({"final_acc": 0.9})')
    result = run_example(tmp_path, example)
    assert result.stdout.split() == [str(1.0 / 3), "3", "0.9"]
    (run,) = (tmp_path / "outputs").iterdir()
    assert len((run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()) == 4


@pytest.mark.slow
def test_readme_tour_entry_runs_under_the_real_command(tmp_path: Path) -> None:
    train = the_block("# train.py\n")
    (tmp_path / "train.py").write_text(train, encoding="utf-8")
    command = str(Path(sys.executable).parent / "orchestrator-fsm")
    result = run_in(tmp_path, [command, "run", "--entry", "train.py:main"])
    assert "summary: final_loss=0.333333" in result.stdout
    assert result.stdout.splitlines()[-1] == "status: completed"
    (run,) = (tmp_path / "outputs").iterdir()
    assert "training on cpu in" in (run / "logs" / "run.log").read_text(encoding="utf-8")


def test_readme_tour_commands_are_the_real_ones() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tour = readme[readme.index("## In 60 seconds") : readme.index("## Set-up")]
    commands = re.findall(r"^(?:make|orchestrator-fsm) [^#\n]*", tour, flags=re.MULTILINE)
    assert "make demo" in [c.strip() for c in commands]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, flags=re.MULTILINE)
    from orchestrator_fsm.cli.main import build_parser

    for command in commands:
        if command.startswith("orchestrator-fsm"):
            args = command.replace("<run id>", "RUN").split()[1:]
            build_parser().parse_args(args)  # exits 2 on a usage error


def test_readme_progress_example_runs_with_its_bars_and_log_lines(tmp_path: Path) -> None:
    (example,) = [block for block in python_blocks() if "orch.progress(" in block]
    lines = run_example(tmp_path, example).stderr.splitlines()
    for epoch in (1, 2, 3):
        assert f"[rank0] INFO     epoch {epoch} done" in lines
        assert any(re.fullmatch(rf"epoch {epoch}/3 50/50 \d+\.\ds", line) for line in lines)
    assert any(re.fullmatch(r"training 3/3 loss=0\.3333 \d+\.\ds", line) for line in lines)

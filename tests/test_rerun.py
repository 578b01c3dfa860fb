"""``orchestrator-fsm rerun`` and ``diff``: the rerun bundle, drift, and the verdict.

Every run here is a real ``orchestrator-fsm run`` process writing real files under
``tmp_path``; reruns and diffs are real CLI processes too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import cli, isolated, minimal_recipe

from orchestrator_fsm.cli.rerun import EXIT_DIVERGED, EXIT_DRIFT, EXIT_WITHIN_TOLERANCE
from orchestrator_fsm.git_state import read_git_state
from orchestrator_fsm.layout import RERUNS_FILE, bundle_file
from orchestrator_fsm.lifecycle.record import read_run
from orchestrator_fsm.reproduce.bundle import working_directory

PIPELINES = """
import atexit
import os
import random


def steady(orch):
    for step in (1, 2, 3):
        orch.log_metrics({"loss": 1.0 / step, "acc": 0.25 * step}, step=step)
    orch.log_summary({"final": 0.75})


def noisy(orch):
    # Unseeded: SystemRandom draws from the OS, never from the run's seeded generators.
    for step in (1, 2, 3, 4):
        noise = random.SystemRandom().random() if step >= 3 else 0.0
        orch.log_metrics({"loss": 1.0 / step + noise}, step=step)


def loud(orch):
    # A pipeline may print anything, even a line like the command's own last words,
    # and even after them (at interpreter exit).
    atexit.register(print, f"run directory: {os.getcwd()}", flush=True)
    orch.log_metrics({"loss": 0.5}, step=1)


def jitter(orch):
    for step in (1, 2):
        tiny = random.SystemRandom().uniform(1e-12, 1e-9)
        orch.log_metrics({"loss": 1.0 / step + tiny}, step=step)
"""


def run_dir_of(result: subprocess.CompletedProcess[str]) -> Path:
    """The run directory the command printed: its line just before ``status: ...``."""
    lines = result.stdout.splitlines()
    found = [
        line.removeprefix("run directory: ").strip()
        for line, after in itertools.pairwise(lines)
        if line.startswith("run directory: ") and after.startswith("status: ")
    ]
    assert found, result.stdout + result.stderr
    return Path(found[-1])


def drift_rows(stdout: str) -> list[tuple[str, str, str]]:
    """The drift report's rows: ``(kind, key, "before -> after")``."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("  ") and " -> " in line:
            kind, key, change = line.split(None, 2)
            rows.append((kind, key, change))
    return rows


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A recipe and a pipeline file in ``tmp_path`` (the runs' working directory)."""
    recipe = minimal_recipe(tmp_path, training={"seed": 1234, "lr": 0.1})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "pipe.py").write_text(PIPELINES)
    return tmp_path


def run_pipeline(
    project: Path, function: str, *overrides: str, env: dict[str, str] | None = None
) -> Path:
    result = cli(
        "run", "recipe.yaml", "--entry", f"pipe.py:{function}", *overrides, cwd=project, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir_of(result)


@pytest.mark.slow
def test_the_bundle_holds_what_a_rerun_needs(project: Path) -> None:
    run = run_pipeline(project, "steady", "--set", "training.lr=0.2")
    bundle = json.loads(bundle_file(run).read_text())
    assert bundle["overrides"] == ["training.lr=0.2"]
    assert bundle["entry"]["spec"] == "pipe.py:steady"
    expected = hashlib.sha256((project / "pipe.py").read_bytes()).hexdigest()
    assert bundle["entry"]["sha256"] == expected
    assert bundle["seeds"]["seed"] == 1234
    assert bundle["command"]["cwd"] == str(project)
    assert bundle["config"] == {
        "file": "reports/config.yaml",
        "sha256": hashlib.sha256((run / "reports" / "config.yaml").read_bytes()).hexdigest(),
        "redacted_keys": [],
    }
    assert bundle["environment"]["torch"]["version"]
    assert "mkl" in bundle["environment"]["torch"]
    libraries = bundle["loaded_libraries"]
    if Path("/proc/self/maps").exists():
        assert any(item["soname"].startswith("libtorch") for item in libraries)
    assert "orchestrator-fsm" in bundle["packages"]


def test_a_truncated_diff_is_recorded_as_truncated(tmp_path: Path) -> None:
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    big = tmp_path / "big.txt"
    big.write_text("x\n")
    subprocess.run([*git, "add", "big.txt"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "one"], cwd=tmp_path, check=True)
    with working_directory(str(tmp_path)):
        clean = read_git_state()
        big.write_text("".join(f"line {i} {'y' * 60}\n" for i in range(20_000)))
        changed = read_git_state()
    assert clean is not None
    assert changed is not None
    assert clean.bundle_record()["diff_truncated"] is False
    state = changed.bundle_record()
    assert state["dirty"] == "true"
    assert state["diff_truncated"] is True


@pytest.mark.slow
def test_a_changed_override_is_drift_and_strict_refuses(project: Path) -> None:
    run = run_pipeline(project, "steady")
    result = cli("rerun", str(run), "--strict", "--set", "training.lr=0.5", cwd=project)
    assert result.returncode == EXIT_DRIFT, result.stdout + result.stderr
    assert drift_rows(result.stdout) == [
        ("config", "training.lr", "0.1 -> 0.5"),
        ("overrides", "training.lr", "- -> training.lr=0.5"),
    ]
    assert "refused" in result.stderr
    assert not (run / RERUNS_FILE).exists()  # nothing was started


@pytest.mark.slow
def test_an_edited_entry_file_is_drift(project: Path) -> None:
    run = run_pipeline(project, "steady")
    with (project / "pipe.py").open("a") as pipe:
        pipe.write("\n# edited after the run\n")
    result = cli("rerun", str(run), "--strict", cwd=project)
    assert result.returncode == EXIT_DRIFT, result.stdout + result.stderr
    assert [(kind, key) for kind, key, _ in drift_rows(result.stdout)] == [("entry", "sha256")]


@pytest.mark.slow
def test_a_changed_package_version_is_drift(project: Path) -> None:
    site = project / "site"
    info = site / "fakepkg-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
    paths = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    run = run_pipeline(project, "steady", env=env)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 2.0\n")
    info.rename(site / "fakepkg-2.0.dist-info")
    result = cli("rerun", str(run), "--strict", cwd=project, env=env)
    assert result.returncode == EXIT_DRIFT, result.stdout + result.stderr
    assert drift_rows(result.stdout) == [("packages", "fakepkg", "1.0 -> 2.0")]


@pytest.mark.slow
def test_a_changed_seed_is_drift(project: Path) -> None:
    run = run_pipeline(project, "steady")
    result = cli("rerun", str(run), "--strict", "--set", "training.seed=7", cwd=project)
    assert result.returncode == EXIT_DRIFT, result.stdout + result.stderr
    rows = drift_rows(result.stdout)
    assert ("config", "training.seed", "1234 -> 7") in rows
    assert ("seeds", "seed", "1234 -> 7") in rows
    assert ("seeds", "torch", "1234 -> 7") in rows
    assert {kind for kind, _, _ in rows} == {"config", "overrides", "seeds"}


@pytest.mark.slow
def test_an_unseeded_pipeline_diverges_at_the_step_the_noise_enters(project: Path) -> None:
    run = run_pipeline(project, "noisy")
    result = cli("rerun", str(run), "--strict", cwd=project)
    assert result.returncode == EXIT_DIVERGED, result.stdout + result.stderr
    assert "drift: none" in result.stdout
    verdict = result.stdout.strip().splitlines()[-1]
    assert verdict.startswith("diverged at step 3: loss ")
    lines = (run / RERUNS_FILE).read_text().splitlines()
    assert [json.loads(line)["verdict"]["step"] for line in lines] == [3]


@pytest.mark.slow
def test_a_tolerance_turns_tiny_differences_into_within_tolerance(project: Path) -> None:
    run = run_pipeline(project, "jitter")
    exact = cli("rerun", str(run), cwd=project)
    assert exact.returncode == EXIT_DIVERGED, exact.stdout + exact.stderr
    assert exact.stdout.strip().splitlines()[-1].startswith("diverged at step 1: loss ")
    loose = cli("rerun", str(run), "--atol", "1e-6", cwd=project)
    assert loose.returncode == EXIT_WITHIN_TOLERANCE, loose.stdout + loose.stderr
    assert loose.stdout.strip().splitlines()[-1].startswith("within tolerance")


@pytest.mark.slow
def test_a_rerun_that_needs_a_redacted_secret_names_it(project: Path) -> None:
    run = run_pipeline(project, "steady", "--set", "dataset.api_key=s3cret")
    refused = cli("rerun", str(run), cwd=project)
    assert refused.returncode == 2
    assert "redacted secrets at dataset.api_key" in refused.stderr
    assert "--set dataset.api_key=VALUE" in refused.stderr
    given = cli("rerun", str(run), "--strict", "--set", "dataset.api_key=s3cret", cwd=project)
    assert given.returncode == 0, given.stdout + given.stderr
    assert given.stdout.strip().splitlines()[-1] == "identical"
    assert "s3cret" not in bundle_file(run_dir_of(given)).read_text()


def test_a_directory_without_a_bundle_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("rerun", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "rerun.json does not exist" in result.stderr


@pytest.mark.slow
def test_diff_shows_exactly_the_changed_override(project: Path) -> None:
    first = run_pipeline(project, "steady", *isolated(project), "--set", "training.lr=0.1")
    second = run_pipeline(project, "steady", *isolated(project), "--set", "training.lr=0.2")
    result = cli("diff", str(first), str(second), "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    changed = [(d["kind"], d["key"]) for d in data["differences"] if not d["note"]]
    assert changed == [("config", "training.lr"), ("overrides", "training.lr")]
    assert data["metrics"]["status"] == "identical"
    table = cli("diff", str(first), str(second), cwd=project)
    rows = [line.split() for line in table.stdout.splitlines()[3:] if line.startswith("config")]
    assert rows == [["config", "training.lr", "0.1", "0.2"]]


@pytest.mark.slow
def test_two_strict_reruns_of_the_demo_are_identical(tmp_path: Path) -> None:
    small = ["hardware.reproducible=true", "training.epochs=2", "dataset.num_samples=128"]
    original = cli("run", *small, *isolated(tmp_path), cwd=tmp_path)
    assert original.returncode == 0, original.stdout + original.stderr
    run = run_dir_of(original)
    for _ in range(2):
        rerun = cli("rerun", str(run), "--strict", cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "drift: none" in rerun.stdout
        assert "checkpoint last.pt: " in rerun.stdout
        assert rerun.stdout.strip().splitlines()[-1] == "identical"
        assert read_run(run_dir_of(rerun)).rerun_of == str(run)
        shown = cli("inspect", str(run_dir_of(rerun)), cwd=tmp_path)
        assert "rerun of" in shown.stdout
    reruns = [json.loads(line) for line in (run / RERUNS_FILE).read_text().splitlines()]
    assert [line["verdict"]["status"] for line in reruns] == ["identical", "identical"]


def test_gpu_models_are_read_from_the_driver_listing(tmp_path: Path) -> None:
    from orchestrator_fsm.environment import _gpus

    for index, model in enumerate(("NVIDIA H200", "NVIDIA A100-SXM4-80GB")):
        folder = tmp_path / f"0000:0{index}:00.0"
        folder.mkdir()
        (folder / "information").write_text(f"Model: \t\t {model}\nIRQ:   123\n")
    assert _gpus(tmp_path) == ["NVIDIA H200", "NVIDIA A100-SXM4-80GB"]


def test_run_writes_its_run_directory_where_it_is_asked_to(project: Path) -> None:
    told = project / "told" / "run-dir"
    told.parent.mkdir()
    result = cli(
        "run",
        "recipe.yaml",
        "--entry",
        "pipe.py:steady",
        "--run-dir-file",
        str(told),
        cwd=project,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert told.read_text(encoding="utf-8").strip() == str(run_dir_of(result))


def test_rerun_finds_its_run_whatever_the_pipeline_prints(project: Path) -> None:
    original = run_pipeline(project, "loud")
    result = cli("rerun", str(original), cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    noted = json.loads((original / RERUNS_FILE).read_text().splitlines()[-1])
    rerun = Path(noted["run_dir"])
    assert rerun != project
    assert rerun.parent == original.parent
    assert read_run(rerun).rerun_of == str(original)
    assert noted["verdict"]["status"] == "identical"

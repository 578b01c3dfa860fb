"""Four programs written by others adopt ``orchestrator-fsm run --script`` with at most
three added lines each, and run as they are: module-level code, their own argparse or
``sys.argv`` parsing, ``if __name__ == "__main__":``, sibling imports, their own seeding,
a caught ``KeyboardInterrupt``, a torchrun script. The programs are miniatures kept in
``tests/adoption/`` (see its README); each test adopts a copy and runs it."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, cli_command, isolated, minimal_recipe, only_run_dir

from orchestrator_fsm.distributed import LAUNCHER_ENV_VARS
from orchestrator_fsm.layout import METRICS_FILE, bundle_file

PROGRAMS = Path(__file__).parent / "adoption"
IMPORT = "from orchestrator_fsm import current_run"

# Each adoption: (program folder, its script, [(anchor, inserted line), ...]); a line is
# inserted after the first line holding its anchor (the first at the top of the file).
ADOPTIONS = {
    "mnist": (
        "main.py",
        [
            ("", IMPORT),
            (
                "100. * batch_idx / len(train_loader), loss.item()))",
                "            current_run().log_metrics({'train_loss': loss.item()}, "
                "step=(epoch - 1) * len(train_loader) + batch_idx)",
            ),
            (
                "100. * correct / len(test_loader.dataset)))",
                "    current_run().log_metrics({'test_loss': test_loss, "
                "'accuracy': correct / len(test_loader.dataset)})",
            ),
        ],
    ),
    "word_language_model": (
        "main.py",
        [
            ("", IMPORT),
            (
                "val_loss, math.exp(val_loss)))",
                "        current_run().log_metrics({'val_loss': val_loss}, step=epoch)",
            ),
            (
                "test_loss, math.exp(test_loss)))",
                "current_run().log_summary({'test_loss': test_loss})",
            ),
        ],
    ),
    "nanogpt": (
        "train.py",
        [
            ("", IMPORT),
            (
                """print(f"step {iter_num}: train loss""",
                "        current_run().log_metrics({'train/loss': float(losses['train']), "
                "'val/loss': float(losses['val'])}, step=iter_num)",
            ),
        ],
    ),
    "ddp_tutorial": (
        "multigpu_torchrun.py",
        [
            ("", IMPORT),
            (
                "self.optimizer.step()",
                "        current_run().log_metrics({'loss': loss.item()})",
            ),
        ],
    ),
}


def adopted(program: str, into: Path) -> Path:
    """A copy of ``program``'s folder in ``into`` with its script adopted; the script."""
    script, edits = ADOPTIONS[program]
    folder = into / program
    shutil.copytree(PROGRAMS / program, folder)
    lines = (folder / script).read_text(encoding="utf-8").splitlines()
    for anchor, line in edits:
        at = 0 if not anchor else next(i for i, text in enumerate(lines) if anchor in text) + 1
        lines.insert(at, line)
    (folder / script).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / script


def adoption_diff(program: str, tmp_path: Path) -> list[str]:
    """The unified diff of ``program``'s adoption (what the report shows)."""
    script, _ = ADOPTIONS[program]
    before = (PROGRAMS / program / script).read_text(encoding="utf-8").splitlines()
    after = adopted(program, tmp_path / "diff").read_text(encoding="utf-8").splitlines()
    return list(difflib.unified_diff(before, after, script, script, n=0, lineterm=""))


def changed_lines(diff: list[str]) -> list[str]:
    return [line for line in diff[2:] if line[:1] in "+-"]


_NOT_VALUES = {"time", "kind", "rank", "attempt", "step"}


def metrics_of(run: Path, name: str = METRICS_FILE) -> list[dict[str, object]]:
    """Each line of the run's metrics file: its ``step`` and ``values``."""
    text = (run / name).read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    return [
        {
            "step": line.get("step"),
            "values": {k: v for k, v in line.items() if k not in _NOT_VALUES},
        }
        for line in lines
        if line["kind"] == "metrics"
    ]


@pytest.mark.parametrize("program", sorted(ADOPTIONS))
def test_each_program_adopts_with_at_most_three_changed_lines(program: str, tmp_path: Path) -> None:
    changed = changed_lines(adoption_diff(program, tmp_path))
    assert 1 <= len(changed) <= 3, changed
    assert all(line.startswith("+") for line in changed)


@pytest.mark.slow
def test_mnist_runs_under_run_script_with_its_own_arguments(tmp_path: Path) -> None:
    script = adopted("mnist", tmp_path)
    argv = ["--epochs", "2", "--batch-size", "64", "--log-interval", "2", "--save-model"]
    result = cli(
        "run", "--script", str(script), *isolated(tmp_path), "--", *argv, cwd=script.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Train Epoch: 2" in result.stdout
    run = only_run_dir(tmp_path / "outputs")
    names = [sorted(line["values"]) for line in metrics_of(run)]  # type: ignore[call-overload]
    assert ["accuracy", "test_loss"] in names
    assert ["train_loss"] in names
    assert (script.parent / "mnist_cnn.pt").is_file()  # --save-model reached its argparse
    entry = json.loads(bundle_file(run).read_text(encoding="utf-8"))["entry"]
    assert (entry["kind"], entry["argv"]) == ("script", argv)


@pytest.mark.slow
def test_word_language_model_runs_at_module_level_from_its_recipe(tmp_path: Path) -> None:
    script = adopted("word_language_model", tmp_path)
    corpus = script.parent / "data" / "tiny"
    corpus.mkdir(parents=True)
    words = [
        "the",
        "cat",
        "sat",
        "on",
        "the",
        "mat",
        "and",
        "the",
        "dog",
        "ran",
        "to",
        "the",
        "cat",
    ]
    for split, lines in (("train", 40), ("valid", 8), ("test", 8)):
        text = "\n".join(" ".join(words[i % 5 :] + words[: i % 5]) for i in range(lines))
        (corpus / f"{split}.txt").write_text(text + "\n", encoding="utf-8")
    # The recipe names the script (beside it), so `run RECIPE` needs no flag.
    recipe = minimal_recipe(tmp_path)
    recipe["entry"] = "main.py"
    import yaml

    (script.parent / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    small = ["--data", "data/tiny", "--epochs", "2", "--emsize", "8", "--nhid", "8"]
    small += ["--nlayers", "1", "--bptt", "5", "--batch_size", "4", "--log-interval", "5"]
    result = cli("run", "recipe.yaml", "--", *small, cwd=script.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "End of training" in result.stdout
    run = only_run_dir(tmp_path / "outputs")
    assert [line["step"] for line in metrics_of(run)] == [1, 2]
    summary = json.loads((run / "run.json").read_text(encoding="utf-8"))["summary"]
    assert set(summary) == {"test_loss"}


@pytest.mark.slow
def test_nanogpt_reads_its_own_argv_and_reseeds_itself(tmp_path: Path) -> None:
    import numpy as np

    script = adopted("nanogpt", tmp_path)
    data = script.parent / "data" / "tiny"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        rng.integers(0, 64, 512, dtype=np.uint16).tofile(data / f"{split}.bin")
    argv = [
        "--dataset=tiny",
        "--device=cpu",
        "--dtype=float32",
        "--compile=False",
        "--batch_size=2",
        "--block_size=8",
        "--n_layer=1",
        "--n_head=2",
        "--n_embd=16",
        "--gradient_accumulation_steps=1",
        "--eval_iters=2",
        "--eval_interval=2",
        "--max_iters=4",
        "--learning_rate=1e-3",
    ]
    # nanoGPT opens configurator.py by a relative path: it runs from its own folder.
    runs = []
    for _ in range(2):
        result = cli(
            "run", "--script", "train.py", *isolated(tmp_path), "--", *argv, cwd=script.parent
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Overriding: max_iters = 4" in result.stdout
        runs.append(result)
    outputs = tmp_path / "outputs"
    first, second = sorted(p for p in outputs.iterdir() if p.is_dir() and p.name[0] != ".")
    steps = [line["step"] for line in metrics_of(first)]
    assert steps == [0, 2, 4]
    # Its own torch.manual_seed(1337) makes two runs the same, value for value.
    assert [line["values"] for line in metrics_of(first)] == [
        line["values"] for line in metrics_of(second)
    ]


@pytest.mark.slow
def test_the_ddp_tutorial_runs_under_torchrun_on_every_rank(tmp_path: Path) -> None:
    script = adopted("ddp_tutorial", tmp_path)
    recipe = minimal_recipe(tmp_path)
    recipe["infrastructure"]["join_timeout_s"] = 120
    recipe["telemetry"]["heartbeat_s"] = 0
    import yaml

    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV_VARS}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run_argv = cli_command("run", str(tmp_path / "recipe.yaml"), "--script", str(script))[1:]
    result = subprocess.run(
        [*command, *run_argv, "--", "2", "1", "--batch_size", "32"],
        cwd=script.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[GPU1] Epoch 1" in result.stdout + result.stderr
    run = only_run_dir(tmp_path / "outputs")
    # 256 samples, 2 ranks, batches of 32: 4 steps an epoch on each rank, 2 epochs.
    assert len(metrics_of(run)) == 8
    assert len(metrics_of(run, "metrics.rank1.jsonl")) == 8
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert (record["status"], record["world_size"]) == ("completed", 2)

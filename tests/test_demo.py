"""The bundled demo: recipe, synthetic data, training, outputs and reproducibility."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import cli, isolated, minimal_recipe, only_run_dir, run_torchrun
from rich.console import Console

from orchestrator_fsm.cli import EXIT_OK, EXIT_USAGE, main
from orchestrator_fsm.config import Config
from orchestrator_fsm.demo import demo_recipe
from orchestrator_fsm.demo.pipeline import (
    METRICS_COLUMNS,
    SHAPES,
    DemoSettings,
    MiniCNN,
    make_shapes_dataset,
    train,
)
from orchestrator_fsm.errors import ConfigError
from orchestrator_fsm.layout import checkpoint_file
from orchestrator_fsm.lifecycle.record import read_run
from orchestrator_fsm.orchestrator import RootOrchestrator
from orchestrator_fsm.seeds import SeedTree

# Few images and epochs: these tests check the plumbing, not how well the model learns.
SMALL = ["--set", "dataset.num_samples=192", "--set", "training.epochs=2"]


def read_metrics(root: Path) -> list[dict[str, str]]:
    with open(root / "reports" / "metrics.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_bundled_recipe_is_the_synthetic_shapes_demo() -> None:
    with demo_recipe() as path:
        cfg = Config.from_recipe(path)
    assert (cfg.dataset.name, cfg.architecture.name, cfg.training.seed) == (
        "synthetic_shapes",
        "mini_cnn",
        42,
    )
    assert cfg.hardware.device == "cpu"
    DemoSettings.from_config(cfg)  # every demo setting it holds is usable


def test_demo_run_learns_the_shapes_and_writes_metrics_log_and_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The bundled recipe unchanged, apart from where it writes: what `orchestrator-fsm run` does.
    assert main(["run", *isolated(tmp_path)]) == EXIT_OK

    root = only_run_dir(tmp_path / "outputs")
    with demo_recipe() as path:
        settings = DemoSettings.from_config(Config.from_recipe(path))
    epochs = settings.epochs
    rows = read_metrics(root)
    assert list(rows[0]) == list(METRICS_COLUMNS)
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1))
    final = float(rows[-1]["val_accuracy"])
    assert final > 2 / len(SHAPES)  # twice chance: it learned something
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])

    out = capsys.readouterr().out
    assert f"final validation accuracy: {final:.1%}" in out
    assert out.rstrip().splitlines()[-1] == "status: completed"
    assert f"summary: final_accuracy={final:.6g}" in out

    record = read_run(root)
    assert record.summary == {"final_accuracy": final}
    assert record.metrics["val_accuracy"].last == final
    assert record.metrics["val_accuracy"].step == epochs
    lines = (root / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["step"] for line in lines] == [*range(1, epochs + 1), None]

    log = (root / "logs" / "run.log").read_text(encoding="utf-8")
    for epoch in range(1, epochs + 1):
        assert f"epoch {epoch}/{epochs} train_loss=" in log

    checkpoint = torch.load(root / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == epochs
    assert checkpoint["classes"] == list(SHAPES)
    model = MiniCNN(len(SHAPES), checkpoint["settings"]["image_size"])
    model.load_state_dict(checkpoint["model_state"])
    # The last epoch's checkpoint for a new attempt beside last.pt, no temporary files.
    names = sorted(p.name for p in (root / "checkpoints").iterdir())
    steps = math.ceil((settings.num_samples - settings.val_count) / settings.batch_size)
    assert names == [checkpoint_file(Path(), steps * epochs).name, "last.pt"]


def run_strict_demo(tmp_path: Path, name: str) -> Path:
    output_dir = tmp_path / name
    result = cli(
        "run",
        "--set",
        "hardware.reproducible=true",
        "--set",
        f"telemetry.output_dir={output_dir}",
        "--set",
        f"infrastructure.lock.path={tmp_path / 'x.lock'}",
        *SMALL,
        cwd=tmp_path,
    )
    assert result.returncode == EXIT_OK, result.stderr
    return only_run_dir(output_dir)


@pytest.mark.slow
def test_two_strict_runs_of_the_demo_give_identical_losses(tmp_path: Path) -> None:
    first = read_metrics(run_strict_demo(tmp_path, "first"))
    second = read_metrics(run_strict_demo(tmp_path, "second"))

    def losses(rows: list[dict[str, str]]) -> list[tuple[str, str, str]]:
        return [(row["train_loss"], row["val_loss"], row["val_accuracy"]) for row in rows]

    assert len(first) == 2
    assert losses(first) == losses(second)


def test_progress_bar_is_drawn_on_a_terminal_and_not_elsewhere(tmp_path: Path) -> None:
    cfg = Config.from_dict(
        minimal_recipe(
            tmp_path,
            dataset={"num_samples": 64},
            training={"epochs": 1, "batch_size": 16},
            hardware={"num_workers": 0},
        )
    )
    screens = []
    for is_terminal in (True, False):
        buffer = io.StringIO()
        console = Console(file=buffer, force_terminal=is_terminal, width=100)
        with RootOrchestrator(cfg) as orch:
            result = train(orch, console=console)
        screens.append(buffer.getvalue())
        assert result.final_accuracy == result.epochs[-1].val_accuracy
    terminal, plain = screens
    assert "epoch 1/1" in terminal and "━" in terminal
    # Not a terminal: the bar is one plain line at its end, then the result.
    bar_line, result_line = plain.splitlines()
    assert re.fullmatch(r"epoch 1/1 3/3 loss=\S+ \d+\.\ds", bar_line)
    assert "\x1b" not in plain
    assert result_line.startswith("final validation accuracy: ")


def test_dataset_depends_only_on_its_seed() -> None:
    images, labels = make_shapes_dataset(64, 16, 0.2, seed=3)
    again_images, again_labels = make_shapes_dataset(64, 16, 0.2, seed=3)
    other_images, _ = make_shapes_dataset(64, 16, 0.2, seed=4)

    assert images.shape == (64, 1, 16, 16)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert torch.equal(images, again_images)
    assert torch.equal(labels, again_labels)
    assert not torch.equal(images, other_images)


def test_dataset_classes_are_balanced_and_shuffled() -> None:
    _, labels = make_shapes_dataset(103, 16, 0.0, seed=0)
    counts = torch.bincount(labels, minlength=len(SHAPES)).tolist()
    assert max(counts) - min(counts) <= 1
    assert sum(counts) == 103
    assert labels[: len(SHAPES)].tolist() != list(range(len(SHAPES)))


def test_noiseless_shapes_of_different_classes_differ() -> None:
    images, labels = make_shapes_dataset(200, 16, 0.0, seed=5)
    for first in range(len(SHAPES)):
        for second in range(first + 1, len(SHAPES)):
            a = images[labels == first].flatten(1)
            b = images[labels == second].flatten(1)
            # No image of one class equals an image of another.
            assert torch.cdist(a, b).min() > 0


def settings_for(tmp_path: Path, **sections: dict[str, object]) -> DemoSettings:
    return DemoSettings.from_config(
        Config.from_dict(minimal_recipe(tmp_path, **sections), source="demo.yaml")
    )


def test_demo_settings_default_what_the_recipe_leaves_out(tmp_path: Path) -> None:
    assert settings_for(tmp_path) == DemoSettings()
    chosen = settings_for(tmp_path, training={"epochs": 4, "lr": 0.05}, dataset={"noise": 0})
    assert (chosen.epochs, chosen.learning_rate, chosen.noise) == (4, 0.05, 0.0)
    both = settings_for(tmp_path, training={"learning_rate": 0.2, "lr": 0.05})
    assert both.learning_rate == 0.2


def test_demo_settings_report_every_unusable_value_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_for(
            tmp_path,
            dataset={"image_size": 10, "val_fraction": 1.5, "noise": "loud"},
            training={"epochs": 0, "batch_size": True, "lr": -1},
        )
    problems = dict(caught.value.problems)
    assert set(problems) == {
        "dataset.image_size",
        "dataset.val_fraction",
        "dataset.noise",
        "training.epochs",
        "training.batch_size",
        "training.lr",
    }
    assert "multiple of 4" in problems["dataset.image_size"]
    assert problems["dataset.noise"] == "expected a finite number, got 'loud'"
    assert problems["training.batch_size"] == "expected an integer, got True"
    assert caught.value.source == "demo.yaml"


def test_demo_settings_need_images_for_both_splits(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_for(tmp_path, dataset={"num_samples": 3, "val_fraction": 0.9})
    assert [path for path, _ in caught.value.problems] == ["dataset.num_samples"]
    assert "validation takes 3" in caught.value.problems[0][1]


def test_unusable_demo_setting_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *isolated(tmp_path), "--set", "training.epochs=0"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert (
        "command line: training.epochs: expected an integer of at least 1, got 0 "
        "(set by override 'training.epochs=0')" in captured.err
    )
    # The schema is checked before the run starts: no run directory, nothing trained.
    assert not (tmp_path / "outputs").exists()


# Run by every rank under torchrun: the bundled recipe, shrunk, through the demo's train
# inside the lifecycle. Each rank records the training indices its sampler dealt it per
# epoch and prints what train returned as one JSON line.
DDP_SCRIPT = """
import json
import sys
from pathlib import Path

from orchestrator_fsm import Config, RootOrchestrator
from orchestrator_fsm.demo import demo_recipe, pipeline

output_dir, lock, shards = sys.argv[1], sys.argv[2], Path(sys.argv[3])


class RecordingSampler(pipeline.DistributedSampler):
    def __iter__(self):
        indices = list(super().__iter__())
        name = f"rank{self.rank}-epoch{self.epoch}.json"
        (shards / name).write_text(json.dumps(indices), encoding="utf-8")
        return iter(indices)


pipeline.DistributedSampler = RecordingSampler
overrides = [
    f"telemetry.output_dir={output_dir}",
    f"infrastructure.lock.path={lock}",
    "hardware.num_workers=0",
    "dataset.num_samples=192",
    "training.epochs=2",
]
with demo_recipe() as path:
    cfg = Config.from_recipe(path, overrides=overrides)
with RootOrchestrator(cfg) as orch:
    result = pipeline.train(orch)
print(json.dumps({
    "rank": orch.rank,
    "world_size": orch.world_size,
    "accuracies": [row.val_accuracy for row in result.epochs],
    "metrics_path": None if result.metrics_path is None else str(result.metrics_path),
    "state": orch.state.value,
}))
"""


@pytest.mark.slow
def test_demo_under_torchrun_shards_the_data_and_reports_the_global_accuracy(
    tmp_path: Path,
) -> None:
    script = tmp_path / "ddp_demo.py"
    script.write_text(DDP_SCRIPT, encoding="utf-8")
    shards = tmp_path / "shards"
    shards.mkdir()
    output_dir = tmp_path / "outputs"

    out, err = run_torchrun(
        tmp_path, script, str(output_dir), str(tmp_path / "x.lock"), str(shards), nproc=2
    )

    results = sorted(
        (json.loads(line) for line in out.splitlines() if line.startswith("{")),
        key=lambda result: result["rank"],
    )
    assert [(r["rank"], r["world_size"], r["state"]) for r in results] == [
        (0, 2, "cleaned"),
        (1, 2, "cleaned"),
    ]
    root = only_run_dir(output_dir)  # one run directory for the whole job
    assert results[0]["metrics_path"] == str(root / "reports" / "metrics.csv")
    assert results[1]["metrics_path"] is None  # only rank 0 writes
    # Every rank returns the accuracy over all validation images, and it is rank 0's row.
    assert results[0]["accuracies"] == results[1]["accuracies"]
    rows = read_metrics(root)
    assert [float(row["val_accuracy"]) for row in rows] == results[0]["accuracies"]
    assert out.count("final validation accuracy: ") == 1

    # The global accuracy is the checkpointed model's on the whole validation split.
    with demo_recipe() as path:
        cfg = Config.from_recipe(path, overrides=["dataset.num_samples=192"])
    settings = DemoSettings.from_config(cfg)
    images, labels = make_shapes_dataset(
        192, settings.image_size, settings.noise, seed=SeedTree(42).shared_seed("dataset")
    )
    checkpoint = torch.load(root / "checkpoints" / "last.pt", weights_only=True)
    model = MiniCNN(len(SHAPES), settings.image_size, settings.channels)
    model.load_state_dict(checkpoint["model_state"])
    model.eval()
    val = settings.val_count
    with torch.no_grad():
        correct = int((model(images[:val]).argmax(dim=1) == labels[:val]).sum())
    assert results[0]["accuracies"][-1] == correct / val

    # Each epoch the two ranks train on disjoint halves that cover the training split,
    # in an order that changes from one epoch to the next.
    train_count = 192 - val
    dealt = {
        (rank, epoch): json.loads((shards / f"rank{rank}-epoch{epoch}.json").read_text())
        for rank in range(2)
        for epoch in (1, 2)
    }
    for epoch in (1, 2):
        first, second = dealt[0, epoch], dealt[1, epoch]
        assert len(first) == len(second) == train_count // 2
        assert not set(first) & set(second)
        assert sorted(first + second) == list(range(train_count))
    assert dealt[0, 1] != dealt[0, 2]

    # The console holds rank 0's lines; no other rank's INFO lines reach it.
    assert "[rank1] INFO" not in err

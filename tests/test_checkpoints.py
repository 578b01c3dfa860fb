"""Checkpoints of a run: real tiny models and real files; a save survives SIGKILL and a
full disk, the next attempt finds the latest, and a resumed loop draws what the
uninterrupted one drew."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import cli, only_run_dir, run_torchrun, write_recipe
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from orchestrator_fsm.checkpoints import (
    FORMAT,
    CheckpointStore,
    capture_rng_states,
    restore_rng_states,
)
from orchestrator_fsm.errors import LifecycleError
from orchestrator_fsm.layout import checkpoint_file, checkpoint_name_step

REPO = Path(__file__).resolve().parent.parent


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class Training:
    """A tiny model, its optimizer, scheduler and scaler, a shuffled loader with its own
    generator and a NumPy generator: everything a loop keeps state in."""

    def __init__(self, init_seed: int) -> None:
        torch.manual_seed(init_seed)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.ReLU(), nn.Linear(8, 2))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.01)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=2, gamma=0.5)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**init_seed)
        data = torch.arange(64 * 4, dtype=torch.float32).reshape(64, 4) / 100
        self.generator = torch.Generator().manual_seed(init_seed)
        self.loader = DataLoader(
            TensorDataset(data, (data.sum(1) > 1.2).long()),
            batch_size=8,
            shuffle=True,
            generator=self.generator,
        )
        self.noise = np.random.default_rng(init_seed)

    def parts(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "generators": {"loader": self.generator, "noise": self.noise},
        }

    def epoch(self) -> list[float]:
        """One epoch; what it drew from every random source, as numbers."""
        drawn = []
        for images, labels in self.loader:
            images = images + float(self.noise.normal()) + random.random() + np.random.rand()
            loss = nn.functional.cross_entropy(self.model(images), labels)
            self.optimizer.zero_grad()
            torch.autograd.backward(loss)
            self.optimizer.step()
            drawn.append(float(loss.detach()))
        self.scheduler.step()
        return drawn


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _same_tensors(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_a_resumed_loop_ends_bitwise_where_the_uninterrupted_one_does(tmp_path: Path) -> None:
    _seed_all(7)
    straight = Training(init_seed=1)
    losses = [straight.epoch() for _ in range(4)]

    _seed_all(7)
    first = Training(init_seed=1)
    store = CheckpointStore(tmp_path)
    resumed_losses = [first.epoch(), first.epoch()]
    path = store.save(2, epoch=2, extra={"losses": resumed_losses}, **first.parts())
    assert path == checkpoint_file(tmp_path, 2)

    # Another process in all but name: other weights, other random states.
    _seed_all(99)
    second = Training(init_seed=5)
    loaded = store.load(**second.parts())
    assert loaded is not None
    assert (loaded.step, loaded.epoch, loaded.path) == (2, 2, path)
    assert loaded.extra == {"losses": resumed_losses}
    assert _same_tensors(second.model.state_dict(), first.model.state_dict())
    assert _same_tensors(second.optimizer.state_dict(), first.optimizer.state_dict())
    assert second.scheduler.state_dict() == first.scheduler.state_dict()
    assert second.scaler.state_dict() == first.scaler.state_dict()
    resumed_losses += [second.epoch(), second.epoch()]

    assert resumed_losses == losses
    assert _same_tensors(second.model.state_dict(), straight.model.state_dict())


def test_a_mid_epoch_checkpoint_resumes_the_epochs_order_as_the_readme_says(
    tmp_path: Path,
) -> None:
    def train(training: Training, batches: list[tuple[Any, Any]]) -> list[float]:
        losses = []
        for images, labels in batches:
            loss = nn.functional.cross_entropy(training.model(images), labels)
            training.optimizer.zero_grad()
            torch.autograd.backward(loss)
            training.optimizer.step()
            losses.append(float(loss.detach()))
        return losses

    _seed_all(3)
    straight = Training(init_seed=1)
    expected = [train(straight, list(straight.loader)) for _ in range(2)]

    _seed_all(3)
    first = Training(init_seed=1)
    store = CheckpointStore(tmp_path)
    got = [train(first, list(first.loader))]
    epoch_rng = first.generator.get_state()  # before the epoch draws its order
    batches = iter(first.loader)
    done = train(first, [next(batches) for _ in range(3)])
    store.save(11, extra={"epoch_rng": epoch_rng, "done": 3}, **first.parts())

    _seed_all(99)
    second = Training(init_seed=5)
    loaded = store.load(**second.parts())
    assert loaded is not None
    second.generator.set_state(loaded.extra["epoch_rng"])
    rest = list(second.loader)[loaded.extra["done"] :]
    got.append(done + train(second, rest))
    assert got == expected
    assert _same_tensors(second.model.state_dict(), straight.model.state_dict())


def test_after_load_every_random_source_draws_what_it_drew_after_the_save(
    tmp_path: Path,
) -> None:
    loader_generator = torch.Generator().manual_seed(3)
    numpy_generator = np.random.default_rng(4)
    python_generator = random.Random(5)
    generators = {"loader": loader_generator, "np": numpy_generator, "py": python_generator}

    def draw() -> list[float]:
        return [
            random.random(),
            float(np.random.rand()),
            float(np.random.normal()),
            float(torch.rand(1)),
            float(torch.rand(1, generator=loader_generator)),
            float(numpy_generator.normal()),
            python_generator.random(),
        ]

    _seed_all(11)
    np.random.normal()  # a cached Gaussian is part of NumPy's state
    store = CheckpointStore(tmp_path)
    store.save(1, generators=generators)
    after_save = draw()
    draw()
    assert store.load(generators=generators) is not None
    assert draw() == after_save


def test_a_checkpoint_is_readable_by_torch_alone(tmp_path: Path) -> None:
    training = Training(init_seed=1)
    training.epoch()
    store = CheckpointStore(tmp_path)
    path = store.save(3, epoch=1, extra={"best": 0.5, "history": [1, 2]}, **training.parts())
    assert path is not None
    script = textwrap.dedent(
        """
        import sys, torch
        sys.modules["orchestrator_fsm"] = None  # not importable: torch alone reads it
        saved = torch.load(sys.argv[1], weights_only=True)
        print(saved["format"], saved["step"], saved["epoch"], sorted(saved["state"]),
              sorted(saved["rng"]), sorted(saved["rng"]["generators"]), saved["extra"])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == (
        f"{FORMAT} 3 1 ['model', 'optimizer', 'scaler', 'scheduler'] "
        "['cuda', 'generators', 'numpy', 'python', 'torch'] ['loader', 'noise'] "
        "{'best': 0.5, 'history': [1, 2]}"
    )


def test_objects_go_under_their_names_and_a_missing_one_is_named(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    store = CheckpointStore(tmp_path)
    store.save(1, objects={"ema": model})
    other = nn.Linear(2, 2)
    assert store.load(objects={"ema": other}) is not None
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(KeyError, match=r"holds no state for optimizer \(it holds: ema\)"):
        store.load(optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(KeyError, match=r"no state for the generator\(s\) loader"):
        store.load(generators={"loader": torch.Generator()})
    with pytest.raises(ValueError, match="objects may not be named model"):
        store.save(2, objects={"model": model})


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    checkpoint_file(tmp_path, 1).write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=r"cannot read the checkpoint .*ckpt-000000001\.pt"):
        store.load()
    torch.save({"model": {}}, checkpoint_file(tmp_path, 2))
    with pytest.raises(ValueError, match=r"ckpt-000000002\.pt is not a checkpoint of this"):
        store.load()


def test_a_missing_generator_leaves_the_objects_as_they_were(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, model=nn.Linear(2, 2))
    other = nn.Linear(2, 2)
    before = other.weight.clone()
    with pytest.raises(KeyError, match="loader"):
        store.load(model=other, generators={"loader": torch.Generator()})
    assert torch.equal(other.weight, before)


def test_extras_a_torch_load_could_not_read_back_are_refused_before_writing(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(tmp_path)
    with pytest.raises(TypeError, match=r"extra\['when'\]\[0\] is a pathlib.PosixPath"):
        store.save(1, extra={"when": [Path("/x")]})
    assert _names(tmp_path) == []


def test_no_checkpoint_yet_loads_none(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path / "missing").load() is None
    assert CheckpointStore(tmp_path).latest() is None


def test_the_last_k_are_kept_and_the_latest_is_the_highest_step(tmp_path: Path) -> None:
    (tmp_path / "last.pt").write_bytes(b"the user's own file")
    store = CheckpointStore(tmp_path, keep=2)
    for step in (10, 20, 30, 40, 50):
        store.save(step, extra={"step": step})
    assert _names(tmp_path) == ["ckpt-000000040.pt", "ckpt-000000050.pt", "last.pt"]
    assert store.steps() == [40, 50]
    loaded = store.load()
    assert loaded is not None and loaded.extra == {"step": 50}

    keep_all = CheckpointStore(tmp_path, keep=None)
    for step in (60, 70, 80, 90):
        keep_all.save(step)
    assert keep_all.steps() == [40, 50, 60, 70, 80, 90]
    with pytest.raises(ValueError, match="keep must be 1 or more"):
        CheckpointStore(tmp_path, keep=0)


def test_per_rank_latest_is_the_latest_step_every_rank_saved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rank0 = CheckpointStore(tmp_path, rank=0, world_size=2, per_rank=True, keep=1)
    rank1 = CheckpointStore(tmp_path, rank=1, world_size=2, per_rank=True, keep=1)
    with caplog.at_level(logging.WARNING, logger="orchestrator_fsm.checkpoints"):
        rank0.save(1, extra={"rank": 0})
        assert rank1.load() is None  # rank 1 has saved nothing yet
        assert rank0.load() is None
    assert "no step was saved by every one of the 2 ranks" in caplog.text
    rank1.save(1, extra={"rank": 1})
    # Rank 0 is ahead (rank 1 died before saving step 2 and 3): keep=1 would leave
    # no step both ranks saved, so step 1 stays.
    rank0.save(2, extra={"rank": 0})
    rank0.save(3, extra={"rank": 0})
    assert _names(tmp_path) == [
        "ckpt-000000001.rank0.pt",
        "ckpt-000000001.rank1.pt",
        "ckpt-000000003.rank0.pt",
    ]
    loaded = [rank0.load(), rank1.load()]
    assert [(c.step, c.rank, c.extra) for c in loaded if c] == [
        (1, 0, {"rank": 0}),
        (1, 1, {"rank": 1}),
    ]
    rank1.save(3, extra={"rank": 1})
    rank0.save(4, extra={"rank": 0})
    assert rank0.steps() == [3]
    assert _names(tmp_path) == [
        "ckpt-000000003.rank0.pt",
        "ckpt-000000003.rank1.pt",
        "ckpt-000000004.rank0.pt",
    ]


def test_prune_after_every_rank_saved_leaves_each_rank_its_last_keep(tmp_path: Path) -> None:
    """The rank that saves a step first keeps the step before (not every rank has the
    new one yet); once all have saved, ``prune`` leaves each its own last ``keep``,
    whichever rank was first: the same files on every run."""
    rank0 = CheckpointStore(tmp_path, rank=0, world_size=2, per_rank=True, keep=1)
    rank1 = CheckpointStore(tmp_path, rank=1, world_size=2, per_rank=True, keep=1)
    rank0.save(1)
    rank1.save(1)
    rank1.save(2)  # rank 1 first: step 1 is the latest both saved, it stays
    rank0.save(2)
    assert _names(tmp_path) == [
        "ckpt-000000001.rank1.pt",
        "ckpt-000000002.rank0.pt",
        "ckpt-000000002.rank1.pt",
    ]
    rank1.prune()
    rank0.prune()
    assert _names(tmp_path) == ["ckpt-000000002.rank0.pt", "ckpt-000000002.rank1.pt"]


def test_rank_0_only_saves_on_rank_0_and_other_ranks_keep_their_random_states(
    tmp_path: Path,
) -> None:
    model = nn.Linear(3, 3)
    rank0 = CheckpointStore(tmp_path, rank=0, world_size=2)
    rank1 = CheckpointStore(tmp_path, rank=1, world_size=2)
    assert rank1.save(5, model=model) is None
    assert _names(tmp_path) == []
    torch.manual_seed(1)
    rank0.save(5, model=model)

    other = nn.Linear(3, 3)
    torch.manual_seed(2)
    expected = torch.rand(3)
    torch.manual_seed(2)
    loaded = rank1.load(model=other)
    assert loaded is not None and loaded.rank is None
    assert torch.equal(other.weight, model.weight)
    assert torch.equal(torch.rand(3), expected)  # rank 1's own stream, untouched


# -- CUDA: what can exist here is the branch, with torch.cuda's answers stood in ----------


@pytest.fixture
def two_cuda_devices(monkeypatch: pytest.MonkeyPatch) -> dict[int, torch.Tensor]:
    """torch.cuda as it answers with two initialised devices; what set_rng_state got."""
    states = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    restored: dict[int, torch.Tensor] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    def set_rng_state(state: torch.Tensor, device: int) -> None:
        restored[device] = state

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    return restored


def test_each_cuda_devices_random_state_is_saved_and_restored(
    tmp_path: Path, two_cuda_devices: dict[int, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    path = store.save(1)
    assert path is not None
    saved = torch.load(path, weights_only=True)["rng"]["cuda"]
    assert [int(state[0]) for state in saved] == [1, 2]
    store.load()
    assert {device: int(state[0]) for device, state in two_cuda_devices.items()} == {0: 1, 1: 2}

    two_cuda_devices.clear()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    store.load()
    assert list(two_cuda_devices) == [0]


def test_cuda_states_are_left_out_until_cuda_is_initialised_and_kept_where_it_is_absent(
    tmp_path: Path, two_cuda_devices: dict[int, torch.Tensor], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert capture_rng_states()["cuda"] is None
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    states = capture_rng_states()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="orchestrator_fsm.checkpoints"):
        restore_rng_states(states)
    assert two_cuda_devices == {}
    assert "random states of 2 CUDA device(s); CUDA is not available here" in caplog.text


# -- torn writes: SIGKILL mid-save, a full disk ---------------------------------------------

SAVER = textwrap.dedent(
    """
    import sys, torch
    from orchestrator_fsm.checkpoints import CheckpointStore
    store = CheckpointStore(sys.argv[1])
    store.save(1, extra={"step": 1})
    print("saved 1", flush=True)
    big = {"weights": torch.ones(int(sys.argv[2]) // 4)}
    store.save(2, objects={}, extra={"step": 2, "big": big["weights"]})
    print("saved 2", flush=True)
    """
)


@pytest.mark.slow
def test_a_save_killed_midway_leaves_the_previous_checkpoint_the_latest(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "checkpoints"
    script = tmp_path / "saver.py"
    script.write_text(SAVER, encoding="utf-8")
    child = subprocess.Popen(
        [sys.executable, str(script), str(folder), str(1 << 29)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "saved 1\n"
        deadline = time.monotonic() + 120
        while not list(folder.glob(".ckpt-000000002.pt.*.tmp")):
            assert child.poll() is None, "the second save ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.001)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    store = CheckpointStore(folder)
    assert store.steps() == [1]
    loaded = store.load()
    assert loaded is not None and loaded.extra == {"step": 1}
    # The next save clears what the killed one left.
    store.save(3)
    assert _names(folder) == ["ckpt-000000001.pt", "ckpt-000000003.pt"]


FILE_SIZE_LIMITED = textwrap.dedent(
    """
    import resource, signal, sys, torch
    from orchestrator_fsm.checkpoints import CheckpointStore
    store = CheckpointStore(sys.argv[1])
    store.save(1, extra={"step": 1})
    # No file of this process may grow past 1 MiB: the write fails as on a full disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    try:
        store.save(2, extra={"big": torch.ones(1 << 20)})
    except OSError as exc:
        print(type(exc).__name__, exc.errno, exc.filename, exc.strerror)
    """
)


def test_a_save_that_cannot_be_written_keeps_the_previous_one(tmp_path: Path) -> None:
    script = tmp_path / "limited.py"
    script.write_text(FILE_SIZE_LIMITED, encoding="utf-8")
    folder = tmp_path / "checkpoints"
    result = subprocess.run(
        [sys.executable, str(script), str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"OSError 27 {folder / 'ckpt-000000002.pt'} "
        "cannot save the checkpoint (File too large); the previous one is kept\n"
    )
    assert _names(folder) == ["ckpt-000000001.pt"]
    loaded = CheckpointStore(folder).load()
    assert loaded is not None and loaded.extra == {"step": 1}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own (skipped where mounting is not allowed)."""
    where = tmp_path / "disk"
    where.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("cannot mount a tmpfs here (no mount command)")
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30, check=False)


def test_a_full_disk_keeps_the_previous_checkpoint(small_disk: Path) -> None:
    store = CheckpointStore(small_disk, keep=1)
    store.save(1, extra={"step": 1, "w": torch.ones(1000)})
    with pytest.raises(OSError, match="No space left on device") as raised:
        store.save(2, extra={"step": 2, "w": torch.ones(1 << 20)})
    assert raised.value.filename == str(small_disk / "ckpt-000000002.pt")
    assert _names(small_disk) == ["ckpt-000000001.pt"]
    loaded = store.load()
    assert loaded is not None and loaded.extra["step"] == 1
    store.save(3, extra={"step": 3})  # room again: it goes on
    assert store.steps() == [3]


def test_a_checkpoint_name_is_owned_by_the_layout() -> None:
    assert checkpoint_file(Path("c"), 12).name == "ckpt-000000012.pt"
    assert checkpoint_file(Path("c"), 12, rank=3).name == "ckpt-000000012.rank3.pt"
    assert checkpoint_name_step("ckpt-000000012.rank3.pt") == (12, 3)
    assert checkpoint_name_step("ckpt-1234567890.pt") == (1234567890, None)
    assert checkpoint_name_step(".ckpt-000000012.pt.0a1b2c3d.tmp") is None
    assert checkpoint_name_step("last.pt") is None


# -- in a run: the next attempt finds the latest ---------------------------------------------

PIPELINE = textwrap.dedent(
    """
    import json, os, torch
    from torch import nn

    def main(orch):
        store = orch.checkpoints(keep=2)
        gen = torch.Generator().manual_seed(orch.seed_tree.shared_seed("loader"))
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        resumed = store.load(model=model, optimizer=opt, generators={"loader": gen})
        start = 0 if resumed is None else resumed.step
        orch.run_logger.info("resumed from %s", None if resumed is None else resumed.step)
        for step in range(start + 1, 7):
            x = torch.rand(8, 4, generator=gen)
            loss = model(x).pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
            store.save(step, model=model, optimizer=opt, generators={"loader": gen})
            if step == int(os.environ.get("FAIL_AT", "0")):
                raise RuntimeError("the node went away")
        torch.save(model.state_dict(), orch.paths.exports / "final.pt")
    """
)


@pytest.mark.slow
def test_the_next_attempt_of_a_run_resumes_from_its_latest_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text(PIPELINE, encoding="utf-8")
    straight_dir, broken_dir = tmp_path / "straight", tmp_path / "broken"
    straight_dir.mkdir()
    broken_dir.mkdir()
    entry = f"{tmp_path / 'pipeline.py'}:main"

    straight = cli("run", str(write_recipe(straight_dir)), "--entry", entry, cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    recipe = write_recipe(broken_dir)
    failed = cli(
        "run", str(recipe), "--entry", entry, cwd=tmp_path, env={**os.environ, "FAIL_AT": "4"}
    )
    assert failed.returncode == 1, failed.stderr
    run = only_run_dir(broken_dir / "outputs")
    assert _names(run / "checkpoints") == ["ckpt-000000003.pt", "ckpt-000000004.pt"]

    resumed = cli("run", str(recipe), "--entry", entry, "--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    log = (run / "logs" / "run.log").read_text(encoding="utf-8")
    assert "resumed from None" in log and "resumed from 4" in log
    assert _names(run / "checkpoints") == ["ckpt-000000005.pt", "ckpt-000000006.pt"]
    final = torch.load(run / "exports" / "final.pt", weights_only=True)
    expected = torch.load(
        only_run_dir(straight_dir / "outputs") / "exports" / "final.pt", weights_only=True
    )
    assert _same_tensors(final, expected)


def test_checkpoints_need_a_run_directory(make_config: Any) -> None:
    from orchestrator_fsm.orchestrator import RootOrchestrator

    orch = RootOrchestrator(make_config())
    with pytest.raises(LifecycleError, match="this run has no run directory"):
        orch.checkpoints()


PER_RANK = textwrap.dedent(
    """
    import json, sys, torch
    from orchestrator_fsm import Config, RootOrchestrator

    cfg = Config.from_recipe(sys.argv[1])
    resume = sys.argv[2] if len(sys.argv) > 2 else None
    with RootOrchestrator(cfg, resume=resume) as orch:
        shared = orch.checkpoints()  # rank 0 saves, every rank loads
        store = orch.checkpoints(per_rank=True, keep=1)
        marker = torch.nn.Linear(2, 2)
        shared_loaded = shared.load(objects={"marker": marker})
        model = torch.nn.Linear(2, 2)
        loaded = store.load(model=model)
        shared_saved = None
        if loaded is None:
            torch.manual_seed(100 + orch.rank)
            with torch.no_grad():
                marker.weight.fill_(42 + orch.rank)
                model.weight.fill_(orch.rank)
            shared_saved = shared.save(9, objects={"marker": marker})
            store.save(1, model=model, extra={"rank": orch.rank})
            torch.rand(5)
            store.save(2, model=model, extra={"rank": orch.rank})
        print(json.dumps({
            "rank": orch.rank,
            "run": str(orch.paths.root),
            "shared_saved": None if shared_saved is None else shared_saved.name,
            "shared_loaded": None if shared_loaded is None else shared_loaded.step,
            "marker": marker.weight.flatten().tolist(),
            "loaded": None if loaded is None else [loaded.step, loaded.rank, loaded.extra],
            "weight": model.weight.flatten().tolist(),
            "draw": torch.rand(3).tolist(),
        }), flush=True)
    """
)


@pytest.mark.slow
def test_per_rank_checkpoints_under_a_real_two_rank_torchrun(tmp_path: Path) -> None:
    script = tmp_path / "per_rank.py"
    script.write_text(PER_RANK, encoding="utf-8")
    recipe = write_recipe(tmp_path)

    def launch(*argv: str) -> dict[int, dict[str, Any]]:
        out, _ = run_torchrun(tmp_path, script, str(recipe), *argv, nproc=2, timeout_s=240)
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return {line["rank"]: line for line in lines}

    first = launch()
    run = Path(first[0]["run"])
    assert first[1]["run"] == str(run)
    assert [first[rank]["shared_saved"] for rank in (0, 1)] == ["ckpt-000000009.pt", None]
    # A rank that saved step 2 before the other did kept its step 1 (then the latest
    # both had saved) until its next save.
    names = set(_names(run / "checkpoints"))
    expected = {"ckpt-000000002.rank0.pt", "ckpt-000000002.rank1.pt", "ckpt-000000009.pt"}
    assert expected <= names <= expected | {"ckpt-000000001.rank0.pt", "ckpt-000000001.rank1.pt"}
    second = launch(str(run))
    for rank in (0, 1):
        # The next attempt finds rank 0's checkpoint on every rank...
        assert second[rank]["shared_loaded"] == 9
        assert second[rank]["marker"] == [42.0] * 4
        # ...and each rank its own.
        assert second[rank]["loaded"] == [2, rank, {"rank": rank}]
        assert second[rank]["weight"] == [float(rank)] * 4
        # Each rank's own random stream goes on from its own save.
        assert second[rank]["draw"] == first[rank]["draw"]
    assert second[0]["draw"] != second[1]["draw"]


@pytest.mark.slow
def test_the_checkpoint_benchmark_runs_and_leaves_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.checkpoints", "--repeats", "1", "--megabytes", "1"],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["state_dict"]["file_mb"] == pytest.approx(1.0, abs=0.1)
    for part in ("demo", "state_dict"):
        for kind in ("save_ms", "load_ms", "bare_torch_save_ms", "bare_torch_load_ms"):
            assert figures[part][kind]["n"] == 1
    # torch keeps its own cache in TMPDIR (torchinductor_<user>): only ours must be gone.
    assert list(tmp_path.glob("bench-checkpoints-*")) == []


@pytest.mark.slow
def test_the_readme_checkpoint_example_runs_and_resumes(tmp_path: Path) -> None:
    from test_readme import run_example, the_block

    example = the_block("ckpt = orch.checkpoints(keep=3)")
    result = run_example(tmp_path, example)
    assert result.stdout.split("\n")[0] == "[50, 75, 100]"
    run = only_run_dir(tmp_path / "outputs")
    assert _names(run / "checkpoints") == [
        "ckpt-000000050.pt",
        "ckpt-000000075.pt",
        "ckpt-000000100.pt",
    ]
    saved = torch.load(run / "checkpoints" / "ckpt-000000100.pt", weights_only=True)
    assert sorted(saved["state"]) == ["model", "optimizer", "scheduler"]
    assert saved["run_id"] == run.name

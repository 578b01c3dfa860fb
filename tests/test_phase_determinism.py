"""Phase 1: seeding, strict-mode flags, their undo, and the seed tree."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from orchestrator_fsm._process import undoable
from orchestrator_fsm.phases import determinism
from orchestrator_fsm.phases.determinism import (
    CUBLAS_WORKSPACE_CONFIG,
    STANDARD_SHARED_PURPOSES,
    DeterminismState,
    SeedTree,
    last_seed_sequence,
    make_generator,
    set_seed,
    worker_init_fn,
)

LOGGER_NAME = "orchestrator_fsm.phases.determinism"
HASH_SEED_WARNING = "PYTHONHASHSEED was"

# Strict seeding warns when the interpreter did not start with PYTHONHASHSEED equal to
# the seed, which is how the test suite runs. The tests about that warning catch it with
# pytest.warns (which sees warnings whatever the filters); elsewhere it is expected.
pytestmark = pytest.mark.filterwarnings(f"ignore:{HASH_SEED_WARNING}:UserWarning")


@pytest.fixture(autouse=True)
def _restore_determinism(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    # As if the interpreter started without PYTHONHASHSEED, whatever launched pytest.
    monkeypatch.setattr(determinism, "_HASH_SEED_AT_START", None)
    state = DeterminismState.capture()
    python_state, numpy_state, torch_state = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
    )
    yield
    state.restore()
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)


def first_draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def plain_seed_draws(seed: int) -> tuple[float, float, list[float]]:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return first_draws()


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("seed", [0, 42, 2**32 - 1])
def test_first_draws_equal_those_after_plain_seeding(seed: int, strict: bool) -> None:
    expected = plain_seed_draws(seed)
    random.random(), np.random.rand(), torch.rand(5)  # move every generator on

    set_seed(seed, strict=strict)

    assert first_draws() == expected


def test_different_seeds_give_different_draws() -> None:
    set_seed(1)
    one = first_draws()
    set_seed(2)
    assert first_draws() != one


def test_seeding_puts_cudnn_in_deterministic_mode_without_strict() -> None:
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = True

    set_seed(3)

    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False
    assert torch.are_deterministic_algorithms_enabled() is False
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


@pytest.mark.parametrize("warn_only", [False, True])
def test_strict_mode_enables_deterministic_algorithms_and_disables_tf32(warn_only: bool) -> None:
    torch.backends.cudnn.allow_tf32 = True

    set_seed(3, strict=True, warn_only=warn_only)

    assert torch.are_deterministic_algorithms_enabled() is True
    assert torch.is_deterministic_algorithms_warn_only_enabled() is warn_only
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE_CONFIG == ":4096:8"


def test_strict_mode_keeps_the_other_deterministic_cublas_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    set_seed(3, strict=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_strict_mode_replaces_a_nondeterministic_cublas_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    set_seed(3, strict=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_cublas_setting_after_cuda_initialised_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        set_seed(3, strict=True)
    messages = [r.getMessage() for r in caplog.records if "CUBLAS_WORKSPACE_CONFIG" in r.message]
    assert len(messages) == 1
    assert "already initialised" in messages[0]
    assert "may stay nondeterministic" in messages[0]


def test_cublas_setting_before_cuda_initialised_is_silent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert not torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        set_seed(3, strict=True)
    assert not [r for r in caplog.records if "CUBLAS_WORKSPACE_CONFIG" in r.getMessage()]


@pytest.mark.parametrize("hash_seed", [None, "0", "random"])
def test_strict_mode_warns_when_the_interpreter_started_with_another_pythonhashseed(
    monkeypatch: pytest.MonkeyPatch, hash_seed: str | None
) -> None:
    monkeypatch.setattr(determinism, "_HASH_SEED_AT_START", hash_seed)
    with pytest.warns(UserWarning) as caught:
        set_seed(17, strict=True)
    warned = [w for w in caught if HASH_SEED_WARNING in str(w.message)]
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "interpreter start" in message
    assert "PYTHONHASHSEED=17" in message
    # Attributed to the caller of set_seed, not to the determinism module.
    assert warned[0].filename == __file__


def test_pythonhashseed_warning_repeats_after_strict_mode_exported_it() -> None:
    # The export reaches child processes only; this interpreter still hashes unseeded.
    with pytest.warns(UserWarning, match=HASH_SEED_WARNING):
        set_seed(17, strict=True)
    assert os.environ["PYTHONHASHSEED"] == "17"
    with pytest.warns(UserWarning, match=HASH_SEED_WARNING):
        set_seed(17, strict=True)


def test_no_pythonhashseed_warning_when_it_matches_or_outside_strict_mode(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(determinism, "_HASH_SEED_AT_START", "17")
    with (
        caplog.at_level(logging.WARNING, logger=LOGGER_NAME),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        set_seed(17, strict=True)
        monkeypatch.setattr(determinism, "_HASH_SEED_AT_START", "0")
        set_seed(17, strict=False)
    assert not [w for w in caught if "PYTHONHASHSEED" in str(w.message)]
    assert not [r for r in caplog.records if "PYTHONHASHSEED" in r.getMessage()]


def _child_hash(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "print(hash('orchestrator-fsm'))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_strict_mode_exports_pythonhashseed_so_child_processes_hash_alike() -> None:
    set_seed(23, strict=False)
    assert "PYTHONHASHSEED" not in os.environ

    set_seed(23, strict=True)

    assert os.environ["PYTHONHASHSEED"] == "23"
    inherited = dict(os.environ)
    assert _child_hash(inherited) == _child_hash(inherited)
    assert _child_hash(inherited) != _child_hash({**inherited, "PYTHONHASHSEED": "24"})


def test_strict_mode_warns_that_mps_determinism_is_partial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(determinism, "_HASH_SEED_AT_START", "5")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "manual_seed", lambda seed: None)

    with pytest.warns(UserWarning) as caught:
        set_seed(5, strict=True)

    mps_warnings = [w for w in caught if "MPS" in str(w.message)]
    assert len(mps_warnings) == 1
    message = str(mps_warnings[0].message)
    assert "MPS determinism is partial" in message
    assert mps_warnings[0].filename == __file__


@pytest.mark.parametrize(("strict", "mps"), [(False, True), (True, False)])
def test_no_mps_warning_outside_strict_mode_or_without_mps(
    monkeypatch: pytest.MonkeyPatch, strict: bool, mps: bool
) -> None:
    monkeypatch.setattr(determinism, "_HASH_SEED_AT_START", "5")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(torch.mps, "manual_seed", lambda seed: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        set_seed(5, strict=strict)
    assert not [w for w in caught if "MPS" in str(w.message)]


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "3", None, True])
def test_invalid_seed_is_rejected_with_the_allowed_range(bad: object) -> None:
    before = DeterminismState.capture()
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
        set_seed(bad)  # type: ignore[arg-type]
    assert DeterminismState.capture() == before


def test_numpy_integer_seed_is_accepted() -> None:
    expected = plain_seed_draws(7)
    set_seed(np.uint32(7))  # type: ignore[arg-type]
    assert first_draws() == expected


def test_cuda_and_mps_generators_are_seeded_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    seeded: list[tuple[str, int]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: seeded.append(("cuda", s)))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "manual_seed", lambda s: seeded.append(("mps", s)))

    set_seed(11)

    assert ("cuda", 11) in seeded
    assert ("mps", 11) in seeded
    assert {seed for _, seed in seeded} == {11}


def test_the_recorded_seed_sequence_follows_the_last_seed() -> None:
    set_seed(9)
    sequence = last_seed_sequence()
    assert sequence is not None
    assert sequence.entropy == 9
    children = [child.generate_state(2).tolist() for child in sequence.spawn(2)]
    again = last_seed_sequence()
    assert again is not None
    assert [child.generate_state(2).tolist() for child in again.spawn(2)] == children


def test_the_phase_undo_reverts_strict_seeding_flags_and_environment() -> None:
    before = DeterminismState.capture()

    _, undo = undoable(lambda: set_seed(5, strict=True, warn_only=True), before)
    changed = DeterminismState.capture()
    assert changed != before
    assert changed.deterministic_algorithms and changed.deterministic_warn_only
    assert changed.recorded_seed == 5
    assert os.environ["PYTHONHASHSEED"] == "5"

    undo()

    assert DeterminismState.capture() == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert "PYTHONHASHSEED" not in os.environ
    # The legacy TF32 flags stay readable: restore must not mix torch's two TF32 APIs.
    assert torch.backends.cuda.matmul.allow_tf32 == before.matmul_allow_tf32
    assert torch.backends.cudnn.allow_tf32 == before.cudnn_allow_tf32


_INDUCTOR_PROBE = """
import sys, torch
from orchestrator_fsm.phases.determinism import DeterminismState, set_seed
before = DeterminismState.capture()
set_seed(3, strict=True)
print("loaded", "torch._inductor" in sys.modules or "torch._dynamo" in sys.modules)
print("enabled", torch.are_deterministic_algorithms_enabled())
import torch._inductor.config as inductor_config
print("inductor", inductor_config.deterministic)
before.restore()
print("restored", torch.are_deterministic_algorithms_enabled(), inductor_config.deterministic)
"""


@pytest.mark.slow
def test_strict_seeding_imports_no_inductor_yet_inductor_imported_later_is_deterministic() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _INDUCTOR_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_DETERMINISTIC"},
    )
    assert done.stdout.split("\n")[:4] == [
        "loaded False",
        "enabled True",
        "inductor True",
        "restored False False",
    ]


def test_strict_seeding_sets_a_loaded_inductor_config_and_restore_puts_it_back() -> None:
    import torch._inductor.config as inductor_config

    before = DeterminismState.capture()
    assert inductor_config.deterministic is False
    _, undo = undoable(lambda: set_seed(5, strict=True), before)
    assert inductor_config.deterministic is True
    assert torch.are_deterministic_algorithms_enabled()
    undo()
    assert inductor_config.deterministic is False
    assert DeterminismState.capture() == before


def test_restore_puts_back_flags_that_were_already_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    monkeypatch.setenv("PYTHONHASHSEED", "99")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    before = DeterminismState.capture()

    _, undo = undoable(lambda: set_seed(5, strict=True), before)
    undo()

    assert DeterminismState.capture() == before
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":0:0"
    assert os.environ["PYTHONHASHSEED"] == "99"
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cuda.matmul.allow_tf32 is True


def test_restore_leaves_the_random_streams_where_they_are() -> None:
    state = DeterminismState.capture()
    set_seed(21)
    expected_first, expected_second = plain_seed_draws(21), first_draws()
    set_seed(21)
    assert first_draws() == expected_first

    state.restore()

    assert first_draws() == expected_second


def test_seed_tree_seeds_depend_only_on_seed_purpose_and_rank() -> None:
    tree = SeedTree(123, rank=1, world_size=4)
    same = SeedTree(123, rank=1, world_size=4)
    same.seed_for("other")  # call order and history do not matter

    assert tree.seed_for("augment") == same.seed_for("augment")
    assert tree.seed_for("augment") != tree.seed_for("dropout")
    assert tree.seed_for("augment") != SeedTree(123, rank=2, world_size=4).seed_for("augment")
    assert tree.seed_for("augment") != SeedTree(124, rank=1, world_size=4).seed_for("augment")
    assert 0 <= tree.seed_for("augment") < 2**32


def test_seed_tree_worker_seeds_differ_per_worker_and_from_the_purpose_seed() -> None:
    tree = SeedTree(5)
    workers = [tree.worker_seed(worker_id) for worker_id in range(8)]
    assert len(set(workers)) == 8
    assert tree.seed_for("dataloader") not in workers
    assert tree.worker_seed(3) == SeedTree(5).worker_seed(3)
    assert tree.worker_seed(3, purpose="val") != tree.worker_seed(3)


def test_seed_tree_does_not_touch_the_global_generators() -> None:
    expected = plain_seed_draws(8)
    set_seed(8)
    tree = SeedTree(8, rank=0, world_size=2)
    tree.seed_for("x"), tree.worker_seed(1), tree.as_dict()
    assert first_draws() == expected


def test_a_shared_seed_is_the_same_on_every_rank_and_apart_from_per_rank_seeds() -> None:
    trees = [SeedTree(123, rank=rank, world_size=4) for rank in range(4)]
    shared = {tree.shared_seed("data_order") for tree in trees}
    per_rank = {tree.seed_for("data_order") for tree in trees}

    assert len(shared) == 1
    assert len(per_rank) == 4
    assert shared.isdisjoint(per_rank)
    assert trees[0].shared_seed("data_order") != trees[0].shared_seed("model_init")
    assert trees[0].shared_seed("data_order") != SeedTree(124).shared_seed("data_order")
    assert 0 <= trees[0].shared_seed("model_init") < 2**32


def epoch_indices(seed_of: str, *, world_size: int = 2, samples: int = 256) -> list[int]:
    """Every index the ranks' DistributedSamplers hand out in one epoch, all ranks."""
    indices: list[int] = []
    for rank in range(world_size):
        tree = SeedTree(1234, rank=rank, world_size=world_size)
        seed = getattr(tree, seed_of)("data_order")
        sampler = DistributedSampler(
            range(samples),  # type: ignore[arg-type]
            num_replicas=world_size,
            rank=rank,
            seed=seed,
        )
        indices.extend(sampler)
    return indices


def test_a_distributed_sampler_seeded_with_the_shared_seed_covers_every_sample_once() -> None:
    assert sorted(epoch_indices("shared_seed")) == list(range(256))
    # With a seed per rank each rank shuffles differently: some samples twice, some never.
    assert len(set(epoch_indices("seed_for"))) == 185


def test_seed_tree_as_dict_lists_standard_and_handed_out_seeds() -> None:
    tree = SeedTree(77, rank=1, world_size=2)
    augment = tree.seed_for("augment")
    worker = tree.worker_seed(0)
    order = tree.shared_seed("data_order")

    summary = tree.as_dict()

    assert json.loads(json.dumps(summary)) == summary
    assert summary["seed"] == summary["python"] == summary["numpy"] == summary["torch"] == 77
    assert (summary["rank"], summary["world_size"]) == (1, 2)
    assert summary["dataloader"] == SeedTree(77, 1, 2).seed_for("dataloader")
    assert summary["rank_seed"] == SeedTree(77, 1, 2).seed_for("rank")
    assert summary["shared"] == {
        purpose: SeedTree(77, 0, 2).shared_seed(purpose) for purpose in STANDARD_SHARED_PURPOSES
    }
    assert summary["shared"]["data_order"] == order
    assert summary["derived"] == {
        "augment": augment,
        "dataloader/worker/0": worker,
        "shared/data_order": order,
    }


@pytest.mark.slow
def test_seed_tree_seeds_are_identical_in_another_interpreter_with_another_hash_seed() -> None:
    code = (
        "import json; from orchestrator_fsm.seeds import SeedTree; "
        "t = SeedTree(99, rank=2, world_size=3); "
        "print(json.dumps([t.seed_for('augment'), t.worker_seed(4), t.shared_seed('init')]))"
    )
    here = SeedTree(99, rank=2, world_size=3)
    expected = [here.seed_for("augment"), here.worker_seed(4), here.shared_seed("init")]
    for hash_seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(result.stdout) == expected


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((-5,), r"seed must be an integer in \[0, 2\*\*32\), got -5"),
        ((1, 2, 2), r"rank must be in \[0, world_size=2\), got 2"),
        ((1, 0, 0), r"world_size must be an integer >= 1, got 0"),
        ((1, -1, 2), r"rank must be an integer >= 0, got -1"),
    ],
)
def test_seed_tree_rejects_impossible_arguments(arguments: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SeedTree(*arguments)


@pytest.mark.parametrize("purpose", ["", 3, None])
def test_seed_tree_rejects_a_purpose_that_is_not_a_name(purpose: object) -> None:
    with pytest.raises(ValueError, match="purpose must be a non-empty string"):
        SeedTree(1).seed_for(purpose)  # type: ignore[arg-type]


def test_make_generator_is_seeded_from_the_seed_tree() -> None:
    generator = make_generator(31, purpose="augment", rank=1)
    assert generator.initial_seed() == SeedTree(31, rank=1, world_size=2).seed_for("augment")
    first = torch.rand(4, generator=generator)
    assert torch.equal(
        first, torch.rand(4, generator=make_generator(31, purpose="augment", rank=1))
    )


def test_make_generator_without_seed_follows_set_seed_and_draws_nothing_global() -> None:
    set_seed(44)
    expected_global = first_draws()
    set_seed(44)
    derived = make_generator().initial_seed()
    assert first_draws() == expected_global

    assert derived == make_generator(44).initial_seed()
    set_seed(45)
    assert make_generator().initial_seed() != derived


def test_make_generator_defaults_to_the_launcher_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert make_generator(6).initial_seed() == make_generator(6, rank=3).initial_seed()
    assert make_generator(6).initial_seed() != make_generator(6, rank=0).initial_seed()


Row = tuple[int, int, float, float, float]


class DrawsPerWorker(Dataset[Row]):
    """Each item reports its worker, that worker's torch seed and its next draws."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> Row:
        info = get_worker_info()
        worker = -1 if info is None else info.id
        return (
            worker,
            torch.initial_seed(),
            random.random(),
            float(np.random.rand()),
            float(torch.rand(()).item()),
        )


def loader_draws(seed: int) -> list[Row]:
    set_seed(seed)
    loader = DataLoader(
        DrawsPerWorker(),
        batch_size=None,
        num_workers=2,
        worker_init_fn=worker_init_fn,
        generator=make_generator(),
    )
    return list(loader)


def test_dataloader_workers_repeat_across_runs_and_differ_from_each_other() -> None:
    first_run = loader_draws(2024)
    second_run = loader_draws(2024)

    assert first_run == second_run
    by_worker = {worker: [row[2:] for row in first_run if row[0] == worker] for worker in (0, 1)}
    assert len(by_worker[0]) == len(by_worker[1]) == 3
    for column in range(3):
        assert {draws[column] for draws in by_worker[0]}.isdisjoint(
            {draws[column] for draws in by_worker[1]}
        )
    assert loader_draws(2025) != first_run


def test_dataloader_workers_draw_what_worker_init_fn_seeded() -> None:
    rows = loader_draws(7)
    for worker in (0, 1):
        worker_seed, python_draw, numpy_draw = next(row[1:4] for row in rows if row[0] == worker)
        # Replay the worker's start-up in this process: same torch seed, same hook.
        torch.manual_seed(worker_seed)
        worker_init_fn(worker)
        assert (random.random(), float(np.random.rand())) == (python_draw, numpy_draw)


def test_worker_init_fn_seeds_python_and_numpy_per_worker() -> None:
    torch.manual_seed(10)

    def draws_of(worker_id: int) -> tuple[float, float]:
        worker_init_fn(worker_id)
        return random.random(), float(np.random.rand())

    assert draws_of(0) == draws_of(0)
    assert draws_of(0) != draws_of(1)
    with pytest.raises(ValueError, match="worker_id must be an integer >= 0"):
        worker_init_fn(-1)


def test_module_exports_match_the_documented_names() -> None:
    assert set(determinism.__all__) >= {
        "set_seed",
        "worker_init_fn",
        "make_generator",
        "SeedTree",
        "DeterminismState",
    }

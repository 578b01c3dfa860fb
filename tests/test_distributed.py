"""Rank and world size come from torchrun's variables, then SLURM's, then the defaults."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from orchestrator_fsm.distributed import (
    LAUNCHER_ENV_VARS,
    get_local_rank,
    get_rank,
    get_world_size,
)

READERS: list[tuple[Callable[[], int], str, str]] = [
    (get_rank, "RANK", "SLURM_PROCID"),
    (get_local_rank, "LOCAL_RANK", "SLURM_LOCALID"),
    (get_world_size, "WORLD_SIZE", "SLURM_NTASKS"),
]


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def test_outside_any_launcher_the_process_is_rank_zero_of_one() -> None:
    assert (get_rank(), get_local_rank(), get_world_size()) == (0, 0, 1)


def test_torchrun_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert (get_rank(), get_local_rank(), get_world_size()) == (5, 1, 8)


def test_slurm_variables_are_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert (get_rank(), get_local_rank(), get_world_size()) == (3, 2, 4)


@pytest.mark.parametrize(("reader", "primary", "fallback"), READERS)
def test_torchrun_variable_wins_over_slurm(
    monkeypatch: pytest.MonkeyPatch, reader: Callable[[], int], primary: str, fallback: str
) -> None:
    monkeypatch.setenv(primary, "2")
    monkeypatch.setenv(fallback, "7")
    assert reader() == 2


@pytest.mark.parametrize(("reader", "primary", "fallback"), READERS)
@pytest.mark.parametrize("bad", ["abc", "1.5", "", "-1"])
def test_malformed_value_names_the_variable_and_the_value(
    monkeypatch: pytest.MonkeyPatch,
    reader: Callable[[], int],
    primary: str,
    fallback: str,
    bad: str,
) -> None:
    for name in (primary, fallback):
        monkeypatch.setenv(name, bad)
        if name == fallback:
            monkeypatch.delenv(primary)
        with pytest.raises(ValueError) as raised:
            reader()
        assert name in str(raised.value)
        assert repr(bad) in str(raised.value)


def test_a_malformed_torchrun_value_is_not_papered_over_by_slurm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RANK", "zero")
    monkeypatch.setenv("SLURM_PROCID", "0")
    with pytest.raises(ValueError, match="RANK='zero'"):
        get_rank()


def test_world_size_zero_is_rejected_but_rank_zero_is_fine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "0")
    assert get_rank() == 0
    with pytest.raises(ValueError, match=r"WORLD_SIZE='0'.*>= 1"):
        get_world_size()


def test_surrounding_whitespace_is_tolerated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", " 3\n")
    assert get_local_rank() == 3

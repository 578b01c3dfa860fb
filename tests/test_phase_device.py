"""Device resolution: the recipe's device string becomes a torch.device or a DeviceError.

There is no GPU here, so the CUDA and MPS branches run against a fake
``torch.cuda``/``torch.backends.mps`` surface (``is_available``, ``device_count``).
"""

from __future__ import annotations

import pytest
import torch

from orchestrator_fsm.distributed import LAUNCHER_ENV_VARS
from orchestrator_fsm.errors import DeviceError, OrchestratorError
from orchestrator_fsm.phases.device import available_devices, to_device_obj


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*LAUNCHER_ENV_VARS, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)


def fake_hardware(monkeypatch: pytest.MonkeyPatch, *, cuda: int = 0, mps: bool = False) -> None:
    """Pretend ``cuda`` CUDA devices are visible and MPS is (or is not) available."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_cpu_is_always_available() -> None:
    assert to_device_obj("cpu") == torch.device("cpu")
    assert to_device_obj("  CPU ") == torch.device("cpu")


def test_auto_on_this_machine_matches_what_torch_reports() -> None:
    device = to_device_obj("auto")
    if torch.cuda.is_available():
        assert device.type == "cuda"
    elif torch.backends.mps.is_available():
        assert device == torch.device("mps")
    else:
        assert device == torch.device("cpu")


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hardware(monkeypatch, cuda=2, mps=True)
    assert to_device_obj("auto") == torch.device("cuda", 0)
    fake_hardware(monkeypatch, cuda=0, mps=True)
    assert to_device_obj("auto") == torch.device("mps")
    fake_hardware(monkeypatch, cuda=0, mps=False)
    assert to_device_obj("auto") == torch.device("cpu")


def test_a_single_process_gets_the_first_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hardware(monkeypatch, cuda=4)
    assert to_device_obj("cuda") == torch.device("cuda", 0)


@pytest.mark.parametrize("device_str", ["auto", "cuda"])
@pytest.mark.parametrize(("local_rank", "expected"), [(0, 0), (1, 1), (2, 0), (5, 1)])
def test_each_local_rank_binds_its_own_gpu(
    monkeypatch: pytest.MonkeyPatch, device_str: str, local_rank: int, expected: int
) -> None:
    fake_hardware(monkeypatch, cuda=2)
    assert to_device_obj(device_str, local_rank=local_rank) == torch.device("cuda", expected)


def test_a_task_that_sees_one_gpu_uses_it_whatever_its_local_rank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # srun --gpus-per-task=1: each task's CUDA_VISIBLE_DEVICES holds its own GPU only.
    fake_hardware(monkeypatch, cuda=1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert to_device_obj("cuda", local_rank=3) == torch.device("cuda", 0)


def test_the_device_follows_the_local_rank_given_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_hardware(monkeypatch, cuda=2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert to_device_obj("cuda", local_rank=0) == torch.device("cuda", 0)
    assert to_device_obj("auto", local_rank=1) == torch.device("cuda", 1)


def test_explicit_cuda_index_is_used_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hardware(monkeypatch, cuda=2)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert to_device_obj("cuda:1") == torch.device("cuda", 1)
    assert to_device_obj("CUDA:0") == torch.device("cuda", 0)


def test_cuda_index_beyond_the_visible_devices_lists_what_is_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_hardware(monkeypatch, cuda=2)
    with pytest.raises(DeviceError) as raised:
        to_device_obj("cuda:3")
    assert str(raised.value) == (
        "requested device 'cuda:3' but only 2 CUDA devices (cuda:0, cuda:1) are visible; "
        "available: cpu, cuda:0, cuda:1"
    )


def test_cuda_index_beyond_the_visible_devices_names_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_hardware(monkeypatch, cuda=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with pytest.raises(DeviceError) as raised:
        to_device_obj("cuda:2")
    assert str(raised.value) == (
        "requested device 'cuda:2' but only 2 CUDA devices (cuda:0, cuda:1) are visible "
        "(CUDA_VISIBLE_DEVICES='4,5' hides the other GPUs and numbers the visible ones "
        "from 0); available: cpu, cuda:0, cuda:1"
    )


def test_a_single_visible_gpu_is_named_in_the_singular(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hardware(monkeypatch, cuda=1)
    with pytest.raises(DeviceError, match=r"only 1 CUDA device \(cuda:0\) is visible"):
        to_device_obj("cuda:1")


@pytest.mark.parametrize("device_str", ["cuda", "cuda:0"])
def test_cuda_without_cuda_says_so_and_offers_the_alternatives(
    monkeypatch: pytest.MonkeyPatch, device_str: str
) -> None:
    fake_hardware(monkeypatch, cuda=0, mps=True)
    with pytest.raises(DeviceError) as raised:
        to_device_obj(device_str)
    message = str(raised.value)
    assert message.startswith(f"requested device {device_str!r} but ")
    assert "CUDA" in message
    assert message.endswith("available: cpu, mps")


def test_mps_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hardware(monkeypatch, mps=True)
    assert to_device_obj("mps") == torch.device("mps")


def test_mps_when_unavailable_names_the_request_and_the_alternatives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_hardware(monkeypatch, cuda=1, mps=False)
    with pytest.raises(
        DeviceError, match=r"requested device 'mps' but .*MPS.*available: cpu, cuda:0$"
    ):
        to_device_obj("mps")


@pytest.mark.parametrize("device_str", ["tpu", "cuda:-1", "cuda:x", "gpu", "", "mps:0", "cuda:"])
def test_unknown_device_lists_the_accepted_forms(
    monkeypatch: pytest.MonkeyPatch, device_str: str
) -> None:
    fake_hardware(monkeypatch, cuda=1)
    with pytest.raises(DeviceError) as raised:
        to_device_obj(device_str)
    message = str(raised.value)
    assert repr(device_str) in message
    assert "auto, cpu, cuda, cuda:N, mps" in message
    assert message.endswith("available: cpu, cuda:0")


def test_a_non_string_device_is_a_device_error() -> None:
    with pytest.raises(DeviceError, match="device must be a string"):
        to_device_obj(0)  # type: ignore[arg-type]


@pytest.mark.parametrize("local_rank", [-1, 1.0, True])
def test_an_invalid_local_rank_is_a_device_error(local_rank: object) -> None:
    with pytest.raises(DeviceError, match="local_rank must be an integer >= 0"):
        to_device_obj("cpu", local_rank=local_rank)  # type: ignore[arg-type]


def test_device_errors_belong_to_the_package_hierarchy() -> None:
    assert issubclass(DeviceError, OrchestratorError)


def test_available_devices_lists_every_usable_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hardware(monkeypatch, cuda=3, mps=True)
    assert available_devices() == ["cpu", "cuda:0", "cuda:1", "cuda:2", "mps"]
    fake_hardware(monkeypatch)
    assert available_devices() == ["cpu"]

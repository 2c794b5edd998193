"""Device choice and the CPU plan."""

from __future__ import annotations

import os

import pytest
import torch

from autoannotate.errors import ConfigError
from autoannotate.runtime.device import (
    ComputePlan,
    activate,
    available_cores,
    plan_compute,
    ray_worker_device,
    release_device_memory,
    select_device,
)


@pytest.mark.parametrize(
    ("device", "cores", "expected"),
    [
        ("cpu", 1, (1, 1, 1, 0)),  # one core: one image at a time, one thread
        ("cpu", 2, (2, 1, 2, 0)),  # our dev machine: two images in flight, one core each (ultralytics: 1 thread)
        ("cpu", 32, (8, 4, 4, 0)),  # big CPU: at most 8 images in flight, the rest as intra-op threads
        # GPU: one worker feeds the device, batching does the rest; torch's host pool small, decoding and writing
        # on every other core; polygons in processes from 8 cores on (threads share one core's worth: the GIL)
        ("cuda:0", 16, (1, 2, 15, 7)),
        ("cuda:0", 2, (1, 2, 2, 0)),
        ("cuda:0", 7, (1, 2, 6, 0)),
        ("cuda:0", 8, (1, 2, 7, 3)),
        ("cuda:0", 96, (1, 2, 32, 8)),
    ],
    ids=["1-core", "2-core", "32-core", "cuda-16", "cuda-2", "cuda-7", "cuda-8", "cuda-96"],
)
def test_plan_uses_every_core(device, cores, expected):
    plan = plan_compute(torch.device(device), cores)
    assert (plan.infer_workers, plan.torch_threads, plan.host_workers, plan.polygon_processes) == expected
    if plan.device.type == "cpu":
        assert plan.infer_workers * plan.torch_threads == cores or plan.infer_workers == 8


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="--device 'cuda:3'"):
        select_device("cuda:3")
    assert available_cores() >= 1
    assert isinstance(plan_compute(torch.device("cpu")), ComputePlan)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """CUDA mocked at torch's boundary: two devices, the current one 0; ``set_device`` calls recorded."""
    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    return calls


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", torch.device("cuda", 0)),  # auto: the current device
        ("cuda", torch.device("cuda", 0)),
        ("1", torch.device("cuda", 1)),
        ("cuda:1", torch.device("cuda", 1)),
        ("1,0", torch.device("cuda", 1)),  # a list, as ultralytics takes it: the first
        ("cpu", torch.device("cpu")),
    ],
)
def test_select_device_builds_the_device_and_leaves_the_environment(
    two_gpus: list[object], spec: str, expected: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    before = dict(os.environ)
    assert select_device(spec) == expected
    assert dict(os.environ) == before  # never narrowed: a Ray actor's or a driver's GPUs stay as they were
    assert two_gpus == []  # choosing is not activating


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("2", "invalid --device '2': this machine has 2 CUDA device(s), cuda:0 to cuda:1"),
        ("cuda:0,5", "invalid --device 'cuda:0,5': this machine has 2 CUDA device(s), cuda:0 to cuda:1"),
        ("gpu", "invalid --device 'gpu': not a device name; use '', 'cpu', 'cuda:0' or '0'"),
    ],
)
def test_select_device_refuses_in_one_line(two_gpus: list[object], spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        select_device(spec)
    assert str(info.value) == message


def test_no_cuda_refuses_an_index_and_auto_is_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("") == torch.device("cpu")
    for spec in ("0", "cuda"):
        with pytest.raises(ConfigError, match="has no CUDA device that torch sees"):
            select_device(spec)


def test_activate_makes_the_device_current_only_for_cuda(two_gpus: list[object]) -> None:
    activate(torch.device("cpu"))
    activate(torch.device("cuda", 1))
    assert two_gpus == [torch.device("cuda", 1)]


@pytest.mark.parametrize(
    ("gpu_ids", "visible", "expected"),
    [
        ([], None, "cpu"),  # Ray gave no GPU
        (["3"], "3", "cuda:0"),  # Ray narrowed the worker's GPUs to its own: torch calls it cuda:0
        (["3"], "1,3", "cuda:1"),  # two visible, the assigned one second
        ([3], None, "cuda:3"),  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: the physical index
        (["2"], "", "cuda:2"),
    ],
)
def test_ray_worker_uses_the_gpu_ray_assigned(gpu_ids: list[object], visible: str | None, expected: str) -> None:
    assert ray_worker_device(gpu_ids, visible) == torch.device(expected)


def test_release_device_memory_synchronises_then_empties_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(f"synchronize {device}"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    release_device_memory(torch.device("cpu"))
    release_device_memory(torch.device("cuda", 1))
    assert calls == ["synchronize cuda:1", "empty_cache"]

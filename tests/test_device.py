"""Device choice and the CPU plan."""

from __future__ import annotations

import pytest
import torch

from autoannotate.errors import ConfigError
from autoannotate.runtime.device import ComputePlan, available_cores, plan_compute, select_device


@pytest.mark.parametrize(
    ("device", "cores", "expected"),
    [
        ("cpu", 1, (1, 1)),  # one core: one image at a time, one thread
        ("cpu", 2, (2, 1)),  # our dev machine: two images in flight, one core each (ultralytics: 1 thread total)
        ("cpu", 32, (8, 4)),  # big CPU: at most 8 images in flight, the rest as intra-op threads
        ("cuda:0", 16, (1, 16)),  # GPU: one worker feeds the device; batching does the rest
    ],
    ids=["1-core", "2-core", "32-core", "cuda"],
)
def test_plan_uses_every_core(device, cores, expected):
    plan = plan_compute(torch.device(device), cores)
    assert (plan.infer_workers, plan.torch_threads) == expected
    if plan.device.type == "cpu":
        assert plan.infer_workers * plan.torch_threads == cores or plan.infer_workers == 8


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="--device 'cuda:3'"):
        select_device("cuda:3")
    assert available_cores() >= 1
    assert isinstance(plan_compute(torch.device("cpu")), ComputePlan)

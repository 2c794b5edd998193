"""``benchmarks/gpu_check.sh --cpu-smoke``: the script for the day a GPU is lent runs end to end here, small, on the
CPU, so that its few minutes on a GPU are not spent finding a bug in the script itself. No timing is checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
#: Every check the script prints, and those that must pass on a CPU (the others need CUDA and say SKIP there).
CHECKS = ("run-fp32", "run-half", "byte-identical", "params-on-device", "half-finite", "oom-retry", "bad-device")
MUST_PASS_ON_CPU = ("run-fp32", "run-half", "byte-identical", "half-finite", "bad-device")


def check_statuses(stdout: str) -> dict[str, str]:
    """``{check name: PASS/FAIL/SKIP}`` from the script's ``STATUS name: detail`` lines."""
    statuses = {}
    for line in stdout.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("PASS", "FAIL", "SKIP") and ":" in rest:
            statuses[rest.split(":", 1)[0]] = status
    return statuses


def test_cpu_smoke_passes_every_check_that_applies_to_a_cpu() -> None:
    env = {**os.environ, "GPU_CHECK_PYTHON": sys.executable}  # this interpreter, whatever PATH says
    result = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-smoke"], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    shown = f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, shown

    statuses = check_statuses(result.stdout)
    assert sorted(statuses) == sorted(CHECKS), shown
    assert "FAIL" not in statuses.values(), shown
    for name in MUST_PASS_ON_CPU:
        assert statuses[name] == "PASS", f"{name}: {statuses[name]}\n{shown}"
    assert "numbers (nothing asserted):" in result.stdout

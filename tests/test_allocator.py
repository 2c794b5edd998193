"""The host allocator tuning: what it changes (page faults on reused large blocks), its opt-out, and its caller."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoannotate.cli import app
from autoannotate.cli import run as run_command
from autoannotate.runtime.allocator import ENV_VAR, tune_host_allocator


def _is_glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


# Allocates and frees a 64 MB float32 tensor 50 times (touching every page), in a fresh interpreter, and prints the
# minor page faults those 50 rounds took. Untuned glibc maps and unmaps the block every round (torch's CPU allocator
# calls malloc/free directly), so every round faults all of its 16,384 pages in again.
_FAULTS_SCRIPT = """
import resource, sys
import torch
from autoannotate.runtime.allocator import tune_host_allocator
applied = tune_host_allocator() if sys.argv[1] == "tuned" else False
torch.set_num_threads(1)
torch.ones(16 * 1024 * 1024).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    torch.ones(16 * 1024 * 1024).sum()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, env_value: str | None = None) -> tuple[bool, int]:
    import os

    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if env_value is not None:
        env[ENV_VAR] = env_value
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not _is_glibc(), reason="the tuning is glibc-only")
def test_tuning_stops_refaulting_reused_large_blocks() -> None:
    applied, tuned = _faults("tuned")
    untouched, untuned = _faults("untuned")
    assert applied and not untouched
    assert untuned >= 50 * 16_000  # every round faulted the whole 64 MB back in
    # Tuned, the block is reused: a few rounds' worth of faults at most (1 to 4 seen), not one per round.
    assert tuned * 5 <= untuned, (tuned, untuned)


@pytest.mark.skipif(not _is_glibc(), reason="the tuning is glibc-only")
def test_opt_out_leaves_the_allocator_alone() -> None:
    assert tune_host_allocator({ENV_VAR: "system"}) is False
    assert tune_host_allocator({ENV_VAR: " System "}) is False
    applied, faults = _faults("tuned", env_value="system")
    assert not applied
    assert faults >= 50 * 16_000


def test_run_command_tunes_the_allocator_for_a_cpu_run_once_its_models_are_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yolo_weights: Path
) -> None:
    """The CLI entry point is the one caller (it owns the process), once the models are loaded and the device is
    known (a GPU run is left alone) and before any inference thread; invalid options and a missing model fail first."""
    import cv2
    import numpy as np

    calls: list[bool] = []
    monkeypatch.setattr(run_command, "tune_host_allocator", lambda: calls.append(True) or True)
    runner = CliRunner()
    bad = runner.invoke(app, ["run", "--data", str(tmp_path), "--conf", "7"])
    assert bad.exit_code == 2 and calls == []
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.full((48, 64, 3), 90, np.uint8))
    missing = runner.invoke(
        app,
        ["run", "--data", str(tmp_path / "imgs"), "--det-model", str(tmp_path / "missing.pt"), "--json", "--quiet"],
    )
    assert missing.exit_code == 2 and calls == []  # the missing model ends the run before any tuning
    options = ["--det-model", str(yolo_weights), "--sam-model", "none", "--device", "cpu", "--conf", "1e-4"]
    result = runner.invoke(app, ["run", "--data", str(tmp_path / "imgs"), *options, "--max-det", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert calls == [True]

"""``benchmarks/bench_host_capacity.py`` at a tiny size: it runs the real pipeline end to end with its stand-in
models, writes one label line per box, and prints its 16-core verdict. No timing is checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import autoannotate.types

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_host_capacity.py"


@pytest.mark.parametrize("masks", ["crops", "full"])
def test_tiny_run_writes_every_label_and_prints_the_extrapolation(tmp_path: Path, masks: str):
    if masks == "crops" and not hasattr(autoannotate.types, "MaskCrop"):
        pytest.skip("this autoannotate's segmenters return full masks only")
    images, boxes = 4, 3
    command = [sys.executable, str(SCRIPT), "--images", str(images), "--boxes", str(boxes), "--size", "small"]
    command += ["--masks", masks]
    command += ["--repeats", "1", "--stage-images", "2", "--quiet-wait-s", "0", "--work-dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    runs = sorted((tmp_path / "runs").glob("workers*-cores*-0"))
    assert runs, result.stdout  # one end-to-end dataset per configuration (two on a machine with two cores)
    for run in runs:
        labels = sorted((run / "labels").glob("*.txt"))
        assert [label.name for label in labels] == [f"img_{index:04d}.txt" for index in range(images)]
        for label in labels:
            lines = [line for line in label.read_text().splitlines() if line.strip()]
            assert len(lines) == boxes  # merge mode: one polygon per (non-empty) mask
            assert all(len(line.split()) >= 7 for line in lines)  # class id and at least 3 points
    assert "16-core extrapolation: " in result.stdout
    assert "img/s needed for MobileSAM at 12 ms/image -> " in result.stdout
    assert "bounding stage: " in result.stdout

"""A SAM checkpoint is data, never code: files that torch's weights-only loader refuses are refused with one line,
and nothing in them runs (the pickle payloads below would create a marker file)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from autoannotate.errors import ModelError
from autoannotate.segmenters import load_segmenter
from autoannotate.segmenters.sam import load_sam


class _ShellPayload:
    """Unpickling this runs a shell command (what a hostile checkpoint does)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _OpenPayload:
    """Unpickling this calls ``open(path, "w")``: it creates the file, no shell needed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (io.open, (self.path, "w"))


def _hostile_checkpoint(path: Path, mobile_sam_weights: Path, payload: object) -> Path:
    """A complete MobileSAM state dict plus one extra entry holding ``payload``: loadable by the old fallback."""
    state_dict = torch.load(mobile_sam_weights, map_location="cpu", weights_only=True)
    state_dict["zz_extra"] = payload
    torch.save(state_dict, path)
    return path


@pytest.mark.parametrize("kind", ["os.system", "open"])
def test_hostile_checkpoint_is_refused_and_runs_nothing(tmp_path: Path, mobile_sam_weights: Path, kind: str):
    marker = tmp_path / "MARKER"
    payload = _ShellPayload(f"touch {marker}") if kind == "os.system" else _OpenPayload(marker)
    path = _hostile_checkpoint(tmp_path / "sam.pt", mobile_sam_weights, payload)
    with pytest.raises(ModelError) as err:
        load_sam(path)
    message = str(err.value)
    assert "\n" not in message and "sam.pt" in message
    # names the offending global, says it is not loaded and how to convert the file
    assert ("posix.system" in message or "os.system" in message) if kind == "os.system" else "io.open" in message
    assert "not loaded" in message and "torch.save(model.state_dict()" in message
    assert not marker.exists()


def test_hostile_checkpoint_through_the_cli(tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path):
    """The whole command, as a user runs it: exit 2, one error line, and the payload never ran."""
    marker = tmp_path / "MARKER"
    path = _hostile_checkpoint(tmp_path / "mobile_sam.pt", mobile_sam_weights, _ShellPayload(f"touch {marker}"))
    images = tmp_path / "imgs"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.full((48, 64, 3), 120, np.uint8))
    command = [sys.executable, "-m", "autoannotate.cli", "run", "--data", str(images), "--det-model", str(yolo_weights)]
    command += ["--sam-model", str(path), "--conf", "1e-4", "--max-det", "1", "--output-dir", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: SAM weights"), result.stderr
    assert "pickled object" in lines[0] and "Traceback" not in result.stderr
    assert not marker.exists()


def test_ultralytics_checkpoint_is_named_without_unpickling(tmp_path: Path, yolo_weights: Path):
    """Recognised from the class name torch refuses: an Ultralytics (YOLO) checkpoint, not a SAM state dict."""
    with pytest.raises(ModelError) as err:
        load_sam(yolo_weights)
    message = str(err.value)
    assert "Ultralytics model checkpoint" in message and "not a SAM-family state dict" in message
    assert "ultralytics.nn.tasks.DetectionModel" in message and "--sam-model" in message


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear"),  # a whole pickled module
        (lambda: {"w": torch.zeros(2), "best": np.float64(0.5)}, "numpy"),  # a numpy scalar beside the weights
    ],
    ids=["nn-module", "numpy-scalar"],
)
def test_other_pickled_objects_are_refused_with_their_global(tmp_path: Path, make, fragment: str):
    path = tmp_path / "other.pt"
    torch.save(make(), path)
    with pytest.raises(ModelError) as err:
        load_sam(path)
    message = str(err.value)
    assert fragment in message and "sam_weights.pt" in message and "\n" not in message


def test_plain_state_dict_still_loads(mobile_sam_weights: Path):
    _, variant = load_sam(mobile_sam_weights)
    assert variant == "mobile_sam"


@pytest.mark.parametrize("kind", ["os.system", "open"])
def test_registry_refuses_hostile_checkpoint_and_runs_nothing(tmp_path: Path, mobile_sam_weights: Path, kind: str):
    """``load_segmenter`` reads the file (memory-mapped) with the same weights-only unpickler: refused, nothing runs."""
    marker = tmp_path / "MARKER"
    payload = _ShellPayload(f"touch {marker}") if kind == "os.system" else _OpenPayload(marker)
    path = _hostile_checkpoint(tmp_path / "sam.pt", mobile_sam_weights, payload)
    with pytest.raises(ModelError) as err:
        load_segmenter(str(path), "cpu")
    message = str(err.value)
    assert "\n" not in message and "sam.pt" in message and "not loaded" in message
    assert not marker.exists()


def test_registry_names_ultralytics_checkpoint(yolo_weights: Path):
    with pytest.raises(ModelError) as err:
        load_segmenter(str(yolo_weights), "cpu")
    message = str(err.value)
    assert "Ultralytics model checkpoint" in message and "not a SAM-family state dict" in message

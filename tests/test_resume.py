"""Never lose work: reruns resume, changed settings redo, a SIGKILL part-way resumes to byte-identical labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import sigkill_after_labels, stand_in_model_args
from typer.testing import CliRunner

from autoannotate.cli import app
from autoannotate.resume import JOURNAL_NAME, Journal, LabelEntry, load_previous

runner = CliRunner()


def _images(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = (40 + 4 * i, 64) if i % 2 else (64, 40 + 4 * i)
        image = np.full((h, w, 3), 100, np.uint8)
        cv2.circle(image, (w // 2, h // 2), 10 + i, tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
        (root / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / f"d{i % 2}" / f"img{i:02d}.png"), image)


def _args(data: Path, out: Path, yolo: Path, sam: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--data",
        str(data),
        "--output-dir",
        str(out),
        *stand_in_model_args(yolo, sam, max_det=2),
        "--json",
        *extra,
    ]


def _labels(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "labels").rglob("*.txt"))}


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_rerun_skips_changed_settings_and_images_redo(tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path):
    data, out = tmp_path / "imgs", tmp_path / "out"
    _images(data, 3)
    first = runner.invoke(app, _args(data, out, yolo_weights, mobile_sam_weights))
    assert first.exit_code == 0, first.output
    labels = _labels(out)
    mtimes = {k: (out / k).stat().st_mtime_ns for k in labels}
    assert not (out / JOURNAL_NAME).exists()  # folded into the manifest at the end

    again = runner.invoke(app, _args(data, out, yolo_weights, mobile_sam_weights))
    assert again.exit_code == 0
    summary = _summary(again.stdout)
    assert (summary["skipped"], summary["labeled"], summary["images"]) == (3, 0, 3)
    events = [json.loads(line) for line in again.stdout.splitlines()[:-1]]
    assert {e["status"] for e in events} == {"skipped"} and all(e["label"] for e in events)
    assert summary["instances"] == _summary(first.stdout)["instances"]
    assert {k: (out / k).stat().st_mtime_ns for k in labels} == mtimes  # not even rewritten

    # an image that changed is redone, the others are not
    changed = data / "d1" / "img01.png"
    os.utime(changed, ns=(time.time_ns(), time.time_ns()))
    touched = runner.invoke(app, _args(data, out, yolo_weights, mobile_sam_weights))
    assert _summary(touched.stdout)["skipped"] == 2
    assert [json.loads(x)["path"] for x in touched.stdout.splitlines()[:-1] if '"skipped"' not in x] == [str(changed)]

    # changed settings redo every image, and say so up front
    redo = runner.invoke(app, _args(data, out, yolo_weights, mobile_sam_weights, "--tolerance", "0"))
    assert redo.exit_code == 0
    assert _summary(redo.stdout)["skipped"] == 0
    assert "settings changed since the last run (tolerance: 1.0 -> 0.0)" in redo.stderr
    # --overwrite redoes everything even when nothing changed
    forced = runner.invoke(app, _args(data, out, yolo_weights, mobile_sam_weights, "--tolerance", "0", "--overwrite"))
    assert _summary(forced.stdout)["skipped"] == 0 and _summary(forced.stdout)["labeled"] == 3


def test_sigkill_mid_run_then_rerun_is_byte_identical(tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path):
    data = tmp_path / "imgs"
    _images(data, 8)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    result = runner.invoke(app, _args(data, reference, yolo_weights, mobile_sam_weights))
    assert result.exit_code == 0, result.output
    expected = _labels(reference)
    assert len(expected) == 8

    command = [sys.executable, "-m", "autoannotate.cli", *_args(data, killed, yolo_weights, mobile_sam_weights)]
    sigkill_after_labels(command, killed / "labels", 3, timeout_s=300)
    partial = _labels(killed)
    assert 3 <= len(partial) < 8
    assert json.loads((killed / "autoannotate.json").read_text())["state"] == "running"  # valid JSON after kill

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    summary = _summary(rerun.stdout)
    assert summary["skipped"] + summary["labeled"] == 8 and summary["skipped"] >= 1
    assert _labels(killed) == expected  # byte-identical to the uninterrupted run
    leftovers = [p.name for p in killed.rglob("*") if p.name.endswith(".tmp") or p.name == JOURNAL_NAME]
    assert leftovers == []


def test_journal_torn_line_and_pending(tmp_path: Path):
    entry = LabelEntry("/imgs/a.jpg", "ok", 2, "fp", 10, 20)
    journal = Journal(tmp_path / JOURNAL_NAME)
    journal.pending("labels/a.txt")
    journal.done("labels/a.txt", entry)
    journal.pending("labels/b.txt")  # killed while writing b
    journal.close(remove=False)
    with open(tmp_path / JOURNAL_NAME, "a") as handle:
        handle.write('{"event": "done", "label": "labels/c.t')  # torn by a kill
    previous = load_previous(tmp_path)
    assert previous.entries == {"labels/a.txt": entry}
    assert previous.owned == {"labels/a.txt", "labels/b.txt"}  # b may be half-ours: it may be replaced


@pytest.mark.parametrize("manifest", ["", "{", "[]", '{"labels": 5}'], ids=["empty", "torn", "list", "bad-labels"])
def test_unreadable_manifest_means_nothing_known(tmp_path: Path, manifest: str):
    (tmp_path / "autoannotate.json").write_text(manifest)
    previous = load_previous(tmp_path)
    assert previous.entries == {} and previous.owned == frozenset()

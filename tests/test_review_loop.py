"""Corrections that are never overwritten: labels imported from an annotation tool are marked reviewed in the
manifest, and every later run keeps them byte for byte (``--overwrite`` too) until ``--overwrite-reviewed``.

Runs use the random-weight stand-ins through typer's CliRunner; the import goes through ``apply_imported`` here
(the Label Studio and CVAT round trips through their CLI commands are below, with their exports edited as a person
would)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import json_events, stand_in_model_args
from typer.testing import CliRunner

from autoannotate.cli import app
from autoannotate.dataset.yolo_seg import parse_label_lines
from autoannotate.errors import InputError, OutputError
from autoannotate.exchange import ImportedLabel
from autoannotate.exchange.apply import apply_imported, label_text
from autoannotate.lock import acquire_output_lock
from autoannotate.resume import LabelState, label_state, load_previous

runner = CliRunner()
PERSON_FIX = np.array([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9]])


@pytest.fixture
def models(yolo_weights: Path, mobile_sam_weights: Path) -> list[str]:
    return stand_in_model_args(yolo_weights, mobile_sam_weights, max_det=2)


def _images(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = np.full((44 + 2 * i, 68, 3), 70, np.uint8)
        cv2.circle(image, (34, 22), 8 + i, (40 * i, 200, 90), -1)
        assert cv2.imwrite(str(root / f"im{i:02d}.png"), image)


def _run(data: Path, out: Path, models: list[str], *extra: str):
    return runner.invoke(app, ["run", "--data", str(data), "--output-dir", str(out), *models, "--json", *extra])


def _labels(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "labels").rglob("*.txt"))}


def _statuses(stdout: str) -> dict[str, str]:
    return {Path(e["path"]).name: e["status"] for e in json_events(stdout)[:-1]}


def _done_run(tmp_path: Path, models: list[str], n: int = 3) -> tuple[Path, Path]:
    data, out = tmp_path / "imgs", tmp_path / "out"
    _images(data, n)
    result = _run(data, out, models)
    assert result.exit_code == 0, result.output
    return data, out


def test_reviewed_labels_survive_reruns_and_overwrite_until_overwrite_reviewed(tmp_path: Path, models):
    data, out = _done_run(tmp_path, models)
    auto = _labels(out)
    result = apply_imported(
        out, [ImportedLabel("labels/im01.txt", ((0, PERSON_FIX),))], source="labelstudio", file="/x/export.json"
    )
    assert (result.reviewed, result.changed, result.changed_keys) == (1, 1, ("labels/im01.txt",))
    fixed = (out / "labels/im01.txt").read_bytes()
    assert fixed == b"0 0.100000 0.100000 0.900000 0.100000 0.900000 0.900000\n"
    marks = json.loads((out / "autoannotate.json").read_text())["reviewed"]
    assert set(marks) == {"labels/im01.txt"} and marks["labels/im01.txt"]["source"] == "labelstudio"
    for extra in (["--tolerance", "0"], ["--overwrite"]):  # other label settings, then --overwrite
        rerun = _run(data, out, models, *extra)
        assert rerun.exit_code == 0, rerun.output
        assert _statuses(rerun.stdout)["im01.png"] == "reviewed"
        assert json_events(rerun.stdout)[-1]["reviewed"] == 1
        assert (out / "labels/im01.txt").read_bytes() == fixed
        assert "labels/im01.txt" in json.loads((out / "autoannotate.json").read_text())["reviewed"]
        if extra == ["--overwrite"]:
            assert "kept 1 label(s) a person reviewed" in rerun.stderr and "--overwrite-reviewed" in rerun.stderr
    redo = _run(data, out, models, "--overwrite-reviewed")
    assert redo.exit_code == 0 and _statuses(redo.stdout)["im01.png"] == "ok"
    assert _labels(out)["labels/im01.txt"] == auto["labels/im01.txt"]  # the auto-label again
    assert "reviewed" not in json.loads((out / "autoannotate.json").read_text())  # and no longer marked


def test_check_counts_reviewed_edited_and_automatic_labels(tmp_path: Path, models):
    data, out = _done_run(tmp_path, models, n=4)
    apply_imported(out, [ImportedLabel("labels/im00.txt", ())], source="cvat", file="e.zip")  # a reviewed negative
    (out / "labels/im02.txt").write_text("0 0.2 0.2 0.8 0.2 0.8 0.8\n")  # edited by hand
    result = runner.invoke(app, ["check", str(out / "labels"), "--json"])
    provenance = json.loads(result.stdout)["provenance"]
    assert provenance["reviewed"] == ["labels/im00.txt"] and provenance["edited"] == ["labels/im02.txt"]
    assert provenance["automatic"] == 2
    text = runner.invoke(app, ["check", str(out / "labels")]).stdout
    assert "labels: 2 automatic, 1 reviewed by a person (autoannotate import), 1 edited by hand" in text
    summary = json_events(_run(data, out, models).stdout)[-1]
    assert (summary["reviewed"], summary["edited"]) == (1, 1)


def _finished(root: Path) -> Path:
    """An output dir as a run leaves it (no models needed): three images, two polygon lines each."""
    from helpers import fake_run_dir

    line = "{} 0.{}12345 0.200000 0.700001 0.2{}0000 0.650000 0.812346 0.100000 0.500000\n"
    labels = {f"im{i:02d}.png": line.format(0, i, i) + line.format(1, i + 3, i + 1) for i in range(3)}
    return fake_run_dir(root, labels, {0: "person", 1: "car"})


def test_an_unchanged_instance_keeps_its_text_and_an_accepted_label_is_not_rewritten(tmp_path: Path):
    out = _finished(tmp_path / "out")
    label = out / "labels/im02.txt"
    text = label.read_text()
    lines, _ = parse_label_lines(text)
    assert len(lines) == 2
    # the tool's rounding moves points by less than a unit of the 6th decimal: the line is the person's, unchanged
    nudged = [(x.class_id, x.polygon_norm + 4e-7) for x in lines]
    assert label_text(nudged, lines, text) == text
    before = label.stat().st_mtime_ns
    result = apply_imported(out, [ImportedLabel("labels/im02.txt", tuple(nudged))], source="cvat", file="e.zip")
    assert (result.reviewed, result.changed) == (1, 0) and label.stat().st_mtime_ns == before
    assert "labels/im02.txt" in load_previous(out).reviewed
    # one instance deleted, one moved: exactly that line changes
    moved = lines[1].polygon_norm.copy()
    moved[0] = [0.5, 0.5]
    new = label_text([(lines[1].class_id, moved)], lines, text)
    assert new != text and new.count("\n") == 1 and " 0.500000 0.500000 " in new


def test_label_state_reviewed_beats_overwrite_and_a_deleted_reviewed_label_is_redone(tmp_path: Path):
    out = _finished(tmp_path / "out")
    apply_imported(out, [ImportedLabel("labels/im00.txt", ((0, PERSON_FIX),))], source="cvat", file="e.zip")
    previous = load_previous(out)
    label = out / "labels/im00.txt"
    for overwrite in (False, True):
        assert label_state(previous, "labels/im00.txt", label, "x", (0, 0), overwrite=overwrite) == LabelState.REVIEWED
    label.unlink()
    assert label_state(previous, "labels/im00.txt", label, "x", (0, 0), overwrite=False) == LabelState.TODO


def test_import_refuses_bad_targets_and_a_busy_dir_writing_nothing(tmp_path: Path):
    out = _finished(tmp_path / "out")
    before = (_labels(out), (out / "autoannotate.json").read_bytes())
    for key in ("../escape.txt", "labels/../../x.txt", "/abs/labels/a.txt", "images/im00.txt", "labels/a.png"):
        with pytest.raises(InputError, match="not a label path"):
            apply_imported(out, [ImportedLabel(key, ())], source="cvat", file="e.zip")
    with acquire_output_lock(out), pytest.raises(OutputError):
        apply_imported(out, [ImportedLabel("labels/im00.txt", ())], source="cvat", file="e.zip")
    assert (_labels(out), (out / "autoannotate.json").read_bytes()) == before
    bare = tmp_path / "bare"
    (bare / "labels").mkdir(parents=True)
    with pytest.raises(InputError, match=r"no autoannotate\.json"):
        apply_imported(bare, [ImportedLabel("labels/a.txt", ())], source="cvat", file="e.zip")
    (bare / "autoannotate.shard-0-of-2.json").write_text("{}")
    with pytest.raises(InputError, match="autoannotate merge"):
        apply_imported(bare, [ImportedLabel("labels/a.txt", ())], source="cvat", file="e.zip")


def test_overwrite_reviewed_is_refused_with_shard_and_merge_keeps_the_marks(tmp_path: Path, models):
    data, out = _done_run(tmp_path, models)
    apply_imported(out, [ImportedLabel("labels/im01.txt", ((0, PERSON_FIX),))], source="cvat", file="e.zip")
    fixed = (out / "labels/im01.txt").read_bytes()
    refused = _run(data, out, models, "--shard", "0/2", "--overwrite-reviewed")
    assert refused.exit_code == 2 and "without --shard" in refused.stderr
    for index in (0, 1):
        shard = _run(data, out, models, "--shard", f"{index}/2", "--overwrite")
        assert shard.exit_code == 0, shard.output
    merged = runner.invoke(app, ["merge", str(out)])
    assert merged.exit_code == 0, merged.output
    assert "labels/im01.txt" in json.loads((out / "autoannotate.json").read_text())["reviewed"]
    assert (out / "labels/im01.txt").read_bytes() == fixed


# --- round trips through the CLI, each export edited as a person would in the tool ---------------------------


def _zip_members(path: Path) -> dict[str, bytes]:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_cvat_round_trip_changes_exactly_the_edits_and_runs_keep_them(tmp_path: Path, models):
    data, out = _done_run(tmp_path, models, n=4)
    auto = _labels(out)
    exported = runner.invoke(app, ["export", "cvat", str(out)])
    assert exported.exit_code == 0, exported.output
    members = _zip_members(out / "exports" / "cvat_ultralytics_yolo_seg.zip")
    assert json.loads((out / "exports" / "cvat_labels.json").read_text())[0]["type"] == "polygon"
    # what CVAT's export gives back after a person's work: im01's first polygon moved, im02's instances all deleted
    # (CVAT writes no label file for a frame without shapes), im00 and im03 untouched
    first, second = members["labels/train/im01.txt"].decode().splitlines()
    fields = first.split()
    fields[1:3] = ["0.500000", "0.500000"]
    members["labels/train/im01.txt"] = (" ".join(fields) + "\n" + second + "\n").encode()
    del members["labels/train/im02.txt"]
    edited = tmp_path / "cvat_export.zip"
    _write_zip(edited, members)
    dry = runner.invoke(app, ["import", "cvat", str(edited), str(out), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would change labels/im01.txt" in dry.stdout and "would change labels/im02.txt" in dry.stdout
    assert _labels(out) == auto  # a dry run writes nothing
    imported = runner.invoke(app, ["import", "cvat", str(edited), str(out)])
    assert imported.exit_code == 0, imported.output
    assert "imported 4 label(s)" in imported.stdout and "2 changed" in imported.stdout
    after = _labels(out)
    assert after["labels/im02.txt"] == b""
    assert after["labels/im01.txt"].decode().splitlines() == [" ".join(fields), second]
    assert {k: v for k, v in after.items() if k not in ("labels/im01.txt", "labels/im02.txt")} == {
        k: v for k, v in auto.items() if k not in ("labels/im01.txt", "labels/im02.txt")
    }
    for extra in ([], ["--overwrite"]):
        rerun = _run(data, out, models, *extra)
        assert rerun.exit_code == 0, rerun.output
        assert _labels(out) == after
        assert set(_statuses(rerun.stdout).values()) == {"reviewed"}


def _as_label_studio_export(tasks: list[dict]) -> list[dict]:
    """What Label Studio's JSON export holds after people answered every task by accepting its prediction (the
    result copied into an annotation), before any edit."""
    export = []
    for number, task in enumerate(tasks, start=1):
        result = json.loads(json.dumps(task["predictions"][0]["result"]))
        for region in result:
            region.pop("score", None)
        annotation = {"id": number, "result": result, "was_cancelled": False, "updated_at": "2026-12-05T10:00:00Z"}
        export.append({"id": number, "data": task["data"], "annotations": [annotation], "predictions": []})
    return export


def test_label_studio_round_trip_changes_exactly_the_edits_and_runs_keep_them(tmp_path: Path, models):
    data, out = _done_run(tmp_path, models, n=4)
    auto = _labels(out)
    exported = runner.invoke(app, ["export", "labelstudio", str(out)])
    assert exported.exit_code == 0, exported.output
    assert "LOCAL_FILES_DOCUMENT_ROOT" in exported.stdout
    tasks = json.loads((out / "exports" / "labelstudio_tasks.json").read_text())
    assert "<PolygonLabels" in (out / "exports" / "labelstudio_config.xml").read_text()
    export = _as_label_studio_export(tasks)
    by_label = {task["data"]["autoannotate_label"]: task for task in export}
    # a person moves the first point of im01's first polygon, deletes im02's second instance; im03 is left for later
    region = by_label["labels/im01.txt"]["annotations"][0]["result"][0]
    region["value"]["points"][0] = [50.0, 50.0]
    del by_label["labels/im02.txt"]["annotations"][0]["result"][1]
    by_label["labels/im03.txt"]["annotations"] = []
    path = tmp_path / "project-1-at-2026-12-05.json"
    path.write_text(json.dumps(export))
    imported = runner.invoke(app, ["import", "labelstudio", str(path), str(out)])
    assert imported.exit_code == 0, imported.output
    assert "1 of 4 task(s) have no annotation" in imported.stdout
    assert "imported 3 label(s)" in imported.stdout and "2 changed" in imported.stdout
    after = _labels(out)
    im01 = auto["labels/im01.txt"].decode().splitlines()
    first = im01[0].split()
    first[1:3] = ["0.500000", "0.500000"]
    assert after["labels/im01.txt"].decode().splitlines() == [" ".join(first), im01[1]]
    assert after["labels/im02.txt"].decode().splitlines() == auto["labels/im02.txt"].decode().splitlines()[:1]
    assert after["labels/im00.txt"] == auto["labels/im00.txt"]  # accepted as it was: not a byte changed
    assert after["labels/im03.txt"] == auto["labels/im03.txt"]
    marks = json.loads((out / "autoannotate.json").read_text())["reviewed"]
    assert sorted(marks) == ["labels/im00.txt", "labels/im01.txt", "labels/im02.txt"]
    assert {mark["source"] for mark in marks.values()} == {"labelstudio"}
    for extra in ([], ["--overwrite"]):
        rerun = _run(data, out, models, *extra)
        assert rerun.exit_code == 0, rerun.output
        assert _labels(out) == after
        statuses = _statuses(rerun.stdout)
        assert [statuses[f"im0{i}.png"] for i in range(3)] == ["reviewed"] * 3
        assert statuses["im03.png"] == ("skipped" if not extra else "ok")


def test_run_report_is_written_and_someone_elses_report_is_refused(tmp_path: Path, models):
    data, out = tmp_path / "imgs", tmp_path / "out"
    _images(data, 3)
    result = _run(data, out, models, "--report")
    assert result.exit_code == 0, result.output
    summary = json_events(result.stdout)[-1]
    assert summary["report"] == str(out / "report.html")
    html = (out / "report.html").read_text()
    assert '<meta name="generator" content="autoannotate' in html and "im01.png" in html
    theirs = out / "report.html"
    theirs.write_text("<html>a person's notes</html>\n")
    refused = _run(data, out, models, "--report")
    assert refused.exit_code == 2 and "report.html" in refused.stderr
    assert theirs.read_text() == "<html>a person's notes</html>\n"
    forced = _run(data, out, models, "--report", "--overwrite")
    assert forced.exit_code == 0 and '<meta name="generator"' in theirs.read_text()


# --- real processes: the lock, and a kill in the middle of an import ----------------------------------------------


def _fake_dataset(root: Path, n: int) -> Path:
    from helpers import fake_run_dir

    labels = {
        f"im{i:03d}.png": f"0 0.100000 0.100000 0.{i % 8 + 2}00000 0.100000 0.500000 0.500000\n" for i in range(n)
    }
    return fake_run_dir(root, labels, {0: "person"})


def _edited_cvat_zip(out: Path, path: Path) -> dict[str, bytes]:
    """A CVAT export of ``out`` in which a person moved the last point of every polygon; returns the new labels."""
    from autoannotate.exchange.cvat import build_zip
    from autoannotate.review.run_view import open_run

    members = _zip_members_of(build_zip(open_run(out)))
    new = {}
    for name in [m for m in members if m.startswith("labels/train/")]:
        text = members[name].decode().replace("0.500000 0.500000", "0.600000 0.700000")
        members[name] = text.encode()
        new["labels/" + name.removeprefix("labels/train/")] = text.encode()
    _write_zip(path, members)
    return new


def _zip_members_of(data: bytes) -> dict[str, bytes]:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_import_is_refused_while_another_process_holds_the_dir(tmp_path: Path):
    import subprocess
    import sys

    out = _fake_dataset(tmp_path / "out", 3)
    export = tmp_path / "e.zip"
    _edited_cvat_zip(out, export)
    before = _labels(out)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from autoannotate.lock import acquire_output_lock as a; l = a(__import__('pathlib')"
            f".Path({str(out)!r})); print('held', flush=True); import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = subprocess.run(
            [sys.executable, "-m", "autoannotate.cli", "import", "cvat", str(export), str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.count("\n") == 1 and result.stderr.startswith("error:") and f"pid {holder.pid}" in result.stderr
    )
    assert _labels(out) == before and "reviewed" not in json.loads((out / "autoannotate.json").read_text())


def test_an_import_killed_midway_leaves_every_changed_label_marked_and_a_rerun_finishes_it(tmp_path: Path):
    import signal
    import subprocess
    import sys
    import time

    out = _fake_dataset(tmp_path / "out", 400)
    export = tmp_path / "e.zip"
    new = _edited_cvat_zip(out, export)
    before = _labels(out)
    command = [sys.executable, "-m", "autoannotate.cli", "import", "cvat", str(export), str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # wait until the marks are in the manifest (written first), then kill it while it writes the labels
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if b'"reviewed"' in (out / "autoannotate.json").read_bytes():
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    marks = load_previous(out).reviewed
    now = _labels(out)
    assert all(new[key] != before[key] for key in new)
    for key, text in now.items():
        assert text in (before[key], new[key]), key  # each label whole: the old text or the new, never torn
        if text == new[key]:
            assert key in marks  # a corrected label on disk is always marked, so no run can replace it
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert _labels(out) == new and set(load_previous(out).reviewed) == set(new)

"""Trust in what a run writes: it never overwrites its own inputs or files it did not write, keeps labels a person
edited, holds one run per output dir, decides same-stem collisions alike in every shard, cleans its own stale
temporary files, and keeps the output dir one consistent dataset across subset reruns and deleted images.

Concurrency cases run real processes started together; the rest go through typer's CliRunner.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from helpers import json_events, stand_in_model_args
from typer.testing import CliRunner

from autoannotate.cli import app
from autoannotate.errors import OutputError

runner = CliRunner()


def _image(path: Path, seed: int, hw: tuple[int, int] = (44, 68)) -> Path:
    rng = np.random.default_rng(seed)
    image = np.full((*hw, 3), 70, np.uint8)
    cv2.circle(image, (hw[1] // 2, hw[0] // 2), 8 + seed % 9, tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def _images(root: Path, n: int, hw: tuple[int, int] = (44, 68)) -> list[Path]:
    return [_image(root / f"im{i:02d}.png", i, (hw[0] + 2 * i, hw[1])) for i in range(n)]


@pytest.fixture
def models(yolo_weights: Path, mobile_sam_weights: Path) -> list[str]:
    return stand_in_model_args(yolo_weights, mobile_sam_weights, max_det=2)


def _run(data: Path | str, out: Path, models: list[str], *extra: str, stdin: str | None = None):
    args = ["run", "--data", str(data), "--output-dir", str(out), *models, "--json", *extra]
    return runner.invoke(app, args, input=stdin)


def _summary(stdout: str) -> dict:
    return json_events(stdout)[-1]


def _labels(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "labels").rglob("*.txt"))}


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoannotate.cli", *args]


# --- item 4: --boxes-from never writes over its own source -------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_boxes_from_source_as_output_is_refused_whatever_the_flags(tmp_path: Path, models, overwrite):
    ds = tmp_path / "ds"
    _image(ds / "images" / "a.jpg", 1)
    (ds / "labels").mkdir(parents=True)
    (ds / "labels" / "a.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    (ds / "data.yaml").write_text("names: {0: thing}\n")  # the user's own
    before = {p: p.read_bytes() for p in (ds / "labels" / "a.txt", ds / "data.yaml")}
    args = ["run", "--data", str(ds / "images"), "--boxes-from", str(ds / "labels"), "--names", str(ds / "data.yaml")]
    args += ["--sam-model", models[3]] + (["--overwrite"] if overwrite else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.stderr)
    assert "--boxes-from" in line and "overwrite its own box prompts" in line and "--output-dir" in line
    assert {p: p.read_bytes() for p in before} == before
    # README's example, with the output elsewhere, works and leaves the source alone
    ok = runner.invoke(app, [*args, "--output-dir", str(tmp_path / "ds_seg"), "--json"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "ds_seg" / "labels" / "a.txt").is_file()
    assert {p: p.read_bytes() for p in before} == before


def test_names_file_as_output_data_yaml_is_refused(tmp_path: Path, models):
    _image(tmp_path / "imgs" / "a.jpg", 1)
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    (boxes / "a.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.yaml").write_text("names: {0: thing}\n")
    args = ["run", "--data", str(tmp_path / "imgs"), "--boxes-from", str(boxes), "--names", str(out / "data.yaml")]
    result = runner.invoke(app, [*args, "--sam-model", models[3], "--output-dir", str(out), "--overwrite"])
    assert result.exit_code == 2 and "--names" in _error_lines(result.stderr)[0]
    assert (out / "data.yaml").read_text() == "names: {0: thing}\n"


# --- item 5: every whole-run file is checked before the first image ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("train.txt", ["--val-fraction", "0.5"]),
        ("val.txt", ["--val-fraction", "0.5"]),
        ("instances.jsonl", []),
        ("annotations.coco.json", ["--coco"]),
        ("previews/mine.png", ["--preview", "2"]),
        ("autoannotate.json", []),
    ],
)
def test_a_users_whole_run_file_is_refused_before_any_image(tmp_path: Path, models, name, flags):
    data, out = tmp_path / "imgs", tmp_path / "out"
    _images(data, 2)
    theirs = out / name
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"a person's file\n")
    result = _run(data, out, models, *flags)
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.stderr)
    assert name.split("/")[-1] in line and "not written by autoannotate" in line and "--overwrite" in line
    assert theirs.read_bytes() == b"a person's file\n"
    assert not (out / "labels").exists()  # refused up front: no image was annotated
    forced = _run(data, out, models, *flags, "--overwrite")
    assert forced.exit_code == 0, forced.output


def test_our_whole_run_files_edited_by_a_person_become_theirs(tmp_path: Path, models):
    data, out = tmp_path / "imgs", tmp_path / "out"
    _images(data, 3)
    assert _run(data, out, models, "--val-fraction", "0.5", "--coco").exit_code == 0
    assert _run(data, out, models, "--val-fraction", "0.5", "--coco").exit_code == 0  # ours: rewritten freely
    (out / "train.txt").write_text("./images/im00.png\n# curated by hand\n")
    result = _run(data, out, models, "--val-fraction", "0.5", "--coco")
    assert result.exit_code == 2 and "train.txt" in _error_lines(result.stderr)[0]
    assert (out / "train.txt").read_text().endswith("# curated by hand\n")


# --- item 7: a label a person edited is kept ------------------------------------------------------------------


def test_a_hand_edited_label_is_kept_through_settings_changes(tmp_path: Path, models):
    data, out = tmp_path / "imgs", tmp_path / "out"
    _images(data, 3)
    assert _run(data, out, models).exit_code == 0
    fixed = out / "labels" / "im01.txt"
    fixed.write_text("0 0.1 0.1 0.9 0.1 0.9 0.9\n")  # a person's correction
    for extra in ([], ["--conf", "0.0002"], ["--tolerance", "0"]):
        result = _run(data, out, models, *extra)
        assert result.exit_code == 0, result.output
        events = {Path(e["path"]).name: e for e in json_events(result.stdout)[:-1]}
        assert events["im01.png"]["status"] == "edited" and events["im01.png"]["instances"] == 1
        assert _summary(result.stdout)["edited"] == 1
        assert fixed.read_text() == "0 0.1 0.1 0.9 0.1 0.9 0.9\n"
    rows = [json.loads(x) for x in (out / "instances.jsonl").read_text().splitlines()]
    assert rows and all(r["label"] != "labels/im01.txt" for r in rows)  # its auto-label rows no longer apply
    forced = _run(data, out, models, "--overwrite")
    assert forced.exit_code == 0 and _summary(forced.stdout)["edited"] == 0
    assert fixed.read_text() != "0 0.1 0.1 0.9 0.1 0.9 0.9\n"  # --overwrite replaces it, as documented


# --- item 6: one run per output dir ---------------------------------------------------------------------------


def _wait_for(predicate, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None and not predicate():
        time.sleep(0.05)
    assert process.poll() is None, "the run finished too early"


def test_a_second_run_into_the_same_dir_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path: Path, models):
    data, out = tmp_path / "imgs", tmp_path / "out"
    _images(data, 10, hw=(120, 160))
    command = _cli("run", "--data", str(data), "--output-dir", str(out), *models, "--json")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "autoannotate.json").exists(), first)
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr
    (line,) = _error_lines(second.stderr)
    assert f"pid {first.pid} on " in line and "is in use by run" in line and " since 20" in line
    assert second.stdout == ""
    first.send_signal(signal.SIGKILL)
    first.wait()
    # the kernel dropped the dead run's lock: the next run takes the dir over and finishes the work
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert _summary(rerun.stdout)["images"] == 10 and len(_labels(out)) == 10


# --- item 3: concurrent shards decide same-stem collisions alike ------------------------------------------------


def test_concurrent_shards_give_a_same_stem_label_to_one_image_consistently(tmp_path: Path, models):
    data = tmp_path / "imgs"
    _images(data, 6)
    _image(data / "a.jpg", 21, (50, 70))
    _image(data / "a.png", 22, (64, 48))  # same folder and stem: one label file for two images
    full, sharded = tmp_path / "full", tmp_path / "sharded"
    reference = _run(data, full, models)
    assert reference.exit_code == 1, reference.output  # the second of the pair fails, with its reason
    common = ["run", "--data", str(data), "--output-dir", str(sharded), *models, "--json"]
    shards = [
        subprocess.Popen(_cli(*common, "--shard", f"{i}/2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in shards]
    codes = sorted(p.returncode for p in shards)
    assert codes == [0, 1], outputs
    failed = [e for out, _ in outputs for e in json_events(out) if e.get("status") == "failed"]
    assert [Path(e["path"]).name for e in failed] == ["a.png"] and "same folder and stem" in failed[0]["error"]
    assert _labels(sharded) == _labels(full)
    manifests = [json.loads(p.read_text()) for p in sorted(sharded.glob("autoannotate.shard-*.json"))]
    owner = [m["labels"]["labels/a.txt"]["image"] for m in manifests if "labels/a.txt" in m["labels"]]
    assert owner == [str(data / "a.jpg")]
    rows = [json.loads(x) for p in sharded.glob("instances.shard-*.jsonl") for x in p.read_text().splitlines()]
    assert {r["image"] for r in rows if r["label"] == "labels/a.txt"} <= {str(data / "a.jpg")}


def test_two_shards_run_together_but_not_beside_a_whole_run(tmp_path: Path, models):
    data, out = tmp_path / "imgs", tmp_path / "out"
    _images(data, 16, hw=(240, 320))
    common = ["run", "--data", str(data), "--output-dir", str(out), *models, "--json"]
    shards = [
        subprocess.Popen(_cli(*common, "--shard", f"{i}/2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    _wait_for(lambda: all((out / f"autoannotate.shard-{i}-of-2.json").exists() for i in range(2)), shards[0])
    refused = [
        subprocess.Popen(_cli(*common, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for extra in ([], ["--shard", "0/2"])
    ]
    (_, whole), (_, same_shard) = (p.communicate(timeout=300) for p in refused)
    assert shards[0].poll() is None, "shard 0 finished before the refusals were checked"
    assert [p.returncode for p in refused] == [2, 2]
    assert "(shard 0/2) pid" in _error_lines(whole)[0] and "(shard 1/2) pid" in _error_lines(whole)[0]
    assert "(shard 0/2) pid" in _error_lines(same_shard)[0]
    assert [p.wait(timeout=600) for p in shards] == [0, 0]  # the two shards ran side by side
    assert len(_labels(out)) == 16


# --- item 9: full disk during the sidecar, stale temporary files ------------------------------------------------


def test_full_disk_writing_the_sidecar_is_one_line_exit_2(tmp_path: Path, models, monkeypatch):
    data, out = tmp_path / "imgs", tmp_path / "out"
    _images(data, 2)
    import autoannotate.job as job_module

    real = job_module.write_bytes_atomic

    def full(path, data, **kwargs):
        if path.name == "instances.jsonl":
            raise OutputError(f"cannot write {str(path)!r}: No space left on device", errno=errno.ENOSPC)
        return real(path, data, **kwargs)

    monkeypatch.setattr(job_module, "write_bytes_atomic", full)
    result = _run(data, out, models)
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.stderr)
    assert "No space left on device" in line and "internal error" not in line
    assert len(_labels(out)) == 2  # the labels stay, and the journal still has them
    assert json.loads((out / "autoannotate.json").read_text())["state"] == "interrupted"
    monkeypatch.setattr(job_module, "write_bytes_atomic", real)
    again = _run(data, out, models)
    assert again.exit_code == 0 and _summary(again.stdout)["skipped"] == 2


def test_stale_temporary_files_of_killed_runs_are_removed_at_start(tmp_path: Path, models):
    data, out = tmp_path / "imgs", tmp_path / "out"
    _images(data, 2)
    assert _run(data, out, models).exit_code == 0
    ours = [out / ".autoannotate-ab12cd_9.tmp", out / "labels" / ".autoannotate-zz00zz00.tmp"]
    theirs = [out / "labels" / ".notes.tmp", out / ".autoannotate-short.tmp", out / "labels" / "keep.tmp"]
    for path in ours + theirs:
        path.write_text("x")
    assert _run(data, out, models).exit_code == 0
    assert [p.exists() for p in ours] == [False, False]
    assert [p.exists() for p in theirs] == [True, True, True]


# --- items 10 and 11: deleted images, subset reruns, names with line breaks --------------------------------------


def test_a_deleted_images_label_link_and_entry_go_and_are_counted(tmp_path: Path, models):
    data, out = tmp_path / "imgs", tmp_path / "out"
    images = _images(data, 3)
    assert _run(data, out, models, "--val-fraction", "0.5").exit_code == 0
    images[1].unlink()
    result = _run(data, out, models, "--val-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert _summary(result.stdout)["removed"] == 1
    assert "removed 1 label(s) whose image no longer exists" in result.stderr
    assert sorted(_labels(out)) == ["labels/im00.txt", "labels/im02.txt"]
    assert not os.path.lexists(out / "images" / "im01.png")
    manifest = json.loads((out / "autoannotate.json").read_text())
    assert sorted(manifest["labels"]) == ["labels/im00.txt", "labels/im02.txt"]
    listed = (out / "train.txt").read_text() + (out / "val.txt").read_text()
    assert sorted(listed.split()) == ["./images/im00.png", "./images/im02.png"]


def test_a_subset_rerun_keeps_one_consistent_dataset(tmp_path: Path, models):
    data, out = tmp_path / "imgs", tmp_path / "out"
    images = _images(data, 6)
    flags = ["--val-fraction", "0.5", "--coco"]
    assert _run(data, out, models, *flags).exit_code == 0
    subset = "".join(f"{p}\n" for p in images[:3])
    result = _run("-", out, models, *flags, "--tolerance", "0", stdin=subset)
    assert result.exit_code == 0, result.output
    summary = _summary(result.stdout)
    assert summary["images"] == 3 and summary["other_settings"] == 3
    assert "3 label(s)" in result.stderr and "other settings" in result.stderr
    listed = (out / "train.txt").read_text().split() + (out / "val.txt").read_text().split()
    assert sorted(listed) == [f"./images/im{i:02d}.png" for i in range(6)]  # the whole dataset, not the 3
    coco = json.loads((out / "annotations.coco.json").read_text())
    assert sorted(image["file_name"] for image in coco["images"]) == [f"im{i:02d}.png" for i in range(6)]
    rows = [json.loads(x) for x in (out / "instances.jsonl").read_text().splitlines()]
    assert {r["label"] for r in rows} == {f"labels/im{i:02d}.txt" for i in range(6)}
    manifest = json.loads((out / "autoannotate.json").read_text())
    assert len(manifest["labels"]) == 6
    fingerprints = {key: entry["fingerprint"] for key, entry in manifest["labels"].items()}
    assert len(set(fingerprints.values())) == 2
    check = runner.invoke(app, ["check", str(out / "labels"), "--data", str(data)])
    assert "3 label(s) were made with other settings than the last run" in check.output
    assert "labels/im03.txt" in check.output

    # a later run without the split and COCO removes ours, which would now describe another dataset
    plain = _run(data, out, models)
    assert plain.exit_code == 0, plain.output
    assert not (out / "train.txt").exists() and not (out / "annotations.coco.json").exists()
    assert yaml.safe_load((out / "data.yaml").read_text())["train"] == "images"


def test_an_image_whose_name_has_a_line_break_fails_alone(tmp_path: Path, models):
    data, out = tmp_path / "imgs", tmp_path / "out"
    _images(data, 2)
    _image(data / "two\nlines.png", 5)
    result = _run(data, out, models, "--val-fraction", "0.5")
    assert result.exit_code == 1
    failed = [e for e in json_events(result.stdout)[:-1] if e["status"] == "failed"]
    assert len(failed) == 1 and "line break" in failed[0]["error"]
    listed = (out / "train.txt").read_text().splitlines() + (out / "val.txt").read_text().splitlines()
    assert sorted(listed) == ["./images/im00.png", "./images/im01.png"]


def test_a_names_file_alias_bomb_is_one_short_line(tmp_path: Path):
    from autoannotate.errors import ConfigError
    from autoannotate.review.labels import read_names

    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        bomb += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]\n"
    path = tmp_path / "data.yaml"
    path.write_text(bomb + "names: {0: *i}\n")  # 10**9 strings if printed whole
    with pytest.raises(ConfigError) as caught:
        read_names(path)
    assert len(str(caught.value)) < 300 and "not a string" in str(caught.value)

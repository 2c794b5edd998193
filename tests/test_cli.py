"""The command line through typer's CliRunner: options, --json schema, outputs on disk, errors and exit codes.

Models are the real architectures with random weights (conftest); ``--conf 1e-4`` with a fixed ``--max-det``
makes the random detector return boxes.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import yaml
from helpers import json_events, stand_in_model_args, synthetic_scene_bgr
from typer.testing import CliRunner

from autoannotate.cli import app
from autoannotate.dataset.yolo_seg import parse_label_file

runner = CliRunner()

IMAGE_EVENT_KEYS = {"event", "path", "label", "instances", "status", "error"}
SUMMARY_KEYS = {
    "event",
    "images",
    "labeled",
    "instances",
    "failed",
    "skipped",
    "output_dir",
    "data_yaml",
    "seconds",
    "images_per_s",
}


def _write(path: Path, hw: tuple[int, int] = (48, 80), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, synthetic_scene_bgr(hw, seed))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


@pytest.fixture
def models(yolo_weights: Path, mobile_sam_weights: Path) -> list[str]:
    return stand_in_model_args(yolo_weights, mobile_sam_weights, max_det=3)


def test_help_lists_options_and_exit_codes():
    result = runner.invoke(app, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = result.output
    for option in [
        "--data",
        "--det-model",
        "--sam-model",
        "--conf",
        "--iou",
        "--imgsz",
        "--max-det",
        "--classes",
        "--device",
        "--batch",
        "--output-dir",
        "--tolerance",
        "--min-area",
        "--polygon",
        "--config",
        "--json",
        "--quiet",
        "--overwrite",
    ]:
        assert option in text, option
    assert "Exit codes: 0" in text and "1 some images failed" in text and "2 bad usage" in text


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("autoannotate ")


def test_full_run_nested_duplicates_and_bad_files(tmp_path: Path, models: list[str]):
    data = tmp_path / "imgs"
    _write(data / "a.jpg", (48, 80), 1)  # landscape
    _write(data / "sub" / "a.jpg", (80, 48), 2)  # same stem, other folder: must not collide
    _write(data / "sub" / "b.png", (50, 50), 3)
    _write(data / "sub" / "b.jpg", (50, 50), 4)  # same folder+stem as b.png: cannot both have labels
    (data / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "text.png").write_text("I am text")
    (data / "notes.txt").write_text("ignored: not an image type")
    result = runner.invoke(app, ["run", "--data", str(data), "--json", *models])
    assert result.exit_code == 1, result.output
    events = json_events(result.stdout)
    images = [e for e in events if e["event"] == "image"]
    summary = events[-1]
    assert summary["event"] == "summary" and set(summary) >= SUMMARY_KEYS
    assert all(set(e) == IMAGE_EVENT_KEYS for e in images)
    by_name = {Path(e["path"]).relative_to(data).as_posix(): e for e in images}
    assert set(by_name) == {"a.jpg", "corrupt.jpg", "sub/a.jpg", "sub/b.jpg", "sub/b.png", "text.png"}
    assert by_name["corrupt.jpg"]["status"] == "failed" and by_name["corrupt.jpg"]["error"]
    assert by_name["text.png"]["status"] == "failed" and "decodable" in by_name["text.png"]["error"]
    assert by_name["sub/b.png"]["status"] == "failed" and "same folder and stem" in by_name["sub/b.png"]["error"]
    out = tmp_path / "imgs_auto_annotate"
    for rel in ["a.jpg", "sub/a.jpg", "sub/b.jpg"]:
        event = by_name[rel]
        assert event["status"] in ("ok", "empty") and event["error"] is None
        label = Path(event["label"])
        assert label == out / "labels" / Path(rel).with_suffix(".txt")
        rows = parse_label_file(label.read_text())
        assert len(rows) == event["instances"] <= 3
        for _, polygon in rows:
            assert polygon.min() >= 0 and polygon.max() <= 1
    assert summary["images"] == 6 and summary["failed"] == 3 and summary["labeled"] == 3
    assert summary["instances"] == sum(e["instances"] for e in images)
    assert summary["output_dir"] == str(out) and summary["data_yaml"] == str(out / "data.yaml")
    assert summary["skipped"] == 0
    assert "warning:" in result.stderr and "corrupt.jpg" in result.stderr
    # per-image links make the output dir a dataset root without copying (none for the failed images)
    assert (out / "images" / "sub" / "a.jpg").is_symlink() and (out / "images" / "sub" / "a.jpg").is_file()
    assert not (out / "images" / "corrupt.jpg").exists()
    data_yaml = yaml.safe_load((out / "data.yaml").read_text())
    assert data_yaml["train"] == data_yaml["val"] == "images"
    assert data_yaml["names"][0] == "person" and len(data_yaml["names"]) == 80
    manifest = json.loads((out / "autoannotate.json").read_text())
    assert manifest["models"]["segmenter"]["variant"] == "mobile_sam"
    assert len(manifest["models"]["detector"]["sha256"]) == 64
    assert manifest["settings"]["conf"] == 1e-4 and manifest["counts"]["failed"] == 3
    assert set(manifest["labels"]) == {"labels/a.txt", "labels/sub/a.txt", "labels/sub/b.txt"}


def test_human_output_progress_and_summary(tmp_path: Path, models: list[str]):
    data = tmp_path / "ds" / "images" / "train"
    _write(data / "x.jpg", (40, 64), 5)
    result = runner.invoke(app, ["run", "--data", str(data), *models])
    assert result.exit_code == 0, result.output
    assert "autoannotate summary" in result.stdout and "instances" in result.stdout
    assert "annotating" in result.stderr
    # inside an images/ folder: labels land in the sibling labels/ tree, data.yaml in the dataset root
    assert (tmp_path / "ds" / "labels" / "train" / "x.txt").is_file()
    assert yaml.safe_load((tmp_path / "ds" / "data.yaml").read_text())["train"] == "images/train"


def test_quiet_prints_nothing_on_success(tmp_path: Path, models: list[str]):
    _write(tmp_path / "imgs" / "x.png")
    result = runner.invoke(app, ["run", "--data", str(tmp_path / "imgs"), "--quiet", *models])
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""


def test_list_glob_stdin_and_single_file(tmp_path: Path, models: list[str], monkeypatch: pytest.MonkeyPatch):
    a = _write(tmp_path / "pics" / "one" / "a.jpg", seed=6)
    b = _write(tmp_path / "pics" / "two" / "b.PNG", seed=7)
    listing = tmp_path / "pics" / "list.txt"
    listing.write_text("one/a.jpg\ntwo/b.PNG\n")
    result = runner.invoke(app, ["run", "--data", str(listing), "--json", *models])
    assert result.exit_code == 0, result.output
    out = tmp_path / "pics" / "list_auto_annotate"
    assert (out / "labels" / "one" / "a.txt").is_file() and (out / "labels" / "two" / "b.txt").is_file()
    assert (out / "images" / "one" / "a.jpg").resolve() == a.resolve()  # per-file links for lists
    glob_out = tmp_path / "glob_out"
    result = runner.invoke(
        app, ["run", "--data", str(tmp_path / "pics" / "*" / "*.jpg"), "--output-dir", str(glob_out), "--json", *models]
    )
    assert result.exit_code == 0, result.output
    assert [e["path"] for e in json_events(result.stdout) if e["event"] == "image"] == [str(a)]
    monkeypatch.chdir(tmp_path / "pics")
    result = runner.invoke(
        app, ["run", "--data", "-", "--output-dir", str(tmp_path / "stdin_out"), "--json", *models], input="two/b.PNG\n"
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "stdin_out" / "labels" / "b.txt").is_file()
    result = runner.invoke(app, ["run", "--data", str(b), "--json", *models])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pics" / "two" / "b_auto_annotate" / "labels" / "b.txt").is_file()


def test_config_file_and_flag_override(tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path):
    _write(tmp_path / "imgs" / "x.jpg", seed=8)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": str(tmp_path / "imgs"),
                "det-model": str(yolo_weights),
                "sam-model": str(mobile_sam_weights),
                "conf": 1e-4,
                "max-det": 1,
                "output-dir": str(tmp_path / "from_config"),
            }
        )
    )
    result = runner.invoke(app, ["run", "--config", str(cfg), "--max-det", "2", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "from_config" / "autoannotate.json").read_text())
    assert manifest["settings"]["max_det"] == 2  # flag beats config
    assert manifest["settings"]["conf"] == 1e-4  # config beats default


def test_classes_by_name_and_id(tmp_path: Path, models: list[str]):
    _write(tmp_path / "imgs" / "x.jpg", seed=9)
    result = runner.invoke(app, ["run", "--data", str(tmp_path / "imgs"), "--json", "--classes", "person,2", *models])
    assert result.exit_code == 0, result.output
    rows = parse_label_file((tmp_path / "imgs_auto_annotate" / "labels" / "x.txt").read_text())
    assert {cid for cid, _ in rows} <= {0, 2}
    manifest = json.loads((tmp_path / "imgs_auto_annotate" / "autoannotate.json").read_text())
    assert manifest["settings"]["classes"] == ["person", "2"]


def test_polygon_modes_and_min_area(tmp_path: Path, models: list[str]):
    _write(tmp_path / "imgs" / "x.jpg", (64, 96), seed=10)
    counts = {}
    for mode in ["merge", "largest", "split"]:
        out = tmp_path / mode
        result = runner.invoke(
            app,
            [
                "run",
                "--data",
                str(tmp_path / "imgs"),
                "--output-dir",
                str(out),
                "--polygon",
                mode,
                "--json",
                "--tolerance",
                "0",
                *models,
            ],
        )
        assert result.exit_code == 0, result.output
        counts[mode] = len(parse_label_file((out / "labels" / "x.txt").read_text()))
    assert counts["merge"] == counts["largest"] <= 3
    assert counts["split"] >= counts["merge"]
    result = runner.invoke(
        app,
        [
            "run",
            "--data",
            str(tmp_path / "imgs"),
            "--output-dir",
            str(tmp_path / "big"),
            "--min-area",
            "1e9",
            "--json",
            *models,
        ],
    )
    assert result.exit_code == 0
    assert (tmp_path / "big" / "labels" / "x.txt").read_text() == ""  # every mask under min-area: negative sample
    assert json_events(result.stdout)[0]["status"] == "empty"


def test_batch_does_not_change_labels(tmp_path: Path, models: list[str]):
    for i in range(3):
        _write(tmp_path / "imgs" / f"{i}.jpg", (40 + 8 * i, 64), seed=20 + i)
    texts = []
    for batch in ["1", "3"]:
        out = tmp_path / f"b{batch}"
        result = runner.invoke(
            app,
            ["run", "--data", str(tmp_path / "imgs"), "--output-dir", str(out), "--batch", batch, "--json", *models],
        )
        assert result.exit_code == 0, result.output
        texts.append([(out / "labels" / f"{i}.txt").read_text() for i in range(3)])
    assert texts[0] == texts[1]


def test_rerun_keeps_foreign_files_unless_overwrite(tmp_path: Path, models: list[str]):
    data = tmp_path / "ds" / "images"
    _write(data / "x.jpg", seed=11)
    _write(data / "y.jpg", seed=12)
    labels = tmp_path / "ds" / "labels"
    labels.mkdir(parents=True)
    (labels / "x.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n")  # from another tool
    (tmp_path / "ds" / "data.yaml").write_text("path: mine\ntrain: images\nval: images\nnames: {0: thing}\n")
    result = runner.invoke(app, ["run", "--data", str(data), "--json", *models])
    assert result.exit_code == 1
    events = {Path(e["path"]).name: e for e in json_events(result.stdout) if e["event"] == "image"}
    assert events["x.jpg"]["status"] == "failed" and "--overwrite" in events["x.jpg"]["error"]
    assert (labels / "x.txt").read_text() == "0 0.1 0.1 0.2 0.1 0.2 0.2\n"
    assert (tmp_path / "ds" / "data.yaml").read_text().startswith("path: mine")
    summary = json_events(result.stdout)[-1]
    assert summary["data_yaml"] == str(tmp_path / "ds" / "autoannotate.data.yaml")
    assert "was not written by autoannotate" in result.stderr
    # a rerun may replace what it wrote itself
    y_before = (labels / "y.txt").read_text()
    result = runner.invoke(app, ["run", "--data", str(data / "y.jpg"), "--json", *models])
    assert result.exit_code == 0 and (labels / "y.txt").read_text() == y_before
    # and --overwrite takes over the foreign label and data.yaml
    result = runner.invoke(app, ["run", "--data", str(data), "--json", "--overwrite", *models])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ds" / "data.yaml").read_text().startswith("# Written by autoannotate")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--data"),
        (["--data", "no/such/dir"], "does not exist"),
        (["--data", "{imgs}", "--conf", "2"], "invalid --conf 2.0"),
        (["--data", "{imgs}", "--polygon", "hull"], "invalid --polygon 'hull'"),
        (["--data", "{imgs}", "--config", "missing.yaml"], "config file"),
        (["--data", "{imgs}", "--det-model", "no_such_detector.pt"], "pass --det-model"),
        (["--data", "{imgs}", "--det-model", "{yolo}", "--sam-model", "nope/x.pt"], "--sam-model"),
        (["--data", "{imgs}", "--det-model", "{sam}", "--sam-model", "{sam}"], "--det-model"),
        (["--data", "{imgs}", "--det-model", "{yolo}", "--sam-model", "{yolo}"], "--sam-model"),
        (["--data", "{imgs}", "--det-model", "{yolo}", "--sam-model", "{sam}", "--classes", "unicorn"], "unicorn"),
        (["--data", "{imgs}", "--det-model", "{yolo}", "--sam-model", "{sam}", "--device", "cuda:7"], "--device"),
        (["--data", "{imgs}", "--output-dir", "{imgs}/out"], "mix labels"),
    ],
    ids=[
        "no-data",
        "missing-data",
        "bad-conf",
        "bad-polygon",
        "missing-config",
        "missing-det-model",
        "missing-sam-model",
        "sam-as-detector",
        "yolo-as-sam",
        "unknown-class",
        "bad-device",
        "output-inside-data",
    ],
)
def test_usage_errors_exit_2_with_one_line(
    tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path, monkeypatch: pytest.MonkeyPatch, args, message
):
    monkeypatch.chdir(tmp_path)
    imgs = tmp_path / "imgs"
    _write(imgs / "x.jpg")
    filled = [a.format(imgs=imgs, yolo=yolo_weights, sam=mobile_sam_weights) for a in args]
    result = runner.invoke(app, ["run", *filled])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "imgs_auto_annotate" / "labels").exists()


def test_offline_asset_names_fail_with_download_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models):
    import ultralytics.utils.downloads as downloads

    def offline(*args, **kwargs):
        raise ConnectionError("Download failure: environment may be offline")

    monkeypatch.setattr(downloads, "safe_download", offline)
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "imgs" / "x.jpg")
    for args, flag, name in [
        (["--det-model", "yolo11x.pt", "--sam-model", models[3]], "--det-model", "yolo11x.pt"),
        (["--det-model", models[1], "--sam-model", "mobile_sam.pt"], "--sam-model", "mobile_sam.pt"),
    ]:
        result = runner.invoke(app, ["run", "--data", "imgs", *args])
        assert result.exit_code == 2, result.output
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith("error:") and flag in line and name in line and "download" in line
        assert "https://" in line


def test_list_with_dotdot_and_absolute_paths_writes_only_inside_output(tmp_path: Path, models: list[str]):
    """Labels and links of a list naming ``..`` and absolute paths all land under the output dir."""
    a = _write(tmp_path / "far" / "away" / "a.jpg", seed=30)
    b = _write(tmp_path / "lists" / "b.jpg", seed=31)
    listing = tmp_path / "lists" / "sub" / "list.txt"
    listing.parent.mkdir(parents=True)
    listing.write_text(f"../../far/away/a.jpg\n{b}\n")
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--data", str(listing), "--output-dir", str(out), "--json", *models])
    assert result.exit_code == 0, result.output
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(out == p or out in p.parents for p in created)
    assert (out / "labels" / "far" / "away" / "a.txt").is_file() and (out / "labels" / "lists" / "b.txt").is_file()
    assert (out / "images" / "far" / "away" / "a.jpg").resolve() == a.resolve()


def test_full_disk_is_one_line_exit_2_and_keeps_labels(tmp_path: Path, models: list[str], monkeypatch):
    import errno

    from autoannotate.errors import OutputError

    data = tmp_path / "ds" / "images"
    _write(data / "x.jpg", seed=32)
    _write(data / "y.jpg", seed=33)
    first = runner.invoke(app, ["run", "--data", str(data), "--json", *models])
    assert first.exit_code == 0
    labels = {p.name: p.read_bytes() for p in (tmp_path / "ds" / "labels").iterdir()}

    def full(path, text, **kwargs):
        raise OutputError(f"cannot write {str(path)!r}: No space left on device", errno=errno.ENOSPC)

    monkeypatch.setattr("autoannotate.pipeline.write_text_atomic", full)
    result = runner.invoke(app, ["run", "--data", str(data), "--json", "--overwrite", *models])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds" / "labels").iterdir()} == labels
    assert json.loads((tmp_path / "ds" / "autoannotate.json").read_text())["state"] == "interrupted"

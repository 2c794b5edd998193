"""The command line a newcomer meets: bad input is one ``error:`` line with the documented exit code, never a
traceback (unless --debug, which keeps the code), SIGTERM ends a run like Ctrl-C, and help shows real defaults.

Models are the real architectures with random weights (conftest). Tests that look at what ultralytics prints, or at
signals, run the real command in a subprocess: an in-process runner would not see either.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import yaml
from helpers import json_events, stand_in_model_args, synthetic_scene_bgr
from typer.testing import CliRunner

from autoannotate.cli import app
from autoannotate.config import MAX_IMGSZ, MAX_SHARDS, option_fields, parse_shard
from autoannotate.errors import ConfigError, excerpt
from autoannotate.inputs.listing import iter_items, resolve_data

runner = CliRunner()


def _write(path: Path, hw: tuple[int, int] = (48, 80), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", synthetic_scene_bgr(hw, seed))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def _command() -> list[str]:
    """The installed console script (its ``main()`` is what a shell runs), else the module."""
    script = Path(sys.executable).parent / "autoannotate"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "autoannotate.cli"]


@pytest.fixture
def models(yolo_weights: Path, mobile_sam_weights: Path) -> list[str]:
    return stand_in_model_args(yolo_weights, mobile_sam_weights, max_det=1)


# ------------------------------------------------------------------------------------------- resource bombs


def _alias_bomb(levels: int, width: int = 9) -> str:
    """YAML anchors ``&a`` .. nested ``levels`` deep, each list ``width`` references to the previous one: a few
    hundred bytes that load as width**levels leaves (shared, so loading is cheap; printing them is not)."""
    names = "abcdefghijklmnop"[:levels]
    parts = [f"&{names[0]} [{', '.join(['x'] * width)}]"]
    parts += [f"&{n} [{', '.join([f'*{p}'] * width)}]" for p, n in itertools.pairwise(names)]
    return "[" + ", ".join(parts) + "]"


@pytest.mark.parametrize("option", ["conf", "classes", "shard", "det-model"])
def test_alias_bomb_in_a_config_is_one_short_line(tmp_path: Path, option: str):
    # 7 levels: 4.8M leaves, a ~30 MB message if printed whole (kept small so that a regression fails, not swaps)
    config = tmp_path / "bomb.yaml"
    config.write_text(f"{option}: {_alias_bomb(7)}\n")
    assert config.stat().st_size < 400
    started = time.perf_counter()
    result = runner.invoke(app, ["run", "--data", str(tmp_path / "nowhere"), "--config", str(config)])
    seconds = time.perf_counter() - started
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.stderr)
    assert line.startswith(f"error: invalid --{option} [[") and len(line) < 300, line[:400]
    assert seconds < 5


def test_excerpt_never_builds_the_whole_value():
    """387 million leaves (nine levels of nine): excerpt answers at once, in at most ``limit`` characters."""
    bomb = yaml.safe_load(f"v: {_alias_bomb(9)}\n")["v"]
    started = time.perf_counter()
    text = excerpt(bomb)
    assert time.perf_counter() - started < 0.5
    assert len(text) <= 60 and text.startswith("[[") and text.endswith("...")
    assert excerpt("a\nb") == "'a\\nb'"  # a line break in a value stays on the line
    assert len(excerpt("x" * 10_000, limit=30)) == 30 and excerpt("x" * 10_000, limit=30).endswith("...")
    assert excerpt(0.25) == "0.25" and excerpt("hull") == "'hull'"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 50_000 + "\n", "nests too deeply"),  # the YAML parser recurses per level
        ("# padding\n" * 120_000, "is over 1024 KiB"),  # reading stops at the limit
        ("? [a, b]\n: 1\n", "not valid YAML"),  # a list as a key
    ],
    ids=["deep-nesting", "huge-file", "list-key"],
)
def test_hostile_config_files_are_one_line(tmp_path: Path, text: str, message: str):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    result = runner.invoke(app, ["run", "--data", str(tmp_path / "nowhere"), "--config", str(config)])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.stderr)
    assert message in line and len(line) < 300


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--shard", "0/20000000"], ("invalid --shard '0/20000000'", f"N <= {MAX_SHARDS}")),
        (["--shard", f"0/{MAX_SHARDS + 1}"], ("invalid --shard", f"N <= {MAX_SHARDS}")),
        (["--imgsz", "100000"], ("invalid --imgsz 100000", str(MAX_IMGSZ))),
        (["--batch", "1000000"], ("invalid --batch 1000000", "1024")),
    ],
    ids=["shard-20M", "shard-just-over", "imgsz", "batch"],
)
def test_sizes_are_bounded(tmp_path: Path, args: list[str], fragments: tuple[str, ...]):
    # --data names nothing: were the value accepted, the error would be about --data instead
    result = runner.invoke(app, ["run", "--data", str(tmp_path / "nowhere"), *args])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.stderr)
    assert all(fragment in line for fragment in fragments), line


def test_shard_bound_is_inclusive():
    assert parse_shard(f"{MAX_SHARDS - 1}/{MAX_SHARDS}") == (MAX_SHARDS - 1, MAX_SHARDS)
    with pytest.raises(ConfigError):
        parse_shard("0/" + "9" * 5000)  # more digits than int() takes: still one ConfigError


# ----------------------------------------------------------------------------------------------------- SIGTERM


def test_sigterm_ends_the_run_like_ctrl_c_and_a_rerun_resumes(
    tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path
):
    data, out = tmp_path / "imgs", tmp_path / "out"
    for i in range(12):
        _write(data / f"img{i:02d}.jpg", (240, 320), seed=i)
    command = [*_command(), "run", "--data", str(data), "--output-dir", str(out), "--json"]
    command += stand_in_model_args(yolo_weights, mobile_sam_weights, max_det=8)
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and process.poll() is None:
                if any((out / "labels").rglob("*.txt")):
                    break
                time.sleep(0.05)
            assert process.poll() is None, "the run finished before it could be terminated"
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    errors = stderr_path.read_text()
    assert code == 143, errors
    assert errors.strip().splitlines()[-1] == "error: terminated (SIGTERM)"
    assert "Traceback" not in errors
    assert json.loads((out / "autoannotate.json").read_text())["state"] == "interrupted"
    assert not [p for p in out.rglob("*") if p.name.endswith(".partial")]
    assert len(list((out / "labels").rglob("*.txt"))) < 12

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    summary = json_events(rerun.stdout)[-1]
    assert summary["skipped"] >= 1 and summary["skipped"] + summary["labeled"] == 12
    assert json.loads((out / "autoannotate.json").read_text())["state"] == "complete"


# ------------------------------------------------------------------------------------------------------ --debug


def test_debug_prints_the_traceback_and_keeps_the_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config_error = runner.invoke(app, ["run", "--data", str(tmp_path), "--conf", "2", "--debug"])
    assert config_error.exit_code == 2, config_error.output
    assert "Traceback" in config_error.stderr and "ConfigError" in config_error.stderr
    assert config_error.stderr.strip().splitlines()[-1].startswith("error: invalid --conf 2.0")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug inside")

    monkeypatch.setattr("autoannotate.cli.run.build_settings", broken)
    internal = runner.invoke(app, ["run", "--data", str(tmp_path), "--debug"])
    assert internal.exit_code == 3, internal.output
    assert "Traceback" in internal.stderr and "RuntimeError: a bug inside" in internal.stderr
    quiet = runner.invoke(app, ["run", "--data", str(tmp_path)])
    assert quiet.exit_code == 3 and "Traceback" not in quiet.output
    assert _error_lines(quiet.stderr) == [
        "error: internal error RuntimeError: a bug inside (rerun with --debug and report it)"
    ]


# --------------------------------------------------------------------------------------------------------- help


def test_run_help_shows_defaults_from_the_settings_and_keeps_brackets():
    result = runner.invoke(app, ["run", "--help"], terminal_width=200, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # wrapping aside
    defaults = {o.name: o.default for o in option_fields()}
    for option, field in [("--conf", "conf"), ("--iou", "iou"), ("--imgsz", "imgsz"), ("--max-det", "max_det")]:
        assert re.search(rf"{option} <\w+> [^[]*\[default: {re.escape(str(defaults[field]))}\]", text), option
    assert "[default: 0.25]" in text and "[default: yolo11x.pt; yoloe-26l-seg.pt with --prompts," in text
    assert "[default: merge]" in text
    assert "[default: no-half]" in text and "[default: '']" in text  # a bool flag; the empty --device
    assert "pip install 'autoannotate[ray]'" in text  # markup would eat "[ray]"
    assert "<bool>" not in text


# ------------------------------------------------------------------------------------------ models and devices


def _run_process(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*_command(), "run", *args], capture_output=True, timeout=300, cwd=cwd, **kwargs)


@pytest.mark.parametrize("kind", ["garbage-pt", "image"])
def test_non_model_detector_file_is_one_model_error(tmp_path: Path, mobile_sam_weights: Path, kind: str):
    _write(tmp_path / "imgs" / "a.jpg")
    if kind == "garbage-pt":
        model = tmp_path / "x.pt"
        model.write_text("garbage\nnot a model\n")
    else:
        model = _write(tmp_path / "photo.jpg")
    args = ["--data", "imgs", "--det-model", str(model), "--sam-model", str(mobile_sam_weights)]
    result = _run_process(args, tmp_path, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()  # nothing else: no ultralytics warning before it
    assert line.startswith("error:") and model.name in line and "--det-model" in line


@pytest.mark.parametrize("device", ["99", "foo"])
def test_bad_device_is_one_line_and_nothing_else(tmp_path: Path, models: list[str], device: str):
    _write(tmp_path / "imgs" / "a.jpg")
    result = _run_process(["--data", "imgs", *models, "--device", device], tmp_path, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == _error_lines(result.stderr)  # no ultralytics banner
    (line,) = _error_lines(result.stderr)
    assert line.startswith(f"error: invalid --device '{device}'")


def test_engine_ray_without_ray_fails_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as without the extra
    _write(tmp_path / "imgs" / "a.jpg")
    # the detector named does not exist: were models loaded first, the error would be about it
    args = ["run", "--data", str(tmp_path / "imgs"), "--engine", "ray", "--det-model", str(tmp_path / "no.pt")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "error: --engine ray needs Ray: pip install 'autoannotate[ray]' (or pip install 'ray[data]')"
    ]
    assert "device" not in result.output and not (tmp_path / "imgs_auto_annotate").exists()


# ------------------------------------------------------------------------------------------------------- --data


def test_nul_separated_stdin_from_find_print0(tmp_path: Path, models: list[str]):
    spaced = _write(tmp_path / "pics" / "with space" / "a b.jpg", seed=1)
    plain = _write(tmp_path / "pics" / "c.jpg", seed=2)
    out = tmp_path / "out"
    listing = f"{spaced}\0pics/c.jpg\0".encode()  # absolute and relative (to the cwd), as find -print0 writes
    result = _run_process(["--data", "-", "--output-dir", str(out), "--json", *models], tmp_path, input=listing)
    assert result.returncode == 0, result.stderr.decode()
    events = [e for e in json_events(result.stdout.decode()) if e["event"] == "image"]
    assert [e["path"] for e in events] == [str(spaced), str(plain)]
    assert (out / "labels" / "with space" / "a b.txt").is_file() and (out / "labels" / "c.txt").is_file()


def test_nul_list_keeps_a_name_with_a_line_break_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    stream = io.TextIOWrapper(io.BytesIO(b"dir/a\nb.jpg\0 lead space.jpg\0#not-a-comment.png\0"))
    spec = resolve_data("-", stream)
    assert [p.name for p in spec.paths or ()] == ["a\nb.jpg", " lead space.jpg", "#not-a-comment.png"]
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"x/one.jpg\0x/two\nlines.jpg\0")
    assert [p.name for p in resolve_data(str(listing)).paths or ()] == ["one.jpg", "two\nlines.jpg"]
    # one path per line stays as it was: stripped, comments and blank lines skipped
    lines = io.TextIOWrapper(io.BytesIO(b"# c\n a.jpg \n\nb.jpg\r\n"))
    assert [p.name for p in resolve_data("-", lines).paths or ()] == ["a.jpg", "b.jpg"]


def test_directory_listing_keeps_a_name_with_a_line_break(tmp_path: Path):
    _write(tmp_path / "imgs" / "a\nb.jpg")
    _write(tmp_path / "imgs" / "c.jpg")
    assert [str(s.rel_path) for s in iter_items(resolve_data(str(tmp_path / "imgs")))] == ["a\nb.jpg", "c.jpg"]


def test_a_folder_without_images_is_an_input_error(tmp_path: Path, models: list[str]):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no images here")
    result = runner.invoke(app, ["run", "--data", str(empty), *models])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.stderr)
    assert "no images or videos found under --data" in line and "jpg, jpeg, png" in line and "mp4, mov" in line
    assert not (tmp_path / "empty_auto_annotate").exists()  # refused before anything is written


@pytest.mark.parametrize("name", ["x.csv", "notes.pdf"])
def test_a_non_image_file_as_data_is_an_input_error(tmp_path: Path, models: list[str], name: str):
    (tmp_path / name).write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["run", "--data", str(tmp_path / name), *models])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.stderr)
    assert f"--data {str(tmp_path / name)!r} is not an image or video (images: jpg, jpeg," in line
    assert "videos: mp4, mov, avi, mkv, webm) nor a .txt list of paths" in line


def test_names_without_boxes_from_is_a_config_error(tmp_path: Path, models: list[str]):
    _write(tmp_path / "imgs" / "a.jpg")
    (tmp_path / "data.yaml").write_text("names: {0: cat}\n")
    result = runner.invoke(app, ["run", "--data", str(tmp_path / "imgs"), "--names", str(tmp_path / "data.yaml")])
    assert result.exit_code == 2, result.output
    assert _error_lines(result.stderr) == [
        "error: --names only applies with --boxes-from, --points-from or --exemplars; drop --names or add"
        " --boxes-from LABELS_DIR"
    ]


def test_unquoted_glob_gets_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _write(tmp_path / "imgs" / name)
    # what the shell makes of: autoannotate run --data imgs/*.jpg
    result = runner.invoke(app, ["run", "--data", "imgs/a.jpg", "imgs/b.jpg", "imgs/c.jpg"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "error: got 2 extra argument(s) (e.g. 'imgs/b.jpg'): quote a glob so the shell does not expand it"
        " (--data 'imgs/*.jpg'), or pass a .txt list or '-' for stdin"
    ]
    other = runner.invoke(app, ["run", "--data", "imgs", "please"])
    assert other.exit_code == 2 and "run takes options only" in _error_lines(other.stderr)[0]


@pytest.mark.parametrize(
    "args",
    [
        ["check", "{tmp}/labels", "--data", "{tmp}/x.csv"],
        ["check", "{tmp}/labels", "--data", "/dev/null"],
        ["preview", "{tmp}/labels", "--data", "{tmp}/empty"],
        ["export", "coco", "{tmp}/labels", "--data", "{tmp}/images", "--names", "{tmp}/labels"],
    ],
    ids=["check-csv", "check-device", "preview-empty", "export-names-dir"],
)
def test_review_commands_give_one_line_for_bad_input(tmp_path: Path, args: list[str]):
    _write(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.5\n")
    (tmp_path / "x.csv").write_text("a,b\n")
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert len(_error_lines(result.stderr)) == 1 and "Traceback" not in result.output


def test_default_yaml_states_the_bounds():
    text = (Path(__file__).resolve().parents[1] / "configs" / "default.yaml").read_text()
    assert f"32 to {MAX_IMGSZ}" in text and f"N <= {MAX_SHARDS}" in text

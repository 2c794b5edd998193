"""--engine ray in real processes: a run whose driver is killed (SIGKILL, the worst case), then a rerun interrupted
(Ctrl-C) after a Ray worker was killed, then a rerun: the last gives the labels, instances.jsonl and manifest of an
uninterrupted run. Throughout, stdout holds JSON lines only (none of Ray's messages); a Ray that the CLI started
leaves no session files behind (neither in TMPDIR nor in /tmp/ray), and every Ray process it started ends with it.

One chain rather than a test per signal: each run costs Ray's start-up and two actors loading the models (most of
a minute on 2 shared CPUs), and each rerun resumes what the previous stop left."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("ray")
if not Path("/proc/self/stat").exists():
    pytest.skip("the checks on Ray's processes read /proc", allow_module_level=True)

IMAGES = 12  # actors land labels in bursts: the kill after 2 and the interrupt after 2 more must leave work
RUN_SECONDS = 150  # one CLI run on 2 shared CPUs: Ray start-up, two actors loading the models, the images


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    pid: int
    seconds: float


def _images(root: Path) -> None:
    """IMAGES small non-square JPEGs with a filled rectangle each, in two folders."""
    rng = np.random.default_rng(5)
    for i in range(IMAGES):
        image = np.full((48, 64, 3), 90, np.uint8)
        cv2.rectangle(image, (4 + i, 6), (40 + i, 30 + i), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
        (root / f"set{i % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / f"set{i % 2}" / f"im{i}.jpg"), image)


def _session_processes(sid: int) -> list[tuple[int, str]]:
    """(pid, command) of the live processes of session ``sid`` (the CLI's and every Ray process it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
        if int(session) == sid and state != "Z":
            found.append((int(entry.name), command))
    return found


def _wait_for_session_end(sid: int, timeout: float = 60.0) -> list[tuple[int, str]]:
    """Wait until no process of session ``sid`` lives; returns (and kills) those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (alive := _session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid, _ in alive:  # so that a failing test leaves no Ray behind either
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive


def _label_count(out: Path) -> int:
    return len(list((out / "labels").rglob("*.txt")))


def _json_lines(stdout: str) -> list[dict]:
    """Every complete stdout line as JSON: fails on any line that is not (one of Ray's, a colour code)."""
    lines = stdout.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):  # a line torn by SIGKILL
        lines.pop()
    return [json.loads(line) for line in lines]


def _outputs(out: Path) -> dict:
    """What a resumed run must reproduce: every file under labels/, instances.jsonl, and the manifest's record of
    the labels, the settings and the models."""
    manifest = json.loads((out / "autoannotate.json").read_text())
    return {
        "labels": {
            p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "labels").rglob("*")) if p.is_file()
        },
        "instances.jsonl": (out / "instances.jsonl").read_bytes(),
        "manifest": {k: manifest[k] for k in ("labels", "label_settings", "fingerprint", "models")},
    }


@pytest.fixture(scope="module")
def ray_cli(tmp_path_factory: pytest.TempPathFactory, yolo_weights: Path, mobile_sam_weights: Path):
    """Runs ``autoannotate run --engine ray`` on one dataset in a new session (its own process group, as a shell
    job), with TMPDIR at a fresh short dir; ``during(process, out)`` runs while it does."""
    data = tmp_path_factory.mktemp("ray_kill") / "imgs"
    _images(data)
    temp_root = Path(tempfile.mkdtemp(prefix="aa-t-", dir="/tmp"))  # short: Ray's socket paths live below it
    ray_sessions = Path("/tmp/ray")

    def run(out: Path, during: Callable[[subprocess.Popen, Path], None] | None = None) -> Run:
        command = [str(Path(sys.executable).with_name("autoannotate")), "run", "--data", str(data)]
        command += ["--output-dir", str(out)]
        command += ["--engine", "ray", "--ray-workers", "2", "--batch", "1", "--json"]
        command += ["--det-model", str(yolo_weights), "--sam-model", str(mobile_sam_weights)]
        command += ["--conf", "1e-4", "--max-det", "2"]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"TMPDIR": str(temp_root)}
        started = time.perf_counter()
        with (
            tempfile.TemporaryFile("w+") as stdout,
            tempfile.TemporaryFile("w+") as stderr,
            subprocess.Popen(
                command, stdout=stdout, stderr=stderr, env=env, start_new_session=True, preexec_fn=_default_sigint
            ) as process,
        ):
            try:
                if during is not None:
                    during(process, out)
                process.wait(timeout=RUN_SECONDS)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                left = _wait_for_session_end(process.pid)
            stdout.seek(0)
            stderr.seek(0)
            result = Run(process.returncode, stdout.read(), stderr.read(), process.pid, time.perf_counter() - started)
        assert not left, f"Ray processes outlived the run: {left}"
        assert not list(ray_sessions.glob(f"session_*_{result.pid}"))  # Ray names its sessions ..._<driver pid>
        return result

    yield run, temp_root
    shutil.rmtree(temp_root, ignore_errors=True)


def _default_sigint() -> None:
    """In the CLI's child: Ctrl-C's default, even when the tests run as a background job of a non-interactive
    shell, which starts its jobs with SIGINT ignored (the CLI must not undo that for users; the test needs it)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _private_ray_dirs(temp_root: Path) -> list[Path]:
    return sorted(temp_root.glob("aa-ray-*"))


@pytest.fixture(scope="module")
def uninterrupted(ray_cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, dict]]:
    run, _ = ray_cli
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    result = run(out)
    assert result.returncode == 0, result.stderr
    print(f"\nuninterrupted ray run, {IMAGES} images: {result.seconds:.1f} s")
    yield result, _outputs(out)


def test_local_ray_leaves_nothing_behind(uninterrupted, ray_cli):
    result, outputs = uninterrupted
    _, temp_root = ray_cli
    events = _json_lines(result.stdout)
    assert [e["event"] for e in events] == ["image"] * IMAGES + ["summary"]
    assert events[-1]["labeled"] == IMAGES and events[-1]["failed"] == 0
    assert len(outputs["labels"]) == IMAGES
    assert _private_ray_dirs(temp_root) == []  # the session dir of the Ray it started is gone with it


def _stop_after_labels(
    sig: signal.Signals, labels: int, kill_a_worker: bool = False
) -> Callable[[subprocess.Popen, Path], None]:
    """Send ``sig`` once the output dir holds ``labels`` labels: SIGKILL to the run's process group (the CLI, Ray's
    GCS, raylet and agents: no cleanup anywhere, the worst case), any other signal to the CLI alone. With
    ``kill_a_worker``, first SIGKILL one Ray actor once this run wrote a label (Ray restarts it)."""

    def during(process: subprocess.Popen, out: Path) -> None:
        before = _label_count(out)

        def wait_for(count: int) -> None:
            while _label_count(out) < count:
                assert process.poll() is None, f"the run ended (exit {process.returncode}) before it was stopped"
                time.sleep(0.05)

        if kill_a_worker:
            wait_for(before + 1)
            session = _session_processes(process.pid)
            workers = [pid for pid, command in session if command.startswith("ray::MapWorker")]
            assert workers, f"no Ray worker to kill among {session}"
            os.kill(workers[0], signal.SIGKILL)
        wait_for(labels)
        if sig == signal.SIGKILL:
            os.killpg(process.pid, sig)
        else:
            os.kill(process.pid, sig)

    return during


def test_rerun_after_the_driver_is_killed_or_interrupted_resumes_to_the_same_outputs(
    ray_cli, uninterrupted, tmp_path: Path
):
    run, temp_root = ray_cli
    _, expected = uninterrupted
    out = tmp_path / "out"

    killed = run(out, during=_stop_after_labels(signal.SIGKILL, 2))
    assert killed.returncode == -signal.SIGKILL
    done_before = _label_count(out)
    assert 2 <= done_before < IMAGES - 4, "the kill came too late to leave work for the reruns"
    _json_lines(killed.stdout)
    assert len(_private_ray_dirs(temp_root)) == 1  # nothing could clean up (as /tmp/ray's would stay)
    shutil.rmtree(_private_ray_dirs(temp_root)[0])

    # the rerun resumes; a worker killed meanwhile is restarted, and Ray's messages about it go to stderr
    interrupted = run(out, during=_stop_after_labels(signal.SIGINT, done_before + 2, kill_a_worker=True))
    assert interrupted.returncode == 130, interrupted.stderr  # Ctrl-C
    assert all(e["event"] == "image" for e in _json_lines(interrupted.stdout))
    assert _private_ray_dirs(temp_root) == []  # the interrupted run shut its Ray down and removed its dir

    rerun = run(out)
    assert rerun.returncode == 0, rerun.stderr
    summary = _json_lines(rerun.stdout)[-1]
    assert summary["event"] == "summary" and summary["failed"] == 0
    assert summary["skipped"] >= done_before + 2 and summary["labeled"] + summary["skipped"] == IMAGES
    assert _outputs(out) == expected
    assert _private_ray_dirs(temp_root) == []
    print(
        f"\nkilled after {killed.seconds:.1f} s, rerun interrupted after {interrupted.seconds:.1f} s"
        f" (Ray's messages on stderr: {interrupted.stderr.count('(raylet)')}), rerun {rerun.seconds:.1f} s"
    )

"""``autoannotate merge``: shard manifests are checked (bounds, shape, same settings and models) before anything is
merged; counts are summed; the outputs it replaces must be its own. Synthetic manifests (the real shard runs are in
``test_shards.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autoannotate.cli import app
from autoannotate.config import MAX_SHARDS
from autoannotate.merge import merge_shards

runner = CliRunner()
SHA_DET, SHA_SAM = "d" * 64, "5" * 64


def _manifest(index: int, count: int, **changes: Any) -> dict[str, Any]:
    """A shard manifest as ``run --shard I/N`` writes it (the keys merge reads), one ok label per shard."""
    label_settings = {"version": "0.1.0", "det_model_sha256": SHA_DET, "sam_model_sha256": SHA_SAM, "conf": 0.25}
    label_settings.update(changes.pop("label_settings", {}))
    key = f"labels/s{index}.txt"
    entry = {"image": f"/imgs/s{index}.jpg", "status": "ok", "instances": 2, "fingerprint": "f" * 16}
    manifest = {
        "tool": "autoannotate",
        "version": "0.1.0",
        "state": "complete",
        "shard": f"{index}/{count}",
        "settings": {"conf": label_settings["conf"], "shard": f"{index}/{count}"},
        "label_settings": label_settings,
        "fingerprint": json.dumps(label_settings, sort_keys=True)[:40],  # differs when the settings do
        "models": {"detector": {"sha256": SHA_DET}, "segmenter": {"sha256": SHA_SAM}},
        "counts": {
            **{"images": 3, "ok": 1, "empty": 1, "failed": 1, "skipped": 0, "edited": 0, "reviewed": 0},
            **{"instances": 2, "empty_masks": 1, "dropped": 0},
        },
        "files": {},  # the hashes of the files it wrote (this one wrote none)
        "labels": {key: entry, f"labels/e{index}.txt": {**entry, "status": "empty", "instances": 0}},
    }
    manifest.update(changes)
    return manifest


def _write(out: Path, index: int, count: int, content: Any = None, name: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / (name or f"autoannotate.shard-{index}-of-{count}.json")
    if content is None:
        content = _manifest(index, count)
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


def _merge(out: Path):
    result = runner.invoke(app, ["merge", str(out)])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no exit 3 for bad input
    return result


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize("count", [MAX_SHARDS + 1, 123_456], ids=["max-plus-one", "far-above"])
def test_a_shard_count_above_max_shards_is_refused_naming_the_file(tmp_path: Path, count: int):
    name = f"autoannotate.shard-0-of-{count}.json"
    _write(tmp_path, 0, count, _manifest(0, count))
    result = _merge(tmp_path)
    assert result.exit_code == 2  # not "missing shards 1..N-1" (exit 1), built as a list of N
    assert name in _one_error_line(result.stderr) and str(MAX_SHARDS) in result.stderr
    assert not (tmp_path / "autoannotate.json").exists()


def test_a_huge_shard_count_is_refused_before_anything_is_built_from_it(tmp_path: Path):
    # In a child process capped at 1 GiB of address space: a merge that lists range(N) fails there, not here.
    _write(tmp_path, 0, 99999999999, _manifest(0, 99999999999))
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
        "from pathlib import Path; from autoannotate.errors import InputError;"
        "from autoannotate.merge import merge_shards\n"
        "try:\n merge_shards(Path(sys.argv[1]))\nexcept InputError as err:\n print(err)"
    )
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-500:]
    assert "autoannotate.shard-0-of-99999999999.json" in child.stdout and str(MAX_SHARDS) in child.stdout


@pytest.mark.parametrize(
    ("index", "count"),
    [
        (0, 0),  # N == 0: no shard can exist (today: merged as complete, exit 0)
        (3, 3),  # I == N
        (7, 2),  # I > N
    ],
    ids=["zero-shards", "index-equals-n", "index-above-n"],
)
def test_an_impossible_shard_name_is_refused(tmp_path: Path, index: int, count: int):
    _write(tmp_path, index, count, _manifest(index, count))
    result = _merge(tmp_path)
    assert result.exit_code == 2
    assert f"autoannotate.shard-{index}-of-{count}.json" in _one_error_line(result.stderr)


def _deep() -> bytes:
    return b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{", "is not valid JSON"),  # torn
        (b"\xff\xfe not text", "is not UTF-8"),
        (_deep(), "is not valid JSON"),  # nested deeper than the parser goes
        ([1, 2], "is a JSON array, not an object"),
        ("a string", "is a JSON string, not an object"),
        ({**_manifest(0, 2), "labels": ["labels/a.txt"]}, "'labels' of type array"),
        ({**_manifest(0, 2), "counts": [3, 1]}, "'counts' of type array"),
        ({**_manifest(0, 2), "counts": {"images": "3"}}, "counts['images']"),
        ({**_manifest(0, 2), "counts": {"ok": -1}}, "counts['ok']"),
        ({**_manifest(0, 2), "counts": {"ok": True}}, "counts['ok']"),
        ({k: v for k, v in _manifest(0, 2).items() if k != "labels"}, "no 'labels'"),
        ({k: v for k, v in _manifest(0, 2).items() if k != "counts"}, "no 'counts'"),
        ({**_manifest(0, 2), "labels": {"labels/a.txt": "ok"}}, 'labels["labels/a.txt"]'),
        ({**_manifest(0, 2), "label_settings": "conf=0.25"}, "'label_settings' of type string"),
        ({**_manifest(0, 2), "models": [SHA_DET]}, "'models' of type array"),
        ({**_manifest(0, 2), "fingerprint": 5}, "'fingerprint' of type number"),
        ({**_manifest(0, 2), "tool": "other"}, "not written by autoannotate"),
        ({**_manifest(0, 2), "shard": "1/2"}, 'records shard "1/2", not 0/2'),  # renamed from another shard's
    ],
    ids=[
        "torn-json",
        "not-utf8",
        "too-deep",
        "array",
        "string",
        "labels-array",
        "counts-array",
        "count-string",
        "count-negative",
        "count-bool",
        "no-labels",
        "no-counts",
        "label-entry-string",
        "label-settings-string",
        "models-array",
        "fingerprint-number",
        "other-tool",
        "renamed",
    ],
)
def test_a_malformed_shard_manifest_is_one_line_naming_file_and_problem(tmp_path: Path, content: Any, expected: str):
    _write(tmp_path, 1, 2, _manifest(1, 2))  # a good one beside it is merged after, never before, the check
    _write(tmp_path, 0, 2, content)
    result = _merge(tmp_path)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.stderr)
    assert "autoannotate.shard-0-of-2.json" in line and expected in line, line
    assert not (tmp_path / "autoannotate.json").exists()


@pytest.mark.parametrize("kind", ["dangling-symlink", "directory"])
def test_an_unreadable_shard_manifest_is_one_line(tmp_path: Path, kind: str):
    path = tmp_path / "autoannotate.shard-0-of-1.json"
    if kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "gone.json")
    result = _merge(tmp_path)
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert "autoannotate.shard-0-of-1.json" in line and "cannot be read" in line


def test_counts_are_summed_and_labeled_is_ok_plus_empty(tmp_path: Path):
    _write(tmp_path, 0, 2, _manifest(0, 2))
    second = _manifest(1, 2)
    second["counts"] = {**second["counts"], "ok": 4, "images": 6, "newer_count": 2}  # keys of a newer version too
    _write(tmp_path, 1, 2, second)
    report = merge_shards(tmp_path)
    assert report.ok and report.labels == 4
    counts = json.loads((tmp_path / "autoannotate.json").read_text())["counts"]
    assert counts == {
        **{"images": 9, "ok": 5, "empty": 2, "failed": 2, "skipped": 0, "edited": 0, "reviewed": 0},
        **{"instances": 4, "empty_masks": 2, "dropped": 0, "newer_count": 2, "labeled": 7},
    }


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"label_settings": {"conf": 0.3}}, "shard 1 was run with conf 0.3, shard 0 with conf 0.25"),
        ({"label_settings": {"polygon": "split"}}, 'shard 1 was run with polygon "split", shard 0 with polygon null'),
        # another detector: its sha256, shortened
        ({"label_settings": {"det_model_sha256": "e" * 64}}, f"det_model_sha256 {'e' * 12}, shard 0 with"),
        (
            {"models": {"detector": {"sha256": SHA_DET}, "segmenter": {"sha256": "9" * 64}}},
            f"segmenter model sha256 {'9' * 12}",
        ),
        ({"fingerprint": "0123"}, 'settings fingerprint "0123"'),
        ({"label_settings": {"classes": list(range(40))}}, "classes [0, 1, 2, 3,"),  # long values excerpted
    ],
    ids=["conf", "new-setting", "detector", "segmenter-record", "fingerprint", "long-value"],
)
def test_shards_run_with_other_settings_or_models_are_refused(tmp_path: Path, changes: dict, expected: str):
    _write(tmp_path, 0, 2, _manifest(0, 2))
    _write(tmp_path, 1, 2, _manifest(1, 2, **changes))
    result = _merge(tmp_path)
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert expected in line and "rerun shard 1 with the same settings" in line, line
    assert len(line) < 300
    assert not (tmp_path / "autoannotate.json").exists()


def test_merge_refuses_to_replace_files_it_did_not_write(tmp_path: Path):
    _write(tmp_path, 0, 1, _manifest(0, 1))
    theirs = tmp_path / "autoannotate.json"
    theirs.write_text('{"my": "notes"}')
    result = _merge(tmp_path)
    assert result.exit_code == 2 and "autoannotate.json" in _one_error_line(result.stderr)
    assert theirs.read_text() == '{"my": "notes"}'
    theirs.unlink()
    sidecar = tmp_path / "instances.jsonl"
    sidecar.write_text("my rows\n")
    result = _merge(tmp_path)
    assert result.exit_code == 2 and "instances.jsonl" in _one_error_line(result.stderr)
    assert sidecar.read_text() == "my rows\n" and not theirs.exists()
    sidecar.unlink()
    # its own outputs it replaces: merge again and again
    assert _merge(tmp_path).exit_code == 0
    assert _merge(tmp_path).exit_code == 0


def test_only_the_sidecars_of_the_merged_split_are_folded(tmp_path: Path):
    _write(tmp_path, 0, 1, _manifest(0, 1))
    row = {"label": "labels/s0.txt", "line": 1, "sam_iou": 0.9}
    (tmp_path / "instances.shard-0-of-1.jsonl").write_text(json.dumps(row) + "\n")
    stale = {"label": "labels/old.txt", "line": 1, "sam_iou": 0.1}
    (tmp_path / "instances.shard-3-of-4.jsonl").write_text(json.dumps(stale) + "\n")  # of an earlier split
    merge_shards(tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "instances.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == ["labels/s0.txt"]

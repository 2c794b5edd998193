"""--shard I/N: a pure, stable partition; N shard runs into one output dir equal one full run; merge reports."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from autoannotate.cli import app
from autoannotate.config import parse_shard
from autoannotate.errors import ConfigError
from autoannotate.job import in_shard

runner = CliRunner()
paths = st.lists(st.text("abc/._- xyzé", min_size=1, max_size=12).map(PurePosixPath), max_size=60, unique=True)


@settings(max_examples=100, deadline=None)
@given(existing=paths, added=paths, count=st.integers(1, 7))
def test_partition_is_disjoint_covering_and_stable(existing, added, count):
    def owners(items):
        return {p: [i for i in range(count) if in_shard(p, (i, count))] for p in items}

    before = owners(existing)
    assert all(len(shards) == 1 for shards in before.values())  # each image in exactly one shard
    after = owners(existing + [p for p in added if p not in existing])
    assert all(after[p] == before[p] for p in existing)  # adding files moves nothing


@pytest.mark.parametrize("value", ["3/3", "-1/2", "1", "a/b", "0/0"])
def test_bad_shard_values(value):
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(value)


def test_shard_union_equals_full_run_and_merge(tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path):
    data = tmp_path / "imgs"
    rng = np.random.default_rng(5)
    for i in range(6):
        image = np.full((40 + 3 * i, 56, 3), 80, np.uint8)
        cv2.circle(image, (28, 20), 8 + i, tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
        (data / f"g{i % 3}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / f"g{i % 3}" / f"p{i}.jpg"), image)
    common = ["--data", str(data), "--det-model", str(yolo_weights), "--sam-model", str(mobile_sam_weights)]
    common += ["--conf", "1e-4", "--max-det", "2", "--json"]
    full, sharded = tmp_path / "full", tmp_path / "sharded"
    assert runner.invoke(app, ["run", *common, "--output-dir", str(full)]).exit_code == 0

    seen = []
    for index in (0, 2):  # shard 1 comes later: merge must report it missing meanwhile
        result = runner.invoke(app, ["run", *common, "--output-dir", str(sharded), "--shard", f"{index}/3"])
        assert result.exit_code == 0, result.output
        seen += [json.loads(x)["path"] for x in result.stdout.splitlines()[:-1]]
        assert (sharded / f"autoannotate.shard-{index}-of-3.json").is_file()
    partial = runner.invoke(app, ["merge", str(sharded), "--json"])
    assert partial.exit_code == 1 and "missing shards: 1" in partial.stderr
    result = runner.invoke(app, ["run", *common, "--output-dir", str(sharded), "--shard", "1/3"])
    seen += [json.loads(x)["path"] for x in result.stdout.splitlines()[:-1]]
    assert sorted(seen) == sorted(str(p) for p in data.rglob("*.jpg"))  # disjoint and covering

    def tree(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "labels").rglob("*.txt"))}

    assert tree(sharded) == tree(full) and len(tree(full)) == 6  # byte-identical labels
    assert (sharded / "data.yaml").read_bytes() == (full / "data.yaml").read_bytes()

    merged = runner.invoke(app, ["merge", str(sharded), "--json"])
    assert merged.exit_code == 0, merged.output
    report = json.loads(merged.stdout)
    assert (report["found"], report["missing"], report["labels"]) == ([0, 1, 2], [], 6)
    manifest = json.loads((sharded / "autoannotate.json").read_text())
    assert manifest["counts"]["images"] == 6 and len(manifest["labels"]) == 6
    # the counts are the shards' summed, and labeled is the label files they wrote (ok + empty)
    shard_counts = [json.loads((sharded / f"autoannotate.shard-{i}-of-3.json").read_text())["counts"] for i in range(3)]
    summed = {key: sum(counts[key] for counts in shard_counts) for key in shard_counts[0]}
    assert {k: v for k, v in manifest["counts"].items() if k != "labeled"} == summed
    assert manifest["counts"]["labeled"] == summed["ok"] + summed["empty"] == len(tree(sharded)) == 6
    sidecar = (sharded / "instances.jsonl").read_text().splitlines()
    assert len(sidecar) == len((full / "instances.jsonl").read_text().splitlines())

    # a full run after the shards skips everything they did
    again = runner.invoke(app, ["run", *common, "--output-dir", str(sharded)])
    assert json.loads(again.stdout.splitlines()[-1])["skipped"] == 6


def test_merge_with_nothing_to_merge(tmp_path: Path):
    result = runner.invoke(app, ["merge", str(tmp_path)])
    assert result.exit_code == 2 and "no shard manifests" in result.stderr

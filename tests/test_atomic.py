"""Atomic writes: short fixed-length temporary names (any label name up to NAME_MAX), and removing stale ones."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from autoannotate.writers.atomic import (
    TEMP_PATTERN,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    remove_stale_temps,
    write_bytes_atomic,
    write_text_atomic,
)

NAME_MAX = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255


@pytest.mark.parametrize(
    "stem",
    [
        "a" * 251,  # 251 + ".txt": 255 bytes, the longest name the file system takes
        "é" * 125 + "a",  # 2-byte characters: 251 bytes too
    ],
    ids=["ascii-255-bytes", "utf8-255-bytes"],
)
def test_a_label_name_of_255_bytes_can_be_written(tmp_path: Path, stem: str):
    target = tmp_path / "labels" / f"{stem}.txt"
    assert len(os.fsencode(target.name)) == 255 == NAME_MAX
    write_text_atomic(target, "0 0.1 0.1 0.2 0.1 0.2 0.2\n")
    write_text_atomic(target, "0 0.3 0.3 0.4 0.3 0.4 0.4\n")  # and replaced
    assert target.read_text() == "0 0.3 0.3 0.4 0.3 0.4 0.4\n"
    assert os.listdir(target.parent) == [target.name]  # no temporary file left


def test_temporary_names_are_short_fixed_and_ours_whatever_the_target(tmp_path: Path, monkeypatch):
    seen: list[str] = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    for name in ("a.txt", "x" * 200 + ".txt", ".hidden", "data.yaml"):
        write_bytes_atomic(tmp_path / name, b"x")
    assert len(seen) == 4
    assert all(TEMP_PATTERN.fullmatch(name) for name in seen), seen
    assert len({len(name) for name in seen}) == 1  # one length: 14 + 8 + 4
    # and the pattern is exactly what mkstemp makes with our prefix and suffix
    for _ in range(50):
        fd, path = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=tmp_path)
        os.close(fd)
        assert TEMP_PATTERN.fullmatch(os.path.basename(path))


def test_remove_stale_temps_removes_only_our_temporary_files(tmp_path: Path):
    root = tmp_path / "out"
    ours = [root / ".autoannotate-abcd1234.tmp", root / "labels" / "a" / "b" / ".autoannotate-z_9y8x7w.tmp"]
    decoys = [
        root / ".autoannotate-abc.tmp",  # wrong length
        root / ".autoannotate-abcd12345.tmp",  # wrong length
        root / ".autoannotate-abcd-234.tmp",  # not mkstemp's alphabet
        root / "x.tmp",
        root / "autoannotate-abcd1234.tmp",  # no leading dot
        root / ".autoannotate-abcd1234.tmp.bak",
        root / ".autoannotate-abcd1234.tmpx",
        root / "labels" / "a.txt",
        root / "labels" / ".a.txt.abcd1234.tmp",  # another tool's (or an older version's) temporary name
    ]
    for path in ours + decoys:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    # outside the root, reached through a symlinked directory and a symlinked file named like ours
    outside = tmp_path / "users-images"
    outside.mkdir()
    behind_link = outside / ".autoannotate-qwertyui.tmp"
    behind_link.write_bytes(b"user")
    (root / "images").mkdir()
    (root / "images" / "linked").symlink_to(outside, target_is_directory=True)
    named_like_ours = root / "images" / ".autoannotate-asdfghjk.tmp"
    named_like_ours.symlink_to(behind_link)
    # a directory named like ours is not a temporary file
    (root / ".autoannotate-dirdir00.tmp").mkdir()

    assert remove_stale_temps(root) == 2
    assert not any(p.exists() for p in ours)
    assert all(p.read_bytes() == b"x" for p in decoys)
    assert behind_link.read_bytes() == b"user" and named_like_ours.is_symlink()
    assert (root / ".autoannotate-dirdir00.tmp").is_dir()
    assert remove_stale_temps(root) == 0  # nothing left to remove
    assert remove_stale_temps(tmp_path / "missing") == 0  # a missing root is nothing to remove


def test_remove_stale_temps_ignores_what_it_cannot_remove(tmp_path: Path, monkeypatch):
    stale = tmp_path / "labels" / ".autoannotate-abcd1234.tmp"
    stale.parent.mkdir()
    stale.write_bytes(b"x")
    kept = tmp_path / ".autoannotate-zzzzzzzz.tmp"
    kept.write_bytes(b"x")
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if os.fspath(path) == str(kept):
            raise PermissionError(13, "Permission denied")
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    assert remove_stale_temps(tmp_path) == 1
    assert kept.exists() and not stale.exists()

"""Finding images (dirs, lists, globs, stdin), their relative paths, and decoding as ultralytics trains."""

from __future__ import annotations

import io
import os
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest

from autoannotate.errors import ImageError, InputError
from autoannotate.inputs.decode import read_image_bgr
from autoannotate.inputs.listing import iter_items, resolve_data


def _img(path: Path, hw: tuple[int, int] = (6, 9)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix if path.suffix.lower() != ".tif" else ".tiff", np.zeros((*hw, 3), np.uint8))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for rel in ["a.jpg", "B.PNG", "sub/a.jpg", "sub/deeper/c.webp", "z.TIF", "x.JpEg", "y.bmp"]:
        _img(root / rel)
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "readme.md").write_text("x")
    return root


def test_directory_is_recursive_sorted_any_case(tree: Path):
    spec = resolve_data(str(tree))
    assert spec.kind == "dir" and spec.root == tree
    rels = [str(s.rel_path) for s in iter_items(spec)]
    assert rels == ["B.PNG", "a.jpg", "sub/a.jpg", "sub/deeper/c.webp", "x.JpEg", "y.bmp", "z.TIF"]


def test_symlink_loop_is_safe(tree: Path):
    os.symlink(tree, tree / "sub" / "loop")  # sub/loop -> imgs: a cycle
    rels = [str(s.rel_path) for s in iter_items(resolve_data(str(tree)))]
    assert len(rels) == len(set(rels)) == 7


def test_single_image(tree: Path):
    spec = resolve_data(str(tree / "sub" / "a.jpg"))
    assert spec.kind == "file"
    assert [s.rel_path for s in iter_items(spec)] == [PurePosixPath("a.jpg")]


def test_list_file_relative_to_its_folder_and_common_root(tree: Path, tmp_path: Path):
    listing = tree / "list.txt"
    listing.write_text("# comment\nsub/a.jpg\n\n sub/deeper/c.webp \n" + str(tree / "sub" / "missing.png") + "\n")
    spec = resolve_data(str(listing))
    assert spec.kind == "list" and spec.root == tree / "sub"
    assert [str(s.rel_path) for s in iter_items(spec)] == ["a.jpg", "deeper/c.webp", "missing.png"]


def test_glob(tree: Path):
    spec = resolve_data(str(tree / "**" / "*.jpg"))
    assert spec.kind == "glob"
    assert sorted(str(s.rel_path) for s in iter_items(spec)) == ["a.jpg", "sub/a.jpg"]


def test_stdin(tree: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tree)
    spec = resolve_data("-", io.StringIO("sub/deeper/c.webp\na.jpg\n"))
    assert spec.kind == "stdin" and spec.root == tree
    assert [str(s.rel_path) for s in iter_items(spec)] == ["sub/deeper/c.webp", "a.jpg"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("does/not/exist", "does not exist"),
        ("nothing/*.jpg", "matches no image"),
    ],
)
def test_bad_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=message):
        resolve_data(data)


def test_empty_list_and_missing_stdin(tmp_path: Path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    with pytest.raises(InputError, match="lists no image"):
        resolve_data(str(empty))
    with pytest.raises(InputError, match="stdin"):
        resolve_data("-", None)


def test_read_image_bgr_variants(tmp_path: Path):
    gray = tmp_path / "g.png"
    cv2.imwrite(str(gray), np.full((5, 7), 200, np.uint8))
    assert read_image_bgr(gray).shape == (5, 7, 3)
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(rgba), np.full((4, 3, 4), 10, np.uint8))
    assert read_image_bgr(rgba).shape == (4, 3, 3)
    deep = tmp_path / "16bit.png"
    cv2.imwrite(str(deep), np.full((4, 4, 3), 65535, np.uint16))
    im = read_image_bgr(deep)
    assert im.dtype == np.uint8 and im.max() == 255
    unicode_name = tmp_path / "straße bild.jpg"
    _img(unicode_name, (3, 8))
    assert read_image_bgr(unicode_name).shape == (3, 8, 3)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"this is text, not a png", "not a decodable image")],
    ids=["zero-bytes", "text-named-png"],
)
def test_read_image_bgr_failures(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        read_image_bgr(path)
    with pytest.raises(ImageError, match="does not exist"):
        read_image_bgr(tmp_path / "gone.png")

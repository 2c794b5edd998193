"""Output layout: default output dirs, label paths mirroring the images, the images link, refusals."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from autoannotate.errors import OutputError
from autoannotate.layout import link_image, plan_layout, prepare_output
from autoannotate.sources import resolve_data


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_plain_folder_defaults_beside_it_with_file_links(tmp_path: Path):
    a = _touch(tmp_path / "imgs" / "sub" / "a.jpg")
    layout = plan_layout(resolve_data(str(tmp_path / "imgs")), str(tmp_path / "imgs"), None)
    assert layout.output_dir == tmp_path / "imgs_auto_annotate"
    assert layout.link == "files" and layout.images_entry == "images"
    assert layout.label_path(PurePosixPath("sub/a.jpg")) == tmp_path / "imgs_auto_annotate/labels/sub/a.txt"
    prepare_output(layout)
    prepare_output(layout)  # idempotent
    link_image(layout, PurePosixPath("sub/a.jpg"), a)
    link = layout.output_dir / "images" / "sub" / "a.jpg"
    assert link.is_symlink() and link.read_bytes() == b"x"
    assert not os.path.isabs(os.readlink(link))  # relative: the pair of trees can move together
    assert not (layout.output_dir / "images").is_symlink()  # a real directory: resolve() keeps /images/


def test_inside_images_dir_trains_in_place(tmp_path: Path):
    _touch(tmp_path / "ds" / "images" / "train" / "a.jpg")
    data = str(tmp_path / "ds" / "images" / "train")
    layout = plan_layout(resolve_data(data), data, None)
    assert layout.output_dir == tmp_path / "ds"
    assert layout.link == "none" and layout.images_entry == "images/train"
    assert layout.label_path(PurePosixPath("a.jpg")) == tmp_path / "ds/labels/train/a.txt"
    assert layout.label_key(PurePosixPath("a.jpg")) == "labels/train/a.txt"


def test_images_dir_with_other_output_dir_links(tmp_path: Path):
    _touch(tmp_path / "ds" / "images" / "a.jpg")
    data = str(tmp_path / "ds" / "images")
    layout = plan_layout(resolve_data(data), data, str(tmp_path / "out"))
    assert layout.output_dir == tmp_path / "out" and layout.link == "files"


def test_list_uses_per_file_links(tmp_path: Path):
    a = _touch(tmp_path / "pics" / "x" / "a.jpg")
    _touch(tmp_path / "pics" / "y" / "b.png")
    listing = tmp_path / "pics" / "list.txt"
    listing.write_text("x/a.jpg\ny/b.png\n")
    layout = plan_layout(resolve_data(str(listing)), str(listing), None)
    assert layout.output_dir == tmp_path / "pics" / "list_auto_annotate"
    assert layout.link == "files"
    prepare_output(layout)
    link_image(layout, PurePosixPath("x/a.jpg"), a)
    link_image(layout, PurePosixPath("x/a.jpg"), a)  # same link again is fine
    assert (layout.output_dir / "images" / "x" / "a.jpg").resolve() == a.resolve()
    other = _touch(tmp_path / "other.jpg")
    with pytest.raises(OutputError, match="exists"):
        link_image(layout, PurePosixPath("x/a.jpg"), other)


def test_single_file_default(tmp_path: Path):
    f = _touch(tmp_path / "one.jpg")
    layout = plan_layout(resolve_data(str(f)), str(f), None)
    assert layout.output_dir == tmp_path / "one_auto_annotate" and layout.link == "files"


@pytest.mark.parametrize("out", ["imgs", "imgs/sub/out"], ids=["same-as-data", "inside-data"])
def test_output_dir_inside_images_is_refused(tmp_path: Path, out: str):
    _touch(tmp_path / "imgs" / "sub" / "a.jpg")
    with pytest.raises(OutputError, match="mix labels with the images"):
        plan_layout(resolve_data(str(tmp_path / "imgs")), str(tmp_path / "imgs"), str(tmp_path / out))


def test_foreign_images_entry_is_refused(tmp_path: Path):
    a = _touch(tmp_path / "imgs" / "a.jpg")
    _touch(tmp_path / "out" / "images")  # a file where the images folder should be
    layout = plan_layout(resolve_data(str(tmp_path / "imgs")), str(tmp_path / "imgs"), str(tmp_path / "out"))
    with pytest.raises(OutputError, match="is not a directory"):
        prepare_output(layout)
    (tmp_path / "out" / "images").unlink()
    _touch(tmp_path / "out" / "images" / "a.jpg")  # a user's own file where our link would go
    prepare_output(layout)
    with pytest.raises(OutputError, match="exists and is not a link"):
        link_image(layout, PurePosixPath("a.jpg"), a)
    assert (tmp_path / "out" / "images" / "a.jpg").read_bytes() == b"x"

"""Output layout: default output dirs, label paths mirroring the images, the images link, refusals."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from autoannotate.dataset.layout import link_image, plan_layout, prepare_output
from autoannotate.errors import OutputError
from autoannotate.inputs.listing import resolve_data


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


def _symlink(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    return link


@pytest.mark.parametrize(
    ("out_via_link", "data_via_link"),
    [(True, False), (False, True), (True, True)],
    ids=["output-dir-through-symlink", "data-through-symlink", "both"],
)
def test_image_links_resolve_whatever_symlinks_lead_to_the_dirs(tmp_path: Path, out_via_link, data_via_link):
    # the links and the real dirs they lead to lie at different depths, so a relative target computed from the
    # unresolved paths would dangle
    real_data = tmp_path / "store" / "p" / "q" / "imgs"
    images = [_touch(real_data / "a.jpg"), _touch(real_data / "sub" / "deeper" / "b.png")]
    data = _symlink(tmp_path / "dl", real_data) if data_via_link else real_data
    out_parent = _symlink(tmp_path / "x" / "deep", tmp_path / "a" / "b" / "c") if out_via_link else tmp_path / "o"
    layout = plan_layout(resolve_data(str(data)), str(data), str(out_parent / "out"))
    prepare_output(layout)
    for image in images:
        rel = PurePosixPath(image.relative_to(real_data).as_posix())
        link_image(layout, rel, data / rel)
        link_image(layout, rel, data / rel)  # again: already there
    links = sorted(p for p in (out_parent / "out" / "images").rglob("*") if p.is_symlink())
    assert len(links) == 2
    for link, image in zip(links, images, strict=True):
        assert os.path.samefile(link, image), (link, os.readlink(link))
        assert not os.path.isabs(os.readlink(link))  # still relative: the pair of trees can move together


def test_a_dangling_link_of_earlier_versions_is_replaced(tmp_path: Path):
    a = _touch(tmp_path / "imgs" / "a.jpg")
    out = _symlink(tmp_path / "x" / "deep", tmp_path / "a" / "b" / "c") / "out"
    layout = plan_layout(resolve_data(str(tmp_path / "imgs")), str(tmp_path / "imgs"), str(out))
    prepare_output(layout)
    link = out / "images" / "a.jpg"
    link.parent.mkdir(parents=True)
    os.symlink(os.path.relpath(a, link.parent), link)  # what earlier versions made: it dangles
    assert not link.exists()
    link_image(layout, PurePosixPath("a.jpg"), a)
    assert os.path.samefile(link, a)


def test_a_dangling_link_of_someone_else_is_refused(tmp_path: Path):
    a = _touch(tmp_path / "imgs" / "a.jpg")
    layout = plan_layout(resolve_data(str(tmp_path / "imgs")), str(tmp_path / "imgs"), str(tmp_path / "out"))
    prepare_output(layout)
    link = tmp_path / "out" / "images" / "a.jpg"
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "elsewhere.jpg")
    with pytest.raises(OutputError, match="exists and is not a link"):
        link_image(layout, PurePosixPath("a.jpg"), a)
    assert os.readlink(link) == str(tmp_path / "elsewhere.jpg")


def test_data_through_a_symlink_into_an_images_tree_trains_in_place(tmp_path: Path):
    _touch(tmp_path / "ds" / "images" / "train" / "a.jpg")
    data = str(_symlink(tmp_path / "train-link", tmp_path / "ds" / "images" / "train"))
    layout = plan_layout(resolve_data(data), data, str(tmp_path / "ds"))
    # not OUT/images/a.jpg links written into the user's images folder
    assert layout.link == "none" and layout.images_entry == "images/train"
    assert layout.label_path(PurePosixPath("a.jpg")) == tmp_path / "ds/labels/train/a.txt"


def test_output_dir_whose_images_folder_holds_the_data_is_refused(tmp_path: Path):
    # the deepest "images" is the anchor, so OUT/images/<rel> links would land in the user's outer images folder
    _touch(tmp_path / "ds" / "images" / "x" / "images" / "train" / "a.jpg")
    data = str(tmp_path / "ds" / "images" / "x" / "images" / "train")
    with pytest.raises(OutputError, match="among the images"):
        plan_layout(resolve_data(data), data, str(tmp_path / "ds"))

"""The seams: torch-free core modules, one-line unknown-name errors per registry, the one ``--classes`` rule, and a
fake segmenter plus a fake input kind, registered from the test, driving a whole ``run``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from autoannotate.cli import app
from autoannotate.engines import ENGINES, engine_entry
from autoannotate.errors import ConfigError, ImageError
from autoannotate.inputs import INPUT_KINDS, InputKind, StandaloneFile, input_kind, item_from_dict
from autoannotate.inputs.base import item_dict
from autoannotate.inputs.image import ImageFile
from autoannotate.polygons import polygon_to_mask
from autoannotate.prompts import PROMPT_SOURCES, prompt_entry
from autoannotate.prompts.base import resolve_classes
from autoannotate.prompts.labels import LabelBoxes
from autoannotate.quality import InstanceQuality
from autoannotate.types import Detections, ImageOutcome, MaskCrop, Masks, Status

# --- torch-free core -------------------------------------------------------------------------------------------------

TORCH_FREE = [
    "autoannotate.types",
    "autoannotate.config",
    "autoannotate.pipeline",
    "autoannotate.polygons",
    "autoannotate.quality",
    "autoannotate.finalize",
    "autoannotate.inputs",
    "autoannotate.inputs.listing",
    "autoannotate.prompts",
    "autoannotate.prompts.base",
    "autoannotate.prompts.labels",
    "autoannotate.prompts.nms",
    "autoannotate.prompts.embeddings_file",
    "autoannotate.prompts.exemplars",
    "autoannotate.segmenters",
    "autoannotate.segmenters.base",
    "autoannotate.engines",
    "autoannotate.dataset.layout",
    "autoannotate.dataset.yolo_seg",
    "autoannotate.writers.coco",
    "autoannotate.writers.dataset_yaml",
    "autoannotate.writers.manifest",
    "autoannotate.writers.sidecar",
    "autoannotate.review.check",
    "autoannotate.review.labels",
    "autoannotate.review.preview",
    "autoannotate.resume",
    "autoannotate.merge",
]


def test_core_modules_import_with_torch_unimportable():
    # A meta-path finder that refuses torch and ultralytics, installed before anything is imported: any import of
    # them, however indirect, raises ImportError in the child process.
    script = textwrap.dedent(
        f"""
        import importlib, sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "ultralytics", "torchvision"):
                    raise ImportError("blocked for the test: " + name)
                return None

        sys.meta_path.insert(0, Refuse())
        for module in {TORCH_FREE!r}:
            importlib.import_module(module)
        assert not any(m.split(".")[0] in ("torch", "ultralytics") for m in sys.modules), "torch got imported"
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# --- registries: one line naming the known entries -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lookup", "name", "message"),
    [
        (input_kind, "audio", "unknown input kind 'audio': known kinds are image, video"),
        (prompt_entry, "yoloe", "unknown prompt source 'yoloe': known sources are labels, points, open_vocab, yolo"),
        (engine_entry, "spark", "unknown engine 'spark': known engines are local, ray"),
    ],
    ids=["input-kind", "prompt-source", "engine"],
)
def test_unknown_registry_name_is_one_line_naming_the_known(lookup: Any, name: str, message: str):
    with pytest.raises(ConfigError) as caught:
        lookup(name)
    assert str(caught.value) == message


def test_registries_hold_the_built_in_entries():
    assert list(INPUT_KINDS) == ["image", "video"]
    assert list(PROMPT_SOURCES) == ["labels", "points", "open_vocab", "yolo"]
    assert list(ENGINES) == ["local", "ray"]


# --- the one --classes rule -------------------------------------------------------------------------------------------

NAMES = {0: "cat", 1: "dog", 2: "Traffic light"}


@pytest.mark.parametrize(
    ("classes", "expected", "error"),
    [
        (None, None, None),  # no filter
        (["dog", "0"], (1, 0), None),  # names and ids mixed, order kept
        (["DOG", "dog", "1"], (1,), None),  # any letter case; duplicates dropped
        (["traffic light"], (2,), None),  # names with spaces
        (["7"], None, "invalid --classes id 7: the detector has ids 0..2"),  # an id the names lack
        (["-1"], None, "invalid --classes id -1: the detector has ids 0..2"),
        (["zebra"], None, "invalid --classes name 'zebra': not a class of the detector (e.g. cat, dog, Traffic light)"),
    ],
    ids=["none", "mixed", "case-dupes", "spaces", "unknown-id", "negative-id", "unknown-name"],
)
def test_resolve_classes(classes: list[str] | None, expected: tuple[int, ...] | None, error: str | None):
    if error is None:
        assert resolve_classes(classes, NAMES, "the detector") == expected
    else:
        with pytest.raises(ConfigError) as caught:
            resolve_classes(classes, NAMES, "the detector")
        assert str(caught.value) == error


def test_boxes_from_refuses_class_ids_its_names_lack(tmp_path: Path):
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.4 0.4\n")
    source = LabelBoxes(tmp_path, {0: "cat", 1: "dog"})
    with pytest.raises(ImageError, match=r"use class id 5, which the class names do not have \(ids 0\.\.1\)"):
        source.boxes([np.zeros((10, 20, 3), np.uint8)], [PurePosixPath("a.jpg")])


def test_boxes_from_classes_outside_the_names_is_a_one_line_error(tmp_path: Path, mobile_sam_weights: Path):
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((20, 30, 3), np.uint8))
    (tmp_path / "boxes").mkdir()
    (tmp_path / "boxes" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "names.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    args = ["run", "--data", str(tmp_path / "imgs"), "--boxes-from", str(tmp_path / "boxes")]
    args += ["--names", str(tmp_path / "names.yaml"), "--sam-model", str(mobile_sam_weights), "--classes", "7"]
    result = CliRunner().invoke(app, [*args, "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == "error: invalid --classes id 7: --names has ids 0..1"


# --- the types cross process boundaries as plain data ----------------------------------------------------------------


def test_image_outcome_round_trips_through_a_dict():
    quality = InstanceQuality(1, 1, 3, 0.5, 0.9, 0.8, 120, 0.7, 12, 0.95, False)
    outcome = ImageOutcome(
        PurePosixPath("sub/a.jpg"),
        "/data/sub/a.jpg",
        Status.OK,
        label_path=Path("/out/labels/sub/a.txt"),
        instances=1,
        detections=2,
        empty_masks=1,
        resolution_wh=(640, 480),
        quality=(quality,),
        label_sha256="ab" * 32,
        label_text="3 0.1 0.2 0.3 0.4 0.5 0.6\n",
        signature=(1234, 5678),
    )
    data = outcome.to_dict()
    assert data["status"] == "ok" and type(data["status"]) is str and data["rel_path"] == "sub/a.jpg"
    assert ImageOutcome.from_dict(data) == outcome


def test_items_round_trip_through_a_dict(tmp_path: Path):
    item = ImageFile(tmp_path / "a.png", PurePosixPath("a.png"))
    assert item_from_dict(item.to_dict()) == item


def test_masks_hold_or_render():
    held = np.zeros((2, 3, 4), bool)
    held[1, 0, 0] = True
    masks = Masks(np.ones(2, np.float32), np.ones(2, np.float32), (3, 4), held)
    assert masks.mask(1)[0, 0] and len(masks) == 2
    lazy = Masks(np.ones(2, np.float32), np.ones(2, np.float32), (3, 4), render=lambda i: held[i])
    assert lazy.mask(1)[0, 0]
    cropped = Masks(
        np.ones(2, np.float32), np.ones(2, np.float32), (3, 4), crops=(MaskCrop.of(held[0]), MaskCrop.of(held[1]))
    )
    np.testing.assert_array_equal(cropped.mask(1), held[1])
    assert cropped.crop(1).pixels.shape == (1, 1) and cropped.crop(0).pixels.shape == (0, 0)
    with pytest.raises(ValueError, match="held, as crops or a render"):
        Masks(np.ones(1, np.float32), np.ones(1, np.float32), (3, 4))
    with pytest.raises(ValueError, match="1 mask crops for 2 masks"):
        Masks(np.ones(2, np.float32), np.ones(2, np.float32), (3, 4), crops=(MaskCrop.of(held[0]),))


# --- a fake input kind and a fake segmenter drive a whole run --------------------------------------------------------


def _grid_pixels(text: str) -> np.ndarray:
    """A ``.grid`` file: ``H W LEVEL``; its pixels: an (H, W) gray image at LEVEL, BGR."""
    h, w, level = (int(v) for v in text.split())
    return np.full((h, w, 3), level, np.uint8)


@dataclass(frozen=True)
class GridItem(StandaloneFile):
    """An input kind the package does not know: a text file describing an image. Its key takes a ``.png`` suffix,
    and it places itself in the dataset as a real PNG (as a video frame will)."""

    path: Path
    rel_path: PurePosixPath
    kind: str = "grid"

    @property
    def origin(self) -> str:
        return str(self.path)

    def read_bgr(self) -> np.ndarray:
        return _grid_pixels(self.path.read_text())

    def signature(self) -> tuple[int, int] | None:
        info = self.path.stat()
        return info.st_size, info.st_mtime_ns

    def exists(self) -> bool:
        return self.path.exists()

    def place(self, layout: Any) -> None:
        target = layout.image_link_path(self.rel_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), self.read_bgr())

    def dataset_path(self, layout: Any) -> Path:
        return Path(layout.image_link_path(self.rel_path))

    def to_dict(self) -> dict[str, Any]:
        return item_dict(self)


def _grid_items(path: Path, rel_path: PurePosixPath, context: Any) -> Iterator[GridItem]:
    yield GridItem(path, rel_path.with_suffix(".png"))


def _grid_from_dict(data: Mapping[str, Any]) -> GridItem:
    return GridItem(Path(data["origin"]), PurePosixPath(data["rel_path"]))


class RectangleSegmenter:
    """A segmenter the package does not know: each mask is its box, pixel-rounded."""

    variant = "rectangle"

    def __init__(self, weights_path: Path) -> None:
        self.weights_path = weights_path
        self.calls = 0

    def prepare(self, image_rgb: np.ndarray) -> tuple[int, int]:
        return int(image_rgb.shape[0]), int(image_rgb.shape[1])

    def segment(self, prepared: list[tuple[int, int]], prompts: list[Detections]) -> list[Masks]:
        out = []
        for (h, w), boxes in zip(prepared, [p.xyxy for p in prompts], strict=True):
            masks = np.zeros((len(boxes), h, w), bool)
            for i, (x1, y1, x2, y2) in enumerate(np.round(boxes).astype(int)):
                masks[i, y1:y2, x1:x2] = True
            scores = np.full(len(boxes), 0.75, np.float32)
            out.append(Masks(scores, np.full(len(boxes), 0.5, np.float32), (h, w), masks))
        return out

    def default_batch(self) -> int:
        return 2

    def release_cached_memory(self) -> None:
        return None


def test_fake_segmenter_and_fake_input_kind_drive_a_whole_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torch

    from autoannotate.segmenters import SEGMENTERS, SegmenterEntry

    loaded: list[RectangleSegmenter] = []

    def load(weights_path: Path, device: Any, half: bool, variant: str) -> RectangleSegmenter:
        loaded.append(RectangleSegmenter(weights_path))
        return loaded[-1]

    def recognise(state_dict: Any) -> str | None:
        return "rectangle" if "rectangle.marker" in state_dict else None

    # registered from here: no file of the package changes
    monkeypatch.setitem(
        INPUT_KINDS, "grid", InputKind("grid", (".grid",), _grid_items, _grid_from_dict, lambda path, context: 1)
    )
    monkeypatch.setitem(SEGMENTERS, "rectangle", SegmenterEntry("rectangle", recognise, load, ("rectangle",)))
    weights = tmp_path / "rect.pt"
    torch.save({"rectangle.marker": torch.zeros(1)}, weights)

    data = tmp_path / "scenes"
    (data / "sub").mkdir(parents=True)
    (data / "wide.grid").write_text("40 80 120")  # H 40, W 80: non-square
    (data / "sub" / "tall.grid").write_text("60 30 200")
    boxes = tmp_path / "boxes"
    (boxes / "sub").mkdir(parents=True)
    # class cx cy w h, normalised: pixel boxes x 20..60 y 10..30, and x 0..15 y 30..60
    (boxes / "wide.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (boxes / "sub" / "tall.txt").write_text("0 0.25 0.75 0.5 0.5\n")
    (tmp_path / "names.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    out = tmp_path / "out"
    args = ["run", "--data", str(data), "--boxes-from", str(boxes), "--names", str(tmp_path / "names.yaml")]
    args += ["--sam-model", str(weights), "--output-dir", str(out), "--tolerance", "0", "--json", "--coco"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    assert len(loaded) == 1 and loaded[0].weights_path == weights  # the registered segmenter was the one used
    events = [line for line in result.stdout.splitlines() if '"event": "image"' in line]
    assert len(events) == 2 and all('"status": "ok"' in line for line in events)
    expected_boxes = {"wide": ((40, 80), 1, (20, 10, 60, 30)), "sub/tall": ((60, 30), 0, (0, 30, 15, 60))}
    for stem, ((h, w), class_id, (x1, y1, x2, y2)) in expected_boxes.items():
        # the item placed itself in the dataset as a real PNG with its pixels, under the key it chose
        image = cv2.imread(str(out / "images" / f"{stem}.png"))
        assert image is not None and image.shape == (h, w, 3)
        (line,) = (out / "labels" / f"{stem}.txt").read_text().splitlines()
        fields = line.split()
        assert int(fields[0]) == class_id
        polygon_px = np.array(fields[1:], np.float64).reshape(-1, 2) * [w, h]
        expected = np.zeros((h, w), bool)
        expected[y1:y2, x1:x2] = True
        # the written polygon rasterises back to the fake segmenter's mask, as ultralytics' trainer reads it
        np.testing.assert_array_equal(polygon_to_mask(polygon_px, (w, h)).astype(bool), expected)
    data_yaml = (out / "data.yaml").read_text()
    assert "0: cat" in data_yaml and "1: dog" in data_yaml
    manifest = (out / "autoannotate.json").read_text()
    assert '"variant": "rectangle"' in manifest
    coco = (out / "annotations.coco.json").read_text()
    assert '"file_name":"sub/tall.png"' in coco.replace(" ", "") and '"file_name":"wide.png"' in coco.replace(" ", "")


def test_engine_option_choices_are_the_registered_engines():
    from autoannotate.config import EngineKind

    assert [str(kind) for kind in EngineKind] == list(ENGINES)

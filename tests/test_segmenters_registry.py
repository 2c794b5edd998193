"""The segmenter registry: ``SEGMENTERS`` entries asked in order by ``load_segmenter``, recognition by content, one-line
errors for checkpoints nobody recognises, and a package import that needs no torch."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autoannotate.errors import ModelError
from autoannotate.segmenters import SEGMENTERS, Segmenter, SegmenterEntry, load_segmenter
from autoannotate.types import Detections, Masks


class FakeSegmenter:
    """A whole-image mask per box; records how it was loaded."""

    def __init__(self, weights_path: Path, device: Any, half: bool, variant: str) -> None:
        self.weights_path: Path | None = weights_path
        self.device, self.half, self.variant = device, half, variant

    def prepare(self, image_rgb: np.ndarray) -> tuple[int, int]:
        return int(image_rgb.shape[0]), int(image_rgb.shape[1])

    def segment(self, prepared: Sequence[Any], prompts: Sequence[Detections]) -> list[Masks]:
        return [
            Masks(np.ones(len(b), np.float32), np.full(len(b), np.nan, np.float32), hw, np.ones((len(b), *hw), bool))
            for hw, b in zip(prepared, prompts, strict=True)
        ]

    def default_batch(self) -> int:
        return 1

    def release_cached_memory(self) -> None:
        pass


def _fake_entry(name: str, marker_key: str, asked: list[str] | None = None) -> SegmenterEntry:
    """An entry that recognises state dicts holding ``marker_key`` as variant ``<name>_v1``."""

    def recognise(state_dict: Mapping[str, Any]) -> str | None:
        if asked is not None:
            asked.append(name)
        return f"{name}_v1" if marker_key in state_dict else None

    return SegmenterEntry(name, recognise, FakeSegmenter)


def _one_line(err: pytest.ExceptionInfo[ModelError], *fragments: str) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_registered_fake_is_picked_for_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SEGMENTERS, "fake", _fake_entry("fake", "fake_head.weight"))
    path = tmp_path / "anything.pt"  # the name says nothing: recognition is by content
    torch.save({"fake_head.weight": torch.zeros(4, 3), "fake_head.bias": torch.zeros(4)}, path)
    segmenter = load_segmenter(str(path), "cpu", half=True)
    assert isinstance(segmenter, FakeSegmenter) and isinstance(segmenter, Segmenter)
    loaded_as = (segmenter.weights_path, segmenter.device, segmenter.half, segmenter.variant)
    assert loaded_as == (path, "cpu", True, "fake_v1")
    (masks,) = segmenter.segment(
        [segmenter.prepare(np.zeros((3, 5, 3), np.uint8))], [Detections.from_boxes(np.zeros((2, 4)))]
    )
    assert masks.mask(1).shape == (3, 5)


def test_wrapped_and_legacy_format_checkpoints_are_recognised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``{"model": state_dict}`` wrapper, a DDP ``module.`` prefix and the pre-zip torch format (not mmap-able)."""
    monkeypatch.setitem(SEGMENTERS, "fake", _fake_entry("fake", "fake_head.weight"))
    path = tmp_path / "legacy.pt"
    torch.save({"model": {"module.fake_head.weight": torch.zeros(2)}}, path, _use_new_zipfile_serialization=False)
    assert load_segmenter(str(path), "cpu").variant == "fake_v1"


def test_entries_are_asked_in_order_and_the_first_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import autoannotate.segmenters as registry

    asked: list[str] = []
    # a copy without "sam" (delitem would re-insert it last, reordering the registry for later tests)
    entries = {name: entry for name, entry in SEGMENTERS.items() if name != "sam"}
    entries["first"] = _fake_entry("first", "shared.weight", asked)
    entries["second"] = _fake_entry("second", "shared.weight", asked)
    monkeypatch.setattr(registry, "SEGMENTERS", entries)
    path = tmp_path / "shared.pt"
    torch.save({"shared.weight": torch.zeros(1)}, path)
    assert load_segmenter(str(path), "cpu").variant == "first_v1"
    assert asked == ["first"]


@pytest.mark.parametrize(
    ("state_dict", "fragments"),
    [
        # tensors of no known model: the generic message names every known variant
        (
            {"backbone.weight": torch.zeros(3)},
            (
                "is not a checkpoint of a known segmenter "
                "(known: mobile_sam, sam_b, sam_l, sam_h, sam2_t, sam2_s, sam2_b+, sam2_l, sam2.1_t, sam2.1_s, "
                "sam2.1_b+, sam2.1_l, fastsam_s, fastsam_x, sam3, sam3.1)",
                "--sam-model",
            ),
        ),
        # SAM2: Hiera trunk and memory modules; SAM3: detector/tracker halves
        ({"image_encoder.trunk.x": torch.zeros(1), "memory_attention.y": torch.zeros(1)}, ("partial SAM 2", "no sam_")),
        ({"detector.x": torch.zeros(1), "tracker.y": torch.zeros(1)}, ("SAM 3 checkpoint without", "sam_mask_decoder")),
        # a SAM ViT with one block: no known size
        (
            {
                "image_encoder.patch_embed.proj.weight": torch.zeros(768, 1, 1, 1),
                "image_encoder.blocks.0.norm.weight": torch.zeros(1),
                "prompt_encoder.x": torch.zeros(1),
                "mask_decoder.y": torch.zeros(1),
            },
            ("SAM ViT checkpoint of unknown size", "768", "1 blocks"),
        ),
    ],
    ids=["unknown", "sam2", "sam3", "vit-size"],
)
def test_unrecognised_checkpoints_raise_one_line(
    tmp_path: Path, state_dict: dict[str, torch.Tensor], fragments: tuple[str, ...]
) -> None:
    path = tmp_path / "x.pt"
    torch.save(state_dict, path)
    with pytest.raises(ModelError) as err:
        load_segmenter(str(path), "cpu")
    message = _one_line(err, "SAM weights", "x.pt", *fragments, "--sam-model")
    assert message.startswith("SAM weights ")


def test_known_list_includes_registered_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SEGMENTERS, "fake", _fake_entry("fake", "fake_head.weight"))
    path = tmp_path / "x.pt"
    torch.save({"other.weight": torch.zeros(1)}, path)
    with pytest.raises(ModelError) as err:
        load_segmenter(str(path), "cpu")
    _one_line(
        err, "(known: mobile_sam, sam_b, sam_l, sam_h, sam2_t,", "sam2.1_l, fastsam_s, fastsam_x, sam3, sam3.1, fake)"
    )


def test_mobile_sam_loads_through_the_registry(mobile_sam_weights: Path) -> None:
    from autoannotate.segmenters.sam import BoxSegmenter

    segmenter = load_segmenter(str(mobile_sam_weights), "cpu")
    assert isinstance(segmenter, BoxSegmenter) and isinstance(segmenter, Segmenter)
    assert (segmenter.variant, segmenter.weights_path, segmenter.default_batch()) == (
        "mobile_sam",
        mobile_sam_weights,
        1,
    )


def test_asset_download_goes_through_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    def offline(file: Any, **kwargs: Any) -> str:
        raise ConnectionError("offline")

    with pytest.raises(ModelError) as err:
        load_segmenter("sam_b.pt", "cpu", download=offline)
    _one_line(err, "sam_b.pt could not be downloaded", "/sam_b.pt", "--sam-model /path/to/sam_b.pt")


def test_lazy_sam_entry_mirrors_sam_entry() -> None:
    from autoannotate.segmenters.sam import SAM_ENTRY

    lazy = SEGMENTERS["sam"]
    assert (lazy.name, lazy.variants, lazy.assets) == (SAM_ENTRY.name, SAM_ENTRY.variants, SAM_ENTRY.assets)
    vit_b_like = {"image_encoder.layers.0.x": torch.zeros(1), "prompt_encoder.y": torch.zeros(1)}
    assert lazy.recognise(vit_b_like) is None  # no mask decoder
    assert lazy.recognise({**vit_b_like, "mask_decoder.z": torch.zeros(1)}) == "mobile_sam"
    assert lazy.explain is not None and lazy.explain({"detector.a": torch.zeros(1)}) == SAM_ENTRY.explain(
        {"detector.a": torch.zeros(1)}
    )


def test_package_and_protocol_import_without_torch() -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
        "import autoannotate.segmenters as s, autoannotate.segmenters.base as b\n"
        "assert list(s.SEGMENTERS)[0] == 'sam' and list(s.SEGMENTERS)[-1] == 'detector_masks'\n"
        "assert b.Segmenter and s.load_segmenter\n"
        "assert not any(m.startswith(('ultralytics', 'autoannotate.segmenters.sam')) for m in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

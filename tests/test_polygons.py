"""Tests for ``autoannotate.polygons``: masks to YOLO-seg polygons and back through ``cv2.fillPoly``.

The oracle is ``polygon_to_mask`` (``cv2.fillPoly`` on int32 points, as ultralytics rasterises labels when
it trains). Every canvas is non-square: 120 high x 200 wide (landscape) or 180 high x 90 wide (portrait).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoannotate.errors import ConfigError
from autoannotate.polygons import (
    PolygonMode,
    PolygonPolicy,
    mask_iou,
    mask_to_polygons,
    polygon_to_local_mask,
    polygon_to_mask,
    polygons_to_mask,
)

LANDSCAPE_HW = (120, 200)
PORTRAIT_HW = (180, 90)

EXACT = PolygonPolicy(mode=PolygonMode.MERGE, tolerance_px=0.0)
SIMPLIFIED = PolygonPolicy(mode=PolygonMode.MERGE, tolerance_px=1.0)


# ---------------------------------------------------------------------------------------------------------
# Mask builders and reference computations (independent of the module under test)
# ---------------------------------------------------------------------------------------------------------


def _blank(shape_hw: tuple[int, int]) -> np.ndarray:
    return np.zeros(shape_hw, dtype=np.uint8)


def _disk(canvas: np.ndarray, cx: int, cy: int, radius: int, value: int = 1) -> np.ndarray:
    cv2.circle(canvas, (cx, cy), radius, value, thickness=-1)
    return canvas


def _rect(canvas: np.ndarray, x0: int, y0: int, x1: int, y1: int, value: int = 1) -> np.ndarray:
    """Fill columns x0..x1 and rows y0..y1, both inclusive."""
    canvas[y0 : y1 + 1, x0 : x1 + 1] = value
    return canvas


def _line(canvas: np.ndarray, start_xy: tuple[int, int], end_xy: tuple[int, int]) -> np.ndarray:
    cv2.line(canvas, start_xy, end_xy, 1, thickness=1, lineType=cv2.LINE_8)
    return canvas


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of ``mask`` as bool masks, largest first."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = sorted(range(1, count), key=lambda label: -stats[label, cv2.CC_STAT_AREA])
    return [labels == label for label in order]


def _chebyshev_mst_weight(mask: np.ndarray) -> int:
    """Weight of the minimum spanning tree of the 8-connected parts under nearest-pixel Chebyshev distance.

    A straight cut across a gap of Chebyshev length ``d`` between two parts paints at most ``d - 1``
    background pixels, and rounding may cost one more per cut, so ``merge`` may over-paint at most this
    many pixels. Zero for a single part. Brute force over boundary pixels, for small test masks only.
    """
    parts = _components(mask)
    if len(parts) < 2:
        return 0
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.uint8)
    boundaries = []
    for part in parts:
        inner = cv2.erode(part.astype(np.uint8), cross, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        ys, xs = np.nonzero(part & (inner == 0))
        boundaries.append(np.stack([xs, ys], axis=1))
    gap = np.zeros((len(parts), len(parts)), dtype=np.int64)
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            delta = np.abs(boundaries[i][:, None, :] - boundaries[j][None, :, :]).max(axis=2)
            gap[i, j] = gap[j, i] = int(delta.min())
    in_tree, weight = {0}, 0
    while len(in_tree) < len(parts):
        d, j = min((gap[i, j], j) for i in in_tree for j in range(len(parts)) if j not in in_tree)
        in_tree.add(j)
        weight += int(d)
    return weight


def _check_polygon(polygon: np.ndarray, shape_hw: tuple[int, int]) -> None:
    height, width = shape_hw
    assert polygon.dtype == np.float64
    assert polygon.ndim == 2 and polygon.shape[1] == 2
    assert len(polygon) >= 3
    assert np.isfinite(polygon).all()
    assert polygon[:, 0].min() >= 0 and polygon[:, 0].max() <= width - 1
    assert polygon[:, 1].min() >= 0 and polygon[:, 1].max() <= height - 1


def _wh(shape_hw: tuple[int, int]) -> tuple[int, int]:
    return shape_hw[1], shape_hw[0]


# ---------------------------------------------------------------------------------------------------------
# The table of synthetic masks
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], np.ndarray]  # returns an (H, W) uint8 0/1 mask
    parts: int  # number of 8-connected parts
    min_iou_tol1: float = 0.98  # merge at tolerance 1 px; 1.0 where simplification happens to be lossless


CASES = [
    # Axis-aligned rectangle well inside the canvas: 4 corners, lossless even after simplification.
    Case("rectangle", lambda: _rect(_blank(LANDSCAPE_HW), 30, 20, 150, 90), 1, 1.0),
    # Disk: curved boundary, every staircase step is a contour vertex.
    Case("disk", lambda: _disk(_blank(LANDSCAPE_HW), 100, 60, 45), 1),
    # Disk with an off-centre hole: one hole joined to its outer ring by a cut over the object.
    Case("ring_with_hole", lambda: _disk(_disk(_blank(PORTRAIT_HW), 45, 90, 40), 55, 80, 15, 0), 1),
    # Blob with two holes: two cuts, possibly hole-to-hole.
    Case(
        "two_holes",
        lambda: _disk(_disk(_rect(_blank(PORTRAIT_HW), 10, 20, 80, 160), 45, 60, 18, 0), 40, 120, 22, 0),
        1,
    ),
    # A hole containing an island (bullseye): the island is a second part inside the hole. At 1 px the
    # three simplified rings (1.1 px of boundary per 10 px of area) cost a little over 2%: IoU 0.978.
    Case(
        "island_in_hole",
        lambda: _disk(_disk(_disk(_blank(LANDSCAPE_HW), 100, 60, 55), 100, 60, 35, 0), 100, 60, 15),
        2,
        0.975,
    ),
    # Two rectangles, same rows, 5 background columns apart (x 71..75): a 5-pixel cut in merge mode.
    Case("two_rectangles", lambda: _rect(_rect(_blank(LANDSCAPE_HW), 20, 30, 70, 90), 76, 30, 140, 90), 2),
    # Disk and rectangle a few pixels apart, diagonally: merge paints one diagonal line between them.
    Case("disk_and_rectangle", lambda: _rect(_disk(_blank(PORTRAIT_HW), 30, 35, 25), 50, 62, 85, 175), 2),
    # The whole canvas but a hole: touches all four image borders.
    Case("touches_all_sides", lambda: _disk(np.ones(LANDSCAPE_HW, np.uint8), 120, 50, 20, 0), 1),
    # Quarter disk cut off by the top-left corner.
    Case("touches_top_left_corner", lambda: _disk(_blank(PORTRAIT_HW), 0, 0, 40), 1),
    # Rectangle filling the bottom-right corner.
    Case("touches_bottom_right_corner", lambda: _rect(_blank(PORTRAIT_HW), 60, 150, 89, 179), 1, 1.0),
    # One-pixel-wide horizontal line: findContours gives a back-and-forth contour.
    Case("line_horizontal", lambda: _line(_blank(LANDSCAPE_HW), (10, 50), (180, 50)), 1, 1.0),
    # One-pixel-wide vertical line on the portrait canvas.
    Case("line_vertical", lambda: _line(_blank(PORTRAIT_HW), (40, 5), (40, 170)), 1, 1.0),
    # One-pixel-wide 45-degree diagonal line.
    Case("line_diagonal", lambda: _line(_blank(LANDSCAPE_HW), (10, 10), (110, 110)), 1, 1.0),
    # One-pixel-wide shallow line (an 8-connected staircase): simplifies to its two ends, whose line
    # fillPoly draws with the same Bresenham steps.
    Case("line_shallow", lambda: _line(_blank(LANDSCAPE_HW), (5, 100), (190, 20)), 1, 1.0),
    # A single pixel: a one-point contour, padded to three points.
    Case("speck_1px", lambda: _rect(_blank(PORTRAIT_HW), 37, 71, 37, 71), 1, 1.0),
    # A 2x2 speck: a degenerate square, kept exact rather than collapsed by simplification.
    Case("speck_2x2", lambda: _rect(_blank(LANDSCAPE_HW), 137, 71, 138, 72), 1, 1.0),
    # A one-pixel-wide circle outline: its hole ring runs over the same pixels as its outer ring. A 1 px
    # tolerance equals the feature width, so the simplified rings cross: IoU 0.58 at tolerance 1.
    Case("thin_ring_outline", lambda: cv2.circle(_blank(LANDSCAPE_HW), (100, 60), 40, 1, thickness=1), 1, 0.55),
    # Two squares touching at one corner: one 8-connected part with a pinch point.
    Case("corner_touching_squares", lambda: _rect(_rect(_blank(PORTRAIT_HW), 10, 10, 40, 40), 41, 41, 80, 80), 1),
    # A comb: teeth one pixel wide, one pixel apart; the 1-pixel notches must not be filled at tolerance 0.
    # At tolerance 1 they are (they are within tolerance): IoU 0.80.
    Case(
        "comb",
        lambda: _rect(_blank(LANDSCAPE_HW), 20, 80, 180, 90) | _comb_teeth(_blank(LANDSCAPE_HW)),
        1,
        0.78,
    ),
]


def _comb_teeth(canvas: np.ndarray) -> np.ndarray:
    canvas[30:80, 20:181:2] = 1
    return canvas


# ---------------------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_merge_exact_round_trip(case: Case) -> None:
    """At tolerance 0 one polygon gives the mask back; only cuts between parts may add background."""
    mask = case.build().astype(bool)
    polygons = mask_to_polygons(mask, EXACT)
    assert len(polygons) == 1
    _check_polygon(polygons[0], mask.shape)
    drawn = polygon_to_mask(polygons[0], _wh(mask.shape))
    assert not (mask & ~drawn).any(), "merge lost object pixels"
    extra = int((drawn & ~mask).sum())
    if case.parts == 1:
        assert extra == 0
        assert mask_iou(drawn, mask) == 1.0
    else:
        assert extra <= _chebyshev_mst_weight(mask)
        assert mask_iou(drawn, mask) >= 0.99


def test_merge_cut_between_parts_costs_the_gap() -> None:
    """Two rectangles in the same rows, 5 columns apart: the cut paints exactly those 5 background pixels."""
    mask = _rect(_rect(_blank(LANDSCAPE_HW), 20, 30, 70, 90), 76, 30, 140, 90).astype(bool)
    (polygon,) = mask_to_polygons(mask, EXACT)
    drawn = polygon_to_mask(polygon, _wh(mask.shape))
    extra = drawn & ~mask
    assert int(extra.sum()) == 5
    ys, xs = np.nonzero(extra)
    assert len(set(ys.tolist())) == 1 and sorted(xs.tolist()) == [71, 72, 73, 74, 75]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_merge_simplified_round_trip(case: Case) -> None:
    """At tolerance 1 px the polygon stays within IoU 0.98 of the mask, except where features are 1 px."""
    mask = case.build().astype(bool)
    polygons = mask_to_polygons(mask, SIMPLIFIED)
    assert len(polygons) == 1
    _check_polygon(polygons[0], mask.shape)
    drawn = polygon_to_mask(polygons[0], _wh(mask.shape))
    iou = mask_iou(drawn, mask)
    assert iou >= case.min_iou_tol1
    if case.min_iou_tol1 == 1.0:
        assert iou == 1.0


@pytest.mark.parametrize(
    ("build", "max_points_at_tol1"),
    [
        # A disk's exact contour has a vertex at every staircase step; 1 px of tolerance keeps a few dozen.
        (lambda: _disk(_blank(LANDSCAPE_HW), 100, 60, 45), 40),
        # Same for a ring: both rings are simplified, the cut between them is kept.
        (lambda: _disk(_disk(_blank(PORTRAIT_HW), 45, 90, 40), 55, 80, 15, 0), 60),
    ],
    ids=["disk", "ring_with_hole"],
)
def test_tolerance_simplifies(build: Callable[[], np.ndarray], max_points_at_tol1: int) -> None:
    mask = build().astype(bool)
    (exact,) = mask_to_polygons(mask, EXACT)
    (simplified,) = mask_to_polygons(mask, SIMPLIFIED)
    assert len(simplified) <= max_points_at_tol1 < len(exact)


def test_exact_rectangle_has_four_corners() -> None:
    """Tolerance 0 drops collinear boundary points (lossless) and keeps the corners, as pixel centres."""
    mask = _rect(_blank(PORTRAIT_HW), 10, 20, 60, 150).astype(bool)
    (polygon,) = mask_to_polygons(mask, EXACT)
    assert {tuple(p) for p in polygon.tolist()} == {(10.0, 20.0), (60.0, 20.0), (60.0, 150.0), (10.0, 150.0)}
    assert len(polygon) == 4


def test_simplified_hole_stays_a_hole() -> None:
    """Rings are simplified separately and the cut kept: at tolerance 2 px the hole is still open.

    findContours traces a hole over the object pixels around it, cutting its corners diagonally; the
    simplified hole ring drops those corners, so its edges run over the hole's outermost pixels. The hole
    shrinks by at most one pixel per side; the object loses nothing.
    """
    mask = _rect(_rect(_blank(LANDSCAPE_HW), 20, 10, 180, 110), 80, 40, 120, 80, 0).astype(bool)
    (polygon,) = mask_to_polygons(mask, PolygonPolicy(tolerance_px=2.0))
    drawn = polygon_to_mask(polygon, _wh(mask.shape))
    assert not (mask & ~drawn).any()
    assert not drawn[41:80, 81:120].any()
    assert mask_iou(drawn, mask) >= 0.99


# ---------------------------------------------------------------------------------------------------------
# largest and split
# ---------------------------------------------------------------------------------------------------------

MULTI_PART_CASES = [c for c in CASES if c.parts > 1]


@pytest.mark.parametrize("case", MULTI_PART_CASES, ids=[c.id for c in MULTI_PART_CASES])
def test_largest_keeps_only_the_biggest_part(case: Case) -> None:
    mask = case.build().astype(bool)
    polygons = mask_to_polygons(mask, PolygonPolicy(mode=PolygonMode.LARGEST, tolerance_px=0.0))
    assert len(polygons) == 1
    _check_polygon(polygons[0], mask.shape)
    biggest = _components(mask)[0]
    assert mask_iou(polygon_to_mask(polygons[0], _wh(mask.shape)), biggest) == 1.0


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_split_gives_each_part_exactly(case: Case) -> None:
    """One polygon per 8-connected part, largest first, each drawing exactly its part (holes included)."""
    mask = case.build().astype(bool)
    polygons = mask_to_polygons(mask, PolygonPolicy(mode=PolygonMode.SPLIT, tolerance_px=0.0))
    parts = _components(mask)
    assert len(polygons) == len(parts) == case.parts
    for polygon, part in zip(polygons, parts, strict=True):
        _check_polygon(polygon, mask.shape)
        assert (polygon_to_mask(polygon, _wh(mask.shape)) == part).all()
    assert (polygons_to_mask(polygons, _wh(mask.shape)) == mask).all()


# ---------------------------------------------------------------------------------------------------------
# min area, empty masks, input types
# ---------------------------------------------------------------------------------------------------------


def _blob_with_specks() -> np.ndarray:
    canvas = _disk(_blank(LANDSCAPE_HW), 60, 60, 30)
    _rect(canvas, 150, 20, 150, 20)  # 1-pixel speck
    _rect(canvas, 170, 100, 171, 101)  # 2x2 speck
    return canvas


def _blob_with_small_and_big_hole() -> np.ndarray:
    canvas = _rect(_blank(PORTRAIT_HW), 10, 10, 80, 170)
    _rect(canvas, 40, 30, 42, 32, 0)  # 3x3 = 9-pixel hole
    return _disk(canvas, 45, 120, 12, 0)  # large hole


@pytest.mark.parametrize(
    ("build", "min_area_px", "expected"),
    [
        # Specks of 1 and 4 pixels under min area 5 are dropped, the disk stays.
        (_blob_with_specks, 5.0, lambda: _disk(_blank(LANDSCAPE_HW), 60, 60, 30)),
        # A part of exactly min area is kept: the 2x2 speck (4 px) survives min area 4, the 1 px one does not.
        (_blob_with_specks, 4.0, lambda: _rect(_disk(_blank(LANDSCAPE_HW), 60, 60, 30), 170, 100, 171, 101)),
        # The 9-pixel hole is filled under min area 10; the large hole is kept.
        (
            _blob_with_small_and_big_hole,
            10.0,
            lambda: _disk(_rect(_blank(PORTRAIT_HW), 10, 10, 80, 170), 45, 120, 12, 0),
        ),
        # A hole enclosing fewer pixels than min area is filled together with the island inside it.
        (
            lambda: _rect(_rect(_rect(_blank(LANDSCAPE_HW), 50, 30, 90, 70), 60, 40, 64, 44, 0), 62, 42, 62, 42),
            30.0,
            lambda: _rect(_blank(LANDSCAPE_HW), 50, 30, 90, 70),
        ),
        # Min area 0 keeps everything.
        (_blob_with_specks, 0.0, _blob_with_specks),
    ],
    ids=[
        "drops_specks",
        "keeps_part_at_exact_min_area",
        "fills_small_hole",
        "fills_hole_with_island",
        "zero_keeps_all",
    ],
)
def test_min_area(build: Callable[[], np.ndarray], min_area_px: float, expected: Callable[[], np.ndarray]) -> None:
    mask, want = build().astype(bool), expected().astype(bool)
    for mode in PolygonMode:
        policy = PolygonPolicy(mode=mode, tolerance_px=0.0, min_area_px=min_area_px)
        polygons = mask_to_polygons(mask, policy)
        drawn = polygons_to_mask(polygons, _wh(mask.shape))
        if mode is PolygonMode.SPLIT:
            assert (drawn == want).all()
            assert len(polygons) == len(_components(want))
        elif mode is PolygonMode.LARGEST:
            assert (drawn == _components(want)[0]).all()
        else:
            assert not (want & ~drawn).any()
            assert int((drawn & ~want).sum()) <= _chebyshev_mst_weight(want)


@pytest.mark.parametrize("mode", list(PolygonMode), ids=[m.value for m in PolygonMode])
@pytest.mark.parametrize(
    ("mask", "min_area_px"),
    [
        # Nothing in the mask.
        (np.zeros(LANDSCAPE_HW, dtype=bool), 0.0),
        # Only a 2x2 speck, under min area 5.
        (_rect(_blank(PORTRAIT_HW), 3, 4, 4, 5).astype(bool), 5.0),
    ],
    ids=["empty", "all_under_min_area"],
)
def test_nothing_left_gives_no_polygons(mode: PolygonMode, mask: np.ndarray, min_area_px: float) -> None:
    assert mask_to_polygons(mask, PolygonPolicy(mode=mode, min_area_px=min_area_px)) == []


@pytest.mark.parametrize(
    "convert",
    [
        lambda m: m.astype(np.uint8) * 255,  # uint8 0/255, as masks are often stored
        lambda m: m.astype(np.int32) * 7,  # any nonzero value is the object
        lambda m: np.asfortranarray(m),  # non-C-contiguous memory
        lambda m: np.pad(m, 3)[3:-3, 3:-3],  # a strided view
    ],
    ids=["uint8_255", "int32", "fortran_order", "view"],
)
def test_mask_dtypes_and_layouts_agree(convert: Callable[[np.ndarray], np.ndarray]) -> None:
    mask = _disk(_disk(_blank(PORTRAIT_HW), 45, 90, 40), 55, 80, 15, 0).astype(bool)
    expected = mask_to_polygons(mask, EXACT)
    converted = convert(mask)
    before = converted.copy()
    got = mask_to_polygons(converted, EXACT)
    assert len(got) == len(expected) == 1
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(converted, before)  # the input is not modified


def test_mask_must_be_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        mask_to_polygons(np.zeros((4, 5, 3), dtype=np.uint8), EXACT)


# ---------------------------------------------------------------------------------------------------------
# policy validation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tolerance_px": -1.0}, "tolerance_px"),  # negative tolerance
        ({"tolerance_px": float("nan")}, "tolerance_px"),  # NaN compares false with everything
        ({"tolerance_px": "1"}, "tolerance_px"),  # a string from YAML is not a number
        ({"min_area_px": -0.5}, "min_area_px"),  # negative area
        ({"min_area_px": float("inf")}, "min_area_px"),  # infinite area would drop everything
        ({"min_area_px": True}, "min_area_px"),  # bool is an int in Python, but not an area
        ({"mode": "biggest"}, "mode"),  # not one of merge, largest, split
    ],
    ids=[
        "negative_tolerance",
        "nan_tolerance",
        "string_tolerance",
        "negative_area",
        "inf_area",
        "bool_area",
        "bad_mode",
    ],
)
def test_invalid_policy_raises_config_error(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        PolygonPolicy(**kwargs)  # type: ignore[arg-type]
    message = str(raised.value)
    assert field in message
    assert repr(next(iter(kwargs.values()))) in message


def test_policy_accepts_mode_strings_and_defaults() -> None:
    assert PolygonPolicy(mode="split").mode is PolygonMode.SPLIT  # type: ignore[arg-type]
    default = PolygonPolicy()
    assert (default.mode, default.tolerance_px, default.min_area_px) == (PolygonMode.MERGE, 1.0, 0.0)
    assert PolygonPolicy(tolerance_px=0, min_area_px=0).tolerance_px == 0


# ---------------------------------------------------------------------------------------------------------
# The rasterisation facts the module relies on, and the oracle itself
# ---------------------------------------------------------------------------------------------------------


def test_fillpoly_paints_a_cut_across_background() -> None:
    """A there-and-back cut between two squares keeps both squares and paints the gap pixels in between."""
    polygon = np.array(
        [(14, 10), (14, 20), (10, 20), (10, 10), (14, 10), (30, 10), (30, 20), (40, 20), (40, 10), (30, 10)]
    )
    drawn = polygon_to_mask(polygon, (50, 30))
    expected = _rect(_rect(_rect(_blank((30, 50)), 10, 10, 14, 20), 30, 10, 40, 20), 15, 10, 29, 10).astype(bool)
    assert (drawn == expected).all()


@pytest.mark.parametrize("reverse_hole", [False, True], ids=["hole_same_orientation", "hole_opposite_orientation"])
def test_fillpoly_subtracts_a_joined_hole_either_way(reverse_hole: bool) -> None:
    """Even-odd filling: a hole ring joined by a cut is subtracted whatever its orientation."""
    outer = np.array([(0, 0), (29, 0), (29, 19), (0, 19)])
    hole = np.array([(10, 5), (20, 5), (20, 14), (10, 14)])  # ring over the object pixels around the hole
    if reverse_hole:
        hole = hole[::-1]
    polygon = np.concatenate([outer, outer[:1], hole, hole[:1]])
    drawn = polygon_to_mask(polygon, (40, 25))
    expected = _rect(_rect(_blank((25, 40)), 0, 0, 29, 19), 11, 6, 19, 13, 0).astype(bool)
    assert (drawn == expected).all()


def test_polygon_to_mask_truncates_and_uses_wh() -> None:
    """Coordinates are truncated to int32 like ultralytics' polygon2mask; the result is (height, width)."""
    polygon = np.array([(2.9, 1.9), (7.99, 1.0), (7.5, 4.2), (2.0, 4.999)])
    drawn = polygon_to_mask(polygon, (10, 6))
    assert drawn.shape == (6, 10) and drawn.dtype == bool
    assert (drawn == _rect(_blank((6, 10)), 2, 1, 7, 4).astype(bool)).all()
    assert not polygon_to_mask(np.zeros((0, 2)), (10, 6)).any()


def test_polygon_to_mask_matches_ultralytics() -> None:
    """The oracle agrees with ultralytics' own rasteriser on a merged polygon with holes and an island."""
    utils = pytest.importorskip("ultralytics.data.utils")
    mask = _disk(_disk(_disk(_blank(LANDSCAPE_HW), 100, 60, 55), 100, 60, 35, 0), 100, 60, 15).astype(bool)
    (polygon,) = mask_to_polygons(mask, SIMPLIFIED)
    theirs = utils.polygon2mask(LANDSCAPE_HW, [polygon.reshape(-1).astype(np.float32)], color=1)
    assert (polygon_to_mask(polygon, _wh(LANDSCAPE_HW)) == theirs.astype(bool)).all()


def _pasted(polygon: np.ndarray, resolution_wh: tuple[int, int]) -> np.ndarray:
    """``polygon_to_local_mask`` pasted at its origin on an empty full-size canvas."""
    width, height = resolution_wh
    full = np.zeros((height, width), dtype=bool)
    drawn = polygon_to_local_mask(polygon, resolution_wh)
    if drawn is not None:
        x0, y0, mask = drawn
        assert mask.dtype == bool and mask.ndim == 2
        assert x0 >= 0 and y0 >= 0 and x0 + mask.shape[1] <= width and y0 + mask.shape[0] <= height
        full[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
    return full


@pytest.mark.parametrize(
    ("polygon", "resolution_wh", "expected"),
    [
        # inside: the box of the truncated vertices, x 2..7, y 1..4
        ([(2.9, 1.9), (7.99, 1.0), (7.5, 4.2), (2.0, 4.999)], (10, 6), (2, 1, (4, 6))),
        # crossing the left and bottom edges: truncation toward zero (-0.5 -> 0, -3.7 -> -3), box clipped to the image
        ([(-3.7, 2.0), (5.0, -0.5), (12.0, 9.0)], (10, 6), (0, 0, (6, 10))),
        # a vertical line still paints its pixels
        ([(4.0, 1.0), (4.0, 5.0), (4.0, 3.0)], (10, 6), (4, 1, (5, 1))),
        # wholly right of the image, or no vertex: nothing to draw
        ([(10.0, 1.0), (14.0, 1.0), (12.0, 5.0)], (10, 6), None),
        (np.zeros((0, 2)), (10, 6), None),
    ],
    ids=["inside", "crossing-edges", "vertical-line", "outside", "empty"],
)
def test_polygon_to_local_mask_origin_and_shape(polygon, resolution_wh, expected) -> None:
    drawn = polygon_to_local_mask(np.array(polygon, dtype=np.float64), resolution_wh)
    assert (None if drawn is None else (drawn[0], drawn[1], drawn[2].shape)) == expected
    assert (
        _pasted(np.array(polygon, dtype=np.float64), resolution_wh) == polygon_to_mask(polygon, resolution_wh)
    ).all()


@pytest.mark.parametrize(
    "kind", ["inside", "around-the-edges", "far-outside", "integer-degenerate"], ids=lambda kind: kind
)
def test_polygon_to_local_mask_equals_the_full_canvas(kind: str) -> None:
    """Pasted at its origin, the local mask is exactly ``polygon_to_mask`` on the full (non-square) image."""
    rng = np.random.default_rng(["inside", "around-the-edges", "far-outside", "integer-degenerate"].index(kind))
    for _ in range(1500):
        resolution_wh = (int(rng.integers(1, 90)), int(rng.integers(1, 60)))
        scale = np.array(resolution_wh, dtype=np.float64)
        k = int(rng.integers(1, 10))
        if kind == "inside":
            polygon = rng.uniform(0, 1, (k, 2)) * scale
        elif kind == "around-the-edges":  # crossing and touching the sides
            polygon = rng.uniform(-0.3, 1.3, (k, 2)) * scale
            polygon[rng.uniform(size=(k, 2)) < 0.2] = 0.0
        elif kind == "far-outside":
            polygon = rng.uniform(-1.5, 1.5, (1, 2)) * scale + rng.uniform(-200, 200, (k, 2))
        else:  # repeated vertices, lines, points, vertices on the last row and column
            polygon = rng.integers(-2, max(resolution_wh) + 2, (k, 2)).astype(np.float64)
            polygon[rng.integers(0, k)] = polygon[0]
            edge = rng.uniform(size=(k, 2)) < 0.3  # on the last row or column (W - 1, H - 1) or just past it
            polygon[edge] = (np.broadcast_to(scale, (k, 2)) - rng.integers(1, 3, (k, 2)) + 1)[edge]
        assert (_pasted(polygon, resolution_wh) == polygon_to_mask(polygon, resolution_wh)).all(), (
            polygon.tolist(),
            resolution_wh,
        )


def test_polygon_to_local_mask_rejects_what_polygon_to_mask_rejects() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        polygon_to_local_mask(np.array([[0.0, 0.0], [np.nan, 1.0], [2.0, 2.0]]), (10, 6))
    with pytest.raises(ValueError, match="shape"):
        polygon_to_local_mask(np.zeros((3, 3)), (10, 6))


def test_polygons_to_mask_is_a_union() -> None:
    """Overlapping polygons are drawn one by one and OR-ed, not cancelled by a shared even-odd fill."""
    square = np.array([(0, 0), (9, 0), (9, 9), (0, 9)])
    union = polygons_to_mask([square, square + 5], (20, 16))
    assert union.shape == (16, 20)
    assert int(union.sum()) == 100 + 100 - 25


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # Identical masks.
        (_rect(_blank((4, 6)), 0, 0, 2, 1), _rect(_blank((4, 6)), 0, 0, 2, 1), 1.0),
        # Disjoint masks.
        (_rect(_blank((4, 6)), 0, 0, 1, 1), _rect(_blank((4, 6)), 4, 2, 5, 3), 0.0),
        # 2 shared pixels out of 6.
        (_rect(_blank((4, 6)), 0, 0, 3, 0), _rect(_blank((4, 6)), 2, 0, 5, 0), 2 / 6),
        # Two empty masks are the same mask.
        (_blank((4, 6)), _blank((4, 6)), 1.0),
    ],
    ids=["identical", "disjoint", "partial", "both_empty"],
)
def test_mask_iou(a: np.ndarray, b: np.ndarray, expected: float) -> None:
    assert mask_iou(a, b) == pytest.approx(expected)


def test_mask_iou_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        mask_iou(np.zeros((4, 6), bool), np.zeros((6, 4), bool))


# ---------------------------------------------------------------------------------------------------------
# Property tests on random masks
# ---------------------------------------------------------------------------------------------------------

RANDOM_HW = (40, 60)

_shape = st.tuples(
    st.sampled_from(["rect", "disk", "ring"]),
    st.integers(0, RANDOM_HW[1] - 1),  # x
    st.integers(0, RANDOM_HW[0] - 1),  # y
    st.integers(0, 20),  # width or radius
    st.integers(0, 15),  # height
    st.booleans(),  # True adds to the mask, False cuts out of it
)


@st.composite
def random_masks(draw: st.DrawFn) -> np.ndarray:
    """Unions and differences of rectangles, disks and circle outlines on a 40 x 60 canvas."""
    canvas = _blank(RANDOM_HW)
    for kind, x, y, size, height, add in draw(st.lists(_shape, min_size=1, max_size=8)):
        value = 1 if add else 0
        if kind == "rect":
            _rect(canvas, x, y, x + size, y + height, value)
        elif kind == "disk":
            _disk(canvas, x, y, size // 2, value)
        else:
            cv2.circle(canvas, (x, y), size // 2 + 1, value, thickness=1 + height % 2)
    return canvas.astype(bool)


@settings(max_examples=100, deadline=None)
@given(random_masks())
def test_property_merge_round_trip(mask: np.ndarray) -> None:
    """merge at tolerance 0: never loses a pixel; exact for one part; else only cut lines are added."""
    polygons = mask_to_polygons(mask, EXACT)
    if not mask.any():
        assert polygons == []
        return
    assert len(polygons) == 1
    _check_polygon(polygons[0], mask.shape)
    drawn = polygon_to_mask(polygons[0], _wh(mask.shape))
    assert not (mask & ~drawn).any()
    assert int((drawn & ~mask).sum()) <= _chebyshev_mst_weight(mask)
    if len(_components(mask)) == 1:
        assert mask_iou(drawn, mask) == 1.0


@settings(max_examples=100, deadline=None)
@given(random_masks(), st.sampled_from([0.0, 1.0, 2.5]))
def test_property_split_and_largest(mask: np.ndarray, tolerance_px: float) -> None:
    """split: one valid polygon per part (exact union at tolerance 0); largest: the biggest part."""
    parts = _components(mask)
    split = mask_to_polygons(mask, PolygonPolicy(mode=PolygonMode.SPLIT, tolerance_px=tolerance_px))
    largest = mask_to_polygons(mask, PolygonPolicy(mode=PolygonMode.LARGEST, tolerance_px=tolerance_px))
    assert len(split) == len(parts)
    assert len(largest) == min(1, len(parts))
    for polygon in split + largest:
        _check_polygon(polygon, mask.shape)
    if tolerance_px == 0 and parts:
        assert (polygons_to_mask(split, _wh(mask.shape)) == mask).all()
        drawn = polygon_to_mask(largest[0], _wh(mask.shape))
        assert any((drawn == part).all() for part in parts if part.sum() == parts[0].sum())

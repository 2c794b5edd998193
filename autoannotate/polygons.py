"""Binary masks to YOLO-seg polygons, and polygons back to masks.

Frames and conventions used throughout:

- A mask is an ``(H, W)`` array in image pixels; any nonzero value is the object.
- A polygon is a float64 ``(K, 2)`` array of ``x, y`` in the pixel frame of that mask, pixel-centre
  convention: the point ``(x, y)`` is the centre of pixel column ``x``, row ``y``. This is what
  ``cv2.findContours`` returns and what ``cv2.fillPoly`` consumes, so ``x`` lies in ``[0, W - 1]`` and
  ``y`` in ``[0, H - 1]``.
- ``resolution_wh`` is ``(width, height)``; array shapes are ``(height, width)``.

How ``cv2.fillPoly`` (``LINE_8``, the default that ultralytics' ``polygon2mask`` uses) rasterises a
polygon, established by experiment (cv2 5.0) and relied on below:

1. Every edge is drawn with an 8-connected Bresenham line, then the interior is filled with the even-odd
   rule (within one polygon and across the polygons of one call).
2. Hence a hole ring inside an outer ring is subtracted whatever its orientation, and an island ring
   inside a hole is filled again; a ring traversed twice cancels itself.
3. A zero-width there-and-back cut adds two identical edges, so it never changes the even-odd parity,
   but its Bresenham line is painted: free where it runs over the object, one pixel per background pixel
   it crosses.

So one polygon reproduces a mask with holes exactly when each ring is traversed once and the rings are
joined by cuts that run over the object; holes are joined that way (to their outer ring or to another hole
of the same part). Joining separate parts (``merge``) cannot avoid painting the background between them:
those cuts go between nearest boundary pixels (by Chebyshev distance, the pixel length of the line that
fillPoly paints) along a minimum spanning tree, so ``merge`` over-paints one thin line per extra part,
``gap - 1`` pixels for a gap of ``gap`` pixels. ``split`` has no such cost.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np

from autoannotate.errors import ConfigError

__all__ = [
    "PolygonMode",
    "PolygonPolicy",
    "mask_iou",
    "mask_to_polygons",
    "polygon_to_mask",
    "polygons_to_mask",
]


class PolygonMode(StrEnum):
    """How the parts of one mask become polygons."""

    MERGE = "merge"  # all parts and holes as one polygon joined by zero-width cuts
    LARGEST = "largest"  # the largest part only (its holes kept)
    SPLIT = "split"  # one polygon per part (each with its holes)


@dataclass(frozen=True)
class PolygonPolicy:
    """How masks are turned into polygons.

    Attributes:
        mode: which parts to keep and how to group them, see ``PolygonMode``.
        tolerance_px: Douglas-Peucker epsilon in pixels applied to each ring (outer or hole) separately;
            0 keeps the exact contour (only collinear points are dropped, which is lossless).
        min_area_px: parts (8-connected) with fewer pixels than this are dropped, and holes (4-connected
            background enclosed by a part) enclosing fewer pixels than this, islands inside them included,
            are filled. A part's area is counted after its small holes are filled. 0 keeps everything.
    """

    mode: PolygonMode = PolygonMode.MERGE
    tolerance_px: float = 1.0
    min_area_px: float = 0.0

    def __post_init__(self) -> None:
        try:
            mode = PolygonMode(self.mode)
        except ValueError:
            expected = ", ".join(m.value for m in PolygonMode)
            raise ConfigError(f"polygon mode must be one of {expected}; got {self.mode!r}") from None
        # The dataclass is frozen; normalising a plain string to the enum is the one write it allows itself.
        object.__setattr__(self, "mode", mode)
        _check_non_negative("tolerance_px", self.tolerance_px, "pixels; 0 keeps the exact contour")
        _check_non_negative("min_area_px", self.min_area_px, "pixels; 0 keeps every part and hole")


def _check_non_negative(field: str, value: object, meaning: str) -> None:
    ok = (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
        and float(value) >= 0
    )
    if not ok:
        raise ConfigError(f"polygon {field} must be a finite number >= 0 ({meaning}); got {value!r}")


def mask_to_polygons(mask: np.ndarray, policy: PolygonPolicy) -> list[np.ndarray]:
    """Turn one instance mask into polygons according to ``policy``.

    Args:
        mask: ``(H, W)`` bool or integer array in image pixels; nonzero is the object.
        policy: mode, simplification tolerance and minimum area.

    Returns:
        A list of float64 ``(K, 2)`` arrays of ``x, y`` pixel centres in the mask's pixel frame, each with
        ``K >= 3`` (degenerate parts repeat points) and inside ``[0, W - 1] x [0, H - 1]``. ``merge`` and
        ``largest`` give ``[]`` or one polygon; ``split`` gives one polygon per 8-connected part, largest
        first (ties in raster order). Holes are joined into their polygon by zero-width cuts, so at
        tolerance 0 ``polygon_to_mask`` of each polygon gives back its part(s) with their holes exactly,
        except that ``merge`` also paints the thin cut lines across the background between parts. An empty
        mask, or one whose parts are all under ``min_area_px``, gives ``[]``.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D (H, W) array; got shape {mask.shape}")
    if mask.dtype == np.uint8:
        foreground = mask
    elif mask.dtype == np.bool_:
        foreground = mask.view(np.uint8)  # no copy: bool is one byte of 0 or 1
    else:
        foreground = (mask != 0).view(np.uint8)
    x0, y0, width, height = cv2.boundingRect(foreground)
    if width == 0 or height == 0:
        return []
    # Work on the object's bounding box inside a 1-pixel background frame: cost follows the object, not
    # the image, and no contour ever touches the array edge.
    work = cv2.copyMakeBorder(foreground[y0 : y0 + height, x0 : x0 + width], 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    offset_xy = np.array([x0 - 1, y0 - 1], dtype=np.int64)
    parts = _find_parts(work, float(policy.min_area_px))
    if not parts:
        return []
    if policy.mode is PolygonMode.MERGE:
        groups = [parts]
    elif policy.mode is PolygonMode.LARGEST:
        groups = [parts[:1]]
    else:
        groups = [[part] for part in parts]
    tolerance = float(policy.tolerance_px)
    return [(_join_parts(group, tolerance) + offset_xy).astype(np.float64) for group in groups]


@dataclass(frozen=True)
class _Part:
    """One 8-connected part: ``rings[0]`` is its outer boundary, the rest its holes; ``area_px`` its pixels.

    Rings are int64 ``(n, 2)`` arrays of x, y pixel centres of every boundary pixel (``CHAIN_APPROX_NONE``,
    so that cuts can attach anywhere), in the padded work frame.
    """

    rings: list[np.ndarray]
    area_px: int


def _find_parts(work: np.ndarray, min_area: float) -> list[_Part]:
    """Parts of a padded uint8 mask after the min-area policy, largest first.

    Areas come from the contours alone (no pass over the pixels): by Pick's theorem a ring with shoelace
    area ``A`` and ``S`` unit steps encloses ``A + S/2 + 1`` pixels counting its own (outer boundary) or
    ``A - S/2 + 1`` pixels strictly inside (hole boundary, which runs over the object's pixels). Both hold
    for the self-touching rings of one-pixel-wide parts, as spikes add steps but no area. A hole's area
    counts any islands inside it; filling the hole absorbs them.
    """
    contours, hierarchy = cv2.findContours(work, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    links = hierarchy[0]  # (n, 4): next sibling, previous sibling, first child, parent

    def children(index: int) -> list[int]:
        found = []
        child = int(links[index][2])
        while child != -1:
            found.append(child)
            child = int(links[child][0])
        return found

    # All rings at once: shoelace area (doubled, exact in int64) and unit-step count per ring.
    rings = [c.reshape(-1, 2).astype(np.int64) for c in contours]
    sizes = np.array([len(ring) for ring in rings])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    points = np.concatenate(rings)
    after = np.roll(points, -1, axis=0)
    after[starts + sizes - 1] = points[starts]  # each ring closes on its own first point
    twice_area = np.abs(np.add.reduceat(points[:, 0] * after[:, 1] - after[:, 0] * points[:, 1], starts))
    steps = np.add.reduceat((points != after).any(axis=1).astype(np.int64), starts)
    outer_area = ((twice_area + steps) // 2 + 1).tolist()
    hole_area = ((twice_area - steps) // 2 + 1).tolist()

    parts: list[_Part] = []
    pending = [i for i in range(len(links)) if links[i][3] == -1]
    while pending:
        outer = pending.pop()
        holes = children(outer)
        kept = [h for h in holes if hole_area[h] >= min_area]
        area = outer_area[outer] - sum(hole_area[h] for h in kept)
        if area >= min_area:
            parts.append(_Part([rings[outer]] + [rings[h] for h in kept], area))
        else:
            # A dropped part takes its holes with it, so islands in every one of them are considered.
            kept = holes
        # Islands in a filled hole are absorbed by the fill; islands in an open hole are parts of their own.
        for h in kept:
            pending.extend(children(h))
    # Ties go in raster order of the part's first pixel (where findContours starts its outer ring).
    return sorted(parts, key=lambda part: (-part.area_px, int(part.rings[0][0, 1]), int(part.rings[0][0, 0])))


def _join_parts(parts: list[_Part], tolerance: float) -> np.ndarray:
    """Join parts and their holes into one int64 ``(K, 2)`` polygon, ``K >= 3``, in the work frame."""
    rings = [ring for part in parts for ring in part.rings]
    part_of = np.repeat(np.arange(len(parts)), [len(part.rings) for part in parts])
    edges = _cut_tree(rings, part_of) if len(rings) > 1 else []

    forced: list[set[int]] = [set() for _ in rings]
    for ra, ia, rb, ib in edges:
        forced[ra].add(ia)
        forced[rb].add(ib)
    simplified: list[np.ndarray] = []
    position: list[dict[int, int]] = []
    for ring, keep in zip(rings, forced, strict=True):
        points, where = _simplify_ring(ring, sorted(keep), tolerance)
        simplified.append(points)
        position.append(where)

    # The cuts form a tree over the rings, but a part may be reached through one of its holes (an island
    # joins the hole it sits in), so orient the tree away from the root ring before walking it.
    neighbours: list[list[tuple[int, int, int]]] = [[] for _ in rings]
    for ra, ia, rb, ib in edges:
        neighbours[ra].append((position[ra][ia], rb, position[rb][ib]))
        neighbours[rb].append((position[rb][ib], ra, position[ra][ia]))
    children: list[list[tuple[int, int, int]]] = [[] for _ in rings]
    reached = np.zeros(len(rings), dtype=bool)
    reached[0] = True
    frontier = [0]
    while frontier:
        ring_index = frontier.pop()
        for cut in neighbours[ring_index]:
            if not reached[cut[1]]:
                reached[cut[1]] = True
                children[ring_index].append(cut)
                frontier.append(cut[1])
    polygon = _traverse(simplified, children, root=0)
    if len(polygon) < 3:
        # A single-pixel speck or a 2-point line: repeating a point keeps what fillPoly paints.
        polygon = np.concatenate([polygon, np.repeat(polygon[-1:], 3 - len(polygon), axis=0)])
    return polygon


def _cut_tree(rings: list[np.ndarray], part_of: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Choose the cuts that join all rings into one tree.

    Args:
        rings: int64 ``(n_i, 2)`` boundary pixel centres (``CHAIN_APPROX_NONE``), at least two rings.
        part_of: ``(len(rings),)`` index of the part each ring belongs to.

    Returns:
        ``len(rings) - 1`` cuts ``(ring_a, index_a, ring_b, index_b)`` from point ``index_a`` of ``ring_a``
        to point ``index_b`` of ``ring_b``.

    Candidate cuts come from a Voronoi diagram of the boundary pixels (one labelled distance transform
    over the rings' bounding box, so the cost is linear in its area and does not grow with the number of
    rings): wherever two neighbouring pixels are nearest to different rings, their two nearest boundary
    pixels make a candidate, and the shortest candidate per pair of rings is kept. A minimum spanning tree
    (Kruskal) takes every cut within a part before any cut between parts. Within a part, rings are only
    Voronoi neighbours across the object, and a cut between nearest boundary pixels then runs over the
    object and paints nothing new (checked exhaustively by round trips on random masks). Between parts the
    cut must cross background; it is made shortest by Chebyshev distance, the pixel length of the line
    fillPoly paints.
    """
    sizes = np.array([len(ring) for ring in rings])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    points = np.concatenate(rings)
    ring_of = np.repeat(np.arange(len(rings)), sizes)
    # The Voronoi cells restricted to the rings' bounding box still tile a connected region, so their
    # adjacency graph stays connected; for one part of many (split, largest) this keeps the work small.
    low_xy = points.min(axis=0)
    points = points - low_xy
    height, width = int(points[:, 1].max()) + 1, int(points[:, 0].max()) + 1

    sites = np.ones((height, width), dtype=np.uint8)
    sites[points[:, 1], points[:, 0]] = 0
    _, labels = cv2.distanceTransformWithLabels(sites, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    point_of_label = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    point_of_label[labels[points[:, 1], points[:, 0]]] = np.arange(len(points))
    # Only pixels on a Voronoi boundary between rings matter; find them on the small-integer ring map
    # before gathering anything else, which keeps the full-array work to two compares.
    ring_map = ring_of.astype(np.int32)[point_of_label][labels]
    first: list[np.ndarray] = []
    second: list[np.ndarray] = []
    flat_labels = labels.ravel()
    # Neighbours to the right, then below. Pixel i of the (h, w - 1) comparison is flat pixel
    # i + i // (w - 1) of the (h, w) label array; pixel i of the (h - 1, w) one is flat pixel i.
    horizontal = ring_map[:, :-1] != ring_map[:, 1:]
    vertical = ring_map[:-1, :] != ring_map[1:, :]
    for neq, step in ((horizontal, 1), (vertical, width)):
        here = np.flatnonzero(neq)
        if neq is horizontal and len(here):
            here += here // (width - 1)
        there = here + step
        first.append(point_of_label[flat_labels[here]])
        second.append(point_of_label[flat_labels[there]])
    # A pixel on two rings (a one-pixel wall between a hole and the outside, or between two holes) gets a
    # single label above, so pair such rings directly, with a cut of length zero.
    pixel_id = points[:, 1] * width + points[:, 0]
    order = np.argsort(pixel_id, kind="stable")
    shared = np.flatnonzero(pixel_id[order][1:] == pixel_id[order][:-1])
    first.append(order[shared])
    second.append(order[shared + 1])
    a, b = np.concatenate(first), np.concatenate(second)
    differ = ring_of[a] != ring_of[b]
    a, b = a[differ], b[differ]

    delta = np.abs(points[a] - points[b])
    scale = height**2 + width**2 + 1
    length = delta.max(axis=1) * scale + (delta * delta).sum(axis=1)  # (Chebyshev, squared Euclidean)
    across = part_of[ring_of[a]] != part_of[ring_of[b]]
    cost = across * (max(height, width) + 1) * scale + length  # every cut within a part before any across

    # Shortest candidate per unordered pair of rings.
    low, high = np.minimum(ring_of[a], ring_of[b]), np.maximum(ring_of[a], ring_of[b])
    pair = low * len(rings) + high
    order = np.lexsort((cost, pair))
    best = order[np.r_[True, pair[order][1:] != pair[order][:-1]]]
    best = best[np.argsort(cost[best], kind="stable")]

    root = list(range(len(rings)))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    edges: list[tuple[int, int, int, int]] = []
    # Plain Python ints in the loop: indexing numpy arrays element by element costs more than the loop itself.
    ring_a, ring_b = ring_of[a[best]].tolist(), ring_of[b[best]].tolist()
    index_a, index_b = (a[best] - starts[ring_of[a[best]]]).tolist(), (b[best] - starts[ring_of[b[best]]]).tolist()
    is_across = across[best].tolist()
    for ri, rj, ia, ib, crosses in zip(ring_a, ring_b, index_a, index_b, is_across, strict=True):
        gi, gj = find(ri), find(rj)
        if gi == gj:
            continue
        root[gi] = gj
        if crosses:
            ia, ib = _shorten_cut(rings[ri], ia, rings[rj], ib)
        edges.append((ri, ia, rj, ib))
        if len(edges) == len(rings) - 1:
            break
    return edges


def _shorten_cut(ring_a: np.ndarray, index_a: int, ring_b: np.ndarray, index_b: int) -> tuple[int, int]:
    """Slide a cut between two parts along both rings to the pair nearest by Chebyshev distance.

    The Voronoi candidates are nearest in Euclidean distance, but fillPoly paints a line's Chebyshev
    length: a diagonal cut can be longer yet paint fewer pixels. The better pair lies within about the
    cut's length along each ring, so only that window is searched (capped, see below). Only cuts across background are
    shortened; cuts inside a part are left where the object is known to lie under them.
    """
    # Capped: past a few dozen pixels of gap, the pixel or two still to gain is not worth the quadratic search.
    reach = min(int(np.abs(ring_a[index_a] - ring_b[index_b]).max()) + 1, 48)
    window = np.arange(-reach, reach + 1)
    near_a = np.unique((index_a + window) % len(ring_a))
    near_b = np.unique((index_b + window) % len(ring_b))
    delta = np.abs(ring_a[near_a][:, None, :] - ring_b[near_b][None, :, :])
    # Lexicographic (Chebyshev, squared Euclidean): fewest painted pixels, then the straightest line.
    key = delta.max(axis=2) * (int((delta * delta).sum(axis=2).max()) + 1) + (delta * delta).sum(axis=2)
    row, col = np.unravel_index(int(key.argmin()), key.shape)
    return int(near_a[row]), int(near_b[col])


def _simplify_ring(ring: np.ndarray, forced: list[int], tolerance: float) -> tuple[np.ndarray, dict[int, int]]:
    """Simplify one closed ring, keeping the points where cuts attach.

    Args:
        ring: int64 ``(n, 2)`` boundary pixel centres (``CHAIN_APPROX_NONE``).
        forced: sorted indices into ``ring`` that must stay vertices (cut ends), so cuts stay exact.
        tolerance: Douglas-Peucker epsilon in pixels; 0 drops only collinear points (lossless).

    Returns:
        The simplified int64 ``(m, 2)`` ring and a map from each forced index to its position in it.
    """
    if tolerance > 0:
        if not forced:
            approx = cv2.approxPolyDP(ring.astype(np.int32), tolerance, closed=True).reshape(-1, 2)
            simplified, where = approx.astype(np.int64), {}
        else:
            n = len(ring)
            order = (forced[0] + np.arange(n + 1)) % n  # closed: ends where it starts
            cuts = [(i - forced[0]) % n for i in forced] + [n]
            pieces = [_simplify_chain(ring[order[a : b + 1]], tolerance)[:-1] for a, b in itertools.pairwise(cuts)]
            starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])
            simplified = np.concatenate(pieces)
            where = {i: int(s) for i, s in zip(forced, starts, strict=True)}
        # Below 3 points the ring has become a segment or a point. That is within tolerance of a ring that
        # encloses no area (a one-pixel-wide line, whose ring runs there and back); a ring that does enclose
        # pixels (a small blob) is kept exact instead, so its pixels are not lost.
        if len(simplified) >= 3:
            return simplified, where
        after = np.roll(ring, -1, axis=0)
        if (ring[:, 0] * after[:, 1] - after[:, 0] * ring[:, 1]).sum() == 0:  # encloses no area
            return simplified, where
    # A point is a corner when the step arriving at it differs from the step leaving it; this is what
    # CHAIN_APPROX_SIMPLE keeps, and the straight 8-connected runs it removes are redrawn exactly.
    arriving = ring - np.roll(ring, 1, axis=0)
    leaving = np.roll(ring, -1, axis=0) - ring
    keep = (arriving != leaving).any(axis=1)
    keep[forced] = True
    if not keep.any():
        keep[0] = True  # a single-pixel ring
    position = np.cumsum(keep) - 1
    return ring[keep], {i: int(position[i]) for i in forced}


def _simplify_chain(chain: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker of an open int64 ``(n, 2)`` chain, both end points kept."""
    if len(chain) < 3:
        return chain
    if chain[0, 0] == chain[-1, 0] and chain[0, 1] == chain[-1, 1]:  # scalar compares: called per piece of ring
        # approxPolyDP measures distance to the chord, which is undefined when the ends coincide (a ring
        # with one cut): split at the farthest point first, as Douglas-Peucker does for closed curves.
        far = int(np.abs(chain - chain[0]).sum(axis=1).argmax())
        if far == 0:
            return chain[[0, -1]]
        return np.concatenate(
            [_simplify_chain(chain[: far + 1], tolerance)[:-1], _simplify_chain(chain[far:], tolerance)]
        )
    approx = cv2.approxPolyDP(chain.astype(np.int32), tolerance, closed=False).reshape(-1, 2)
    return approx.astype(np.int64)


def _traverse(rings: list[np.ndarray], children: list[list[tuple[int, int, int]]], root: int) -> np.ndarray:
    """Walk the ring tree into one point sequence: each ring once, each cut there and back.

    Args:
        rings: int64 ``(m_i, 2)`` rings.
        children: per ring, ``(position_in_ring, child_ring, position_in_child)`` cuts.
        root: ring to start from, at its position 0.

    Returns:
        int64 ``(K, 2)``: a ring entered at position ``s`` is emitted from ``s`` round to ``s`` again,
        detouring into each child when passing its attach point and re-emitting that point on return.
    """
    pieces: list[np.ndarray] = []
    # Iterative depth-first walk; frames are [ring, entry position, sorted cuts, next cut, cursor offset].
    stack: list[list] = [[root, 0, _sorted_cuts(children[root], 0, len(rings[root])), 0, 0]]
    while stack:
        frame = stack[-1]
        ring_index, entry, cuts, next_cut, cursor = frame
        ring = rings[ring_index]
        size = len(ring)
        if next_cut < len(cuts):
            offset, child, child_entry = cuts[next_cut]
            pieces.append(ring[(entry + np.arange(cursor, offset + 1)) % size])
            frame[3], frame[4] = next_cut + 1, offset
            child_cuts = _sorted_cuts(children[child], child_entry, len(rings[child]))
            stack.append([child, child_entry, child_cuts, 0, 0])
        else:
            pieces.append(ring[(entry + np.arange(cursor, size + 1)) % size])
            stack.pop()
    # The walk ends back at the root's first point; the polygon closes itself, so drop the repeat.
    return np.concatenate(pieces)[:-1]


def _sorted_cuts(cuts: list[tuple[int, int, int]], entry: int, size: int) -> list[tuple[int, int, int]]:
    """Cuts of a ring entered at ``entry``, as (offset from entry, child, child position), in walk order."""
    return sorted(((pos - entry) % size, child, child_pos) for pos, child, child_pos in cuts)


def polygon_to_mask(polygon_xy_px: np.ndarray, resolution_wh: tuple[int, int]) -> np.ndarray:
    """Rasterise one polygon as ultralytics does when it trains on a label.

    Args:
        polygon_xy_px: ``(K, 2)`` x, y pixel centres in the frame of an image of ``resolution_wh``.
        resolution_wh: ``(width, height)`` of the mask to draw.

    Returns:
        ``(height, width)`` bool mask. Coordinates are cast to int32 (truncation toward zero, like
        ultralytics' ``polygon2mask``) and drawn with ``cv2.fillPoly`` (``LINE_8``, even-odd fill).
    """
    width, height = resolution_wh
    canvas = np.zeros((height, width), dtype=np.uint8)
    points = np.asarray(polygon_xy_px)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"polygon_xy_px must have shape (K, 2); got {points.shape}")
    if len(points) == 0:
        return canvas.astype(bool)
    if not np.isfinite(points).all():
        raise ValueError("polygon_xy_px contains non-finite coordinates")
    cv2.fillPoly(canvas, [points.astype(np.int32).reshape(-1, 1, 2)], color=1)
    return canvas.astype(bool)


def polygons_to_mask(polygons_xy_px: list[np.ndarray], resolution_wh: tuple[int, int]) -> np.ndarray:
    """Union of ``polygon_to_mask`` over polygons, each drawn on its own.

    One ``fillPoly`` call with several polygons would apply even-odd across them and cut overlaps out;
    ultralytics draws each label line (instance) separately, so this does too.

    Returns:
        ``(height, width)`` bool mask for ``resolution_wh = (width, height)``.
    """
    width, height = resolution_wh
    union = np.zeros((height, width), dtype=bool)
    for polygon in polygons_xy_px:
        union |= polygon_to_mask(polygon, resolution_wh)
    return union


def mask_iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Intersection over union of two same-shape ``(H, W)`` masks (nonzero is the object).

    Two empty masks are identical, so their IoU is 1.0.
    """
    if mask_a.shape != mask_b.shape:
        raise ValueError(f"masks differ in shape: {mask_a.shape} vs {mask_b.shape}")
    a, b = mask_a != 0, mask_b != 0
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union

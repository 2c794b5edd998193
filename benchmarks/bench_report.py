"""``autoannotate report``: how long writing the page takes, how big it is, and how fast headless Chromium opens it.

    python benchmarks/bench_report.py                     # 1,000 images, gallery of 1,000 (the default limit)
    python benchmarks/bench_report.py --images 10000      # counts and plots over 10,000, gallery still 1,000

The output dir is synthetic, written to a temporary dir (removed at the end unless ``--keep``): N JPEG scenes of
640x480 with texture (so thumbnails compress like photos, not like flat gradients), 3-6 polygons each (60-240 vertices,
as SAM's outlines have), ten classes, random ``sam_iou``/``fill_iou``/``det_conf``, and the manifest and
``instances.jsonl`` that ``autoannotate run`` writes, so ``open_run`` reads it as a run's.

Printed: ``open_run`` and ``write_report`` seconds, the page's size (and how much of it is thumbnails), and, in the
system Chromium through playwright (median of ``--repeats`` fresh pages): navigation start to DOMContentLoaded and to
the load event, to the first gallery page in the DOM (the page's ``gallery-rendered`` mark) and to its thumbnails
decoded (``gallery-decoded``), and what re-filtering the whole gallery by a class costs. Without chromium or playwright
the browser part is skipped with a note.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml
from common import cpu_model

from autoannotate.review.report import write_report
from autoannotate.review.run_view import open_run

CLASS_NAMES = ("person", "car", "bicycle", "dog", "cat", "bus", "truck", "chair", "bottle", "traffic light")
SCENE_WH = (640, 480)


def scene_bgr(rng: np.random.Generator) -> np.ndarray:
    """A ``(480, 640, 3)`` uint8 BGR scene: a gradient, noise and shapes (JPEG sizes near a photo's)."""
    w, h = SCENE_WH
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, int(rng.integers(40, 200)))], -1)
    image = np.clip(base + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(4, 9))):
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(image, center, int(rng.integers(10, 120)), color, -1)
    return image


def blob_polygon_norm(rng: np.random.Generator) -> np.ndarray:
    """A star-shaped outline of 60-240 vertices, ``(K, 2)`` normalised to [0, 1]."""
    vertices = int(rng.integers(60, 241))
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    radius = rng.uniform(0.05, 0.25) * (1 + 0.25 * np.sin(angles * rng.integers(2, 7)) + rng.normal(0, 0.03, vertices))
    center = rng.uniform(0.2, 0.8, 2)
    return np.clip(np.stack([center[0] + radius * np.cos(angles), center[1] + radius * np.sin(angles)], 1), 0, 1)


def write_output_dir(root: Path, images: int, seed: int = 0) -> int:
    """A run's output dir with ``images`` labelled images; returns the number of instances."""
    rng = np.random.default_rng(seed)
    labels: dict[str, dict] = {}
    rows: list[str] = []
    for index in range(images):
        rel = f"batch{index // 500:03d}/img{index:05d}.jpg"
        image_path = root / "images" / rel
        image_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_path), scene_bgr(rng), [cv2.IMWRITE_JPEG_QUALITY, 90])
        lines = []
        key = f"labels/{rel[:-4]}.txt"
        for number in range(1, int(rng.integers(3, 7)) + 1):
            class_id = int(rng.integers(0, len(CLASS_NAMES)))
            coords = " ".join(f"{v:.6f}" for v in blob_polygon_norm(rng).ravel())
            lines.append(f"{class_id} {coords}\n")
            figures = {
                "det_conf": round(float(rng.uniform(0.25, 1.0)), 6),
                "sam_iou": round(float(rng.beta(8, 2)), 6),
                "fill_iou": round(float(rng.beta(12, 1.5)), 6),
                "stability": round(float(rng.uniform(0.5, 1.0)), 6),
            }
            row = {"image": str(image_path), "label": key, "line": number, "lines": 1, "class_id": class_id}
            rows.append(json.dumps({**row, **figures, "dropped": False, "class_name": CLASS_NAMES[class_id]}) + "\n")
        text = "".join(lines)
        label_path = root / key
        label_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.write_text(text, encoding="utf-8")
        labels[key] = {
            "image": str(image_path),
            "status": "ok",
            "instances": len(lines),
            "fingerprint": "0" * 16,
            "image_size": image_path.stat().st_size,
            "image_mtime_ns": image_path.stat().st_mtime_ns,
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        }
    names = dict(enumerate(CLASS_NAMES))
    (root / "data.yaml").write_text(
        yaml.safe_dump({"path": str(root), "train": "images", "val": "images", "names": names}), encoding="utf-8"
    )
    manifest = {
        "tool": "autoannotate",
        "version": "bench",
        "state": "complete",
        "settings": {"det_model": "yolo11x.pt", "sam_model": "mobile_sam.pt", "conf": 0.25},
        "fingerprint": "0" * 16,
        "counts": {"images": images, "ok": images, "instances": len(rows)},
        "files": {},
        "labels": labels,
    }
    (root / "autoannotate.json").write_text(json.dumps(manifest), encoding="utf-8")
    (root / "instances.jsonl").write_text("".join(rows), encoding="utf-8")
    return len(rows)


def browser_timings(page_path: Path, repeats: int) -> dict[str, float] | None:
    """Median milliseconds from navigation start (see the module docstring), or None without a browser."""
    executable = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("browser: skipped (pip install playwright)")
        return None
    if executable is None:
        print("browser: skipped (no chromium on PATH: apt-get install chromium)")
        return None
    samples: dict[str, list[float]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        try:
            print(f"browser: chromium {browser.version} (headless), {repeats} fresh pages")
            for _ in range(repeats):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(page_path.as_uri(), wait_until="load")
                page.wait_for_function("performance.getEntriesByName('gallery-decoded').length > 0", timeout=120_000)
                figures = page.evaluate(
                    """() => {
                        const nav = performance.getEntriesByType("navigation")[0];
                        const mark = (name) => performance.getEntriesByName(name)[0].startTime;
                        const select = document.getElementById("filter-class");
                        const started = performance.now();
                        select.value = "0";
                        select.dispatchEvent(new Event("change"));
                        const filtered = performance.now() - started;
                        return {dom_content_loaded: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
                                first_page_in_dom: mark("gallery-rendered"),
                                first_page_decoded: mark("gallery-decoded"), filter_by_class: filtered};
                    }"""
                )
                for name, value in figures.items():
                    samples.setdefault(name, []).append(float(value))
                page.close()
        finally:
            browser.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="images in the synthetic output dir")
    parser.add_argument("--gallery", type=int, default=1000, help="gallery limit (write_report's gallery_limit)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh browser pages to open (median reported)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary output dir (its path is printed)")
    args = parser.parse_args()
    print(
        f"cpu: {cpu_model()}, {os.cpu_count()} logical cores; python {sys.version.split()[0]}, opencv {cv2.__version__}"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        out = work / "out"
        started = time.perf_counter()
        instances = write_output_dir(out, args.images)
        print(
            f"synthetic output dir: {args.images} images, {instances} instances ({time.perf_counter() - started:.1f} s)"
        )

        started = time.perf_counter()
        view = open_run(out)
        open_s = time.perf_counter() - started
        stats = write_report(view, out / "report.html", gallery_limit=args.gallery)
        page = (out / "report.html").read_text(encoding="utf-8")
        thumbs = sum(len(part.split('"', 1)[0]) for part in page.split('"data:image/jpeg;base64,')[1:])
        print(f"open_run: {open_s:.2f} s")
        print(
            f"write_report: {stats.seconds:.2f} s ({stats.gallery_images} thumbnails, "
            f"{stats.seconds / max(stats.gallery_images, 1) * 1000:.1f} ms each incl. counts and plots)"
        )
        print(
            f"report.html: {stats.bytes_written / 1e6:.2f} MB, of which thumbnails {thumbs / 1e6:.2f} MB "
            f"({thumbs / max(stats.gallery_images, 1) / 1e3:.1f} KB each, base64)"
        )
        timings = browser_timings(out / "report.html", args.repeats)
        if timings is not None:
            for name, value in timings.items():
                label = "re-filter all tiles by a class" if name == "filter_by_class" else f"navigation -> {name}"
                print(f"  {label}: {value:.0f} ms")
        if args.keep:
            print(f"kept: {out}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

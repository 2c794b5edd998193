"""``autoannotate report``: the worst-first order and its score, the gallery data, counts, escaping, never
overwriting a foreign file, and the page in a real headless Chromium (no errors, no request, filters work).

The browser tests need Debian's ``chromium`` and the Python ``playwright`` package (its bundled browsers are not
used): they skip where either is missing, and fail instead when ``CI=true`` (CI installs both).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from helpers import fake_run_dir
from typer.testing import CliRunner

from autoannotate.cli import report as report_cli
from autoannotate.errors import ConfigError, ImageError, OutputError
from autoannotate.inputs.decode import read_image_bgr
from autoannotate.review.report import (
    build_content,
    instance_score,
    is_report,
    worst_first,
    write_report,
)
from autoannotate.review.run_view import ViewInstance, open_run

HOSTILE_CLASS = "<!--</script><img src=x onerror=alert(1)>"
HOSTILE_REL = "evil<img src=x onerror=alert(2)>&'\".png"
TRIANGLE = "0.1 0.1 0.5 0.1 0.5 0.5"


def _line(class_id: int, polygon: str = TRIANGLE) -> str:
    return f"{class_id} {polygon}\n"


def _gallery_json(page: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="gallery-data">(.*?)</script>', page, re.S)
    assert found is not None
    return json.loads(found.group(1))


def _scored_run(root: Path) -> Path:
    """Five images whose order is known: b (0.2) < a (0.4) < e (0.7) < c, d (no score: sorted by path)."""
    labels = {
        "a.png": _line(0) + _line(1),  # scores 0.9 and 0.4: the image's is 0.4
        "b.png": _line(1),  # sam_iou missing, fill_iou 0.2
        "c.png": _line(0),  # a person's line (edited below): no figures
        "d.png": "",  # a negative: no instance
        "e.png": _line(0),  # 0.7
    }
    figures = {
        "a.png": [{"line": 1, "sam_iou": 0.9, "fill_iou": 0.95}, {"line": 2, "sam_iou": 0.4, "fill_iou": 0.8}],
        "b.png": [{"line": 1, "sam_iou": None, "fill_iou": 0.2}],
        "e.png": [{"line": 1, "sam_iou": 0.7, "fill_iou": 0.9}],
    }
    fake_run_dir(root, labels, {0: "person", 1: "car"}, sizes_wh={"a.png": (320, 200)}, figures=figures)
    (root / "labels" / "c.txt").write_text(_line(0, "0.2 0.2 0.6 0.2 0.6 0.7"), encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("figures", "expected"),
    [
        ({"sam_iou": 0.8, "fill_iou": 0.6}, 0.6),  # the lower of the two
        ({"sam_iou": 0.3, "fill_iou": 0.9}, 0.3),
        ({"sam_iou": None, "fill_iou": 0.7}, 0.7),  # --sam-model none: fill_iou alone
        ({"fill_iou": 0.5}, 0.5),  # absent counts as missing
        ({"sam_iou": math.nan, "fill_iou": 0.4}, 0.4),  # a non-finite figure is ignored
        ({"sam_iou": -0.2, "fill_iou": 0.9}, -0.2),  # a random-weight SAM predicts negative IoUs: kept, sorts first
        ({"sam_iou": True, "fill_iou": None}, None),  # a boolean is not a figure
        ({"det_conf": 0.9}, None),  # the detector's confidence is not part of the score
        (None, None),  # a line a person wrote or changed
    ],
)
def test_instance_score(figures: dict[str, Any] | None, expected: float | None):
    instance = ViewInstance(1, 0, np.zeros((3, 2)), figures)
    assert instance_score(instance) == expected


def test_worst_first_orders_by_the_worst_instance_then_unscored_by_path(tmp_path: Path):
    view = open_run(_scored_run(tmp_path / "out"))
    order = [image.image_rel.name for image in worst_first(view.images)]
    assert order == ["b.png", "a.png", "e.png", "c.png", "d.png"]

    content = build_content(view)
    assert [(t.image_rel, t.score) for t in content.gallery] == [
        ("images/b.png", 0.2),
        ("images/a.png", 0.4),
        ("images/e.png", 0.7),
        ("images/c.png", None),
        ("images/d.png", None),
    ]


def test_gallery_data_holds_classes_scores_and_polygons_in_thumbnail_pixels(tmp_path: Path):
    out = _scored_run(tmp_path / "out")
    write_report(open_run(out), out / "report.html")
    data = _gallery_json((out / "report.html").read_text(encoding="utf-8"))
    by_path = {image["p"]: image for image in data["images"]}
    assert [image["p"] for image in data["images"]][:3] == ["images/b.png", "images/a.png", "images/e.png"]
    a = by_path["images/a.png"]  # 320x200 (non-square) -> 256x160 thumbnail
    assert (a["W"], a["H"], a["w"], a["h"]) == (320, 200, 256, 160)
    assert [(n[0], n[1]) for n in a["n"]] == [(0, 0.9), (1, 0.4)]  # what the class and score filters read
    # the triangle 0.1 0.1 0.5 0.1 0.5 0.5 in thumbnail pixels (x * 256, y * 160)
    assert a["n"][0][2] == [26, 16, 128, 16, 128, 80]
    assert a["t"].startswith("data:image/jpeg;base64,") and a["e"] is None
    assert (by_path["images/c.png"]["v"], by_path["images/c.png"]["n"][0][1]) == ("edited", None)
    assert by_path["images/d.png"]["n"] == []
    assert data["classes"] == {"0": {"name": "person", "color": "#ff3838"}, "1": {"name": "car", "color": "#ff9d97"}}


def test_gallery_is_capped_at_the_worst_images_while_counts_and_plots_use_all(tmp_path: Path):
    out = _scored_run(tmp_path / "out")
    stats = write_report(open_run(out), out / "report.html", gallery_limit=2)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert (stats.images, stats.instances, stats.gallery_images) == (5, 5, 2)
    assert stats.bytes_written == (out / "report.html").stat().st_size
    assert [image["p"] for image in _gallery_json(page)["images"]] == ["images/b.png", "images/a.png"]
    assert "worst 2 of 5 images shown; all instances are in instances.jsonl" in page
    assert page.count("data:image/jpeg;base64,") == 2  # thumbnails only for the gallery
    # sam_iou over all images: a's two lines and e's; b's line lacks it, c's is a person's
    assert "n = 3 of 5 instances" in page
    assert "1 written by autoannotate without it" in page and "1 lines a person wrote or changed" in page


def test_histograms_say_when_a_figure_is_missing(tmp_path: Path):
    # a --sam-model none run: no sam_iou anywhere, fill_iou and det_conf on every line
    figures = {f"im{i}.png": [{"line": 1, "sam_iou": None, "fill_iou": 0.1 * i}] for i in range(3)}
    out = fake_run_dir(tmp_path / "out", {f"im{i}.png": _line(0) for i in range(3)}, {0: "person"}, figures=figures)
    content = build_content(open_run(out))
    sam, fill, det = content.histograms
    assert (sam.figure, sam.values, sam.missing_auto, sam.missing_person) == ("sam_iou", 0, 3, 0)
    assert (fill.values, sum(fill.counts[:2]), fill.counts[2], fill.counts[4]) == (3, 1, 1, 1)  # 0.0, 0.1, 0.2
    assert (det.values, det.counts[10]) == (3, 3)  # 0.5 each
    write_report(open_run(out), out / "report.html")
    page = (out / "report.html").read_text(encoding="utf-8")
    sam_figure = page[page.index('<figure class="plot" id="plot-sam_iou">') :].split("</figure>", 1)[0]
    assert "No values." in sam_figure and "n = 0 of 3 instances" in sam_figure
    assert "3 without sam_iou: 3 written by autoannotate without it (e.g. --sam-model none" in sam_figure
    # the order then rests on fill_iou alone
    assert [t.image_rel for t in content.gallery] == ["images/im0.png", "images/im1.png", "images/im2.png"]


def test_counts_of_automatic_reviewed_and_edited_labels(tmp_path: Path):
    out = fake_run_dir(tmp_path / "out", {f"im{i}.png": _line(0) for i in range(4)}, {0: "person"})
    manifest = json.loads((out / "autoannotate.json").read_text())
    reviewed_text = _line(0, "0.3 0.3 0.6 0.3 0.6 0.6")
    (out / "labels" / "im1.txt").write_text(reviewed_text, encoding="utf-8")  # as an import writes it
    manifest["reviewed"] = {
        "labels/im1.txt": {
            "sha256": hashlib.sha256(reviewed_text.encode()).hexdigest(),
            "source": "cvat",
            "file": "e.zip",
            "at": "2025-01-01T00:00:00+00:00",
        }
    }
    (out / "autoannotate.json").write_text(json.dumps(manifest), encoding="utf-8")
    (out / "labels" / "im2.txt").write_text(_line(0, "0.2 0.2 0.7 0.2 0.7 0.7"), encoding="utf-8")  # edited by hand

    content = build_content(open_run(out))
    assert (content.counts.automatic, content.counts.reviewed, content.counts.edited) == (2, 1, 1)
    write_report(open_run(out), out / "report.html")
    page = (out / "report.html").read_text(encoding="utf-8")
    for label, count in (("automatic labels", 2), ("reviewed by a person", 1), ("edited by a person", 1)):
        assert re.search(rf"<th>{label}[^<]*</th><td class=\"num\">{count}</td>", page), label
    # a reviewed label changed by hand afterwards stays reviewed: runs keep it as such, and check counts it so
    (out / "labels" / "im1.txt").write_text(_line(0, "0.3 0.3 0.6 0.3 0.6 0.7"), encoding="utf-8")
    again = build_content(open_run(out))
    assert (again.counts.automatic, again.counts.reviewed, again.counts.edited) == (2, 1, 1)


def test_an_existing_file_that_is_not_a_report_is_refused_and_left_as_it_is(tmp_path: Path):
    out = _scored_run(tmp_path / "out")
    foreign = out / "report.html"
    original = b"<!DOCTYPE html><html><head><title>my notes</title></head><body>mine</body></html>\n"
    foreign.write_bytes(original)
    with pytest.raises(OutputError, match=r"not an autoannotate report; pass --output elsewhere or delete it"):
        write_report(open_run(out), foreign)
    assert foreign.read_bytes() == original
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".autoannotate-")) == []  # no temp left
    if hasattr(os, "mkfifo"):  # neither read (that would block) nor replaced
        os.mkfifo(out / "pipe.html")
        with pytest.raises(OutputError, match="not an autoannotate report"):
            write_report(open_run(out), out / "pipe.html")
    (out / "dir.html").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        write_report(open_run(out), out / "dir.html")
    with pytest.raises(ConfigError, match="--gallery"):
        write_report(open_run(out), out / "other.html", gallery_limit=-1)


def test_a_rerun_replaces_its_own_report(tmp_path: Path):
    out = _scored_run(tmp_path / "out")
    path = out / "report.html"
    write_report(open_run(out), path, gallery_limit=1)
    assert is_report(path) and len(_gallery_json(path.read_text(encoding="utf-8"))["images"]) == 1
    stats = write_report(open_run(out), path, gallery_limit=3)
    assert stats.gallery_images == 3 and len(_gallery_json(path.read_text(encoding="utf-8"))["images"]) == 3


def test_hostile_class_names_and_paths_are_escaped(tmp_path: Path):
    out = fake_run_dir(
        tmp_path / "out", {HOSTILE_REL: _line(1), "plain.png": _line(0)}, {0: "person", 1: HOSTILE_CLASS}
    )
    write_report(open_run(out), out / "report.html")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<img" not in page  # neither from the class name nor from the path, in markup or in the JSON
    assert "<!--" not in page
    assert page.count("</script>") == 2 and page.count("<script") == 2  # the data element and ours, nothing else
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page  # shown as text in the class chart and select
    data = _gallery_json(page)  # the escaping is lossless
    assert data["classes"]["1"]["name"] == HOSTILE_CLASS
    assert f"images/{HOSTILE_REL}" in [image["p"] for image in data["images"]]
    assert "http://" not in page and "https://" not in page


def test_an_unreadable_image_becomes_a_placeholder_tile(tmp_path: Path):
    out = _scored_run(tmp_path / "out")
    (out / "images" / "b.png").write_bytes(b"not an image at all")
    stats = write_report(open_run(out), out / "report.html")
    tiles = {image["p"]: image for image in _gallery_json((out / "report.html").read_text())["images"]}
    assert stats.gallery_images == 5
    with pytest.raises(ImageError) as reason:
        read_image_bgr(out / "images" / "b.png")
    assert tiles["images/b.png"]["t"] is None and tiles["images/b.png"]["e"] == str(reason.value)
    assert tiles["images/b.png"]["n"][0][:2] == [1, 0.2]  # its labels still count and filter


def _cli_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so that "report" is a subcommand as in the real app
        pass

    report_cli.register(app)
    return app


def test_cli_writes_the_report_and_prints_one_line(tmp_path: Path):
    out = _scored_run(tmp_path / "out")
    result = CliRunner().invoke(_cli_app(), ["report", str(out), "--gallery", "3"])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        rf"wrote {re.escape(str(out / 'report.html'))}: 5 images, 5 instances, 3 in the gallery \(\d+\.\d KB\)\n",
        result.output,
    )
    assert is_report(out / "report.html")


def test_cli_refuses_a_foreign_output_with_one_error_line(tmp_path: Path):
    out = _scored_run(tmp_path / "out")
    target = tmp_path / "notes.html"
    target.write_text("mine\n", encoding="utf-8")
    result = CliRunner().invoke(_cli_app(), ["report", str(out), "-o", str(target)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "--output elsewhere or delete it" in result.output
    assert target.read_text(encoding="utf-8") == "mine\n"
    missing = CliRunner().invoke(_cli_app(), ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "error: " in missing.output


# ---------------------------------------------------------------------------------------------------- browser

WORST_REL = "z/worst.png"  # sorts last by path, so only its score can put it first
BROKEN_REL = "broken.png"
EXTRA_IMAGES = 64  # with the four below: two gallery pages of 60


def _browser_run(root: Path) -> Path:
    labels = {f"m/im{i:03d}.png": _line(0) + (_line(1) if i % 4 == 0 else "") for i in range(EXTRA_IMAGES)}
    labels.update({WORST_REL: _line(0) + _line(1), BROKEN_REL: _line(0), "hostile.png": _line(2), "neg.png": ""})
    figures = {WORST_REL: [{"line": 2, "sam_iou": 0.05, "fill_iou": 0.6}], BROKEN_REL: [{"line": 1, "sam_iou": 0.5}]}
    sizes = {WORST_REL: (300, 120), "m/im001.png": (90, 200)}
    fake_run_dir(root, labels, {0: "person", 1: "car", 2: HOSTILE_CLASS}, sizes_wh=sizes, figures=figures)
    (root / "images" / BROKEN_REL).write_bytes(b"\x89PNG broken")
    return root


def _chromium() -> str:
    """The system Chromium's path, with playwright importable; skip (fail on CI) when either is missing."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the Python package playwright (pip install playwright)")
    executable = shutil.which("chromium")
    if executable is None:
        missing.append("chromium (apt-get install -y --no-install-recommends chromium)")
    if missing:
        message = "browser tests need " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI installs both")
        pytest.skip(message)
    assert executable is not None
    return executable


def _wait_for_mark(page: Any, name: str, timeout_s: float = 30.0) -> None:
    """Wait until the page's script has set the performance mark ``name``.

    Not ``page.wait_for_function``: it re-evaluates its predicate string with ``eval`` on each later poll, which the
    report's Content-Security-Policy rightly blocks (no 'unsafe-eval'), so it failed whenever the mark came after
    the first poll (on a slower machine). This polls inside one evaluated function, with no string evaluation."""
    page.evaluate(
        """([name, timeoutMs]) => new Promise((resolve, reject) => {
            const deadline = performance.now() + timeoutMs;
            const check = () => {
                if (performance.getEntriesByName(name).length > 0) resolve(true);
                else if (performance.now() > deadline) reject(new Error(`no performance mark ${name}`));
                else setTimeout(check, 20);
            };
            check();
        })""",
        [name, timeout_s * 1000],
    )


@pytest.fixture(scope="module")
def opened_report(tmp_path_factory: pytest.TempPathFactory):
    """The report of ``_browser_run`` open in headless Chromium, with every console message, page error, request
    and dialog it produced while loading."""
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    out = _browser_run(tmp_path_factory.mktemp("browser") / "out")
    path = out / "report.html"
    write_report(open_run(out), path)
    seen: dict[str, list[str]] = {"console_errors": [], "page_errors": [], "requests": [], "dialogs": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: m.type == "error" and seen["console_errors"].append(m.text))
            page.on("pageerror", lambda err: seen["page_errors"].append(str(err)))
            page.on("request", lambda r: seen["requests"].append(r.url))
            page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
            page.goto(path.as_uri(), wait_until="load")
            _wait_for_mark(page, "gallery-decoded")
            yield page, path, seen
        finally:
            browser.close()


def test_browser_waits_for_a_late_mark_under_a_strict_csp(tmp_path):
    """The fixture's wait works when the mark comes after the first poll, under a CSP like the report's (the way
    ``page.wait_for_function`` failed on CI); and it gives up with an error on a mark that never comes."""
    executable = _chromium()
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    script = "setTimeout(() => performance.mark('late'), 300);"
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    page_path = tmp_path / "late.html"
    page_path.write_text(
        '<!doctype html><html><head><meta http-equiv="Content-Security-Policy" '
        f"content=\"default-src 'none'; script-src 'sha256-{digest}'\"></head>"
        f"<body><script>{script}</script></body></html>"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        try:
            page = browser.new_page()
            page.goto(page_path.as_uri(), wait_until="load")
            assert page.evaluate("performance.getEntriesByName('late').length") == 0
            _wait_for_mark(page, "late")
            assert page.evaluate("performance.getEntriesByName('late').length") == 1
            with pytest.raises(PlaywrightError, match="no performance mark never"):
                _wait_for_mark(page, "never", timeout_s=0.2)
        finally:
            browser.close()


def _tile_paths(page: Any) -> list[str]:
    return page.eval_on_selector_all("#gallery figure.tile", "tiles => tiles.map(t => t.dataset.path)")


def test_browser_opens_without_errors_or_requests(opened_report):
    _page, path, seen = opened_report
    assert seen["console_errors"] == [] and seen["page_errors"] == [] and seen["dialogs"] == []
    others = [url for url in seen["requests"] if url != path.as_uri() and not url.startswith("data:")]
    assert others == []
    assert path.as_uri() in seen["requests"]


def test_browser_shows_the_worst_image_first_and_pages(opened_report):
    page, _path, _seen = opened_report
    first = page.locator("#gallery figure.tile").first
    assert first.locator(".path").inner_text() == f"images/{WORST_REL}"
    assert "worst score 0.050" in first.locator(".score").inner_text()
    assert first.locator("svg polygon").count() == 2 and first.locator("img").count() == 1
    assert len(_tile_paths(page)) == 60 and "page 1 of 2" in page.inner_text("#pager-status")
    page.click("#page-next")
    assert len(_tile_paths(page)) == EXTRA_IMAGES + 4 - 60
    page.click("#page-prev")
    assert _tile_paths(page)[0] == f"images/{WORST_REL}"


def test_browser_placeholder_and_hostile_caption(opened_report):
    page, _path, _seen = opened_report
    broken = page.locator(f'#gallery figure.tile[data-path="images/{BROKEN_REL}"]')
    assert "cannot show this image:" in broken.locator(".placeholder").inner_text()
    hostile = page.locator('#gallery figure.tile[data-path="images/hostile.png"]')
    assert hostile.locator(".classes").inner_text() == HOSTILE_CLASS  # text, not markup
    assert page.locator("#gallery img:not([src^='data:'])").count() == 0


def test_browser_class_and_score_filters(opened_report):
    page, _path, _seen = opened_report
    everything = page.inner_text("#pager-status")
    page.select_option("#filter-class", "1")  # car
    paths = _tile_paths(page)
    classes = page.eval_on_selector_all("#gallery figure.tile", "tiles => tiles.map(t => t.dataset.classes)")
    assert all("1" in c.split() for c in classes)
    expected_cars = 1 + len(range(0, EXTRA_IMAGES, 4))
    assert len(paths) == expected_cars and paths[0] == f"images/{WORST_REL}"
    assert f"{expected_cars} images match" in page.inner_text("#pager-status")
    page.select_option("#filter-class", "")
    # the worst image: a person scored 0.9 and a car scored 0.05
    _set_range(page, "#filter-min", "0.55")  # its person passes (the tile stays, first), its car is drawn faint
    assert _tile_paths(page)[0] == f"images/{WORST_REL}"
    assert page.locator("#gallery figure.tile").first.locator("polygon.dim").count() == 1
    _set_range(page, "#filter-min", None)
    _set_range(page, "#filter-max", "0.3")
    page.uncheck("#filter-unscored")
    assert _tile_paths(page) == [f"images/{WORST_REL}"]  # only its car scores 0.3 or less
    page.check("#filter-unscored")
    assert _tile_paths(page) == [f"images/{WORST_REL}", "images/neg.png"]  # no instance counts as unscored
    _set_range(page, "#filter-max", None)
    assert page.inner_text("#pager-status") == everything


def _set_range(page: Any, selector: str, value: str | None) -> None:
    """Move a range input as a user would (None: to its end: min for the min slider, max for the max one)."""
    target = json.dumps(value) if value is not None else ("el.min" if "min" in selector else "el.max")
    page.eval_on_selector(selector, f"el => {{ el.value = {target}; el.dispatchEvent(new Event('input')); }}")


def test_browser_full_page_screenshot(opened_report, tmp_path: Path):
    page, _path, _seen = opened_report
    folder = Path(os.environ.get("AUTOANNOTATE_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "report_full_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

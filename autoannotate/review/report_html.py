"""The HTML of ``autoannotate report``: pure formatting of a ``ReportContent`` into one self-contained page.

Nothing here reads files or images: ``autoannotate.review.report`` gathers the content (counts, histograms,
thumbnails) and writes the page. The page makes no network request when opened: plots are inline SVG made here,
thumbnails are ``data:`` URIs, styles and the script are inline, the favicon is ``data:,``, and a
Content-Security-Policy (``default-src 'none'``, the one inline script allowed by its sha256) blocks anything else.

Escaping: every user-controlled string (paths, class names, settings) is HTML-escaped where it enters the markup;
the gallery data is JSON in a ``<script type="application/json">`` element with ``<``, ``>`` and ``&`` written as
``\\u003c``, ``\\u003e``, ``\\u0026`` (so neither ``</script>`` nor ``<!--`` can occur in it), and the script puts
strings into the page only as ``textContent`` or attribute values, never as markup.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "GALLERY_PAGE_SIZE",
    "GENERATOR_PREFIX",
    "ClassBar",
    "GalleryTile",
    "Histogram",
    "LabelCounts",
    "Provenance",
    "ReportContent",
    "TileInstance",
    "json_for_script",
    "render_page",
]

#: The start of the page's ``<meta name="generator" content="...">``: how a report of ours is recognised.
GENERATOR_PREFIX = "autoannotate"
#: Tiles per gallery page: what the script builds at a time, so 1,000 tiles open as fast as 60.
GALLERY_PAGE_SIZE = 60

Provenance = Literal["automatic", "reviewed", "edited"]


@dataclass(frozen=True)
class ClassBar:
    """One class in the instances-per-class chart. ``color_hex``: ``#rrggbb`` (the previews' class colour)."""

    class_id: int
    name: str
    color_hex: str
    instances: int
    images: int


@dataclass(frozen=True)
class Histogram:
    """Counts of one ``instances.jsonl`` figure over ``[lo, hi]`` in ``len(counts)`` equal bins.

    ``below``/``above``: values outside ``[lo, hi]``, counted in the first/last bin (a random-weight SAM predicts
    negative IoUs); ``missing_person``: lines a person wrote or changed (they have no figures);
    ``missing_auto``: lines autoannotate wrote without this figure (``--sam-model none`` has no ``sam_iou``).
    """

    figure: str
    counts: tuple[int, ...]
    lo: float
    hi: float
    below: int
    above: int
    missing_person: int
    missing_auto: int

    @property
    def values(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class TileInstance:
    """One instance drawn on a tile. ``points_thumb``: flat ``x0, y0, x1, y1, ...`` in thumbnail pixels (integers,
    simplified to the thumbnail's resolution); empty when the image could not be read. ``score``: see
    ``autoannotate.review.report.instance_score``."""

    class_id: int
    score: float | None
    points_thumb: tuple[int, ...]


@dataclass(frozen=True)
class GalleryTile:
    """One gallery image. ``thumb_wh``/``data_uri``: the JPEG thumbnail (None with ``error``, the reason it could
    not be read); ``image_wh``: the decoded image's size; ``problems``: label lines that do not parse."""

    image_rel: str
    score: float | None
    provenance: Provenance
    instances: tuple[TileInstance, ...]
    problems: int
    image_wh: tuple[int, int] | None
    thumb_wh: tuple[int, int] | None
    data_uri: str | None
    error: str | None


@dataclass(frozen=True)
class LabelCounts:
    """What the dataset holds, counted over all its images: ``automatic`` + ``reviewed`` + ``edited`` = ``images``
    (an edit after a review counts as edited); ``problem_labels``: label files with lines that do not parse;
    ``orphans``: label files without an image."""

    images: int
    instances: int
    automatic: int
    reviewed: int
    edited: int
    problem_labels: int
    orphans: int


@dataclass(frozen=True)
class ReportContent:
    """Everything the page shows. ``gallery``: worst first, at most the gallery limit of ``counts.images``;
    ``classes``: every class with an instance, most instances first; ``names``: class id -> name (data.yaml);
    ``class_colors``: class id -> ``#rrggbb`` for every class id in the gallery."""

    output_dir: str
    generator: str
    written_at: str
    model_version: str
    manifest: Mapping[str, Any]
    counts: LabelCounts
    classes: tuple[ClassBar, ...]
    histograms: tuple[Histogram, ...]
    gallery: tuple[GalleryTile, ...]
    names: Mapping[int, str]
    class_colors: Mapping[int, str]
    score_definition: str


def json_for_script(value: Any) -> str:
    """``value`` as JSON safe inside a ``<script>`` element: ASCII only, and ``<``, ``>``, ``&`` as ``\\u`` escapes,
    so neither ``</script>`` nor ``<!--`` can end or bend the element whatever strings it holds."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(content: ReportContent) -> str:
    """The whole page, UTF-8 text. The generator meta tag comes within the first 200 bytes (see ``is_report``)."""
    script = _SCRIPT
    script_hash = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    title = f"autoannotate report: {content.output_dir}"
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f'<meta name="generator" content="{_esc(content.generator)}">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{_esc(csp)}">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        '<link rel="icon" href="data:,">\n',
        f"<title>{_esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n",
        f'<header><h1>autoannotate report</h1><p class="sub">{_esc(content.output_dir)}</p>'
        f'<p class="sub">{_esc(content.model_version)}; report written {_esc(content.written_at)}</p></header>\n',
        "<main>\n",
        _summary_section(content),
        _plots_section(content),
        _gallery_section(content),
        _settings_section(content.manifest),
        "</main>\n",
        f'<script type="application/json" id="gallery-data">{json_for_script(_gallery_data(content))}</script>\n',
        f"<script>{script}</script>\n</body>\n</html>\n",
    ]
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------- sections


def _summary_section(content: ReportContent) -> str:
    c = content.counts
    manifest = content.manifest
    rows = [
        ("images (labelled, with an image)", _int(c.images)),
        ("instances (label lines)", _int(c.instances)),
        ("automatic labels (as autoannotate wrote them)", _int(c.automatic)),
        ("reviewed by a person (autoannotate import; kept by every run)", _int(c.reviewed)),
        ("edited by a person (changed by hand since autoannotate wrote it)", _int(c.edited)),
    ]
    if c.problem_labels:
        rows.append(("label files with lines that do not parse", _int(c.problem_labels)))
    if c.orphans:
        rows.append(("label files without an image (left out)", _int(c.orphans)))
    run_rows = [
        (key, _value_text(manifest[key]))
        for key in ("version", "state", "started_at", "seconds", "device", "shard", "fingerprint")
        if manifest.get(key) is not None
    ]
    counts = manifest.get("counts")
    count_rows = (
        [(str(k), _value_text(v)) for k, v in counts.items() if not isinstance(v, Mapping)]
        if isinstance(counts, Mapping)
        else []
    )
    out = ['<section id="summary"><h2>Summary</h2><div class="cards">']
    out.append('<div class="card"><h3>This dataset</h3>' + _table(rows, numeric=True) + "</div>")
    if count_rows:
        out.append(
            '<div class="card"><h3>The last run&#8217;s counts</h3>'
            + _table(count_rows, numeric=True)
            + '<p class="note">From autoannotate.json: images by status (ok, empty, failed, skipped, edited, '
            "reviewed) in the last run.</p></div>"
        )
    if run_rows:
        out.append('<div class="card"><h3>Run</h3>' + _table(run_rows) + "</div>")
    out.append("</div>")
    out.append(_models_table(manifest))
    out.append("</section>\n")
    return "".join(out)


def _models_table(manifest: Mapping[str, Any]) -> str:
    models = manifest.get("models")
    rows: list[str] = []
    if isinstance(models, Mapping):
        for role, record in models.items():
            if not isinstance(record, Mapping):
                continue
            sha = record.get("sha256")
            details = ", ".join(
                f"{k}: {_value_text(v)}" for k, v in record.items() if k not in ("name", "path", "sha256")
            )
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{_esc(text)}</td>"
                    for text in (
                        str(role),
                        _value_text(record.get("name")),
                        _value_text(record.get("path")),
                        (str(sha)[:16] + "...") if sha else "",
                        details,
                    )
                )
                + "</tr>"
            )
    settings = manifest.get("settings")
    if not rows and isinstance(settings, Mapping):  # a manifest without model records: what the settings named
        for role, key in (("detector", "det_model"), ("segmenter", "sam_model")):
            if settings.get(key) is not None:
                rows.append(
                    f"<tr><td>{role}</td><td>{_esc(_value_text(settings[key]))}</td><td></td><td></td><td></td></tr>"
                )
    if not rows:
        return ""
    return (
        '<h3>Models</h3><table class="wide"><thead><tr><th>role</th><th>name</th><th>file</th><th>sha256</th>'
        "<th>details</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _settings_section(manifest: Mapping[str, Any]) -> str:
    settings = manifest.get("settings")
    if not isinstance(settings, Mapping) or not settings:
        return (
            '<section id="settings"><h2>Settings</h2>'
            '<p class="note">No settings recorded (no autoannotate.json).</p></section>\n'
        )
    rows = [(str(k), _value_text(v)) for k, v in settings.items()]
    return (
        '<section id="settings"><h2>Settings</h2><details open><summary>'
        f"{len(rows)} settings of the last run (autoannotate.json)</summary>" + _table(rows) + "</details></section>\n"
    )


def _plots_section(content: ReportContent) -> str:
    out = [
        '<section id="plots"><h2>Plots</h2><p class="note">Over all ',
        _int(content.counts.images),
        " images and ",
        _int(content.counts.instances),
        ' instances.</p><div class="plots">',
    ]
    out.append('<figure class="plot" id="plot-classes"><figcaption>Instances per class</figcaption>')
    out.append(_class_chart(content.classes) if content.classes else '<p class="note">No instances.</p>')
    out.append("</figure>")
    for histogram in content.histograms:
        out.append(_histogram_figure(histogram, content.counts.instances))
    out.append("</div></section>\n")
    return "".join(out)


def _gallery_section(content: ReportContent) -> str:
    shown, total = len(content.gallery), content.counts.images
    if shown == 0:
        reason = "no image in the dataset" if total == 0 else "the gallery is off (--gallery 0)"
        return f'<section id="gallery-section"><h2>Gallery</h2><p class="note">No gallery: {reason}.</p></section>\n'
    if shown < total:
        extent = f"worst {_int(shown)} of {_int(total)} images shown; all instances are in instances.jsonl"
    else:
        extent = f"all {_int(total)} images shown"
    images_by_class: dict[int, int] = {}
    for tile in content.gallery:
        for class_id in {i.class_id for i in tile.instances}:
            images_by_class[class_id] = images_by_class.get(class_id, 0) + 1
    options = ['<option value="">all classes</option>']
    for class_id in sorted(images_by_class, key=lambda k: (-images_by_class[k], k)):
        name = _class_name(content.names, class_id)
        options.append(f'<option value="{class_id}">{_esc(name)} ({_int(images_by_class[class_id])} images)</option>')
    lo, hi = _score_range(content.gallery)
    return (
        '<section id="gallery-section"><h2>Gallery, worst first</h2>'
        f'<p class="note">{_esc(content.score_definition)}</p>'
        f'<p class="extent" id="gallery-extent">{extent}.</p>'
        '<noscript><p class="note">The gallery needs JavaScript.</p></noscript>'
        '<div class="controls">'
        f'<label>class <select id="filter-class">{"".join(options)}</select></label>'
        f'<label>min score <input type="range" id="filter-min" min="{lo}" max="{hi}" step="0.01" value="{lo}">'
        f'<output id="filter-min-value">{lo:.2f}</output></label>'
        f'<label>max score <input type="range" id="filter-max" min="{lo}" max="{hi}" step="0.01" value="{hi}">'
        f'<output id="filter-max-value">{hi:.2f}</output></label>'
        '<label><input type="checkbox" id="filter-unscored" checked> instances without a score</label>'
        "</div>"
        '<p class="note">An image is shown when one of its instances is of the class and has a score in the range '
        "(or has no score, while that box is ticked; an image without instances counts as one without a score). "
        "Instances that do not match are drawn faint.</p>"
        '<nav class="pager"><button type="button" id="page-prev">previous</button>'
        '<span id="pager-status"></span><button type="button" id="page-next">next</button></nav>'
        '<div id="gallery" class="grid"></div>'
        "</section>\n"
    )


def _gallery_data(content: ReportContent) -> dict[str, Any]:
    """The script's data: class names and colours, and one compact record per tile (short keys: 10,000 of them)."""
    classes = {
        str(class_id): {"name": _class_name(content.names, class_id), "color": color}
        for class_id, color in content.class_colors.items()
    }
    images = [
        {
            "p": tile.image_rel,
            "s": tile.score,
            "v": tile.provenance,
            "k": tile.problems,
            "t": tile.data_uri,
            "e": tile.error,
            "w": tile.thumb_wh[0] if tile.thumb_wh else None,
            "h": tile.thumb_wh[1] if tile.thumb_wh else None,
            "W": tile.image_wh[0] if tile.image_wh else None,
            "H": tile.image_wh[1] if tile.image_wh else None,
            "n": [[i.class_id, i.score, list(i.points_thumb)] for i in tile.instances],
        }
        for tile in content.gallery
    ]
    return {"pageSize": GALLERY_PAGE_SIZE, "classes": classes, "images": images}


# ---------------------------------------------------------------------------------------------------- SVG plots

_BAR_ROW_PX, _BAR_LABEL_PX, _BAR_AREA_PX, _BAR_COUNT_PX = 18, 170, 300, 70
_LABEL_CHARS = 24


def _class_chart(classes: Sequence[ClassBar]) -> str:
    """Horizontal bars, one per class, most instances first; a long name is cut (in full in its tooltip)."""
    width = _BAR_LABEL_PX + _BAR_AREA_PX + _BAR_COUNT_PX
    height = _BAR_ROW_PX * len(classes) + 4
    top = max(c.instances for c in classes)
    rows = []
    for index, item in enumerate(classes):
        y = 2 + index * _BAR_ROW_PX
        length = max(1.0, _BAR_AREA_PX * item.instances / top)
        label = item.name if len(item.name) <= _LABEL_CHARS else item.name[: _LABEL_CHARS - 1] + "\u2026"
        tip = f"{item.name} (class {item.class_id}): {item.instances} instances in {item.images} images"
        rows.append(
            f'<g class="bar"><title>{_esc(tip)}</title>'
            f'<text x="{_BAR_LABEL_PX - 6}" y="{y + 13}" text-anchor="end">{_esc(label)}</text>'
            f'<rect x="{_BAR_LABEL_PX}" y="{y + 2}" width="{length:.1f}" height="{_BAR_ROW_PX - 4}" '
            f'fill="{item.color_hex}"></rect>'
            f'<text x="{_BAR_LABEL_PX + length + 4:.1f}" y="{y + 13}">{_int(item.instances)}</text></g>'
        )
    return (
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="instances per class">{"".join(rows)}</svg>'
    )


_HIST_W, _HIST_H, _HIST_LEFT, _HIST_BOTTOM, _HIST_TOP = 360, 170, 44, 24, 8


def _histogram_figure(histogram: Histogram, instances: int) -> str:
    h = histogram
    missing = h.missing_person + h.missing_auto
    notes = [f"n = {_int(h.values)} of {_int(instances)} instances"]
    if missing:
        why = []
        if h.missing_auto:
            why.append(
                f"{_int(h.missing_auto)} written by autoannotate without it (e.g. --sam-model none has no sam_iou)"
            )
        if h.missing_person:
            why.append(f"{_int(h.missing_person)} lines a person wrote or changed (no figures)")
        notes.append(f"{_int(missing)} without {h.figure}: " + "; ".join(why))
    if h.below or h.above:
        notes.append(
            f"outside [{h.lo:g}, {h.hi:g}]: {_int(h.below)} below, {_int(h.above)} above (counted in the end bins)"
        )
    body = _histogram_svg(h) if h.values else '<p class="note missing">No values.</p>'
    return (
        f'<figure class="plot" id="plot-{_esc(h.figure)}"><figcaption>{_esc(h.figure)}</figcaption>{body}'
        + "".join(f'<p class="note">{_esc(n)}</p>' for n in notes)
        + "</figure>"
    )


def _histogram_svg(h: Histogram) -> str:
    plot_w, plot_h = _HIST_W - _HIST_LEFT - 8, _HIST_H - _HIST_BOTTOM - _HIST_TOP
    top = max(h.counts) or 1
    bin_w = plot_w / len(h.counts)
    bars = []
    for index, count in enumerate(h.counts):
        if not count:
            continue
        bar_h = plot_h * count / top
        x = _HIST_LEFT + index * bin_w
        lo = h.lo + (h.hi - h.lo) * index / len(h.counts)
        hi = h.lo + (h.hi - h.lo) * (index + 1) / len(h.counts)
        bars.append(
            f'<rect x="{x + 0.5:.1f}" y="{_HIST_TOP + plot_h - bar_h:.1f}" width="{bin_w - 1:.1f}" '
            f'height="{bar_h:.1f}"><title>{lo:.2f}-{hi:.2f}: {count}</title></rect>'
        )
    ticks = []
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = _HIST_LEFT + plot_w * fraction
        ticks.append(
            f'<line x1="{x:.1f}" y1="{_HIST_TOP + plot_h}" x2="{x:.1f}" y2="{_HIST_TOP + plot_h + 4}"></line>'
            f'<text x="{x:.1f}" y="{_HIST_H - 6}" text-anchor="middle">{h.lo + (h.hi - h.lo) * fraction:g}</text>'
        )
    base_y = _HIST_TOP + plot_h
    axes = (
        f'<line x1="{_HIST_LEFT}" y1="{base_y}" x2="{_HIST_LEFT + plot_w}" y2="{base_y}"></line>'
        f'<line x1="{_HIST_LEFT}" y1="{_HIST_TOP}" x2="{_HIST_LEFT}" y2="{_HIST_TOP + plot_h}"></line>'
        f'<text x="{_HIST_LEFT - 4}" y="{_HIST_TOP + 10}" text-anchor="end">{_int(top)}</text>'
        f'<text x="{_HIST_LEFT - 4}" y="{_HIST_TOP + plot_h}" text-anchor="end">0</text>'
    )
    return (
        f'<svg class="chart hist" width="{_HIST_W}" height="{_HIST_H}" viewBox="0 0 {_HIST_W} {_HIST_H}" role="img" '
        f'aria-label="histogram of {_esc(h.figure)}"><g class="bars">{"".join(bars)}</g>'
        f'<g class="axes">{axes}{"".join(ticks)}</g></svg>'
    )


# ---------------------------------------------------------------------------------------------------- helpers


def _esc(text: str) -> str:
    """HTML-escaped text for element content and quoted attributes. A path's undecodable bytes (lone surrogates
    from the file system) become ``\\udcxx`` text, since the page is UTF-8."""
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(safe.replace("\x00", "\ufffd"), quote=True)


def _int(value: int) -> str:
    return f"{value:,}"


def _class_name(names: Mapping[int, str], class_id: int) -> str:
    return names.get(class_id, f"class {class_id} (not in data.yaml)")


def _value_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError):
        return repr(value)


def _table(rows: Sequence[tuple[str, str]], *, numeric: bool = False) -> str:
    cls = ' class="num"' if numeric else ""
    body = "".join(f"<tr><th>{_esc(k)}</th><td{cls}>{_esc(v)}</td></tr>" for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


def _score_range(tiles: Sequence[GalleryTile]) -> tuple[float, float]:
    """The sliders' range: [0, 1], widened to whole hundredths around scores outside it."""
    scores = [i.score for t in tiles for i in t.instances if i.score is not None]
    lo = min([0.0, *scores])
    hi = max([1.0, *scores])
    return math.floor(lo * 100) / 100, math.ceil(hi * 100) / 100


# ---------------------------------------------------------------------------------------------------- style, script

_STYLE = """
:root { color-scheme: light; --fg: #1d2329; --muted: #5d6975; --line: #d7dde3; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--fg); background: #fff; }
header { padding: 16px 24px; background: var(--bg); border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 4px; font-size: 20px; }
.sub { margin: 0; color: var(--muted); overflow-wrap: anywhere; }
main { padding: 8px 24px 32px; }
h2 { font-size: 17px; margin: 24px 0 8px; }
h3 { font-size: 14px; margin: 8px 0; }
.note { color: var(--muted); margin: 4px 0; font-size: 13px; }
.extent { font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; background: #fff; }
table { border-collapse: collapse; font-size: 13px; }
th, td { text-align: left; padding: 2px 10px 2px 0; vertical-align: top; overflow-wrap: anywhere; }
th { font-weight: 500; color: var(--muted); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.wide th { color: var(--fg); border-bottom: 1px solid var(--line); }
.plots { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
.plot { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; max-width: 580px; }
.plot figcaption { font-weight: 600; margin-bottom: 4px; }
.chart text { font: 11px system-ui, sans-serif; fill: var(--fg); }
.hist .bars rect { fill: #4b7bd1; }
.hist .axes line { stroke: #8a96a3; }
.controls { display: flex; flex-wrap: wrap; gap: 16px; align-items: center; margin: 8px 0; }
.controls label { display: flex; gap: 6px; align-items: center; }
.controls select { max-width: 22em; }
.controls output { font-variant-numeric: tabular-nums; min-width: 3em; }
.pager { display: flex; gap: 12px; align-items: center; margin: 8px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 12px; }
.tile { margin: 0; border: 1px solid var(--line); border-radius: 6px; overflow: hidden; background: var(--bg); }
.thumb { height: 192px; display: grid; place-items: center; background: #222; overflow: hidden; }
.frame { position: relative; max-width: 100%; max-height: 100%; }
.frame img { display: block; max-width: 100%; max-height: 192px; width: auto; height: auto; }
.frame svg { position: absolute; inset: 0; width: 100%; height: 100%; }
.thumb polygon { fill-opacity: 0.45; stroke-width: 1.5; vector-effect: non-scaling-stroke; }
.thumb polygon.dim { fill-opacity: 0.06; stroke-opacity: 0.35; }
.placeholder { padding: 24px 12px; height: 192px; color: #8a1c1c; background: #fbeaea; overflow-wrap: anywhere; }
.tile figcaption { padding: 6px 8px; font-size: 12px; }
.tile .path { font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
.tile .score { font-weight: 600; }
.tile .classes { color: var(--muted); }
"""

# Plain ES2017, no library. It builds only the current page's tiles (GALLERY_PAGE_SIZE), from the JSON data element;
# user strings go in as textContent or attributes only. The SVG namespace is taken from a parsed <svg>, so that the
# page holds no URL at all. performance marks "gallery-rendered" (first page in the DOM) and "gallery-decoded" (its
# thumbnails decoded) let a benchmark time the opening.
_SCRIPT = """
"use strict";
(function () {
  const grid = document.getElementById("gallery");
  if (!grid) { return; }
  const data = JSON.parse(document.getElementById("gallery-data").textContent);
  const byId = (id) => document.getElementById(id);
  const classSelect = byId("filter-class"), minInput = byId("filter-min"), maxInput = byId("filter-max");
  const minOut = byId("filter-min-value"), maxOut = byId("filter-max-value"), unscored = byId("filter-unscored");
  const status = byId("pager-status"), prev = byId("page-prev"), next = byId("page-next");
  const parsed = document.createElement("template");
  parsed.innerHTML = "<svg></svg>";
  const svgNs = parsed.content.firstChild.namespaceURI;
  const provenance = { automatic: "automatic", reviewed: "reviewed by a person", edited: "edited by a person" };
  let shown = data.images, page = 0;

  function filters() {
    return { cls: classSelect.value === "" ? null : Number(classSelect.value), lo: Number(minInput.value),
             hi: Number(maxInput.value), unscored: unscored.checked };
  }
  function instanceMatches(instance, f) {
    if (f.cls !== null && instance[0] !== f.cls) { return false; }
    if (instance[1] === null) { return f.unscored; }
    return instance[1] >= f.lo && instance[1] <= f.hi;
  }
  function imageMatches(image, f) {
    if (image.n.length === 0) { return f.cls === null && f.unscored; }
    return image.n.some((instance) => instanceMatches(instance, f));
  }
  function className(id) {
    const known = data.classes[String(id)];
    return known ? known.name : "class " + id;
  }
  function line(cls, text) {
    const div = document.createElement("div");
    div.className = cls;
    div.textContent = text;
    return div;
  }
  function overlay(image, f) {
    const svg = document.createElementNS(svgNs, "svg");
    svg.setAttribute("viewBox", "0 0 " + image.w + " " + image.h);
    svg.setAttribute("preserveAspectRatio", "none");
    for (const instance of image.n) {
      const flat = instance[2];
      if (flat.length < 2) { continue; }
      const points = [];
      for (let i = 0; i + 1 < flat.length; i += 2) { points.push(flat[i] + "," + flat[i + 1]); }
      const polygon = document.createElementNS(svgNs, "polygon");
      const known = data.classes[String(instance[0])];
      const color = known ? known.color : "#ff3838";
      polygon.setAttribute("points", points.join(" "));
      polygon.setAttribute("fill", color);
      polygon.setAttribute("stroke", color);
      if (!instanceMatches(instance, f)) { polygon.setAttribute("class", "dim"); }
      svg.appendChild(polygon);
    }
    return svg;
  }
  function tile(image, f) {
    const figure = document.createElement("figure");
    figure.className = "tile";
    figure.dataset.path = image.p;
    figure.dataset.classes = Array.from(new Set(image.n.map((instance) => instance[0]))).join(" ");
    if (image.t) {
      const box = document.createElement("div"), frame = document.createElement("div");
      box.className = "thumb";
      frame.className = "frame";
      const img = document.createElement("img");
      img.width = image.w;
      img.height = image.h;
      img.alt = image.p;
      img.src = image.t;
      frame.appendChild(img);
      frame.appendChild(overlay(image, f));
      box.appendChild(frame);
      figure.appendChild(box);
    } else {
      figure.appendChild(line("placeholder", "cannot show this image: " + image.e));
    }
    const caption = document.createElement("figcaption");
    caption.appendChild(line("path", image.p));
    const size = image.W ? " \\u00b7 " + image.W + "\\u00d7" + image.H : "";
    const score = image.s === null ? "no score" : "worst score " + image.s.toFixed(3);
    const count = image.n.length + (image.n.length === 1 ? " instance" : " instances");
    caption.appendChild(line("score", score + " \\u00b7 " + count + " \\u00b7 " + provenance[image.v] + size));
    const tally = new Map();
    for (const instance of image.n) { tally.set(instance[0], (tally.get(instance[0]) || 0) + 1); }
    const names = Array.from(tally, ([id, n]) => className(id) + (n > 1 ? " \\u00d7" + n : ""));
    caption.appendChild(line("classes", names.length ? names.join(", ") : "no instances"));
    if (image.k) { caption.appendChild(line("classes", image.k + " label lines do not parse")); }
    figure.appendChild(caption);
    return figure;
  }
  function render() {
    const f = filters();
    const pages = Math.max(1, Math.ceil(shown.length / data.pageSize));
    page = Math.min(Math.max(page, 0), pages - 1);
    const start = page * data.pageSize;
    grid.replaceChildren(...shown.slice(start, start + data.pageSize).map((image) => tile(image, f)));
    status.textContent = shown.length === 0 ? "no image matches" :
      "page " + (page + 1) + " of " + pages + " \\u00b7 " + shown.length + " images match";
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }
  function refilter() {
    const f = filters();
    minOut.textContent = f.lo.toFixed(2);
    maxOut.textContent = f.hi.toFixed(2);
    shown = data.images.filter((image) => imageMatches(image, f));
    page = 0;
    render();
  }
  minInput.addEventListener("input", () => {
    if (Number(minInput.value) > Number(maxInput.value)) { maxInput.value = minInput.value; }
    refilter();
  });
  maxInput.addEventListener("input", () => {
    if (Number(maxInput.value) < Number(minInput.value)) { minInput.value = maxInput.value; }
    refilter();
  });
  classSelect.addEventListener("change", refilter);
  unscored.addEventListener("change", refilter);
  prev.addEventListener("click", () => { page -= 1; render(); });
  next.addEventListener("click", () => { page += 1; render(); });
  refilter();
  performance.mark("gallery-rendered");
  const decoding = Array.from(grid.querySelectorAll("img"), (img) => img.decode().catch(() => undefined));
  Promise.all(decoding).then(() => performance.mark("gallery-decoded"));
})();
"""

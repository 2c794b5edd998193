"""Label Studio export and import (``autoannotate.exchange.labelstudio``): exact golden config and task text, the
round trip through an export a person edited, and hostile exports.

``label-studio-sdk`` (Label Studio's own validator) cannot be installed beside this project's pins (it downgrades
numpy and installs a second OpenCV), so ``_label_studio_problems`` below checks the tasks as Label Studio 1.23's
importer does (``data_import/api.py`` -> ``LabelInterface.validate_prediction``: region fields, control and object
names, region type = control tag, ``points`` pairs within [0, 100], labels of the control, scores within [0, 1]).
``scripts/labelstudio_integration.py`` checks the same files against a real Label Studio."""

from __future__ import annotations

import copy
import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
from helpers import fake_run_dir

from autoannotate.dataset.yolo_seg import format_unit_values, parse_label_file
from autoannotate.errors import InputError
from autoannotate.exchange.labelstudio import (
    CONFIG_FILE,
    TASKS_FILE,
    export_tasks,
    format_tasks_json,
    label_colour_hex,
    label_config_xml,
    label_names,
    local_files_url,
    parse_export,
    points_pct_from_norm,
    polygon_norm_from_pct,
    read_export,
    write_export,
)
from autoannotate.review.run_view import RunView, open_run

NAMES = {0: "person", 1: "car"}
# A non-square image (40 x 30) with two instances; the second's figures have no sam_iou, so it scores det_conf.
LABEL_A = (
    "0 0.100000 0.200000 0.500000 0.200000 0.500000 0.900000\n1 0.012345 0.000000 1.000000 0.000000 0.987655 0.999999\n"
)
# A YOLO "merge" polygon: a hole joined to the outline by a zero-width cut (points repeated).
LABEL_MERGE = (
    "0 0.100000 0.100000 0.900000 0.100000 0.900000 0.900000 0.100000 0.900000 0.100000 0.100000 0.400000 0.400000"
    " 0.600000 0.400000 0.600000 0.600000 0.400000 0.600000 0.400000 0.400000 0.100000 0.100000\n"
)


def _dataset(tmp_path: Path) -> RunView:
    out = fake_run_dir(
        tmp_path / "ds",
        {"a.png": LABEL_A, "sub dir/b#1.png": LABEL_MERGE, "neg.png": ""},
        NAMES,
        sizes_wh={"a.png": (40, 30), "sub dir/b#1.png": (64, 48), "neg.png": (30, 20)},
        figures={"a.png": [{"line": 2, "sam_iou": None, "det_conf": 0.5}]},
    )
    return open_run(out)


# --- the config ---------------------------------------------------------------------------------------------------


def test_label_config_golden() -> None:
    assert label_config_xml(NAMES) == (
        "<View>\n"
        '  <Image name="image" value="$image" zoom="true" zoomControl="true"/>\n'
        '  <PolygonLabels name="label" toName="image" strokeWidth="2" pointSize="small" opacity="0.4">\n'
        '    <Label value="person" background="#F25555"/>\n'
        '    <Label value="car" background="#5583F2"/>\n'
        "  </PolygonLabels>\n"
        "</View>\n"
    )


def test_label_config_escapes_names_and_keeps_them_distinct() -> None:
    names = {0: 'a "quoted" <tag> & co', 1: "dup", 2: "dup", 3: " ", 5: "café"}
    root = ET.fromstring(label_config_xml(names))
    values = [label.get("value") for label in root.iter("Label")]
    assert values == ['a "quoted" <tag> & co', "dup (1)", "dup (2)", "class 3", "café"]
    colours = [label.get("background") for label in root.iter("Label")]
    assert len(set(colours)) == len(colours)
    assert label_names(names)[2] == "dup (2)"


def test_label_config_refuses_control_characters() -> None:
    with pytest.raises(InputError, match=r"class 0 name .* control character"):
        label_config_xml({0: "bad\x01name"})


def test_label_colours_are_stable_hex() -> None:
    assert [label_colour_hex(i) for i in range(3)] == ["#F25555", "#5583F2", "#B1F255"]


# --- the tasks ----------------------------------------------------------------------------------------------------


def test_task_golden_for_a_non_square_image(tmp_path: Path) -> None:
    view = _dataset(tmp_path)
    tasks = export_tasks(view)
    assert [t["data"]["autoannotate_label"] for t in tasks] == [
        "labels/a.txt",
        "labels/neg.txt",
        "labels/sub dir/b#1.txt",
    ]
    assert json.dumps(tasks[0]) == (
        '{"data": {"image": "/data/local-files/?d=ds/images/a.png", "autoannotate_label": "labels/a.txt"},'
        ' "predictions": [{"model_version": "autoannotate test: yolo11x.pt + mobile_sam.pt", "score": 0.7, "result": ['
        '{"id": "L1", "from_name": "label", "to_name": "image", "type": "polygonlabels", "original_width": 40,'
        ' "original_height": 30, "image_rotation": 0, "value": {"points": [[10.0, 20.0], [50.0, 20.0], [50.0, 90.0]],'
        ' "closed": true, "polygonlabels": ["person"]}, "score": 0.9}, '
        '{"id": "L2", "from_name": "label", "to_name": "image", "type": "polygonlabels", "original_width": 40,'
        ' "original_height": 30, "image_rotation": 0, "value": {"points": [[1.2345, 0.0], [100.0, 0.0],'
        ' [98.7655, 99.9999]], "closed": true, "polygonlabels": ["car"]}, "score": 0.5}]}]}'
    )


def test_negative_image_gets_an_empty_prediction_and_quoted_url(tmp_path: Path) -> None:
    view = _dataset(tmp_path)
    negative, merged = export_tasks(view)[1:]
    assert negative["predictions"] == [{"model_version": "autoannotate test: yolo11x.pt + mobile_sam.pt", "result": []}]
    assert merged["data"]["image"] == "/data/local-files/?d=ds/images/sub%20dir/b%231.png"
    points = merged["predictions"][0]["result"][0]["value"]["points"]
    assert len(points) == 11 and points[0] == points[4] == points[10] == [10.0, 10.0]  # the cut's repeated points


def test_edited_line_has_no_score(tmp_path: Path) -> None:
    view = _dataset(tmp_path)
    (view.output_dir / "labels" / "a.txt").write_text(LABEL_A.splitlines()[0] + "\n", encoding="utf-8")
    task = export_tasks(open_run(view.output_dir))[0]
    assert "score" not in task["predictions"][0] and "score" not in task["predictions"][0]["result"][0]


@pytest.mark.parametrize(
    ("image_root", "expected"),
    [
        ("https://bucket/ds/images/", "https://bucket/ds/images/sub%20dir/b%231.png"),  # segments quoted
        ("https://bucket/ds/images", "https://bucket/ds/images/sub%20dir/b%231.png"),  # a "/" put between
        ("/data/local-files/?d=ds/images/", "/data/local-files/?d=ds/images/sub%20dir/b%231.png"),
        ("/data/local-files/?d=", "/data/local-files/?d=sub%20dir/b%231.png"),  # ends in "=": nothing put between
        ("s3://bucket/x/", "s3://bucket/x/sub%20dir/b%231.png"),
    ],
)
def test_image_root_prefixes_the_path_below_images(tmp_path: Path, image_root: str, expected: str) -> None:
    tasks = export_tasks(_dataset(tmp_path), image_root=image_root)
    assert tasks[2]["data"]["image"] == expected


def test_local_files_url_keeps_symlinks_and_checks_the_root(tmp_path: Path) -> None:
    originals = tmp_path / "originals"
    originals.mkdir()
    (originals / "x.png").write_bytes(b"png")
    out = tmp_path / "root" / "run"
    (out / "images" / "a").mkdir(parents=True)
    (out / "images" / "a" / "x.png").symlink_to(originals / "x.png")  # served through the link, never resolved
    rel = PurePosixPath("images/a/x.png")
    assert local_files_url(out, rel, tmp_path / "root") == "/data/local-files/?d=run/images/a/x.png"
    assert local_files_url(out, rel, tmp_path) == "/data/local-files/?d=root/run/images/a/x.png"
    linked = tmp_path / "linked_root"
    linked.symlink_to(tmp_path / "root")  # OUT reached through a linked parent, the root given resolved
    assert local_files_url(linked / "run", rel, tmp_path / "root") == "/data/local-files/?d=run/images/a/x.png"
    for bad_root in (out / "images", originals, out / "images" / "a"):  # the storage must lie strictly below it
        with pytest.raises(InputError, match="not below the document root"):
            local_files_url(out, rel, bad_root)


def test_export_refuses_a_class_without_a_name(tmp_path: Path) -> None:
    out = fake_run_dir(tmp_path / "ds", {"a.png": "7 0.1 0.1 0.5 0.1 0.5 0.5\n"}, NAMES)
    with pytest.raises(InputError, match=r"labels/a\.txt line 1: class id 7 has no name"):
        export_tasks(open_run(out))


def test_write_export_writes_what_build_formats(tmp_path: Path) -> None:
    view = _dataset(tmp_path)
    files = write_export(view, tmp_path / "exports")
    assert (
        files.tasks_path == tmp_path / "exports" / TASKS_FILE
        and files.config_path == tmp_path / "exports" / CONFIG_FILE
    )
    assert files.tasks_path.read_text(encoding="utf-8") == format_tasks_json(export_tasks(view)) == files.tasks_json
    assert files.config_path.read_text(encoding="utf-8") == label_config_xml(NAMES)
    assert (files.tasks, files.instances) == (3, 3)
    assert format_tasks_json([{"data": {"image": "é"}}]) == '[\n {\n  "data": {\n   "image": "é"\n  }\n }\n]\n'


def _label_studio_problems(tasks: list[dict[str, Any]], config_xml: str) -> list[str]:
    """What Label Studio 1.23's importer (``LabelInterface.validate_prediction``) would reject in ``tasks``."""
    root = ET.fromstring(config_xml)
    objects = {tag.get("name"): tag for tag in root.iter() if tag.get("value", "").startswith("$")}
    controls = {tag.get("name"): tag for tag in root.iter() if tag.get("toName")}
    problems = []
    for t, task in enumerate(tasks):
        if not isinstance(task.get("data"), dict):
            problems.append(f"task {t}: no data object")
            continue
        for obj in objects.values():
            if not task["data"].get(obj.get("value", "")[1:]):
                problems.append(f"task {t}: data lacks {obj.get('value')}")
        for p, prediction in enumerate(task.get("predictions", [])):
            where = f"task {t} prediction {p}"
            if not isinstance(prediction.get("result"), list):
                problems.append(f"{where}: result is not a list")
                continue
            score = prediction.get("score")
            if score is not None and not 0.0 <= float(score) <= 1.0:
                problems.append(f"{where}: score {score} outside [0, 1]")
            if not isinstance(prediction.get("model_version", ""), str):
                problems.append(f"{where}: model_version is not text")
            ids = [region.get("id") for region in prediction["result"]]
            if len(set(ids)) != len(ids) or not all(isinstance(i, str) and i for i in ids):
                problems.append(f"{where}: region ids are not distinct strings")
            for r, region in enumerate(prediction["result"]):
                missing = [k for k in ("from_name", "to_name", "type", "value") if k not in region]
                if missing:
                    problems.append(f"{where} region {r}: missing {missing}")
                    continue
                control = controls.get(region["from_name"])
                if control is None or region["to_name"] not in control.get("toName", "").split(","):
                    problems.append(f"{where} region {r}: from_name/to_name not in the config")
                    continue
                if region["type"].lower() != control.tag.lower():
                    problems.append(f"{where} region {r}: type {region['type']} is not {control.tag.lower()}")
                value = region["value"]
                points = value.get("points")
                if not isinstance(points, list) or len(points) < 3:
                    problems.append(f"{where} region {r}: points is not a list of 3 or more")
                elif not all(
                    isinstance(pt, list) and len(pt) == 2 and all(isinstance(v, float) and 0 <= v <= 100 for v in pt)
                    for pt in points
                ):
                    problems.append(f"{where} region {r}: a point is not [x, y] within [0, 100]")
                allowed = {label.get("value") for label in control.iter("Label")}
                chosen = value.get(control.tag.lower())
                if not isinstance(chosen, list) or not chosen or not set(chosen) <= allowed:
                    problems.append(f"{where} region {r}: labels {chosen} not of the control")
                if "score" in region and not 0.0 <= float(region["score"]) <= 1.0:
                    problems.append(f"{where} region {r}: score outside [0, 1]")
                for key in ("original_width", "original_height"):
                    if key in region and not (isinstance(region[key], int) and region[key] > 0):
                        problems.append(f"{where} region {r}: {key} is not a positive int")
    return problems


def test_exported_tasks_pass_label_studios_import_checks(tmp_path: Path) -> None:
    view = _dataset(tmp_path)
    tasks = json.loads(format_tasks_json(export_tasks(view)))
    assert _label_studio_problems(tasks, label_config_xml(view.names)) == []
    # the validator does catch what Label Studio rejects
    broken = copy.deepcopy(tasks)
    broken[0]["predictions"][0]["result"][0]["value"]["polygonlabels"] = ["truck"]
    broken[0]["predictions"][0]["result"][1]["value"]["points"][0] = [100.5, 3.0]
    broken[0]["predictions"][0]["score"] = 1.2
    assert len(_label_studio_problems(broken, label_config_xml(view.names))) == 3


# --- exactness ----------------------------------------------------------------------------------------------------


def test_every_six_decimal_value_survives_percent_and_back() -> None:
    values = np.arange(0, 10**6 + 1, dtype=np.int64) / 10**6
    polygon = np.stack([values, values[::-1]], axis=1)
    pct = points_pct_from_norm(polygon)
    # through JSON's shortest repr, as Label Studio stores and returns them
    pct = np.array(json.loads(json.dumps(pct.tolist())))
    assert np.all(np.abs(pct * 10**4 - np.rint(pct * 10**4)) < 1e-6)  # 4 decimals of percent
    assert format_unit_values(polygon_norm_from_pct(pct).reshape(-1)) == format_unit_values(polygon.reshape(-1))


# --- import -------------------------------------------------------------------------------------------------------


def _annotation(result: list[dict[str, Any]], annotation_id: int, updated_at: str, cancelled: bool = False) -> dict:
    return {
        "id": annotation_id,
        "completed_by": 1,
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": "2026-01-01T10:00:00.000000Z",
        "updated_at": updated_at,
        "lead_time": 12.5,
        "task": 0,
        "project": 1,
        "prediction": {},
    }


def _as_exported(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What Label Studio's JSON export holds for imported ``tasks`` before anyone annotates: ids, no annotations,
    predictions by id."""
    out = []
    for number, task in enumerate(tasks, start=1):
        out.append(
            {
                "id": number,
                "annotations": [],
                "file_upload": None,
                "drafts": [],
                "predictions": [100 + number],
                "data": copy.deepcopy(task["data"]),
                "meta": {},
                "created_at": "2026-01-01T09:00:00.000000Z",
                "updated_at": "2026-01-01T09:00:00.000000Z",
                "inner_id": number,
                "total_annotations": 0,
                "cancelled_annotations": 0,
                "total_predictions": 1,
                "project": 1,
            }
        )
    return out


def _rectangle(x: float, y: float, w: float, h: float, label: str, rotation: float = 0) -> dict[str, Any]:
    return {
        "id": "new1",
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": 40,
        "original_height": 30,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": [label]},
        "origin": "manual",
    }


def _read(tmp_path: Path, export: list[Any], view: RunView) -> Any:
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export), encoding="utf-8")
    return read_export(path, view)


def _texts(label: Any) -> list[str]:
    return [f"{c} " + format_unit_values(p.reshape(-1)) for c, p in label.instances]


def test_round_trip_of_a_persons_edits(tmp_path: Path) -> None:
    view = _dataset(tmp_path)
    tasks = export_tasks(view)
    export = _as_exported(tasks)
    # task a: one point moved, the second instance deleted, a box added
    edited = copy.deepcopy(tasks[0]["predictions"][0]["result"])
    edited[0]["value"]["points"][2] = [55.5, 88.25]
    del edited[1]
    edited.append(_rectangle(10.0, 20.0, 30.0, 50.0, "car"))
    export[0]["annotations"] = [_annotation(edited, 7, "2026-01-02T10:00:00.000000Z")]
    # task b (the merge polygon): accepted as predicted
    accepted = copy.deepcopy(tasks[2]["predictions"][0]["result"])
    export[2]["annotations"] = [_annotation(accepted, 8, "2026-01-02T10:00:00.000000Z")]
    # the negative: not annotated, so not imported

    found = _read(tmp_path, export, view)
    assert found.warnings == ()
    assert [label.label_key for label in found.labels] == ["labels/a.txt", "labels/sub dir/b#1.txt"]
    a, b = found.labels
    assert _texts(a) == [
        "0 0.100000 0.200000 0.500000 0.200000 0.555000 0.882500",
        "1 0.100000 0.200000 0.400000 0.200000 0.400000 0.700000 0.100000 0.700000",
    ]
    assert _texts(b) == [LABEL_MERGE.strip()]  # unchanged: the same 6-decimal text, repeated points kept
    assert [x[0] for x in parse_label_file(LABEL_MERGE)] == [c for c, _ in b.instances]
    assert all(p.dtype == np.float64 and p.shape[1] == 2 for _, p in a.instances)

    reading = parse_export(json.loads((tmp_path / "export.json").read_text()), view)
    assert (reading.tasks, reading.not_annotated) == (3, 1)


def test_unchanged_polygons_give_back_the_label_text(tmp_path: Path) -> None:
    view = _dataset(tmp_path)
    tasks = export_tasks(view)
    export = _as_exported(tasks)
    for task, exported in zip(tasks, export, strict=True):
        exported["annotations"] = [_annotation(task["predictions"][0]["result"], 1, "2026-01-02T00:00:00Z")]
    found = _read(tmp_path, export, view)
    for label in found.labels:
        text = (view.output_dir / label.label_key).read_text(encoding="utf-8")
        assert "".join(line + "\n" for line in _texts(label)) == text
    assert found.labels[1].instances == ()  # the negative stays negative


def test_cancelled_annotations_are_ignored_and_the_latest_wins(tmp_path: Path) -> None:
    view = _dataset(tmp_path)
    tasks = export_tasks(view)
    export = _as_exported(tasks)
    first = copy.deepcopy(tasks[0]["predictions"][0]["result"][:1])
    later = copy.deepcopy(first)
    later[0]["value"]["points"][0] = [1.0, 2.0]
    skipped = copy.deepcopy(first)
    skipped[0]["value"]["points"][0] = [3.0, 4.0]
    export[0]["annotations"] = [
        _annotation(later, 5, "2026-03-01T00:00:00.000000Z"),  # the latest that was not cancelled
        _annotation(first, 9, "2026-02-01T00:00:00.000000Z"),  # a higher id, but older
        _annotation(skipped, 11, "2026-04-01T00:00:00.000000Z", cancelled=True),
    ]
    export[1]["annotations"] = [_annotation([], 12, "2026-04-01T00:00:00Z", cancelled=True)]  # skipped only
    found = parse_export(export, view)
    assert [label.label_key for label in found.imported.labels] == ["labels/a.txt"]
    assert _texts(found.imported.labels[0]) == ["0 0.010000 0.020000 0.500000 0.200000 0.500000 0.900000"]
    assert (found.tasks, found.not_annotated, found.imported.warnings) == (3, 2, ())


def test_an_empty_result_is_a_reviewed_negative(tmp_path: Path) -> None:
    view = _dataset(tmp_path)
    export = _as_exported(export_tasks(view))
    export[0]["annotations"] = [_annotation([], 3, "2026-01-02T00:00:00Z")]
    found = parse_export(export, view).imported
    assert [(label.label_key, label.instances) for label in found.labels] == [("labels/a.txt", ())]


def test_tasks_map_back_by_url_without_the_label_key(tmp_path: Path) -> None:
    view = _dataset(tmp_path)
    result = [_rectangle(0.0, 0.0, 50.0, 50.0, "person")]
    urls = [
        "/data/local-files/?d=ds/images/sub%20dir/b%231.png",
        "https://bucket/data/sub%20dir/b%231.png",
        "/data/upload/3/0a1b2c3d-a.png",  # an upload: Label Studio prefixed the name
    ]
    export = [
        {"id": n, "data": {"image": url}, "annotations": [_annotation(result, n, "2026-01-02T00:00:00Z")]}
        for n, url in enumerate(urls, start=1)
    ]
    found = parse_export(export[:1] + export[2:], view).imported
    assert [label.label_key for label in found.labels] == ["labels/sub dir/b#1.txt", "labels/a.txt"]
    found = parse_export(export[1:2], view).imported
    assert [label.label_key for label in found.labels] == ["labels/sub dir/b#1.txt"]


def test_two_tasks_of_one_image_take_the_later_answer(tmp_path: Path) -> None:
    view = _dataset(tmp_path)
    tasks = export_tasks(view)
    export = _as_exported(tasks[:1] + tasks[:1])
    export[0]["annotations"] = [_annotation([], 1, "2026-01-03T00:00:00Z")]
    export[1]["annotations"] = [_annotation(tasks[0]["predictions"][0]["result"], 2, "2026-01-02T00:00:00Z")]
    found = parse_export(export, view).imported
    assert [(label.label_key, label.instances) for label in found.labels] == [("labels/a.txt", ())]
    assert found.warnings == ("task 2: same image as task 1 (labels/a.txt), answered later; skipped",)


def _one_task_export(tmp_path: Path, result: list[Any], data: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    view = _dataset(tmp_path)
    export = _as_exported(export_tasks(view))[:1]
    export[0]["id"] = 41
    if data is not None:
        export[0]["data"] = data
    export[0]["annotations"] = [_annotation(result, 1, "2026-01-02T00:00:00Z")]
    return export


def _polygon(points: list[list[float]], label: str = "person", kind: str = "polygonlabels") -> dict[str, Any]:
    return {
        "id": "p",
        "from_name": "label",
        "to_name": "image",
        "type": kind,
        "value": {"points": points, kind: [label]},
    }


TRIANGLE = [[10.0, 10.0], [50.0, 10.0], [50.0, 50.0]]


@pytest.mark.parametrize(
    ("result", "data", "warning"),
    [
        # a label that is not a class of the dataset: the whole task is skipped
        ([_polygon(TRIANGLE), _polygon(TRIANGLE, "truck")], None, "region 2 label 'truck' is not a class"),
        # a 2-point polygon
        ([_polygon(TRIANGLE[:2])], None, "region 1 polygon has 2 points; at least 3 needed"),
        # a rotated rectangle
        ([_rectangle(10, 10, 20, 20, "car", rotation=30)], None, "region 1 rectangle is rotated (30 degrees)"),
        # an empty rectangle
        ([_rectangle(10, 10, 0, 20, "car")], None, "region 1 rectangle is empty (0 x 20 percent)"),
        # a brush stroke: a shape that is not a polygon
        (
            [{"type": "brushlabels", "value": {"rle": [1, 2], "brushlabels": ["car"]}}],
            None,
            "region 1 is a brushlabels",
        ),
        # two labels on one region
        ([_polygon(TRIANGLE) | {"value": {"points": TRIANGLE, "polygonlabels": ["person", "car"]}}], None, "2 labels"),
        # points that are not [x, y] numbers
        ([_polygon([[1, 2], [3], [4, 5]])], None, "region 1 has no 'points' list of [x, y] numbers"),
        ([_polygon([[1, 2], [3, math.nan], [4, 5]])], None, "not a finite number"),
        # a task of an image this dataset does not have
        ([_polygon(TRIANGLE)], {"image": "/x.png", "autoannotate_label": "labels/other.txt"}, "is not in this"),
        ([_polygon(TRIANGLE)], {"image": "https://elsewhere/zzz.png"}, "image 'https://elsewhere/zzz.png' is not in"),
    ],
)
def test_a_task_that_cannot_be_taken_whole_is_skipped(
    tmp_path: Path, result: list[Any], data: dict[str, Any] | None, warning: str
) -> None:
    view = _dataset(tmp_path)
    found = _read(tmp_path, _one_task_export(tmp_path / "x", result, data), view)
    assert found.labels == ()
    assert len(found.warnings) == 1 and found.warnings[0].startswith("task 41")
    assert warning in found.warnings[0] and found.warnings[0].endswith("skipped")


def test_regions_without_a_shape_are_ignored(tmp_path: Path) -> None:
    view = _dataset(tmp_path)
    choices = {"id": "c", "from_name": "quality", "to_name": "image", "type": "choices", "value": {"choices": ["ok"]}}
    relation = {"from_id": "p", "to_id": "q", "type": "relation", "direction": "right"}
    found = _read(tmp_path, _one_task_export(tmp_path / "x", [choices, _polygon(TRIANGLE), relation]), view)
    assert found.warnings == () and _texts(found.labels[0]) == [
        "0 0.100000 0.100000 0.500000 0.100000 0.500000 0.500000"
    ]


def test_points_outside_the_image_are_clipped(tmp_path: Path) -> None:
    view = _dataset(tmp_path)
    found = _read(
        tmp_path, _one_task_export(tmp_path / "x", [_polygon([[-1.0, 5.0], [101.0, 5.0], [50.0, 100.5]])]), view
    )
    assert _texts(found.labels[0]) == ["0 0.000000 0.050000 1.000000 0.050000 0.500000 1.000000"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "is not JSON (Expecting property name"),  # not JSON
        (b"\xff\xfe\x00garbage", "is not UTF-8 text"),  # not text
        (b'{"tasks": []}', "holds a JSON dict, not a list of tasks"),  # a dict instead of a list
        (b'["a", "b"]', "item 0 is a str, not a task object"),
        (b'[{"data": {"image": "x"}, "predictions": []}]', "no 'annotations' in any task"),  # our own tasks file
        (b'[{"id": 3, "data": {}, "annotations": {"result": []}}]', "task 3 has 'annotations' of type dict"),
        (b'[{"id": 3, "data": {}, "annotations": [{"id": 1}]}]', "task 3 has an annotation without a 'result' list"),
        (b'[{"id": 3, "data": {}, "annotations": [7]}]', "task 3 has an annotation of type int"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    ],
)
def test_hostile_exports_raise_one_line_input_errors(tmp_path: Path, content: bytes, message: str) -> None:
    view = _dataset(tmp_path)
    path = tmp_path / "export.json"
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        read_export(path, view)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_missing_export_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_export(tmp_path / "nope.json", _dataset(tmp_path))


def test_an_empty_export_imports_nothing(tmp_path: Path) -> None:
    reading = parse_export([], _dataset(tmp_path))
    assert (reading.imported.labels, reading.imported.warnings, reading.tasks) == ((), (), 0)


@pytest.mark.skipif(os.name != "posix", reason="symlinked images")
def test_symlinked_images_export_through_their_links(tmp_path: Path) -> None:
    view = _dataset(tmp_path)
    originals = tmp_path / "originals"
    originals.mkdir()
    image = view.output_dir / "images" / "a.png"
    image.rename(originals / "a.png")
    image.symlink_to(originals / "a.png")
    task = export_tasks(open_run(view.output_dir))[0]
    assert task["data"]["image"] == "/data/local-files/?d=ds/images/a.png"
    assert task["predictions"][0]["result"][0]["original_width"] == 40

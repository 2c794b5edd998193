"""Open-vocabulary runs: text prompts, saved embeddings, visual exemplars (random-weight YOLOE, offline), and
``--agnostic-nms``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from helpers import json_events, synthetic_scene_bgr, write_stand_in_text_encoder
from typer.testing import CliRunner

from autoannotate.cli import app
from autoannotate.config import DEFAULT_DETECTOR, DEFAULT_OPEN_VOCAB_DETECTOR, build_settings
from autoannotate.errors import ConfigError
from autoannotate.prompts.nms import suppress_across_classes
from autoannotate.prompts.text_encoder import import_clip
from autoannotate.types import Detections

PROMPTS = ["person", "forklift", "pallet"]
SIZES = [(96, 128), (128, 96), (80, 120)]


def _images(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"im{i}.jpg"), synthetic_scene_bgr(SIZES[i % len(SIZES)], seed=i))
    return folder


def _embeddings(weights: Path, names: list[str], path: Path, seed: int = 0) -> Path:
    """Random class embeddings for ``names``, saved by ultralytics' own ``save_prompt_embeddings``."""
    import torch
    from ultralytics import YOLOE

    model = YOLOE(str(weights))
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(1, len(names), 512, generator=generator)
    model.set_classes(names, torch.nn.functional.normalize(vectors, dim=-1))  # unit length, as CLIP's are
    return model.save_prompt_embeddings(path)


def _run(args: list[str]) -> tuple[int, list[dict], str]:
    result = CliRunner().invoke(app, ["run", *args, "--json"])
    return result.exit_code, json_events(result.stdout) if result.exit_code in (0, 1) else [], result.output


def _model_args(weights: Path, sam: Path, max_det: int = 4, conf: str = "1e-4") -> list[str]:
    return ["--det-model", str(weights), "--sam-model", str(sam), "--conf", conf, "--max-det", str(max_det)]


def _cli_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a child with no way out to the network (requests goes through a dead proxy) and a fresh
    ultralytics settings dir: what an offline machine sees."""
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    env["YOLO_CONFIG_DIR"] = str(cwd / "ultralytics-config")
    return subprocess.run(
        [sys.executable, "-m", "autoannotate.cli", "run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _verify_dataset(data_yaml: Path, nc: int) -> int:
    """Every label passes ultralytics' own ``verify_image_label`` with ``nc`` classes; returns the instances."""
    from ultralytics.data.utils import check_det_dataset, img2label_paths, verify_image_label

    dataset = check_det_dataset(str(data_yaml), autodownload=False)
    images = sorted(p for p in Path(dataset["train"]).rglob("*.jpg"))
    instances = 0
    for image, label in zip(images, img2label_paths([str(p) for p in images]), strict=True):
        _, lb, _, segments, _, _, found, _, corrupt, message = verify_image_label(
            (str(image), label, "", False, nc, 0, 0, False)
        )
        assert corrupt == 0 and found == 1, message
        assert len(segments) == len(lb)
        instances += len(lb)
    return instances


def test_prompts_with_saved_embeddings_give_the_prompts_as_classes(
    tmp_path: Path, yoloe_weights: Path, mobile_sam_weights: Path
):
    npz = _embeddings(yoloe_weights, PROMPTS, tmp_path / "pe.npz")
    data = _images(tmp_path / "imgs")
    code, events, output = _run(
        ["--data", str(data), *_model_args(yoloe_weights, mobile_sam_weights), "--prompts", ",".join(PROMPTS)]
        + ["--prompt-embeddings", str(npz)]
    )
    assert code == 0, output
    summary = events[-1]
    assert summary["prompts"] == PROMPTS and summary["instances"] == 12
    out = Path(summary["output_dir"])
    assert yaml.safe_load(Path(summary["data_yaml"]).read_text())["names"] == dict(enumerate(PROMPTS))
    classes = {int(line.split()[0]) for p in (out / "labels").glob("*.txt") for line in p.read_text().splitlines()}
    assert classes and classes <= {0, 1, 2}
    assert _verify_dataset(Path(summary["data_yaml"]), nc=3) == 12
    manifest = json.loads((out / "autoannotate.json").read_text())
    assert manifest["prompts"]["source"] == "embeddings" and manifest["prompts"]["names"] == PROMPTS
    assert manifest["label_settings"]["prompts"]["names"] == PROMPTS
    assert not (out / "prompt_embeddings.npz").exists()  # loaded from the user's file: nothing to save


@pytest.mark.parametrize(("classes", "lines"), [("Person", 6), ("forklift", 0)])
def test_classes_filter_by_prompt_name(
    tmp_path: Path, yoloe_weights: Path, mobile_sam_weights: Path, classes: str, lines: int
):
    """A random-weight YOLOE scores every class alike, and ultralytics then gives each box the first class: the
    filter by name keeps all (person, id 0) or none (forklift, id 1)."""
    npz = _embeddings(yoloe_weights, PROMPTS, tmp_path / "pe.npz")
    data = _images(tmp_path / "imgs", 2)
    code, events, output = _run(
        ["--data", str(data), *_model_args(yoloe_weights, mobile_sam_weights, max_det=3)]
        + ["--prompt-embeddings", str(npz), "--classes", classes]
    )
    assert code == 0, output
    out = Path(events[-1]["output_dir"])
    written = [line for p in (out / "labels").glob("*.txt") for line in p.read_text().splitlines()]
    assert len(written) == lines and {line.split()[0] for line in written} <= {"0"}
    assert json.loads((out / "autoannotate.json").read_text())["label_settings"]["classes"] == [
        PROMPTS.index(classes.lower())
    ]


def test_an_unknown_class_of_the_prompts_is_one_line(tmp_path: Path, yoloe_weights: Path, mobile_sam_weights: Path):
    npz = _embeddings(yoloe_weights, PROMPTS, tmp_path / "pe.npz")
    data = _images(tmp_path / "imgs", 1)
    code, _, output = _run(
        ["--data", str(data), *_model_args(yoloe_weights, mobile_sam_weights)]
        + ["--prompt-embeddings", str(npz), "--classes", "7"]
    )
    assert code == 2 and output == "error: invalid --classes id 7: --prompts has ids 0..2\n", output


def test_text_prompts_are_embedded_once_saved_and_reloadable_offline(
    tmp_path: Path, yoloe_weights: Path, mobile_sam_weights: Path
):
    """The whole text path, offline: YOLOE's text encoder file (a random-weight stand-in of MobileCLIP2 in the
    working directory, where ultralytics looks first) embeds the prompts of a --prompts-file; the run saves them in
    ultralytics' format; a rerun without the encoder loads them with --prompt-embeddings and skips every image."""
    from ultralytics import YOLOE

    work = tmp_path / "work"
    _images(work / "imgs")
    encoder = write_stand_in_text_encoder(work / "mobileclip2_b.ts")
    (work / "names.txt").write_text("# classes\nperson\n\n  forklift \npallet\n")
    out = work / "ds"
    args = ["--data", "imgs", *_model_args(yoloe_weights, mobile_sam_weights), "--output-dir", "ds", "--json"]
    first = _cli_process([*args, "--prompts-file", "names.txt"], work)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.splitlines()[-1])["prompts"] == PROMPTS
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == dict(enumerate(PROMPTS))

    saved = out / "prompt_embeddings.npz"
    oracle = YOLOE(str(yoloe_weights))  # ultralytics itself reads the file, and embeds the same prompts alike
    oracle.load_prompt_embeddings(saved)
    assert list(oracle.names.values()) == PROMPTS
    import_clip()  # the tokeniser, as the run imports it
    cwd = Path.cwd()
    os.chdir(work)
    try:
        expected = YOLOE(str(yoloe_weights)).get_text_pe(PROMPTS).float().numpy()
    finally:
        os.chdir(cwd)
    np.testing.assert_allclose(np.load(saved)["embeddings"], expected, atol=1e-5)
    manifest = json.loads((out / "autoannotate.json").read_text())
    assert manifest["prompts"]["source"] == "text" and manifest["prompts"]["text_encoder"] == "mobileclip2_b.ts"
    assert "prompt_embeddings.npz" in manifest["files"]

    encoder.unlink()  # offline, and no encoder: the saved file stands in for it
    rerun = _cli_process([*args, "--prompts", ",".join(PROMPTS), "--prompt-embeddings", str(saved)], work)
    assert rerun.returncode == 0, rerun.stderr
    statuses = [e["status"] for e in json_events(rerun.stdout) if e["event"] == "image"]
    assert statuses == ["skipped"] * 3  # the same classes, embedded now or loaded: the same labels

    changed = _cli_process([*args, "--prompts", "person,forklift,crate"], work)  # a changed word, no encoder
    assert changed.returncode == 2
    assert changed.stderr.count("\n") == 1 and "mobileclip2_b.ts" in changed.stderr
    assert "--prompt-embeddings" in changed.stderr and "Traceback" not in changed.stderr


def test_a_changed_word_redoes_the_run(tmp_path: Path, yoloe_weights: Path, mobile_sam_weights: Path):
    data = _images(tmp_path / "imgs", 2)
    base = ["--data", str(data), *_model_args(yoloe_weights, mobile_sam_weights, max_det=2)]
    first = _embeddings(yoloe_weights, PROMPTS, tmp_path / "a.npz")
    assert _run([*base, "--prompt-embeddings", str(first)])[0] == 0
    code, events, _ = _run([*base, "--prompt-embeddings", str(first)])
    assert code == 0 and events[-1]["skipped"] == 2
    other = _embeddings(yoloe_weights, ["person", "forklift", "crate"], tmp_path / "b.npz")
    code, events, output = _run([*base, "--prompt-embeddings", str(other)])
    assert code == 0 and events[-1]["skipped"] == 0 and events[-1]["labeled"] == 2, output
    assert "settings changed" in output


@pytest.mark.parametrize("case", ["other-prompts", "other-model", "not-npz", "closed-set"])
def test_mismatched_embeddings_and_models_are_one_line(
    tmp_path: Path, yoloe_weights: Path, mobile_sam_weights: Path, yolo_weights: Path, case: str
):
    npz = _embeddings(yoloe_weights, PROMPTS, tmp_path / "pe.npz")
    weights = yoloe_weights
    args = ["--prompt-embeddings", str(npz)]
    if case == "other-prompts":
        args += ["--prompts", "person,pallet,forklift"]  # the same words in another order are other class ids
    elif case == "other-model":
        weights = tmp_path / "yoloe-26s-seg.pt"  # another checkpoint (ultralytics binds embeddings by name)
        shutil.copy(yoloe_weights, weights)
    elif case == "not-npz":
        npz.write_bytes(b"not an npz")
    else:
        weights = yolo_weights  # YOLO11n: its classes are fixed
    data = _images(tmp_path / "imgs", 1)
    code, _, output = _run(["--data", str(data), *_model_args(weights, mobile_sam_weights), *args])
    assert code == 2, output
    assert output.count("\n") == 1 and output.startswith("error: ") and "Traceback" not in output
    expected = {
        "other-prompts": "holds the prompts 'person,forklift,pallet'",
        "other-model": "made for model 'yoloe-26n', not 'yoloe-26s'",
        "not-npz": "not a readable .npz",
        "closed-set": "has a fixed set of classes",
    }[case]
    assert expected in output
    assert not (data.parent / "imgs_auto_annotate" / "labels").exists()


def _exemplars(root: Path, box_w: float = 0.4) -> Path:
    """A small detection dataset: images/ and labels/ mirroring them, two classes, and its data.yaml."""
    (root / "images" / "sub").mkdir(parents=True)
    (root / "labels" / "sub").mkdir(parents=True)
    for i, rel in enumerate(["a.jpg", "sub/b.jpg"]):
        cv2.imwrite(str(root / "images" / rel), synthetic_scene_bgr((96, 128), seed=10 + i))
    (root / "labels" / "a.txt").write_text(f"0 0.5 0.5 {box_w} 0.4\n1 0.2 0.25 0.2 0.3\n")
    (root / "labels" / "sub" / "b.txt").write_text("1 0.6 0.6 0.3 0.3\n")
    (root / "data.yaml").write_text("names:\n  0: widget\n  1: gadget\n")
    return root


def test_exemplars_set_the_classes_resume_and_redo_on_a_changed_exemplar(
    tmp_path: Path, yoloe_weights: Path, mobile_sam_weights: Path
):
    from ultralytics import YOLOE

    exemplars = _exemplars(tmp_path / "exemplars")
    data = _images(tmp_path / "imgs")
    args = ["--data", str(data), *_model_args(yoloe_weights, mobile_sam_weights, max_det=3)]
    args += ["--exemplars", str(exemplars), "--names", str(exemplars / "data.yaml")]
    code, events, output = _run(args)
    assert code == 0, output
    summary = events[-1]
    assert summary["prompts"] == ["widget", "gadget"] and summary["labeled"] == 3
    out = Path(summary["output_dir"])
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == {0: "widget", 1: "gadget"}
    assert _verify_dataset(out / "data.yaml", nc=2) == 9
    model = YOLOE(str(yoloe_weights))  # the visual embeddings are saved in ultralytics' format too
    model.load_prompt_embeddings(out / "prompt_embeddings.npz")
    assert list(model.names.values()) == ["widget", "gadget"]
    vectors = np.load(out / "prompt_embeddings.npz")["embeddings"]
    np.testing.assert_allclose(np.linalg.norm(vectors[0], axis=1), 1.0, atol=1e-5)  # mean, L2-normalised

    code, events, _ = _run(args)
    assert code == 0 and events[-1]["skipped"] == 3
    before = json.loads((out / "autoannotate.json").read_text())["prompts"]
    (exemplars / "labels" / "a.txt").write_text("0 0.5 0.5 0.6 0.4\n1 0.2 0.25 0.2 0.3\n")  # one box changed
    code, events, output = _run(args)
    after = json.loads((out / "autoannotate.json").read_text())["prompts"]
    assert code == 0 and after["exemplars_sha256"] != before["exemplars_sha256"], output  # the change is seen
    # labels follow the embeddings the exemplars give: new embeddings redo every label. A random-weight YOLOE's
    # visual-prompt head can be saturated on some CPUs (every box gives the same vector to 1e-7): then the labels
    # cannot change, and skipping them is right
    if after["embeddings_sha256"] != before["embeddings_sha256"]:
        assert events[-1]["skipped"] == 0 and events[-1]["labeled"] == 3, output
    else:
        assert events[-1]["skipped"] == 3, output


@pytest.mark.parametrize(
    ("label", "names", "message"),
    [
        ("2 0.5 0.5 0.2 0.2\n", "names: [widget, gadget]\n", "uses class id 2, which --names lacks"),
        ("0 0.5 0.5 0.2 0.2\n", "names: [widget, gadget]\n", "no exemplar shows class 'gadget'"),
        ("", "names: [widget]\n", "has no image with a box label"),
    ],
    ids=["unknown-id", "class-without-exemplar", "no-boxes"],
)
def test_bad_exemplars_are_one_line(
    tmp_path: Path, yoloe_weights: Path, mobile_sam_weights: Path, label: str, names: str, message: str
):
    root = tmp_path / "ex"
    root.mkdir()
    cv2.imwrite(str(root / "a.jpg"), synthetic_scene_bgr((64, 64)))
    (root / "a.txt").write_text(label)  # a label beside its image
    (root / "data.yaml").write_text(names)
    data = _images(tmp_path / "imgs", 1)
    code, _, output = _run(
        ["--data", str(data), *_model_args(yoloe_weights, mobile_sam_weights)]
        + ["--exemplars", str(root), "--names", str(root / "data.yaml")]
    )
    assert code == 2 and output.count("\n") == 1 and message in output, output


def test_yolo_world_takes_saved_embeddings(tmp_path: Path, mobile_sam_weights: Path):
    """YOLO-World: the same .npz format (written here as ultralytics writes it) sets its classes. (A random
    YOLO-World scores about 5e-5, hence the lower --conf.)"""
    import torch
    from ultralytics import YOLOWorld

    torch.manual_seed(0)
    weights = tmp_path / "yolov8s-worldv2.pt"
    YOLOWorld("yolov8s-worldv2.yaml").save(str(weights))
    npz = tmp_path / "world.npz"
    vectors = torch.nn.functional.normalize(torch.randn(1, 2, 512), dim=-1).numpy()
    np.savez_compressed(npz, embeddings=vectors, names=np.asarray(["cart", "box"]), model=np.asarray("yolov8s-worldv2"))
    data = _images(tmp_path / "imgs", 2)
    code, events, output = _run(
        ["--data", str(data), *_model_args(weights, mobile_sam_weights, 2, "1e-6"), "--prompt-embeddings", str(npz)]
    )
    assert code == 0, output
    assert events[-1]["prompts"] == ["cart", "box"] and events[-1]["instances"] == 4
    assert yaml.safe_load(Path(events[-1]["data_yaml"]).read_text())["names"] == {0: "cart", 1: "box"}


# ------------------------------------------------------------------------------------------------- --agnostic-nms


def _det(boxes: list[list[float]], classes: list[int], conf: list[float]) -> Detections:
    return Detections(np.array(boxes, np.float32), np.array(classes, np.int64), np.array(conf, np.float32))


def test_suppress_across_classes_keeps_the_most_confident_of_overlapping_boxes():
    det = _det(
        [[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10.5]],
        [0, 1, 0, 2],
        [0.5, 0.9, 0.3, 0.9],
    )
    kept = suppress_across_classes(det, 0.45)
    # box 1 (0.9, first of the ties) suppresses boxes 0 and 3; box 2 overlaps nothing; input order is kept
    assert kept.class_id.tolist() == [1, 0] and kept.xyxy[:, 0].tolist() == [1, 50]
    assert len(suppress_across_classes(det, 0.99)) == 4  # nothing overlaps that much
    assert len(suppress_across_classes(Detections.empty(), 0.45)) == 0


@pytest.mark.parametrize("agnostic", [False, True])
def test_agnostic_nms_leaves_one_box_of_two_classes_on_one_object(
    tmp_path: Path, mobile_sam_weights: Path, agnostic: bool
):
    """Two classes' boxes on one object (label prompts, so no detector's own NMS is involved): two label lines,
    or one with --agnostic-nms: the first, as label boxes are equally confident."""
    data = _images(tmp_path / "ds" / "images", 1)
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    (boxes / "im0.txt").write_text("0 0.5 0.5 0.5 0.5\n1 0.52 0.5 0.5 0.5\n0 0.15 0.15 0.2 0.2\n")
    args = ["--data", str(data), "--boxes-from", str(boxes), "--sam-model", str(mobile_sam_weights)]
    args += ["--output-dir", str(tmp_path / "out")]
    code, _, output = _run(args + (["--agnostic-nms"] if agnostic else []))
    assert code == 0, output
    lines = (tmp_path / "out" / "labels" / "im0.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == (["0", "0"] if agnostic else ["0", "1", "0"])


# -------------------------------------------------------------------------------------------------------- settings


def test_the_detector_default_follows_the_class_source():
    assert build_settings(None, {"data": "x"}).prompts.det_model == DEFAULT_DETECTOR
    for extra in ({"prompts": "a,b"}, {"prompts_file": "n.txt"}, {"prompt_embeddings": "e.npz"}):
        assert build_settings(None, {"data": "x", **extra}).prompts.det_model == DEFAULT_OPEN_VOCAB_DETECTOR
    given = build_settings(None, {"data": "x", "prompts": "a", "det_model": "yoloe-11s-seg.pt"})
    assert given.prompts.det_model == "yoloe-11s-seg.pt"
    assert build_settings({"prompts": ["a", "b c"]}, {"data": "x"}).prompts.prompts == ("a", "b c")  # YAML list


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prompts": "a,,b"}, "empty prompt"),
        ({"prompts": "Car,car"}, "names 'car' twice"),
        ({"prompts": "a", "exemplars": "ex", "names": "d.yaml"}, "--prompts and --exemplars both set the classes"),
        ({"prompts": "a", "prompts_file": "n.txt"}, "both set the classes"),
        ({"exemplars": "ex"}, "--exemplars needs --names"),
        ({"prompts": "a", "boxes_from": "b"}, "--boxes-from takes its boxes and classes from labels"),
        ({"names": "d.yaml"}, "--names only applies with --boxes-from, --points-from or --exemplars"),
    ],
)
def test_conflicting_class_sources_are_refused(overrides: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        build_settings(None, {"data": "x", **overrides})


def test_agnostic_nms_joins_the_fingerprint_only_when_on():
    """Added after datasets were made: off, it is absent from the label settings, so their labels still match."""
    assert "agnostic_nms" not in build_settings(None, {"data": "x"}).label_values()
    assert build_settings(None, {"data": "x", "agnostic_nms": True}).label_values()["agnostic_nms"] is True


def test_workers_get_the_saved_embeddings_in_place_of_the_class_source(tmp_path: Path):
    """What a distributed worker is given: the embeddings file the driver saved, and no prompts, exemplars or names
    to recompute them from (so no worker runs the text encoder or downloads it)."""
    from autoannotate.job import with_saved_embeddings

    for source in (
        {"prompts": "a,b"},
        {"prompts_file": "names.txt"},
        {"exemplars": "ex", "names": "ex/data.yaml"},
    ):
        settings = build_settings(None, {"data": "x", "det_model": "yoloe-11s-seg.pt", **source})
        worker = with_saved_embeddings(settings, tmp_path / "prompt_embeddings.npz").prompts
        assert worker.prompt_embeddings == str(tmp_path / "prompt_embeddings.npz")
        assert (worker.prompts, worker.prompts_file, worker.exemplars, worker.names) == (None, None, None, None)
        assert worker.det_model == "yoloe-11s-seg.pt" and worker.open_vocabulary

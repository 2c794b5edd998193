"""Round trip through a real Label Studio: export a dataset's labels with ``autoannotate.exchange.labelstudio``,
import them into a fresh local Label Studio through its REST API, check what it stored and serves, annotate one task
as a person would (one point moved), export the project, and read the corrections back with ``read_export``.

Not part of CI (Label Studio is a large install). Run by hand with this project's Python and a Label Studio installed
elsewhere, e.g.::

    python3 -m venv /tmp/lsvenv && /tmp/lsvenv/bin/pip install label-studio
    python scripts/labelstudio_integration.py --label-studio-bin /tmp/lsvenv/bin/label-studio

Without ``--output-dir`` it builds a small synthetic dataset (non-square images, a negative, a YOLO "merge" polygon
with repeated points, a file name with a space and a ``#``, images as per-file symlinks to files outside the document
root, as ``autoannotate run`` leaves them). With ``--output-dir OUT`` (a real run) it uses OUT read-only, with OUT's
parent as the document root. Label Studio runs on 127.0.0.1 at a free port with SQLite in a temporary data dir and
is stopped, and every temporary dir deleted, at the end. Prints PASS/FAIL per check; exits 1 when one fails, 2 when
Label Studio cannot be started.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autoannotate.dataset.yolo_seg import format_unit_values  # noqa: E402
from autoannotate.exchange.labelstudio import (  # noqa: E402
    local_files_url,
    parse_export,
    read_export,
    write_export,
)
from autoannotate.review.run_view import RunView, open_run  # noqa: E402

USER_EMAIL = "autoannotate@example.com"
# Label Studio's own check, run with its Python: LabelInterface is what its importer validates predictions with.
SDK_CHECK = """
import json, sys
from label_studio_sdk.label_interface import LabelInterface
config, tasks = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))
li = LabelInterface(config)
li.validate()
errors = [f"task {i}: {e}" for i, t in enumerate(tasks) for p in t["predictions"]
          for e in li.validate_prediction(p, return_errors=True)]
print(json.dumps(errors))
"""
LABEL_MERGE = (
    "0 0.100000 0.100000 0.900000 0.100000 0.900000 0.900000 0.100000 0.900000 0.100000 0.100000 0.400000 0.400000"
    " 0.600000 0.400000 0.600000 0.600000 0.400000 0.600000 0.400000 0.400000 0.100000 0.100000\n"
)
SYNTHETIC_LABELS = {
    "a.png": "0 0.100000 0.200000 0.500000 0.200000 0.500000 0.900000\n"
    "1 0.012345 0.000000 1.000000 0.000000 0.987655 0.999999\n",
    "sub dir/b#1.png": LABEL_MERGE,
    "neg.png": "",
    "c.jpg": "1 0.333333 0.250000 0.666667 0.250000 0.666667 0.750000 0.333333 0.750000\n",
}
SYNTHETIC_SIZES_WH = {"a.png": (40, 30), "sub dir/b#1.png": (64, 48), "neg.png": (30, 20), "c.jpg": (120, 90)}


@dataclass
class Checks:
    """PASS/FAIL lines as they happen, and whether all passed."""

    failed: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail and not ok else ""), flush=True)
        if not ok:
            self.failed.append(name)
        return ok


@dataclass(frozen=True)
class Api:
    """Label Studio's REST API at ``base`` (``http://127.0.0.1:PORT``) with a legacy API token."""

    base: str
    token: str

    def request(self, method: str, path: str, body: Any = None, timeout: float = 120.0) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Token {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.request(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {payload[:400]!r}")
        return json.loads(payload)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def label_studio_python(bin_path: Path) -> Path:
    """The Python of the environment ``label-studio`` is installed in (beside it, else its shebang)."""
    beside = bin_path.parent / "python"
    if beside.exists():
        return beside
    first = bin_path.read_text(encoding="utf-8", errors="replace").splitlines()[0]
    return Path(first[2:].strip().split()[0])


def build_synthetic_dataset(root: Path) -> Path:
    """``root/docroot/ds``: a run's output dir (tests/helpers.py's ``fake_run_dir``) whose images are symlinks to
    ``root/originals`` (outside the document root), as a run links them. Returns the output dir."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import fake_run_dir

    out = fake_run_dir(
        root / "docroot" / "ds",
        SYNTHETIC_LABELS,
        {0: "person", 1: "traffic light"},
        sizes_wh=SYNTHETIC_SIZES_WH,
        figures={"a.png": [{"line": 2, "sam_iou": None, "det_conf": 0.42}]},
    )
    for rel in SYNTHETIC_LABELS:
        image = out / "images" / rel
        original = root / "originals" / rel
        original.parent.mkdir(parents=True, exist_ok=True)
        image.rename(original)
        image.symlink_to(original)
    return out


def start_label_studio(
    bin_path: Path, data_dir: Path, document_root: Path, port: int, token: str, password: str, log: Path
) -> subprocess.Popen[bytes]:
    (data_dir / "home").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            # everything Label Studio writes stays below the temporary dir (it reads its data dir at import time,
            # before --data-dir is parsed, and may write below HOME)
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "HOME": str(data_dir / "home"),
            "LOCAL_FILES_SERVING_ENABLED": "true",
            "LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "CONVERTER_DOWNLOAD_RESOURCES": "false",
            # make the importer reject predictions that fail its validation (it only logs them by default)
            "fflag_feat_utc_210_prediction_validation_15082025": "true",
        }
    )
    command = [
        str(bin_path),
        "start",
        "--no-browser",
        "--data-dir",
        str(data_dir),
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--username",
        USER_EMAIL,
        "--password",
        password,
        "--user-token",
        token,
        "--enable-legacy-api-token",
    ]
    with log.open("wb") as handle:
        return subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )


def wait_until_up(api: Api, process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            status, _ = api.request("GET", "/api/version/", timeout=5)
            if status == 200:
                return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1.0)
    return False


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server we started (its own session), then SIGKILL it if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


def points_of(region: Mapping[str, Any]) -> list[list[float]]:
    return [[float(x), float(y)] for x, y in region["value"]["points"]]


def compare_tasks(
    checks: Checks, exported: list[dict[str, Any]], stored: list[dict[str, Any]], preds: list[Any]
) -> None:
    """The tasks and predictions Label Studio stored against the ones exported."""
    checks.check("task count", len(stored) == len(exported), f"{len(stored)} stored, {len(exported)} exported")
    by_key = {t["data"].get("autoannotate_label"): t for t in stored}
    checks.check(
        "every task keeps its data (image URL, label key)",
        all(by_key.get(t["data"]["autoannotate_label"], {}).get("data") == t["data"] for t in exported),
    )
    preds_by_task: dict[int, list[Any]] = {}
    for prediction in preds:
        preds_by_task.setdefault(prediction["task"], []).append(prediction)
    checks.check("one prediction per task", all(len(preds_by_task.get(t["id"], [])) == 1 for t in stored))
    same_points = same_labels = same_scores = same_versions = same_counts = same_ids = True
    for task in exported:
        ours = task["predictions"][0]
        theirs_task = by_key.get(task["data"]["autoannotate_label"])
        theirs_list = preds_by_task.get(theirs_task["id"], []) if theirs_task else []
        if len(theirs_list) != 1:
            same_counts = False
            continue
        theirs = theirs_list[0]
        same_versions &= theirs.get("model_version") == ours["model_version"]
        same_scores &= theirs.get("score") == ours.get("score")
        if len(theirs["result"]) != len(ours["result"]):
            same_counts = False
            continue
        for a, b in zip(ours["result"], theirs["result"], strict=True):
            same_ids &= a["id"] == b.get("id") and a["type"] == b.get("type")
            same_points &= points_of(a) == points_of(b)
            same_labels &= a["value"]["polygonlabels"] == b["value"].get("polygonlabels")
            same_scores &= a.get("score") == b.get("score")
    checks.check("region counts per prediction", same_counts)
    checks.check("region ids and types", same_ids)
    checks.check("polygon points (repeated points of the merge polygon included)", same_points)
    checks.check("polygon labels", same_labels)
    checks.check("prediction and region scores", same_scores)
    checks.check("model_version", same_versions)


def run(args: argparse.Namespace, work: Path, checks: Checks) -> int:
    bin_path = Path(args.label_studio_bin).resolve()
    ls_python = label_studio_python(bin_path)
    version = subprocess.run(
        [str(ls_python), "-c", "import label_studio, label_studio_sdk.label_interface as li, importlib.metadata as m;"
         " print(label_studio.__version__, m.version('label-studio-sdk'))"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    print(f"label-studio {version[0] if version else '?'}, label-studio-sdk {version[1] if len(version) > 1 else '?'}")

    if args.output_dir:
        out = Path(args.output_dir).resolve()
        document_root = out.parent
    else:
        out = build_synthetic_dataset(work)
        document_root = (work / "docroot").resolve()
    view: RunView = open_run(out)
    files = write_export(view, work / "export", document_root=document_root)
    assert files.tasks_path is not None and files.config_path is not None
    tasks = json.loads(files.tasks_json)
    print(f"dataset {out}: {len(tasks)} tasks, {files.instances} instances; document root {document_root}")

    sdk = subprocess.run(
        [str(ls_python), "-c", SDK_CHECK, str(files.config_path), str(files.tasks_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    errors = json.loads(sdk.stdout) if sdk.returncode == 0 else [sdk.stderr.strip().splitlines()[-1:]]
    checks.check("label-studio-sdk LabelInterface accepts the config and every prediction", errors == [], str(errors))

    token = secrets.token_hex(20)
    port = args.port or free_port()
    api = Api(f"http://127.0.0.1:{port}", token)
    log = work / "label-studio.log"
    process = start_label_studio(bin_path, work / "lsdata", document_root, port, token, secrets.token_hex(16), log)
    try:
        if not wait_until_up(api, process, args.start_timeout):
            print(f"FAIL  Label Studio did not come up on port {port}; the end of its log:", flush=True)
            print("\n".join(log.read_text(errors="replace").splitlines()[-30:]))
            return 2
        checks.check("Label Studio started, token accepted", api.request("GET", "/api/projects/")[0] == 200)
        round_trip(api, view, out, document_root, files.config_xml, tasks, work, checks)
    finally:
        stop(process)
    return 1 if checks.failed else 0


def round_trip(
    api: Api,
    view: RunView,
    out: Path,
    document_root: Path,
    config_xml: str,
    tasks: list[dict[str, Any]],
    work: Path,
    checks: Checks,
) -> None:
    project = api.json("POST", "/api/projects/", {"title": "autoannotate round trip", "label_config": config_xml})
    pid = project["id"]
    stored_config = str(project.get("label_config", ""))
    # Label Studio stores the config stripped of its final newline
    checks.check("project created with the exported config", stored_config == config_xml.strip(), stored_config)
    storage = api.json(
        "POST",
        "/api/storages/localfiles/",
        {"project": pid, "title": "images", "path": str(out / "images"), "use_blob_urls": True},
    )
    checks.check("Local Files storage at OUT/images accepted (not synced)", bool(storage.get("id")))

    imported = api.json("POST", f"/api/projects/{pid}/import?return_task_ids=true", tasks)
    checks.check(
        "import counts",
        imported.get("task_count") == len(tasks) and imported.get("prediction_count") == len(tasks),
        json.dumps({k: imported.get(k) for k in ("task_count", "prediction_count", "annotation_count")}),
    )
    listed = api.json("GET", f"/api/tasks/?project={pid}&page_size=1000")
    stored = listed["tasks"] if isinstance(listed, dict) else listed
    preds = api.json("GET", f"/api/predictions/?project={pid}")
    compare_tasks(checks, tasks, stored, preds)

    # every image through its local-files URL, as the browser fetches it (symlinks, a space and a '#' included)
    by_key = {image.label_key: image for image in view.images}
    served = [api.request("GET", t["data"]["image"]) for t in stored]
    same = [
        status == 200 and body == by_key[t["data"]["autoannotate_label"]].image_path.read_bytes()
        for t, (status, body) in zip(stored, served, strict=True)
    ]
    checks.check(
        f"images served through /data/local-files/ (HTTP 200, same bytes) {sum(same)}/{len(same)}",
        all(same),
        str([s for s, _ in served]),
    )
    outside = local_files_url(out, PurePosixPath(view.images[0].label_key), document_root)  # OUT/labels/...
    status, _ = api.request("GET", outside)
    checks.check("a file under the document root but outside the storage is refused", status == 404, f"HTTP {status}")

    # a person's work: one point moved (task with 2 instances), one task accepted as predicted, one skipped
    task_ids = {t["data"]["autoannotate_label"]: t["id"] for t in stored}
    ours = {t["data"]["autoannotate_label"]: t for t in tasks}
    with_instances = [k for k, t in ours.items() if t["predictions"][0]["result"]]
    moved_key, accepted_key = with_instances[0], with_instances[-1]  # the last: the merge polygon, synthetic
    skipped_key = next(k for k in ours if k not in (moved_key, accepted_key))
    moved = copy.deepcopy(ours[moved_key]["predictions"][0]["result"])
    moved[0]["value"]["points"][1] = [61.2345, 22.5]
    for region in moved:
        region.pop("score", None)
    accepted = copy.deepcopy(ours[accepted_key]["predictions"][0]["result"])
    for key, body in (
        (moved_key, {"result": moved, "was_cancelled": False, "ground_truth": False, "lead_time": 3.5}),
        (accepted_key, {"result": accepted, "was_cancelled": False, "ground_truth": False, "lead_time": 1.0}),
        (skipped_key, {"result": [], "was_cancelled": True, "ground_truth": False, "lead_time": 0.5}),
    ):
        status, payload = api.request("POST", f"/api/tasks/{task_ids[key]}/annotations/", body)
        checks.check(f"annotation created on {key}", status == 201, f"HTTP {status}: {payload[:300]!r}")

    status, payload = api.request("GET", f"/api/projects/{pid}/export?exportType=JSON&download_all_tasks=true")
    export_path = work / "export" / "labelstudio_export.json"
    export_path.write_bytes(payload)
    checks.check("project exported as JSON", status == 200, f"HTTP {status}: {payload[:300]!r}")
    if status != 200:
        return
    found = read_export(export_path, view)
    reading = parse_export(json.loads(payload), view)
    labels = {label.label_key: label for label in found.labels}
    checks.check("read_export: no warnings", found.warnings == (), "; ".join(found.warnings))
    checks.check(
        "read_export: the two answered tasks imported, the skipped and unannotated ones not",
        sorted(labels) == sorted([moved_key, accepted_key]) and reading.not_annotated == len(tasks) - 2,
        f"{sorted(labels)}, not annotated {reading.not_annotated}",
    )
    if moved_key in labels:
        polygon = labels[moved_key].instances[0][1]
        checks.check(
            "the moved point came back",
            format_unit_values(polygon[1]) == "0.612345 0.225000",
            format_unit_values(polygon[1]),
        )
        original = (out / moved_key).read_text(encoding="utf-8").splitlines()
        texts = [f"{c} " + format_unit_values(p.reshape(-1)) for c, p in labels[moved_key].instances]
        checks.check(
            "the untouched instances of the edited task keep their label text", texts[1:] == original[1:], str(texts)
        )
    if accepted_key in labels:
        texts = [f"{c} " + format_unit_values(p.reshape(-1)) for c, p in labels[accepted_key].instances]
        original = (out / accepted_key).read_text(encoding="utf-8").splitlines()
        checks.check("an accepted task gives back its label text byte for byte", texts == original, str(texts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--label-studio-bin", required=True, help="the label-studio executable (of its own venv)")
    parser.add_argument("--output-dir", help="a run's output dir to use (read-only); default: a synthetic dataset")
    parser.add_argument("--port", type=int, default=0, help="port for Label Studio (default: a free one)")
    parser.add_argument("--start-timeout", type=float, default=600, help="seconds to wait for Label Studio to start")
    parser.add_argument("--keep", action="store_true", help="keep the temporary dir (printed) for inspection")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="autoannotate-ls-")).resolve()
    checks = Checks()
    try:
        code = run(args, work, checks)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if code == 0:
        total = "all checks passed"
    elif checks.failed:
        total = f"{len(checks.failed)} check(s) failed: {', '.join(checks.failed)}"
    else:
        total = "Label Studio could not be started"
    print(("PASS  " if code == 0 else "FAIL  ") + total)
    return code


if __name__ == "__main__":
    sys.exit(main())

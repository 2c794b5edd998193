"""``export labelstudio``, ``export cvat``, ``import labelstudio`` and ``import cvat``: a run's labels out to an
annotation tool as predictions, and a person's corrections back in as reviewed labels (``exchange/``).

Exports go to ``OUT/exports/`` by default. A file there is replaced only when an earlier export wrote it (its sha256
is in ``OUT/exports/.autoannotate-exports.json``) or with ``--overwrite``. Imports hold the output dir's lock, write
each corrected label atomically and mark it reviewed in the manifest: ``run`` keeps it from then on, ``--overwrite``
included (``--overwrite-reviewed`` redoes it). Exit codes: 0 done; 1 done, but some tasks or files were skipped (each
reported); 2 bad usage, input or output; 3 internal error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from autoannotate.cli.app import DebugOpt, command_group
from autoannotate.cli.errors import EXIT_FAILED_IMAGES, EXIT_OK, run_guarded
from autoannotate.errors import ConfigError, InputError, OutputError
from autoannotate.exchange import ImportedLabels
from autoannotate.resume import bytes_sha256, bytes_sha256_of
from autoannotate.review.run_view import RunView, open_run
from autoannotate.writers.atomic import write_bytes_atomic, write_text_atomic

EXPORTS_DIR = "exports"
EXPORTS_RECORD = ".autoannotate-exports.json"
CVAT_ZIPS = {"yolo": "cvat_ultralytics_yolo_seg.zip", "coco": "cvat_coco.zip"}
CVAT_LABELS = "cvat_labels.json"

OutArg = Annotated[
    Path,
    typer.Argument(
        metavar="OUT",
        help="The run's output dir (the dataset root with data.yaml, images/, labels/).",
        show_default=False,
    ),
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace export files that autoannotate did not write.")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Say which labels the import would change; write nothing.")]

import_app = command_group("Read a person's corrections back from an annotation tool's export, as reviewed labels.")


def export_labelstudio(
    out: OutArg,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help=f"Where the files go. (default: OUT/{EXPORTS_DIR})")
    ] = None,
    image_root: Annotated[
        str | None,
        typer.Option(
            "--image-root",
            help="URL prefix of the images as Label Studio reaches them (e.g. https://host/ds/images/ or "
            "s3://bucket/ds/images/); each task's image is this plus the path under OUT/images. "
            "(default: Label Studio's local-files serving, see --document-root)",
            show_default=False,
        ),
    ] = None,
    document_root: Annotated[
        Path | None,
        typer.Option(
            "--document-root",
            help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT, for local-files URLs. (default: OUT's parent dir)",
            show_default=False,
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write Label Studio import tasks (the labels as polygon predictions, with scores) and the label config."""

    def body() -> int:
        from autoannotate.exchange import labelstudio

        view = _open(out)
        root = (document_root or out.resolve().parent).resolve()
        files = labelstudio.build_export(view, image_root=image_root, document_root=root)
        target = output_dir or out / EXPORTS_DIR
        tasks_path, config_path = target / labelstudio.TASKS_FILE, target / labelstudio.CONFIG_FILE
        _write_exports(
            target,
            {tasks_path: files.tasks_json.encode("utf-8"), config_path: files.config_xml.encode("utf-8")},
            overwrite,
        )
        typer.echo(f"wrote {tasks_path}: {files.tasks} tasks, {files.instances} polygon predictions")
        typer.echo(f"wrote {config_path}: the labeling config (project Settings > Labeling Interface > Code)")
        if image_root is None:
            typer.echo(
                f"images: start Label Studio with LOCAL_FILES_SERVING_ENABLED=true LOCAL_FILES_DOCUMENT_ROOT={root}"
                f" and add a Local Files source storage at {out.resolve() / 'images'} (do not sync it: the tasks"
                " file brings the images)"
            )
        _report_orphans(view)
        return EXIT_OK

    run_guarded(body, debug)


def export_cvat(
    out: OutArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help=f"The zip to write. (default: OUT/{EXPORTS_DIR}/{CVAT_ZIPS['yolo']}, or ..coco.zip)"
        ),
    ] = None,
    zip_format: Annotated[
        str,
        typer.Option(
            "--format",
            help='yolo: CVAT\'s "Ultralytics YOLO Segmentation 1.0" (label lines travel as written); coco: "COCO 1.0".',
        ),
    ] = "yolo",
    with_images: Annotated[
        bool, typer.Option("--with-images", help="Put the images in the zip too (for a task made from it).")
    ] = False,
    overwrite: OverwriteOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write a zip that CVAT imports (Actions > Upload annotations) as "Ultralytics YOLO Segmentation 1.0" (or, with
    --format coco, "COCO 1.0"), and the task's labels to paste."""

    def body() -> int:
        from autoannotate.exchange import cvat

        if zip_format not in CVAT_ZIPS:
            raise ConfigError(f"--format {zip_format!r} is not one of {', '.join(CVAT_ZIPS)}")
        view = _open(out)
        path = output or out / EXPORTS_DIR / CVAT_ZIPS[zip_format]
        labels_path = path.parent / CVAT_LABELS
        build = cvat.build_zip if zip_format == "yolo" else cvat.build_coco_zip
        data = build(view, with_images=with_images)
        _write_exports(
            path.parent, {path: data, labels_path: (cvat.labels_json(view.names) + "\n").encode("utf-8")}, overwrite
        )
        instances = sum(len(image.instances) for image in view.images)
        typer.echo(f"wrote {path}: {len(view.images)} images, {instances} polygons ({len(data)} bytes)")
        typer.echo(f"wrote {labels_path}: the task's labels (CVAT: Create task > Labels > Raw tab, paste it)")
        _report_orphans(view)
        return EXIT_OK

    run_guarded(body, debug)


def import_labelstudio(
    export: Annotated[Path, typer.Argument(metavar="EXPORT.json", help="Label Studio's JSON export of the project.")],
    out: OutArg,
    dry_run: DryRunOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write the corrected polygons of a Label Studio JSON export back as labels, marked reviewed.

    Each task's latest annotation that was not cancelled is imported; tasks nobody annotated are left as they are.
    """

    def body() -> int:
        from autoannotate.exchange import labelstudio

        view = _open(out)
        _check_file(export)
        reading = labelstudio.parse_export(labelstudio.load_export(export), view, source=str(export))
        if reading.not_annotated:
            typer.echo(f"{reading.not_annotated} of {reading.tasks} task(s) have no annotation: left as they are")
        return _import(view, reading.imported, "labelstudio", export, dry_run)

    run_guarded(body, debug)


def import_cvat(
    export: Annotated[
        Path, typer.Argument(metavar="EXPORT.zip", help='CVAT\'s "Ultralytics YOLO Segmentation 1.0" export.')
    ],
    out: OutArg,
    dry_run: DryRunOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write the corrected polygons of a CVAT export back as labels, marked reviewed.

    Every label file in the zip counts as reviewed (an empty one: the person removed every instance); images
    without one in the zip are left as they are.
    """

    def body() -> int:
        from autoannotate.exchange import cvat

        view = _open(out)
        _check_file(export)
        return _import(view, cvat.read_zip(export, view), "cvat", export, dry_run)

    run_guarded(body, debug)


def register(export_app: typer.Typer, app: typer.Typer) -> None:
    """Add ``export labelstudio``/``cvat`` to the ``export`` group and the ``import`` group to ``app``."""
    export_app.command("labelstudio")(export_labelstudio)
    export_app.command("cvat")(export_cvat)
    app.add_typer(import_app, name="import")


import_app.command("labelstudio")(import_labelstudio)
import_app.command("cvat")(import_cvat)


def _open(out: Path) -> RunView:
    if not out.is_dir():
        raise InputError(f"{str(out)!r} is not a directory; pass the output dir of `autoannotate run`")
    return open_run(out)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"{str(path)!r} is not a file; pass the export file the annotation tool wrote")


def _import(view: RunView, found: ImportedLabels, source: str, export: Path, dry_run: bool) -> int:
    from autoannotate.exchange.apply import apply_imported, planned_changes

    for warning in found.warnings:
        _warn(warning)
    if dry_run:
        changes = planned_changes(view.output_dir, found.labels)
        for key in changes:
            typer.echo(f"would change {key}")
        typer.echo(
            f"dry run: {len(found.labels)} label(s) would be marked reviewed, {len(changes)} of them changed;"
            " nothing written"
        )
    else:
        result = apply_imported(view.output_dir, found.labels, source=source, file=str(export.resolve()))
        typer.echo(
            f"imported {result.reviewed} label(s) from {export} as reviewed: {result.changed} changed,"
            f" {result.reviewed - result.changed} accepted as they were, {result.instances} instances;"
            " `autoannotate run` keeps them (--overwrite-reviewed redoes them)"
        )
    if found.warnings:
        _warn(f"{len(found.warnings)} item(s) of {export} skipped (listed above)")
    return EXIT_FAILED_IMAGES if found.warnings else EXIT_OK


def _write_exports(target: Path, files: dict[Path, bytes], overwrite: bool) -> None:
    """Write export files atomically, refusing to replace one that no earlier export wrote (unless ``overwrite``)."""
    record_path = target / EXPORTS_RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    files_record = record.get("files") if isinstance(record, dict) else None
    written: dict[str, str] = dict(files_record) if isinstance(files_record, dict) else {}
    for path in files:
        ours = written.get(path.name) == bytes_sha256_of(path)
        if (path.exists() or path.is_symlink()) and not overwrite and not ours:
            raise OutputError(
                f"{str(path)!r} exists and was not written by autoannotate; move it, pass --output-dir (or"
                " --output) elsewhere, or --overwrite to replace it"
            )
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {str(target)!r}: {err.strerror or err}") from None
    for path, data in files.items():
        write_bytes_atomic(path, data)
        written[path.name] = bytes_sha256(data)
    write_text_atomic(record_path, json.dumps({"tool": "autoannotate", "files": written}, indent=1) + "\n")


def _report_orphans(view: RunView) -> None:
    if view.orphans:
        _warn(f"{len(view.orphans)} label file(s) without an image left out, e.g. {view.orphans[0]}")


def _warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)

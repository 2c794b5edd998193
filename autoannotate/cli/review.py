"""Commands that review or convert an existing YOLO-seg dataset: ``check``, ``preview``, ``export coco``.

``register(app)`` adds them to the main Typer app. Exit codes: 0 done and clean; 1 problems found (``check``) or
some images skipped (``export``, ``preview``), each reported; 2 bad usage, config, input or output (one line
``error: ...``); 3 internal error (rerun with --debug and report it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from autoannotate import __version__
from autoannotate.cli.app import command_group
from autoannotate.cli.errors import EXIT_FAILED_IMAGES as EXIT_PROBLEMS
from autoannotate.cli.errors import EXIT_OK, run_guarded
from autoannotate.dataset.yolo_seg import read_label_file
from autoannotate.errors import ConfigError, ImageError, InputError
from autoannotate.review.check import check_labels, format_report, report_to_dict
from autoannotate.review.labels import LabelPair, find_data_yaml, iter_pairs, read_image_size_wh, read_names
from autoannotate.review.preview import PreviewSample, load_sample, sample_pairs, write_previews
from autoannotate.review.provenance import label_provenance
from autoannotate.writers.coco import CocoImage, CocoInstance, build_coco, write_coco

COCO_NAME = "annotations.coco.json"
PREVIEWS_DIR = "previews"

LabelsArg = Annotated[
    Path,
    typer.Argument(
        metavar="LABELS",
        help="The labels tree: one <image path relative to the image root>.txt per image.",
        show_default=False,
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="The images the labels belong to: a directory (recursive), image, .txt list or quoted glob. "
        "(default: the 'images' tree beside LABELS, when LABELS lies in a dir named 'labels')",
        show_default=False,
    ),
]
NamesOpt = Annotated[
    Path | None,
    typer.Option(
        "--names",
        help="data.yaml with the class names. (default: data.yaml or autoannotate.data.yaml beside LABELS)",
        show_default=False,
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]

export_app = command_group("Convert a YOLO-seg dataset to another format.")


def check(
    labels: LabelsArg,
    data: DataOpt = None,
    names: NamesOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object: problems and statistics.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Validate a labels tree (syntax, coordinates, points, class ids, label/image pairing) and summarise it.

    Each problem is printed as path:line: message. Exit 0 clean, 1 problems found, 2 bad usage.
    """

    def body() -> int:
        images = _images_root(labels, data)
        pairs = list(iter_pairs(labels, images))
        names_file = _names_file(labels, names)
        class_names = read_names(names_file) if names_file is not None else None
        report = check_labels(pairs, labels, images, class_names, names_file)
        provenance = label_provenance(labels)
        if json_out:
            out = report_to_dict(report)
            out["provenance"] = provenance.to_dict() if provenance is not None else None
            typer.echo(json.dumps(out, ensure_ascii=False))
        else:
            typer.echo(format_report(report), nl=False)
            if provenance is not None:
                typer.echo(provenance.format(), nl=False)
        return EXIT_OK if report.ok else EXIT_PROBLEMS

    run_guarded(body, debug)


def export_coco(
    labels: LabelsArg,
    data: DataOpt = None,
    names: NamesOpt = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help=f"COCO JSON file to write. (default: LABELS/../{COCO_NAME})"),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an output file that autoannotate did not write.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Convert a YOLO-seg labels tree to one COCO instances JSON (polygons in pixels, category_id = class id + 1).

    Images without a label file are kept as negatives (images with no annotation).

    Label files with problems, label files without an image and undecodable images are left out and reported (exit 1).
    """

    def body() -> int:
        images = _images_root(labels, data)
        pairs = list(iter_pairs(labels, images))
        names_file = _names_file(labels, names)
        if names_file is None:
            raise ConfigError(f"no data.yaml beside {str(labels)!r}; pass --names data.yaml with the class names")
        class_names = read_names(names_file)
        records: list[CocoImage] = []
        skipped = 0
        for pair in pairs:
            record = _coco_record(pair, class_names)
            if record is None:
                skipped += 1
            else:
                records.append(record)
        if not records:
            raise InputError(f"no image to export from {str(labels)!r} and {str(images)!r}; check both paths")
        coco = build_coco(records, class_names, version=__version__)
        path = output if output is not None else labels.parent / COCO_NAME
        write_coco(path, coco, overwrite=overwrite)
        typer.echo(
            f"wrote {path}: {len(coco['images'])} images, {len(coco['annotations'])} annotations, "
            f"{len(coco['categories'])} categories (category_id = class id + 1)"
        )
        if skipped:
            _warn(f"{skipped} of {len(pairs)} entries skipped (listed above)")
        return EXIT_PROBLEMS if skipped else EXIT_OK

    run_guarded(body, debug)


def _coco_record(pair: LabelPair, names: dict[int, str]) -> CocoImage | None:
    """The COCO record of one pair, or None (reported on stderr) when it cannot be exported faithfully."""
    if pair.image_path is None or pair.image_rel is None:
        _warn(f"{pair.label_path}: no image for this label file; skipped")
        return None
    try:
        size_wh = read_image_size_wh(pair.image_path)
    except ImageError as err:
        _warn(f"{pair.image_path}: {err}; skipped")
        return None
    rows, problems = read_label_file(pair.label_path) if pair.label_path is not None else ([], [])
    found = [(p.line, p.message) for p in problems]
    found += [(r.line, f"class {r.class_id} is not in the names file") for r in rows if r.class_id not in names]
    if found:
        for line, message in sorted(found, key=lambda item: item[0] or 0):
            _warn(f"{pair.label_path}{'' if line is None else f':{line}'}: {message}")
        _warn(f"{pair.label_path}: skipped, with its image {pair.image_rel}")
        return None
    instances = tuple(CocoInstance(row.class_id, row.polygon_norm) for row in rows)
    return CocoImage(pair.image_rel.as_posix(), size_wh, instances)


def preview(
    labels: LabelsArg,
    data: DataOpt = None,
    names: NamesOpt = None,
    n: Annotated[int, typer.Option("--n", "-n", help="How many images to draw.")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Which images: the same seed gives the same sample.")] = 0,
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", help=f"Where the PNGs go. (default: LABELS/../{PREVIEWS_DIR})"),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Draw the labels of N sampled images over them (PNG each) and a contact_sheet.png; print their paths."""

    def body() -> int:
        if n < 1:
            raise ConfigError(f"--n must be at least 1; got {n}")
        images = _images_root(labels, data)
        pairs = list(iter_pairs(labels, images))
        names_file = _names_file(labels, names)
        class_names = read_names(names_file) if names_file is not None else {}
        chosen = sample_pairs(pairs, n, seed)
        if not chosen:
            raise InputError(f"no image found under {str(images)!r}; pass --data with the images of these labels")
        samples: list[PreviewSample] = []
        failed = 0
        for pair in chosen:
            try:
                sample, problems = load_sample(pair)
            except ImageError as err:
                _warn(f"{pair.image_path}: {err}; skipped")
                failed += 1
                continue
            for problem in problems:
                line = "" if problem.line is None else f":{problem.line}"
                _warn(f"{pair.label_path}{line}: {problem.message} (not drawn)")
            samples.append(sample)
        if not samples:
            raise InputError("none of the sampled images could be decoded; see the warnings above")
        files = write_previews(
            samples, class_names, output_dir if output_dir is not None else labels.parent / PREVIEWS_DIR
        )
        for path in (*files.overlays, files.contact_sheet):
            typer.echo(str(path))
        return EXIT_PROBLEMS if failed else EXIT_OK

    run_guarded(body, debug)


def register(app: typer.Typer) -> None:
    """Add ``check``, ``preview`` and ``export coco`` to ``app``."""
    app.command("check")(check)
    app.command("preview")(preview)
    app.add_typer(export_app, name="export")


export_app.command("coco")(export_coco)


def _images_root(labels: Path, data: str | None) -> Path:
    """``--data``, or the ``images`` tree that mirrors ``labels`` (the last ``labels`` dir in its path swapped)."""
    if not labels.is_dir():
        raise InputError(f"labels dir {str(labels)!r} does not exist or is not a directory; pass the labels tree")
    if data is not None:
        return Path(data)
    parts = list(labels.parts)
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == "labels":
            parts[index] = "images"
            candidate = Path(*parts)
            if candidate.exists():
                return candidate
            raise InputError(f"no images at {str(candidate)!r} (the tree beside {str(labels)!r}); pass --data IMAGES")
    raise InputError(f"{str(labels)!r} is not inside a dir named 'labels'; pass --data with its images")


def _names_file(labels: Path, names: Path | None) -> Path | None:
    if names is not None:
        if not names.is_file():
            raise ConfigError(f"--names {str(names)!r} is not a file; pass the dataset's data.yaml")
        return names
    return find_data_yaml(labels)


def _warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)

"""The ``autoannotate`` command line: options to settings, progress and summary, errors to exit codes.

Exit codes: 0 every image done; 1 some images failed (each reported, the rest done); 2 bad usage, config, input,
output or model; 3 internal error (a bug: rerun with --debug and report it); 130 interrupted (Ctrl-C); 143 terminated
(SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Generator
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, TextIO, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from autoannotate import __version__
from autoannotate.cli_errors import EXIT_FAILED_IMAGES, EXIT_OK, run_guarded
from autoannotate.config import (
    MAX_BATCH,
    MAX_IMGSZ,
    MAX_SHARDS,
    MIN_IMGSZ,
    RunSettings,
    build_settings,
    read_config_file,
)
from autoannotate.errors import ConfigError, Terminated, excerpt
from autoannotate.inputs.listing import require_images
from autoannotate.runtime.allocator import tune_host_allocator

EXIT_CODES_HELP = (
    "Exit codes: 0 every image done; 1 some images failed (each reported, the rest done);"
    " 2 bad usage, config, input, output or model; 3 internal error; 130 interrupted (Ctrl-C);"
    " 143 terminated (SIGTERM)."
)

app = typer.Typer(
    name="autoannotate",
    help="Turn a folder of images into a ready-to-train YOLO instance-segmentation dataset "
    "(YOLO boxes -> MobileSAM masks -> polygon labels).\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help, no Rich markup: help texts hold brackets that markup would eat ("[default: 0.25]",
    # "autoannotate[ray]"), and plain help shows no "<bool>" type for flags.
    rich_markup_mode=None,
    # max_content_width: plain help wraps at 80 columns otherwise, however wide the terminal
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)

_SETTING_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(RunSettings)}


def _with_default(text: str, field: str) -> str:
    """``text`` and ``[default: ...]`` of a ``run`` option, taken from ``RunSettings`` itself: the options default to
    None (only what the user typed overrides a config file), so the framework cannot know the real default."""
    value = _SETTING_DEFAULTS[field]
    flag = field.replace("_", "-")
    if isinstance(value, bool):
        shown = flag if value else f"no-{flag}"
    elif isinstance(value, str):
        shown = value or "''"
    else:
        shown = str(value)
    return f"{text}  [default: {shown}]"


# Shared option aliases. Defaults are None so that only what the user typed overrides the config file.
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Images: a directory (recursive), one image, a .txt list of paths, a quoted glob, or '-' for paths on"
        " stdin (one per line, or NUL-separated as find -print0 writes them: detected by the NUL byte).",
        show_default=False,
    ),
]
DetModelOpt = Annotated[
    str | None,
    typer.Option("--det-model", help=_with_default("YOLO detector: path or ultralytics asset name.", "det_model")),
]
SamModelOpt = Annotated[
    str | None,
    typer.Option(
        "--sam-model",
        help=_with_default("MobileSAM (or SAM b/l) checkpoint: path or ultralytics asset name.", "sam_model"),
    ),
]
ConfOpt = Annotated[float | None, typer.Option("--conf", help=_with_default("Detector confidence threshold.", "conf"))]
IouOpt = Annotated[float | None, typer.Option("--iou", help=_with_default("Detector NMS IoU threshold.", "iou"))]
ImgszOpt = Annotated[
    int | None,
    typer.Option("--imgsz", help=_with_default(f"Detector input size, pixels ({MIN_IMGSZ} to {MAX_IMGSZ}).", "imgsz")),
]
MaxDetOpt = Annotated[
    int | None, typer.Option("--max-det", help=_with_default("Most detections per image.", "max_det"))
]
ClassesOpt = Annotated[
    str | None,
    typer.Option("--classes", help="Keep only these classes: ids or names, comma-separated.  [default: all]"),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help=_with_default("'' auto (first GPU, else CPU), 'cpu', 'cuda:0' or '0'.", "device")),
]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch",
        help=_with_default(f"Images per step, at most {MAX_BATCH}; 0 = the fastest default for the device.", "batch"),
    ),
]
OutputDirOpt = Annotated[
    str | None,
    typer.Option(
        "--output-dir",
        help="Dataset root to write.  [default: the parent of an 'images' dir holding --data, "
        "else <data>_auto_annotate beside it]",
        show_default=False,
    ),
]
ToleranceOpt = Annotated[
    float | None,
    typer.Option(
        "--tolerance", help=_with_default("Polygon simplification in pixels; 0 = exact contour.", "tolerance")
    ),
]
MinAreaOpt = Annotated[
    float | None,
    typer.Option("--min-area", help=_with_default("Drop mask parts smaller than this many pixels.", "min_area")),
]
PolygonOpt = Annotated[
    str | None,
    typer.Option(
        "--polygon",
        help=_with_default(
            "merge: one polygon per mask, parts and holes joined by zero-width cuts; largest: the largest part; "
            "split: one line per part.",
            "polygon",
        ),
    ),
]
HalfOpt = Annotated[
    bool | None,
    typer.Option(
        "--half/--no-half",
        help=_with_default("Reduced precision: bf16 autocast on CPU, fp16 on CUDA.", "half"),
        show_default=False,
    ),
]
MinMaskScoreOpt = Annotated[
    float | None,
    typer.Option(
        "--min-mask-score",
        help=_with_default("Drop instances whose SAM predicted IoU is below this.", "min_mask_score"),
    ),
]
BoxesFromOpt = Annotated[
    str | None,
    typer.Option(
        "--boxes-from",
        help="YOLO detection labels (class cx cy w h, paths mirroring the images) to use as box prompts "
        "instead of a detector; class ids are kept.",
        show_default=False,
    ),
]
NamesOpt = Annotated[
    str | None,
    typer.Option("--names", help="data.yaml with class names (only with --boxes-from).", show_default=False),
]
CocoOpt = Annotated[
    bool | None,
    typer.Option(
        "--coco/--no-coco",
        help=_with_default("Also write annotations.coco.json (COCO instances).", "coco"),
        show_default=False,
    ),
]
PreviewOpt = Annotated[
    int | None,
    typer.Option(
        "--preview", help=_with_default("Write overlays for N sampled images and a contact sheet.", "preview")
    ),
]
ValFractionOpt = Annotated[
    float | None,
    typer.Option(
        "--val-fraction",
        help=_with_default(
            "Share of images (chosen by path, deterministic) listed in val.txt, the rest in train.txt.", "val_fraction"
        ),
    ),
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help=f"I/N: annotate only shard I (0-based) of N <= {MAX_SHARDS}, chosen by path; N runs into one output dir"
        " = one full run.",
        show_default=False,
    ),
]
EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help=_with_default("local, or ray: Ray Data batch inference (pip install 'autoannotate[ray]').", "engine"),
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option("--ray-address", help="Join a running Ray cluster (e.g. 'auto').  [default: start Ray locally]"),
]
RayWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--ray-workers", help=_with_default("Ray actors, one model pair each; 0 = one per CPU or GPU.", "ray_workers")
    ),
]
RayGpusOpt = Annotated[
    float | None,
    typer.Option(
        "--ray-gpus-per-worker",
        help=_with_default("GPUs per Ray actor (1, or 0.5 to share one).", "ray_gpus_per_worker"),
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="YAML file with any of these options; command-line flags override it."),
]
OverwriteOpt = Annotated[
    bool | None,
    typer.Option(
        "--overwrite/--no-overwrite",
        help=_with_default("Replace label files and data.yaml that autoannotate did not write.", "overwrite"),
        show_default=False,
    ),
]
JsonOpt = Annotated[
    bool | None,
    typer.Option(
        "--json/--no-json",
        help=_with_default("JSON lines on stdout: one per image, then a summary.", "json"),
        show_default=False,
    ),
]
QuietOpt = Annotated[
    bool | None,
    typer.Option("--quiet/--no-quiet", "-q", help=_with_default("Print errors only.", "quiet"), show_default=False),
]
DebugOpt = Annotated[
    bool, typer.Option("--debug", help="Also print the traceback of an error (the exit code stays the documented one).")
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"autoannotate {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Turn a folder of images into a ready-to-train YOLO instance-segmentation dataset."""


# Extra arguments reach ``run`` (instead of a bare "unexpected extra argument" from the parser) so that the usual
# cause, an unquoted glob that the shell expanded, gets its fix in the error line.
@app.command(epilog=EXIT_CODES_HELP, context_settings={"allow_extra_args": True})
def run(
    ctx: typer.Context,
    data: DataOpt = None,
    det_model: DetModelOpt = None,
    sam_model: SamModelOpt = None,
    conf: ConfOpt = None,
    iou: IouOpt = None,
    imgsz: ImgszOpt = None,
    max_det: MaxDetOpt = None,
    classes: ClassesOpt = None,
    device: DeviceOpt = None,
    batch: BatchOpt = None,
    output_dir: OutputDirOpt = None,
    tolerance: ToleranceOpt = None,
    min_area: MinAreaOpt = None,
    polygon: PolygonOpt = None,
    half: HalfOpt = None,
    min_mask_score: MinMaskScoreOpt = None,
    boxes_from: BoxesFromOpt = None,
    names: NamesOpt = None,
    coco: CocoOpt = None,
    preview: PreviewOpt = None,
    val_fraction: ValFractionOpt = None,
    shard: ShardOpt = None,
    engine: EngineOpt = None,
    ray_address: RayAddressOpt = None,
    ray_workers: RayWorkersOpt = None,
    ray_gpus_per_worker: RayGpusOpt = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = None,
    json_lines: JsonOpt = None,
    quiet: QuietOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Detect objects, segment each box with MobileSAM, and write YOLO-seg labels, data.yaml and a manifest."""
    overrides: dict[str, Any] = {
        "data": data,
        "det_model": det_model,
        "sam_model": sam_model,
        "conf": conf,
        "iou": iou,
        "imgsz": imgsz,
        "max_det": max_det,
        "classes": classes,
        "device": device,
        "batch": batch,
        "output_dir": output_dir,
        "tolerance": tolerance,
        "min_area": min_area,
        "polygon": polygon,
        "half": half,
        "min_mask_score": min_mask_score,
        "boxes_from": boxes_from,
        "names": names,
        "coco": coco,
        "preview": preview,
        "val_fraction": val_fraction,
        "shard": shard,
        "engine": engine,
        "ray_address": ray_address,
        "ray_workers": ray_workers,
        "ray_gpus_per_worker": ray_gpus_per_worker,
        "overwrite": overwrite,
        "json": json_lines,
        "quiet": quiet,
    }
    err_console = Console(stderr=True, highlight=False, soft_wrap=True)
    extra = list(ctx.args)
    run_guarded(lambda: _run(overrides, config, err_console, extra), debug)


def _extra_arguments_error(extra: list[str], data: str | None) -> ConfigError:
    """The one line for arguments ``run`` does not take: most often a glob the shell expanded into file names."""
    example = excerpt(extra[0])
    if any(os.path.exists(arg) or os.sep in arg or Path(arg).suffix for arg in extra):
        # the glob the user most likely typed: the folder and suffix of the first file name among them
        named = next((arg for arg in [data or "", *extra] if Path(arg).suffix), "imgs/x.jpg")
        pattern = os.path.join(os.path.dirname(named), "*" + Path(named).suffix)
        return ConfigError(
            f"got {len(extra)} extra argument(s) (e.g. {example}): quote a glob so the shell does not expand it"
            f" (--data {excerpt(pattern)}), or pass a .txt list or '-' for stdin"
        )
    return ConfigError(f"got {len(extra)} unexpected argument(s) (e.g. {example}): run takes options only (see --help)")


def _run(overrides: dict[str, Any], config: Path | None, err_console: Console, extra: list[str] | None = None) -> int:
    if extra:
        raise _extra_arguments_error(extra, overrides.get("data"))
    settings = build_settings(read_config_file(config) if config is not None else None, overrides)
    tune_host_allocator()  # process-wide, so here at the entry point, before any inference thread exists
    from autoannotate.job import AnnotationJob  # imports torch and ultralytics: only once the options are valid

    _route_library_logs_to_stderr(quiet=settings.quiet or settings.json)
    stdin: TextIO | None = sys.stdin if settings.data == "-" else None
    with AnnotationJob(settings, stdin) as job:  # holds the output dir's lock until the run ends
        require_images(job.spec)  # an empty folder is refused as an empty list or glob is, before any model loads
        models = job.load()
        job.begin()
        _print_notices(err_console, job.notices, settings.quiet)
        if not settings.quiet and not settings.json:
            plan = models.plan
            err_console.print(
                f"device {plan.device}, {plan.infer_workers} inference worker(s) x {plan.torch_threads} thread(s),"
                f" batch {models.batch}{', half precision' if settings.half else ''}",
                markup=False,
            )
        shown = len(job.notices)
        out = sys.stdout
        if settings.json:
            # closed explicitly: after Ctrl-C or SIGTERM the job's cleanup (manifest "interrupted") runs now
            with contextlib.closing(_outcomes(job)) as outcomes:
                for outcome in outcomes:
                    _emit(out, _image_event(outcome))
                    if outcome.error and not settings.quiet:
                        err_console.print(f"warning: {_shown_path(outcome.source.path)}: {outcome.error}", markup=False)
        else:
            _run_with_progress(job, err_console, settings.quiet)
        _print_notices(err_console, job.notices[shown:], settings.quiet)
    summary = job.summary
    if settings.json:
        _emit(out, {"event": "summary", **summary.to_dict()})
    elif not settings.quiet:
        _print_summary(Console(highlight=False), summary.to_dict())
    return EXIT_FAILED_IMAGES if summary.failed else EXIT_OK


def _print_notices(err_console: Console, notices: list[str], quiet: bool) -> None:
    for notice in notices if not quiet else ():
        err_console.print(f"note: {notice}", markup=False)


def _run_with_progress(job: Any, err_console: Console, quiet: bool) -> None:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]annotating"),
        BarColumn(bar_width=20),
        TextColumn("{task.completed}/{task.fields[total_text]}"),
        TextColumn("{task.fields[rate]} img/s"),
        TextColumn("{task.fields[instances]} inst"),
        TextColumn("{task.fields[failed]} failed {task.fields[skipped]} skipped"),
        TextColumn("ETA"),
        TimeRemainingColumn(compact=True),
        console=err_console,
        disable=quiet,
        transient=False,
    )
    with progress:
        task = progress.add_task("annotate", total=None, total_text="?", rate="-", instances=0, failed=0, skipped=0)

        def count_images() -> None:  # the walk streams; the total shows up as soon as it is known
            total = sum(1 for _ in job.images())
            progress.update(task, total=total, total_text=str(total))

        threading.Thread(target=count_images, name="autoannotate-count", daemon=True).start()
        instances = failed = skipped = 0
        with contextlib.closing(_outcomes(job)) as outcomes:  # see _run: cleanup runs at once when interrupted
            for outcome in outcomes:
                instances += outcome.instances
                skipped += outcome.status == "skipped"
                if outcome.error:
                    failed += 1
                    progress.console.print(
                        f"warning: {_shown_path(outcome.source.path)}: {outcome.error}", markup=False
                    )
                elapsed = progress.tasks[0].elapsed or 0.0
                done = progress.tasks[0].completed + 1
                rate = f"{done / elapsed:.2f}" if elapsed > 0 else "-"
                progress.update(task, advance=1, instances=instances, failed=failed, skipped=skipped, rate=rate)


def _outcomes(job: Any) -> Generator[Any, None, None]:
    """``job.run()``, typed as the generator it is, so that it can be closed (see ``_run``)."""
    return cast(Generator[Any, None, None], job.run())


def _shown_path(path: Path) -> str:
    """A path for a one-line message: as is, or quoted with escapes when its name holds a line break or another
    control character (which would otherwise split the warning over lines)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _image_event(outcome: Any) -> dict[str, Any]:
    return {
        "event": "image",
        "path": str(outcome.source.path),
        "label": str(outcome.label_path) if outcome.label_path is not None else None,
        "instances": outcome.instances,
        "status": outcome.status,
        "error": outcome.error,
    }


def _emit(stream: TextIO, event: dict[str, Any]) -> None:
    stream.write(json.dumps(event, ensure_ascii=False) + "\n")
    stream.flush()


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="autoannotate summary", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for key in ("images", "labeled", "instances", "empty_masks", "dropped", "failed", "skipped", "edited", "removed"):
        table.add_row(key.replace("_", " "), str(summary[key]))
    scores = summary.get("sam_iou")
    if scores:
        table.add_row("SAM predicted IoU", "  ".join(f"{name} {value:.3f}" for name, value in scores.items()))
    table.add_row("seconds", str(summary["seconds"]))
    table.add_row("images per s", str(summary["images_per_s"]))
    table.add_row("output dir", summary["output_dir"])
    table.add_row("data.yaml", summary["data_yaml"])
    for key, label in (("coco_json", "COCO JSON"), ("previews", "previews")):
        if summary.get(key):
            table.add_row(label, summary[key])
    console.print(table)


def _route_library_logs_to_stderr(quiet: bool) -> None:
    """Ultralytics logs to stdout; stdout belongs to --json events and the summary, so move it to stderr."""
    import ultralytics  # noqa: F401  (configures its logger on import)

    logger = logging.getLogger("ultralytics")
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
            handler.setStream(sys.stderr)
    if quiet:
        logger.setLevel(logging.ERROR)


@app.command(
    epilog="Exit codes: 0 every shard merged; 1 shards missing or incomplete; 2 nothing to merge, a malformed shard"
    " manifest, shards run with different settings or models, an output file autoannotate did not write, or a run"
    " still writing to the dir."
)
def merge(
    output: Annotated[Path, typer.Argument(help="The output dir that the --shard I/N runs wrote to.")],
    json_lines: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Fold the manifests and quality sidecars of --shard runs into autoannotate.json and instances.jsonl."""
    from autoannotate.merge import merge_shards

    def body() -> int:
        from autoannotate.lock import acquire_output_lock

        # no shard may still be writing while its files are folded (merge_shards itself refuses a non-directory)
        lock = acquire_output_lock(output, what="merge") if output.is_dir() else contextlib.nullcontext()
        with lock:
            report = merge_shards(output)
        if json_lines:
            _emit(
                sys.stdout,
                {
                    "event": "merge",
                    "shards": report.shards,
                    "found": list(report.found),
                    "missing": list(report.missing),
                    "incomplete": list(report.incomplete),
                    "labels": report.labels,
                    "manifest": str(report.manifest),
                },
            )
        else:
            typer.echo(
                f"merged {len(report.found)} of {report.shards} shards, {report.labels} labels -> {report.manifest}"
            )
        if report.missing:
            typer.echo(f"error: missing shards: {', '.join(map(str, report.missing))}", err=True)
        if report.incomplete:
            typer.echo(f"error: shards that did not complete: {', '.join(map(str, report.incomplete))}", err=True)
        return EXIT_OK if report.ok else EXIT_FAILED_IMAGES

    run_guarded(body, debug=False)


from autoannotate.cli_review import register as _register_review_commands  # noqa: E402  (needs ``app``)

_register_review_commands(app)


def _raise_terminated(signum: int, frame: object) -> None:
    # Further SIGTERMs are ignored: the cleanup that Terminated sets off (the manifest marked "interrupted", the
    # journal kept) runs once and to its end; SIGKILL stays the way to stop at once, and a rerun resumes either way.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def main() -> None:
    """Console-script entry point."""
    import cv2

    # OpenCV's own warnings (e.g. TIFF tag noise) go to stderr past our one-line-per-problem reporting
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    # SIGTERM (CI cancel, docker stop, timeout) ends a run like Ctrl-C does: Python delivers it to the main thread as
    # an exception, so every finally block runs; process-wide, hence here and not at import.
    signal.signal(signal.SIGTERM, _raise_terminated)
    app(prog_name="autoannotate")


if __name__ == "__main__":
    main()

"""``autoannotate run``: options to settings, progress and summary, errors to exit codes.

The command's options are made from the settings' field metadata (``autoannotate.config.option_fields``): a new
settings field is a new ``run`` option, with its help, ``[default: ...]`` and type, and no edit here. Each option
defaults to None, so that only what the user typed overrides a ``--config`` file. Exit codes: ``EXIT_CODES`` in
``autoannotate.cli.errors``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Annotated, Any, TextIO, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from autoannotate.cli.app import EXIT_CODES_HELP, DebugOpt, emit
from autoannotate.cli.errors import EXIT_FAILED_IMAGES, EXIT_OK, run_guarded
from autoannotate.config import (
    RunSettings,
    SettingOption,
    build_settings,
    help_text,
    option_fields,
    option_name,
    read_config_file,
)
from autoannotate.errors import ConfigError, excerpt
from autoannotate.inputs.listing import require_images
from autoannotate.inputs.video_reader import quiet_decoder_logs
from autoannotate.runtime.allocator import tune_host_allocator

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="YAML file with any of these options; command-line flags override it."),
]

#: ``run --help`` lists ``--config`` just before this option (after the Ray options), as it always has.
_CONFIG_BEFORE = "overwrite"
#: Parameters of the command that are not settings: no settings field may take these names.
_OWN_PARAMETERS = ("ctx", "config", "debug")
_RUN_HELP = "Detect objects, segment each box with MobileSAM, and write YOLO-seg labels, data.yaml and a manifest."


def _setting_parameter(item: SettingOption) -> inspect.Parameter:
    """The ``run`` parameter of one settings option: ``Annotated[T | None, typer.Option(...)] = None``.

    Bools are ``--x/--no-x`` flags; enums and other non-numbers are typed as strings, so that a bad value gets the
    settings' own message (``invalid --polygon 'x': expected one of merge, largest, split``), not the parser's.
    """
    flag = option_name(item.name)
    kind = item.meta.kind
    declared: list[str] = [f"{flag}/--no-{flag[2:]}" if kind is bool else flag]
    if item.meta.short is not None:
        declared.append(item.meta.short)
    value_type: type = kind if kind in (bool, int, float) else str
    # show_default=False: the real default is in the help text (help_text); the parameter's own default is None
    info = typer.Option(*declared, help=help_text(item), show_default=False)
    return inspect.Parameter(
        item.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[value_type | None, info]
    )


def run_signature(settings_cls: type[RunSettings] = RunSettings) -> inspect.Signature:
    """The ``run`` command's signature: ``ctx``, one option per settings field in ``option_fields`` order with
    ``--config`` among them, then ``--debug``. Typer reads it from the command function's ``__signature__``."""
    options = option_fields(settings_cls)
    clashes = [o.name for o in options if o.name in _OWN_PARAMETERS]
    if clashes:
        raise TypeError(f"settings option names {clashes} are taken by the run command itself")
    parameters = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    config = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOpt)
    for item in options:
        if item.name == _CONFIG_BEFORE:
            parameters.append(config)
        parameters.append(_setting_parameter(item))
    if config not in parameters:
        parameters.append(config)
    parameters.append(inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=DebugOpt))
    return inspect.Signature(parameters, return_annotation=None)


def make_run_command(settings_cls: type[RunSettings] = RunSettings) -> Callable[..., None]:
    """The ``run`` command function for ``settings_cls`` (``RunSettings`` or a subclass with more stages)."""
    names = [item.name for item in option_fields(settings_cls)]

    def run(ctx: typer.Context, **params: Any) -> None:
        overrides: dict[str, Any] = {name: params.get(name) for name in names}
        config: Path | None = params.get("config")
        debug = bool(params.get("debug", False))
        err_console = Console(stderr=True, highlight=False, soft_wrap=True)
        extra = list(ctx.args)
        if not debug:  # FFmpeg's own lines ("moov atom not found"): each video failure gets one line of ours
            quiet_decoder_logs()
        run_guarded(lambda: _run(overrides, config, err_console, extra, settings_cls), debug)

    run.__doc__ = _RUN_HELP
    run.__signature__ = run_signature(settings_cls)  # type: ignore[attr-defined]
    return run


def register(app: typer.Typer, settings_cls: type[RunSettings] = RunSettings) -> None:
    """Add ``run`` to ``app``, with an option for every field of ``settings_cls``."""
    # Extra arguments reach ``run`` (instead of a bare "unexpected extra argument" from the parser) so that the usual
    # cause, an unquoted glob that the shell expanded, gets its fix in the error line.
    app.command("run", epilog=EXIT_CODES_HELP, context_settings={"allow_extra_args": True})(
        make_run_command(settings_cls)
    )


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


def _run(
    overrides: dict[str, Any],
    config: Path | None,
    err_console: Console,
    extra: list[str] | None = None,
    settings_cls: type[RunSettings] = RunSettings,
) -> int:
    if extra:
        raise _extra_arguments_error(extra, overrides.get("data"))
    settings = build_settings(read_config_file(config) if config is not None else None, overrides, settings_cls)
    from autoannotate.job import AnnotationJob  # imports torch and ultralytics: only once the options are valid

    _route_library_logs_to_stderr(quiet=settings.console.quiet or settings.console.json)
    stdin: TextIO | None = sys.stdin if settings.inputs.data == "-" else None
    with AnnotationJob(settings, stdin) as job:  # holds the output dir's lock until the run ends
        require_images(job.spec)  # an empty folder is refused as an empty list or glob is, before any model loads
        models = job.load()
        if models.plan.device.type == "cpu":  # process-wide, so here at the entry point, before the inference threads
            tune_host_allocator()  # (a GPU run's host side allocates little; its pinned buffers are CUDA's)
        job.begin()
        _print_notices(err_console, job.notices, settings.console.quiet)
        if not settings.console.quiet and not settings.console.json:
            plan = models.plan
            err_console.print(
                f"device {plan.device}, {plan.infer_workers} inference worker(s) x {plan.torch_threads} thread(s),"
                f" batch {models.batch}{', half precision' if settings.runtime.half else ''}"
                f"{f', segmenter on {models.runtime}' if models.runtime != 'torch' else ''}",
                markup=False,
            )
        shown = len(job.notices)
        out = sys.stdout
        if settings.console.json:
            # closed explicitly: after Ctrl-C or SIGTERM the job's cleanup (manifest "interrupted") runs now
            with contextlib.closing(_outcomes(job)) as outcomes:
                for outcome in outcomes:
                    emit(out, _image_event(outcome))
                    if outcome.error and not settings.console.quiet:
                        err_console.print(f"warning: {_where(outcome)}: {outcome.error}", markup=False)
        else:
            _run_with_progress(job, err_console, settings.console.quiet)
        _print_notices(err_console, job.notices[shown:], settings.console.quiet)
    summary = job.summary
    if settings.console.json:
        emit(out, {"event": "summary", **summary.to_dict()})
    elif not settings.console.quiet:
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
        TextColumn("{task.fields[rate]} {task.fields[unit]}/s"),
        TextColumn("{task.fields[instances]} inst"),
        TextColumn("{task.fields[failed]} failed {task.fields[skipped]} skipped"),
        TextColumn("ETA"),
        TimeRemainingColumn(compact=True),
        console=err_console,
        disable=quiet,
        transient=False,
    )
    with progress:
        task = progress.add_task(
            "annotate", total=None, total_text="?", rate="-", unit="img", instances=0, failed=0, skipped=0
        )

        def count_images() -> None:  # the walk streams; the total shows up as soon as it is known
            # a video counts the frames it will give (from its header: "~", an estimate), not one file
            total, videos = job.estimate()
            progress.update(
                task, total=total, total_text=f"~{total}" if videos else str(total), unit="frames" if videos else "img"
            )

        threading.Thread(target=count_images, name="autoannotate-count", daemon=True).start()
        instances = failed = skipped = 0
        with contextlib.closing(_outcomes(job)) as outcomes:  # see _run: cleanup runs at once when interrupted
            for outcome in outcomes:
                instances += outcome.instances
                skipped += outcome.status == "skipped"
                if outcome.error:
                    failed += 1
                    progress.console.print(f"warning: {_where(outcome)}: {outcome.error}", markup=False)
                elapsed = progress.tasks[0].elapsed or 0.0
                done = progress.tasks[0].completed + 1
                rate = f"{done / elapsed:.2f}" if elapsed > 0 else "-"
                progress.update(task, advance=1, instances=instances, failed=failed, skipped=skipped, rate=rate)


def _outcomes(job: Any) -> Generator[Any, None, None]:
    """``job.run()``, typed as the generator it is, so that it can be closed (see ``_run``)."""
    return cast(Generator[Any, None, None], job.run())


def _shown_path(path: str | Path) -> str:
    """A path for a one-line message: as is, or quoted with escapes when its name holds a line break or another
    control character (which would otherwise split the warning over lines)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _where(outcome: Any) -> str:
    """What a warning names: the image, or a video frame's video and index."""
    frame = outcome.frame
    if frame is not None:
        return f"{_shown_path(frame['video'])} frame {frame['index']}"
    return _shown_path(outcome.origin)


def _image_event(outcome: Any) -> dict[str, Any]:
    event = {
        "event": "image",
        "path": outcome.origin,
        "label": str(outcome.label_path) if outcome.label_path is not None else None,
        "instances": outcome.instances,
        "status": str(outcome.status),
        "error": outcome.error,
    }
    if outcome.frame is not None:  # a video frame: its image is the JPEG in the dataset; where it comes from
        event.update(video=outcome.frame["video"], frame=outcome.frame["index"], t=outcome.frame["t"])
    return event


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="autoannotate summary", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    keys = (
        "images",
        "labeled",
        "instances",
        "empty_masks",
        "dropped",
        "failed",
        "skipped",
        "edited",
        "reviewed",
        "removed",
    )
    for key in keys:
        table.add_row(key.replace("_", " "), str(summary[key]))
        if key == "images" and summary.get("videos"):
            table.add_row("of which video frames", f"{summary['frames']} (from {summary['videos']} video(s))")
    scores = summary.get("sam_iou")
    if scores:
        table.add_row("SAM predicted IoU", "  ".join(f"{name} {value:.3f}" for name, value in scores.items()))
    table.add_row("seconds", str(summary["seconds"]))
    table.add_row("images per s", str(summary["images_per_s"]))
    table.add_row("output dir", summary["output_dir"])
    table.add_row("data.yaml", summary["data_yaml"])
    for key, label in (("coco_json", "COCO JSON"), ("previews", "previews"), ("report", "report")):
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

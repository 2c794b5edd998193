"""The ``autoannotate`` Typer app: its help, ``--version``, and the option aliases and output helpers that several
commands share. The commands live one module each beside it and are added to ``app`` by ``autoannotate.cli``."""

from __future__ import annotations

import json
from typing import Annotated, Any, TextIO

import typer

from autoannotate import __version__
from autoannotate.cli.errors import EXIT_OK, exit_codes_help

EXIT_CODES_HELP = exit_codes_help()

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

# Shared option aliases.
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


def command_group(help: str) -> typer.Typer:
    """A group of subcommands (``export``, ``import``): plain help, ``-h``, and its help when called bare."""
    return typer.Typer(help=help, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


def emit(stream: TextIO, event: dict[str, Any]) -> None:
    """One JSON line on ``stream``, flushed at once (``--json`` events)."""
    stream.write(json.dumps(event, ensure_ascii=False) + "\n")
    stream.flush()

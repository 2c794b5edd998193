"""The ``autoannotate`` command line: ``app`` (Typer) with one module per command, and ``main``, the console script.

``app.py`` holds the app and what its commands share, ``run.py`` the ``run`` command (its options made from the
settings' metadata), ``merge.py`` the ``merge`` command, ``review.py`` ``check``, ``preview`` and ``export coco``,
``exchange.py`` ``export labelstudio``/``cvat`` and ``import labelstudio``/``cvat``, ``report.py`` ``report``,
and ``errors.py`` how every command ends: the exit-code table and one ``error:`` line per failure.
"""

from __future__ import annotations

import gc
import signal

from autoannotate.cli import exchange, merge, report, review, run
from autoannotate.cli.app import app
from autoannotate.errors import Terminated

__all__ = ["app", "main"]

# In the order `autoannotate --help` lists them.
run.register(app)
merge.register(app)
review.register(app)
exchange.register(review.export_app, app)
report.register(app)


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
    try:
        app(prog_name="autoannotate")
    finally:
        # Everything is written and closed by now. Python's collection at exit walks every object torch,
        # ultralytics and OpenVINO created (measured: ~1 s of a 10-image run's 1.7 s from its last file to its exit);
        # frozen objects are skipped by it. Refcounting and the modules' own teardown still run.
        gc.freeze()

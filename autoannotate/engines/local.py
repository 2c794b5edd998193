"""``--engine local``: the pipeline in this process, its three thread pools overlapping decode, inference and
writing (see ``pipeline.Annotator``)."""

from __future__ import annotations

from collections.abc import Iterator

from autoannotate.engines import EngineRun
from autoannotate.models import build_annotator
from autoannotate.types import ImageOutcome


def run(job: EngineRun) -> Iterator[ImageOutcome]:
    """Annotate ``job.items`` with the driver's models; one outcome per item, in input order."""
    annotator = build_annotator(job.settings, job.models, job.layout, job.previous, job.fingerprint, job.journal)
    return annotator.run(job.items)

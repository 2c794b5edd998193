"""Engines: what runs the pipeline over a run's items. ``ENGINES`` is the registry (``--engine`` name -> entry);
each engine is a peer module that builds its pipeline through ``models`` (never through ``job``), and yields one
``ImageOutcome`` per item in input order. Importing this package imports no engine (Ray, torch) until one runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoannotate.errors import ConfigError

if TYPE_CHECKING:
    from autoannotate.config import RunSettings
    from autoannotate.dataset.layout import DatasetLayout
    from autoannotate.inputs.base import InputItem
    from autoannotate.models import Models
    from autoannotate.resume import Journal, PreviousRun
    from autoannotate.types import ImageOutcome

__all__ = ["ENGINES", "EngineEntry", "EngineRun", "engine_entry"]


@dataclass(frozen=True)
class EngineRun:
    """Everything an engine needs for one run. ``models``: the driver's loaded models (the local engine annotates
    with them; a distributed engine loads its own per worker); ``journal``: the driver's journal (the local engine
    records its writes there; workers keep journals of their own beside it, named from ``journal_name``)."""

    settings: RunSettings
    layout: DatasetLayout
    previous: PreviousRun
    fingerprint: str
    items: Iterable[InputItem]
    models: Models
    journal: Journal
    journal_name: str


@dataclass(frozen=True)
class EngineEntry:
    """``module``: where ``run(EngineRun) -> Iterator[ImageOutcome]`` lives (imported when the engine runs).
    ``per_worker_models``: its workers load models of their own, so the driver's (class names, digests, the
    fingerprint) are loaded on the CPU and never take a GPU that a worker needs."""

    name: str
    module: str
    per_worker_models: bool = False

    def run(self, job: EngineRun) -> Iterator[ImageOutcome]:
        engine = importlib.import_module(self.module)
        outcomes: Iterator[ImageOutcome] = engine.run(job)
        return outcomes


ENGINES: dict[str, EngineEntry] = {
    "local": EngineEntry("local", "autoannotate.engines.local"),
    "ray": EngineEntry("ray", "autoannotate.engines.ray_engine", per_worker_models=True),
}


def engine_entry(name: str) -> EngineEntry:
    """The registered engine ``name``; ConfigError (one line, naming the known ones) otherwise."""
    entry = ENGINES.get(str(name))
    if entry is None:
        raise ConfigError(f"unknown engine {str(name)!r}: known engines are {', '.join(ENGINES)}")
    return entry

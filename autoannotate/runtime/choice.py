"""``--runtime``: which runtime runs the segmenter's networks, decided once per run from facts, not guesses.

The rule for ``auto`` (README, "Runtimes"): OpenVINO when the run is on the CPU of an x86-64 machine, OpenVINO is
installed, and either its conversion of this model is already cached or the run has at least
``OPENVINO_AUTO_MIN_ITEMS`` items to annotate; PyTorch otherwise. Why: on the x86-64 CPUs measured (the issue's AMD
Zen 5, our Intel Xeon) OpenVINO runs the MobileSAM encoder and decoder faster at both precisions, but converting a
model the first time costs tens of seconds, which a short run (a CI job, a shard, a handful of photos) does not earn
back; once cached, every run gets it. ``torch`` and ``openvino`` are what they say; ``openvino`` converts whatever the
run's size, and falls back to PyTorch with one warning line when it cannot. ``AUTOANNOTATE_RUNTIME=torch`` (or
``openvino``) replaces ``auto`` for every run of an environment (a CI machine that must not convert, say); an explicit
``--runtime`` wins over it.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass

from autoannotate.errors import ConfigError

__all__ = [
    "ENV_VAR",
    "OPENVINO_AUTO_MIN_ITEMS",
    "RuntimeChoice",
    "choose_runtime",
    "machine_prefers_openvino",
    "requested_runtime",
]

#: Environment variable that replaces ``--runtime auto``: ``torch``, ``openvino`` or ``auto``.
ENV_VAR = "AUTOANNOTATE_RUNTIME"

#: ``--runtime auto`` converts to OpenVINO (once, then cached) for runs of at least this many items.
OPENVINO_AUTO_MIN_ITEMS = 50


@dataclass(frozen=True)
class RuntimeChoice:
    """``openvino``: try OpenVINO; ``convert``: convert the model when the cache lacks it (else only a cached
    conversion is used); ``explicit``: the user asked for it, so a fallback to PyTorch is said in a warning line."""

    openvino: bool
    convert: bool
    explicit: bool


def machine_prefers_openvino(machine: str | None = None) -> bool:
    """Whether ``auto`` may choose OpenVINO here: x86-64, where it was measured faster (the issue's AMD Zen 5 and
    this project's Intel Xeon VMs), as ``runtime.cpu_kernels`` decides for oneDNN. On Arm it was not measured."""
    return (platform.machine() if machine is None else machine).lower() in ("x86_64", "amd64")


def requested_runtime(option: str, environ: Mapping[str, str] | None = None) -> str:
    """``--runtime`` as the run takes it: ``auto`` replaced by ``$AUTOANNOTATE_RUNTIME`` when that is set.
    Raises ConfigError for a value of the variable that is no runtime."""
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR, "").strip().lower()
    if option != "auto" or not value:
        return option
    if value not in ("auto", "torch", "openvino"):
        raise ConfigError(f"invalid {ENV_VAR}={value[:40]!r}: use auto, torch or openvino")
    return value


def choose_runtime(requested: str, *, on_cpu: bool, installed: bool, x86_64: bool, long_run: bool) -> RuntimeChoice:
    """Apply the rule in the module docstring.

    Args:
        requested: ``"auto"``, ``"torch"`` or ``"openvino"``.
        on_cpu: The run's device is the CPU.
        installed: The ``openvino`` package is installed.
        x86_64: The machine is x86-64.
        long_run: The run has at least ``OPENVINO_AUTO_MIN_ITEMS`` items.
    """
    if requested == "torch" or not on_cpu:
        return RuntimeChoice(openvino=False, convert=False, explicit=requested == "openvino")
    if requested == "openvino":
        return RuntimeChoice(openvino=True, convert=True, explicit=True)
    if requested != "auto":
        raise ValueError(f"unknown runtime {requested!r}")
    use = installed and x86_64
    return RuntimeChoice(openvino=use, convert=use and long_run, explicit=False)

"""Torch modules run by OpenVINO on CPU: exported once, converted, cached on disk, compiled per run.

Why: on x86-64 CPUs OpenVINO's CPU plugin runs the MobileSAM image encoder and mask decoder faster than PyTorch at
the same precision (the issue's dev machine, one thread: encoder 0.79 -> 0.63 s fp32, 0.51 -> 0.34 s bf16), because
it fuses TinyViT's many small operators and picks its own kernels. Converting a model costs seconds to a minute
(``torch.export`` then ``openvino.convert_model``), so the converted model is saved once, under
``<cache>/openvino/<key>/``, and later runs read it back (a second or less). The key is the digest of everything that
decides the converted graph: the checkpoint's sha256, the part's name and the version of our forward for it, the
input shapes (``-1`` for a dynamic dimension), and the versions of OpenVINO and torch.

Precision: ``precision="f32"`` is float32 throughout (OpenVINO's CPU plugin would otherwise pick bf16 on CPUs that
have it, so it is always set); ``"bf16"`` lets the plugin compute in bfloat16 (``--half``). The weights are saved
uncompressed (``compress_to_fp16=False``), so fp32 matches PyTorch to float rounding.

The segmenter glue (``segmenters/sam_openvino.py``) and ``models.py`` import this module only when a run may use
OpenVINO, and ``openvino`` itself is imported inside the functions, so a torch-only run never loads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoannotate.errors import ModelError, one_line

__all__ = [
    "CACHE_ENV_VAR",
    "CompiledPart",
    "OpenVinoUnavailable",
    "PartSpec",
    "compile_part",
    "default_cache_root",
    "openvino_version",
    "part_cache_dir",
]

#: Environment variable naming the cache root (default ``$XDG_CACHE_HOME/autoannotate``, else ``~/.cache/...``).
CACHE_ENV_VAR = "AUTOANNOTATE_CACHE_DIR"
_MODEL_FILE = "model.xml"
_BLOB_LOCK = ".lock"  # in each compiled-blob folder: held while OpenVINO reads or writes a blob there


class OpenVinoUnavailable(ModelError):
    """OpenVINO is not installed, or could not convert or compile a part: the caller falls back to PyTorch."""


@dataclass(frozen=True)
class PartSpec:
    """What decides a converted part, hence its cache key.

    Attributes:
        name: The part, e.g. ``"mobile_sam/image_encoder"``.
        model_sha256: The checkpoint file's sha256 (the weights are baked into the converted graph).
        forward_version: Bumped when the torch forward we export for this part changes.
        input_shapes: One shape per input, ``-1`` for a dimension that may vary between calls.
    """

    name: str
    model_sha256: str
    forward_version: int
    input_shapes: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class OpenVinoSettings:
    """How a part is compiled: ``precision`` ``"f32"`` or ``"bf16"``; ``streams`` requests run at once (one per
    inference worker), ``threads`` CPU threads in all; ``cache_root`` where converted parts are kept."""

    precision: str
    streams: int
    threads: int
    cache_root: Path


def openvino_version() -> str | None:
    """The installed ``openvino`` package's version, None when it is not installed (nothing is imported)."""
    if importlib.util.find_spec("openvino") is None:
        return None
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return None


def default_cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$AUTOANNOTATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/autoannotate``, else ``~/.cache/autoannotate``."""
    env = os.environ if environ is None else environ
    if env.get(CACHE_ENV_VAR):
        return Path(env[CACHE_ENV_VAR]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "autoannotate"


def part_cache_dir(spec: PartSpec, cache_root: Path, ov_version: str) -> Path:
    """``<cache_root>/openvino/<name>-<digest>``: the folder holding ``spec``'s converted model."""
    key = {
        "part": spec.name,
        "model_sha256": spec.model_sha256,
        "forward_version": spec.forward_version,
        "input_shapes": [list(shape) for shape in spec.input_shapes],
        "openvino": ov_version,
        "torch": torch.__version__,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root / "openvino" / f"{spec.name.replace('/', '-')}-{digest}"


class CompiledPart:
    """A compiled OpenVINO model called like a function: float32 numpy arrays in, numpy arrays out (copies: the
    request reuses its output buffers). Thread-safe: each calling thread gets its own infer request (inference
    workers call concurrently, one stream each)."""

    def __init__(self, compiled: Any, converted: bool, model: Any, settings: OpenVinoSettings) -> None:
        self._compiled = compiled
        self._local = threading.local()
        #: Whether this run converted the part (False: read from the cache).
        self.converted = converted
        self._model = model  # the converted graph, to compile it again in another precision
        self._settings = settings

    @property
    def precision(self) -> str:
        """``"f32"`` or ``"bf16"``: what it was compiled for."""
        return self._settings.precision

    def in_precision(self, precision: str) -> CompiledPart:
        """The same converted graph compiled for ``precision`` ("f32" or "bf16"); nothing converted again.

        Raises:
            OpenVinoUnavailable: One line: it did not compile.
        """
        settings = dataclasses.replace(self._settings, precision=precision)
        try:
            import openvino as ov

            compiled = _compile(ov.Core(), self._model, settings)
        except Exception as err:
            reason = one_line(err, 120)
            raise OpenVinoUnavailable(f"OpenVINO could not compile a part in {precision} ({reason})") from err
        return CompiledPart(compiled, False, self._model, settings)

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        request.infer([np.ascontiguousarray(x, dtype=np.float32) for x in inputs])
        return [np.array(request.get_output_tensor(i).data) for i in range(len(self._compiled.outputs))]


def _convert(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], spec: PartSpec) -> Any:
    """``torch.export`` (dynamic dimensions where ``spec`` says -1) then ``openvino.convert_model``."""
    import openvino as ov

    dims: dict[tuple[int, int], Any] = {}
    dynamic: list[dict[int, Any] | None] = []
    for i, shape in enumerate(spec.input_shapes):
        wanted = {axis: torch.export.Dim(f"d{i}_{axis}") for axis, size in enumerate(shape) if size < 0}
        dims.update({(i, axis): dim for axis, dim in wanted.items()})
        dynamic.append(wanted or None)
    with torch.no_grad():
        exported = torch.export.export(
            module, tuple(example_inputs), dynamic_shapes=tuple(dynamic) if dims else None, strict=False
        )
    return ov.convert_model(exported)


def _save_atomically(model: Any, target: Path) -> None:
    """Write the converted model into a fresh folder beside ``target`` and rename it into place; a concurrent run
    that got there first wins (its files are the same)."""
    import openvino as ov

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        ov.save_model(model, str(staging / _MODEL_FILE), compress_to_fp16=False)
        try:
            os.rename(staging, target)
        except OSError:  # another run saved it meanwhile (or a broken copy is there: the caller rewrites it)
            if not (target / _MODEL_FILE).is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_cached(core: Any, folder: Path) -> Any | None:
    """The converted model saved in ``folder``, None when absent or unreadable (then it is converted again)."""
    path = folder / _MODEL_FILE
    if not path.is_file():
        return None
    try:
        return core.read_model(str(path))
    except Exception:  # a truncated or foreign file: ours to replace
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _compile(core: Any, model: Any, settings: OpenVinoSettings) -> Any:
    """``model`` compiled for the CPU plugin as ``settings`` say (precision forced, streams, threads, blob cache)."""
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": settings.precision,
        "NUM_STREAMS": max(1, settings.streams),
        "INFERENCE_NUM_THREADS": max(1, settings.threads),
        # Not pinned: a run compiles several parts, each with its own streams, and the CPU plugin pins stream k
        # of every part to the same core k. Two workers in different parts (one encoding, one decoding) then
        # share one core while the other idles: measured, both calls took twice as long and the run used one core.
        "ENABLE_CPU_PINNING": False,
    }
    # One folder per precision: OpenVINO 2026.4's blob key ignores INFERENCE_PRECISION_HINT for MobileSAM's
    # encoder, so a bf16 compile imported the float32 blob and gave all-NaN embeddings, 1.7x slower than f32
    # (measured; the tiny test part gets two keys, the encoder one).
    blobs = settings.cache_root / "openvino" / "compiled" / settings.precision
    lock = _lock_blob_cache(blobs)
    try:  # with the blob cache when we hold its lock: compiled for this CPU, the next compile takes a fraction
        return core.compile_model(model, "CPU", config if lock is None else {**config, "CACHE_DIR": str(blobs)})
    finally:
        if lock is not None:
            os.close(lock)  # releases the lock


def _lock_blob_cache(blobs: Path) -> int | None:
    """The descriptor of ``blobs/.lock`` once we hold it exclusively (waiting for other processes' compiles), None
    when the folder cannot be made or locked: then the compile goes without the blob cache rather than race on it.

    Why: OpenVINO's blob cache is not safe across processes. While one process writes a blob, another reads the
    half-written file: its import fails and it deletes the file (the writer's compile then raises "cannot set
    permissions: No such file"), or it has mapped the file and dies of SIGBUS as the writer rewrites it. Measured
    with four processes compiling one 4 MB part 100 times each: 5 of 400 compiles failed in each of two runs, and
    in two runs of four a process died (of SIGBUS where its status was seen); with the lock, none in three runs.
    Only compiles wait for it, never the runs."""
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        fd = os.open(blobs / _BLOB_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # a filesystem without locks
        os.close(fd)
        return None
    return fd


def compile_part(
    module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], spec: PartSpec, settings: OpenVinoSettings
) -> CompiledPart:
    """``module`` (CPU, float32, eval mode, plain torch layers) as a compiled OpenVINO model, converted at most once
    per cache key.

    Raises:
        OpenVinoUnavailable: One line: OpenVINO missing, or the export, conversion, save or compile failed.
    """
    version = openvino_version()
    if version is None:
        raise OpenVinoUnavailable("OpenVINO is not installed (pip install openvino)")
    if settings.precision not in ("f32", "bf16"):
        raise ValueError(f"precision must be 'f32' or 'bf16', got {settings.precision!r}")
    try:
        import openvino as ov

        core = ov.Core()
        folder = part_cache_dir(spec, settings.cache_root, version)
        model = _read_cached(core, folder)
        converted = model is None
        if model is None:
            model = _convert(module, example_inputs, spec)
            with contextlib.suppress(OSError):  # an unwritable cache costs the next run a conversion, nothing more
                _save_atomically(model, folder)
        compiled = _compile(core, model, settings)
    except OpenVinoUnavailable:
        raise
    except Exception as err:  # OpenVINO and torch.export raise many types; each is one reason to fall back
        raise OpenVinoUnavailable(f"OpenVINO could not compile {spec.name} ({one_line(err, 120)})") from err
    return CompiledPart(compiled, converted, model, settings)


def bf16_supported() -> bool:
    """Whether OpenVINO's CPU plugin computes in bfloat16 on this CPU (else ``--half`` runs it in float32)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")

"""Segmenter checkpoints as data: find the file, read it with torch's weights-only unpickler, unwrap its state dict.

Nothing here knows a model architecture: the registry (``autoannotate.segmenters``) reads a checkpoint once with
these functions and asks each registered segmenter whether it recognises the tensors. Every message is one line that
names the file and the fix (the ``--sam-model`` flag, the URL to fetch an asset by hand, how to convert a pickle).
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from autoannotate.assets import asset_url
from autoannotate.errors import ModelError, one_line

__all__ = [
    "GATED_WEIGHTS",
    "SAM_FLAG_HINT",
    "read_checkpoint",
    "read_state_dict",
    "resolve_weights",
    "unwrap_state_dict",
    "weights_source",
]

#: The fix that ends most weights messages: which checkpoints the ``--sam-model`` flag takes.
SAM_FLAG_HINT = "pass a segmenter checkpoint with --sam-model (e.g. mobile_sam.pt, sam2.1_b.pt, FastSAM-s.pt)"
# What a weights file is expected to hold, in messages about a file that holds something else.
_EXPECTED = "SAM-family"
# The global that torch's weights-only unpickler refused, as its message names it ("Unsupported global: GLOBAL
# ultralytics.nn.tasks.DetectionModel was not an allowed global", "unsupported GLOBAL posix.system whose module
# posix is blocked"); no name means the file is no pickle it can follow at all (text, truncated, corrupt).
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_CONVERT_HINT = (
    "if you trust the file, load it in Python yourself and keep its weights only with "
    "torch.save(model.state_dict(), 'sam_weights.pt'), then pass --sam-model sam_weights.pt"
)
# Bare names of checkpoints whose weights are gated on their hub -> where to request them: never downloaded.
GATED_WEIGHTS = {"sam3.pt": "https://huggingface.co/facebook/sam3"}


def weights_source(path: str | Path) -> str:
    """How messages name a weights file: ``SAM weights '/path/x.pt'``."""
    return f"SAM weights {str(path)!r}"


def resolve_weights(
    name_or_path: str | Path,
    *,
    assets: Collection[str],
    download: Callable[..., Any] | None = None,
) -> Path:
    """Find the checkpoint file to load, downloading a known ultralytics asset if needed.

    Args:
        name_or_path: A path to a local checkpoint (used as is, whatever its name), or the bare name of an
            ultralytics asset in ``assets`` (e.g. ``mobile_sam.pt``), looked up in ultralytics' weights directory and
            otherwise downloaded. A bare name in ``GATED_WEIGHTS`` (``sam3.pt``) is never downloaded: found in the
            working directory or refused, saying where to request it.
        assets: The asset file names that may be downloaded (the registry passes those its segmenters load).
        download: The download function, ``ultralytics.utils.downloads.attempt_download_asset`` by default
            (injectable for tests).

    Returns:
        The path of an existing file.

    Raises:
        ModelError: The path does not exist, the asset cannot be downloaded (e.g. offline), or gated weights are not
            found. The message names the URL to fetch the file from by hand and the ``--sam-model`` flag.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise ModelError(f"{weights_source(path)} is not a file; pass --sam-model PATH to a .pt checkpoint")
    name = path.name
    is_bare_name = str(name_or_path) == name
    if is_bare_name and name in GATED_WEIGHTS:
        raise ModelError(
            f"SAM weights {name!r} not found: they are gated, request access at {GATED_WEIGHTS[name]}, download "
            f"{name} and pass --sam-model /path/to/{name}"
        )
    if not (is_bare_name and name in assets):
        raise ModelError(
            f"{weights_source(path)} does not exist; pass --sam-model PATH to an existing checkpoint "
            f"or one of {', '.join(sorted(assets))} to download it"
        )

    manual = f"download {name} from {asset_url(name)} and then pass --sam-model /path/to/{name}"
    try:
        fetch: Callable[..., Any]
        if download is None:
            from ultralytics.utils.downloads import attempt_download_asset

            fetch = attempt_download_asset
        else:
            fetch = download
        # retry=1 (passed on to safe_download): fail fast offline instead of sleeping through back-off retries.
        found = Path(str(fetch(name, retry=1)))
    except Exception as err:  # network, disk, HTTP, ultralytics internals: all mean "get the file by hand"
        raise ModelError(f"SAM weights {name} could not be downloaded ({one_line(err, 100)}); {manual}") from err
    if not found.is_file():
        raise ModelError(f"SAM weights {name} could not be downloaded; {manual}")
    return found


def read_checkpoint(path: Path, *, mmap: bool = False) -> Any:
    """``torch.load`` on CPU with torch's weights-only unpickler, and never anything else.

    Unpickling an arbitrary object runs whatever its pickle names (``os.system`` included), so a file that the
    weights-only loader refuses is refused here too, saying which object it holds and how to convert it. Every
    checkpoint the registered segmenters know (the SAM and MobileSAM releases, ultralytics' mobile_sam.pt, sam_b.pt,
    sam_l.pt) is a plain state dict that loads without allowing any extra type.

    Args:
        path: The checkpoint file.
        mmap: Map the tensors' storage instead of reading it (zip-format files only; others are read): the cheap way
            to look at names and shapes alone.

    Raises:
        ModelError: A pickled object, or no PyTorch checkpoint at all (text, truncated, corrupt).
    """
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": noise on stderr for a file that is then refused in one line anyway
            warnings.simplefilter("ignore", UserWarning)
            # torch refuses mmap for legacy (non-zip) files with its own error, which would hide the real reason
            use_mmap = mmap and zipfile.is_zipfile(path)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as err:
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused is not None:
            raise ModelError(_refused_object_message(path, refused.group(1))) from None
        # torch's text is a paragraph about its defaults; the reason proper follows "WeightsUnpickler error:"
        _, _, reason = str(err).partition("WeightsUnpickler error:")
        cause: Exception = pickle.UnpicklingError(reason.split("Check the documentation")[0]) if reason else err
    except Exception as err:
        cause = err
    raise ModelError(
        f"{weights_source(path)} cannot be read as a PyTorch checkpoint (corrupt, truncated or not a .pt "
        f"file: {one_line(cause, 100)}); {SAM_FLAG_HINT}"
    ) from None


def _refused_object_message(path: Path, global_name: str) -> str:
    """Why a checkpoint holding a pickled object (``global_name``, as the pickle names it) is not loaded."""
    source = weights_source(path)
    shown = global_name if len(global_name) <= 60 else global_name[:57] + "..."
    if global_name.startswith("ultralytics."):
        # recognised from the refused class's name alone: nothing of the file is unpickled to say what it is
        return (
            f"{source} is an Ultralytics model checkpoint (e.g. YOLO, it holds a pickled {shown}), not a "
            f"{_EXPECTED} state dict; {SAM_FLAG_HINT}"
        )
    return (
        f"{source} is not a plain state dict: it holds a pickled object ({shown}), and unpickling one can run "
        f"arbitrary code, so it is not loaded; {_CONVERT_HINT}"
    )


def unwrap_state_dict(checkpoint: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensor state dict inside ``checkpoint``: the checkpoint itself, or its ``"model"``/``"state_dict"``.

    Non-tensor entries are dropped and a ``"module."`` prefix on every key (a DistributedDataParallel wrapper) is
    removed. ``source`` names the checkpoint in messages (``weights_source(path)``).

    Raises:
        ModelError: A pickled ``nn.Module`` (an Ultralytics model or another), or no state dict inside.
    """
    if isinstance(checkpoint, Mapping):
        for key in ("model", "state_dict"):
            inner = checkpoint.get(key)
            if isinstance(inner, torch.nn.Module):
                from_ultralytics = type(inner).__module__.startswith("ultralytics")
                kind = "an Ultralytics model checkpoint (e.g. YOLO)" if from_ultralytics else "a pickled model"
                raise ModelError(
                    f"{source} is {kind} holding a {type(inner).__name__}, not a {_EXPECTED} checkpoint; "
                    f"{SAM_FLAG_HINT}"
                )
            if isinstance(inner, Mapping):
                checkpoint = inner
                break
    if isinstance(checkpoint, torch.nn.Module):
        raise ModelError(
            f"{source} is a pickled {type(checkpoint).__name__}, not a {_EXPECTED} state dict; {SAM_FLAG_HINT}"
        )
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ModelError(f"{source} is not a {_EXPECTED} checkpoint (no state dict inside); {SAM_FLAG_HINT}")
    state_dict = {str(k): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    # Checkpoints saved from a DistributedDataParallel wrapper carry a "module." prefix on every key.
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


def read_state_dict(path: Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """``unwrap_state_dict(read_checkpoint(path))``: the checkpoint's tensors by name, on CPU (see both)."""
    return unwrap_state_dict(read_checkpoint(path, mmap=mmap), weights_source(path))

"""Text prompts to class embeddings, with the detector's own text encoder (ultralytics' code, run once per run).

YOLOE embeds prompts with MobileCLIP (``mobileclip_blt.ts``; ``mobileclip2_b.ts`` for YOLOE-26), YOLO-World with
OpenAI CLIP ViT-B/32. ultralytics downloads the encoder on first use; offline, without it, the run stops with one
line naming the file, where to get it, and ``--prompt-embeddings`` as the alternative.

Both encoders tokenise with the ``clip`` package (``clip-anytorch`` here: the same code as ultralytics' CLIP fork,
on PyPI), imported before ultralytics' text module so that ultralytics never tries to pip-install its fork at run
time.
"""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path
from typing import Any

import torch

from autoannotate.assets import asset_url
from autoannotate.errors import ModelError, logs_held, one_line

#: ultralytics' text-model variants (``YOLOEModel.text_model``) and the encoder file each loads.
_YOLOE_ENCODERS = {"mobileclip:blt": "mobileclip_blt.ts", "mobileclip2:b": "mobileclip2_b.ts"}
_CLIP_FILE = "ViT-B-32.pt"  # YOLO-World's text encoder, in ultralytics' weights dir under clip/


def import_clip() -> None:
    """Import the ``clip`` tokeniser package, or raise ModelError saying how to install it.

    clip-anytorch (like OpenAI's CLIP) still reads ``packaging`` through ``pkg_resources``, which setuptools 81+
    no longer ships: then a stand-in offering just ``pkg_resources.packaging`` serves that one import and is
    removed again, so no other code ever sees it.
    """
    try:
        import clip

        return
    except ModuleNotFoundError as err:
        if err.name != "pkg_resources":
            raise ModelError(
                "text prompts need the CLIP tokeniser: pip install clip-anytorch (autoannotate's dependencies"
                " include it), or pass --prompt-embeddings FILE.npz"
            ) from None
    import packaging.version

    stand_in = types.ModuleType("pkg_resources")
    stand_in.packaging = packaging  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = stand_in
    try:
        import clip  # noqa: F401
    finally:
        if sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]


def encoder_file(kind: str, model: Any) -> str:
    """The text encoder file a ``kind`` (``"yoloe"``/``"world"``) detector loads for text prompts."""
    if kind == "world":
        return _CLIP_FILE
    variant = str(getattr(model, "text_model", "mobileclip:blt"))
    return _YOLOE_ENCODERS.get(variant, variant)


def _weights_dir() -> Path:
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["weights_dir"])


def _where_to_put(kind: str, name: str) -> tuple[str, str]:
    """(download address, folder to put it in) for the encoder file ``name``."""
    if kind == "world":
        return "OpenAI's CLIP release (clip.load('ViT-B/32') fetches it)", str(_weights_dir() / "clip")
    return asset_url(name), str(_weights_dir())


def text_embeddings(kind: str, yolo: Any, prompts: list[str], detector_name: str) -> torch.Tensor:
    """Class embeddings ``(1, len(prompts), D)`` of ``prompts`` from ``yolo``'s own text encoder (ultralytics'
    ``YOLOE.get_text_pe`` or ``WorldModel.get_text_pe``), on the model's device.

    Raises ModelError (one line) when the encoder is not on this machine and cannot be downloaded.
    """
    import_clip()
    name = encoder_file(kind, yolo.model)
    try:
        with logs_held(), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript, MobileCLIP's format
            # YOLO-World's wrapper has no get_text_pe: its model module does
            embeddings = yolo.model.get_text_pe(prompts) if kind == "world" else yolo.get_text_pe(prompts)
    except (ConnectionError, TimeoutError, OSError) as err:
        address, folder = _where_to_put(kind, name)
        raise ModelError(
            f"text prompts need {detector_name}'s text encoder {name}, which is not on this machine and could not"
            f" be downloaded ({type(err).__name__}); download {address} into {folder!r}, or pass --prompt-embeddings"
            " FILE.npz (every prompt run saves one as prompt_embeddings.npz in its output dir)"
        ) from None
    except RuntimeError as err:  # a torn or foreign encoder file: torch.jit.load refuses it
        raise ModelError(
            f"the text encoder {name} of {detector_name} does not load ({one_line(err, 100)}); delete it so that"
            " it is downloaded again, or pass --prompt-embeddings FILE.npz"
        ) from None
    return embeddings.detach().float()

"""SAM/MobileSAM's image encoder and mask decoder on OpenVINO (``--runtime openvino``): the parts, as exported.

Three parts are converted (``runtime.openvino_parts``), each from the loaded torch modules, weights baked in:

- ``image_encoder``: ``(1, 3, 1024, 1024)`` normalised, padded image -> ``(1, 256, 64, 64)`` embedding.
- ``decoder_image_side``: the embedding -> the decoder's work shared by every prompt of an image
  (``sam_decoder.ImageSide``: image tokens and the first block's three projections), with the positional encoding
  and the no-mask dense embedding, both constants of the model, baked in.
- ``decoder_prompts``: that image side and ``(B, N, 256)`` sparse prompt embeddings (B prompts of N tokens, both
  dynamic) -> single-mask logits ``(B, 1, 256, 256)`` and IoU predictions ``(B, 1)``.

The forwards exported are ``sam_decoder.SharedImageDecoder``'s (the one PyTorch runs), so both runtimes compute the
same function; the prompt encoder (a few small matmuls per box) stays in PyTorch. ``tests/test_segment_parity.py``
runs the MobileSAM reference parity test on both runtimes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoannotate.runtime.cpu_kernels import use_default_kernels, use_onednn
from autoannotate.runtime.openvino_parts import (
    CompiledPart,
    OpenVinoSettings,
    OpenVinoUnavailable,
    PartSpec,
    compile_part,
    part_cache_dir,
)
from autoannotate.segmenters.sam_decoder import ImageSide, SharedImageDecoder
from autoannotate.segmenters.sam_transforms import SAM_IMAGE_SIZE

__all__ = ["ENCODER_THREADS_PER_STREAM", "OpenVinoSam", "encoder_settings", "openvino_sam"]

# Bump when the exported forward of a part changes: old cache entries are then never read.
# 2: the CPU encoder is exported with its BatchNorms folded and its GELUs fused (``cpu_kernels.fuse_for_cpu``).
_FORWARD_VERSION = 2
_EXAMPLE_PROMPTS = (8, 2)  # (prompts, tokens) of the example input; both dimensions are dynamic
#: The image encoder's streams get at least this many threads each (see ``encoder_settings``).
ENCODER_THREADS_PER_STREAM = 2


class _ImageSideModule(nn.Module):
    """The decoder's image side as a module: ``(1, C, H, W)`` embedding -> tokens, first K, V, Q."""

    image_pe: torch.Tensor
    dense: torch.Tensor

    def __init__(self, decoder: SharedImageDecoder, image_pe: torch.Tensor, dense: torch.Tensor) -> None:
        super().__init__()
        self.mask_decoder = decoder.module
        self.register_buffer("image_pe", image_pe.detach().clone())
        self.register_buffer("dense", dense.detach().clone())
        self._decoder = decoder

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, ...]:
        side = self._decoder.image_side(embedding, self.image_pe, self.dense)
        return side.tokens, side.first_k, side.first_v, side.first_q


class _PromptsModule(nn.Module):
    """The decoder's per-prompt work as a module: image side + ``(B, N, C)`` sparse -> logits, IoU."""

    pe_tokens: torch.Tensor

    def __init__(self, decoder: SharedImageDecoder, pe_tokens: torch.Tensor, hw: tuple[int, int]) -> None:
        super().__init__()
        self.mask_decoder = decoder.module
        self.register_buffer("pe_tokens", pe_tokens.detach().clone())
        self._decoder = decoder
        self.hw = hw

    def forward(
        self, tokens: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q: torch.Tensor, sparse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._decoder(ImageSide(tokens, self.pe_tokens, k, v, q, self.hw), sparse)


@contextmanager
def _plain_layers(model: nn.Module) -> Iterator[None]:
    """The model with PyTorch's own layer classes while it is exported (the oneDNN-routed ones call an op that
    OpenVINO does not convert), routed again afterwards if it was."""
    routed = use_default_kernels(model)
    try:
        yield
    finally:
        if routed:
            use_onednn(model)


def state_dict_sha256(model: nn.Module) -> str:
    """A digest of a model's weights, for a model that was not loaded from a file (its cache key)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class OpenVinoSam:
    """The compiled parts of one SAM model, with the interface ``BoxSegmenter`` calls: ``encode`` for the image
    encoder, ``image_side`` and ``__call__`` for the decoder (as ``SharedImageDecoder``)."""

    def __init__(
        self,
        encoder: CompiledPart,
        side: CompiledPart,
        prompts: CompiledPart,
        pe_tokens: torch.Tensor,
        hw: tuple[int, int],
        cache_dirs: tuple[Path, ...],
    ) -> None:
        self._parts = (encoder, side, prompts)
        # With bf16 parts: a part whose bf16 output is not finite is called again in float32 (its float32 twin,
        # ``CompiledPart.in_precision``, compiled on first need and kept) rather than giving NaN logits, i.e. empty
        # masks. A safety net (reduced-precision ViTs can overflow); the NaNs first seen here came from OpenVINO's
        # blob cache (``openvino_parts._compile``), not from bf16 itself.
        self._f32: dict[int, CompiledPart] = {}
        self._lock = threading.Lock()
        #: How many part calls were redone in float32 because bf16 gave a non-finite output.
        self.redone_in_f32 = 0
        self._pe_tokens = pe_tokens
        self._hw = hw
        #: Where the converted parts are kept.
        self.cache_dirs = cache_dirs

    @property
    def precision(self) -> str:
        """``"f32"`` or ``"bf16"``."""
        return self._parts[0].precision

    @property
    def converted(self) -> bool:
        """Whether this run converted any part (False: all read from the cache)."""
        return any(p.converted for p in self._parts)

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 1024, 1024)`` float32 -> ``(B, 256, 64, 64)`` float32 embeddings, one image per request."""
        out = [self._finite(0, batch[i : i + 1].contiguous().numpy())[0] for i in range(batch.shape[0])]
        return torch.from_numpy(np.concatenate(out))

    def _finite(self, part: int, *inputs: np.ndarray) -> list[np.ndarray]:
        """Part ``part`` (0 encoder, 1 image side, 2 prompts) on ``inputs``; again in float32 when a bf16 output
        is not finite."""
        compiled = self._parts[part]
        outputs = compiled(*inputs)
        if compiled.precision != "f32" and not all(np.isfinite(out).all() for out in outputs):
            with self._lock:
                self.redone_in_f32 += 1
                if part not in self._f32:
                    self._f32[part] = compiled.in_precision("f32")
                redo = self._f32[part]
            outputs = redo(*inputs)
        return outputs

    def image_side(self, embedding: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor) -> ImageSide:
        """As ``SharedImageDecoder.image_side``; ``image_pe`` and the no-mask ``dense`` are baked into the part."""
        tokens, k, v, q = (torch.from_numpy(a) for a in self._finite(1, embedding.float().contiguous().numpy()))
        return ImageSide(tokens, self._pe_tokens, k, v, q, self._hw)

    def __call__(self, side: ImageSide, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``SharedImageDecoder.__call__``: ``(B, 1, 4H, 4W)`` logits and ``(B, 1)`` IoU predictions."""
        arrays = [t.numpy() for t in (side.tokens, side.first_k, side.first_v, side.first_q)]
        logits, iou = self._finite(2, *arrays, sparse.float().contiguous().numpy())
        return torch.from_numpy(logits), torch.from_numpy(iou)


def encoder_settings(settings: OpenVinoSettings) -> OpenVinoSettings:
    """The image encoder's compile settings: ``settings`` with fewer streams, so that each stream has at least
    ``ENCODER_THREADS_PER_STREAM`` threads (2 cores: one stream of 2 threads, not two of one; 16 cores and 8 workers:
    unchanged, 8 streams of 2). OpenVINO runs MobileSAM's encoder on two threads 2.1x as fast as on one (measured on
    the Zen 4 VM: 0.525 s against 1.10 s), so an image is encoded in half the time for about the same throughput
    with two callers (fp32 1.71-1.98 images/s against 1.82-1.97 with two streams of one thread): the run's first
    label comes sooner and its last image no longer leaves a core idle. The inference workers stay as many as
    before: while one waits for the encoder's stream it detects, decodes or hands over its masks. The decoder's
    parts, short calls, keep one stream per worker."""
    streams = max(1, min(settings.streams, settings.threads // ENCODER_THREADS_PER_STREAM))
    return dataclasses.replace(settings, streams=streams)


def _parts(
    model: Any, decoder: SharedImageDecoder, variant: str, sha256: str
) -> list[tuple[nn.Module, tuple[torch.Tensor, ...], PartSpec]]:
    """Each part's module, example inputs and cache spec."""
    with torch.inference_mode():
        image_pe = model.prompt_encoder.get_dense_pe().float()
        h, w = image_pe.shape[-2:]
        channels = image_pe.shape[1]
        _, dense = model.prompt_encoder(points=None, boxes=torch.zeros(1, 4), masks=None)
        embedding = torch.zeros(1, channels, h, w)
        side = decoder.image_side(embedding, image_pe, dense[:1])
    image = torch.zeros(1, 3, SAM_IMAGE_SIZE, SAM_IMAGE_SIZE)
    n_prompts, n_tokens = _EXAMPLE_PROMPTS
    example_sparse = torch.zeros(n_prompts, n_tokens, channels)
    side_inputs = (side.tokens, side.first_k, side.first_v, side.first_q)
    return [
        (
            model.image_encoder,
            (image,),
            PartSpec(f"{variant}/image_encoder", sha256, _FORWARD_VERSION, (tuple(image.shape),)),
        ),
        (
            _ImageSideModule(decoder, image_pe, dense[:1]),
            (embedding,),
            PartSpec(f"{variant}/decoder_image_side", sha256, _FORWARD_VERSION, (tuple(embedding.shape),)),
        ),
        (
            _PromptsModule(decoder, side.pe, side.hw),
            (*side_inputs, example_sparse),
            PartSpec(
                f"{variant}/decoder_prompts",
                sha256,
                _FORWARD_VERSION,
                (*(tuple(t.shape) for t in side_inputs), (-1, -1, channels)),
            ),
        ),
    ]


def openvino_sam(
    model: nn.Module,
    decoder: SharedImageDecoder,
    variant: str,
    sha256: str | None,
    settings: OpenVinoSettings,
    convert: bool,
) -> OpenVinoSam:
    """Compile ``model``'s encoder and decoder parts (reading converted ones from the cache).

    Args:
        model: A CPU float32 SAM/MobileSAM model (``.image_encoder``, ``.prompt_encoder``, ``.mask_decoder``).
        decoder: Its ``SharedImageDecoder``.
        variant: Its variant name (``"mobile_sam"``...), part of the cache folders' names.
        sha256: The checkpoint's sha256 (None: a digest of the weights is taken).
        settings: Precision, streams, threads, cache root.
        convert: Convert parts missing from the cache; False raises ``OpenVinoUnavailable`` instead.

    Raises:
        OpenVinoUnavailable: One line; the caller then runs PyTorch.
    """
    from autoannotate.runtime.openvino_parts import openvino_version

    version = openvino_version()
    if version is None:
        raise OpenVinoUnavailable("OpenVINO is not installed (pip install openvino)")
    sha256 = sha256 or state_dict_sha256(model)
    parts = _parts(model, decoder, variant, sha256)
    folders = tuple(part_cache_dir(spec, settings.cache_root, version) for _, _, spec in parts)
    if not convert and not all((folder / "model.xml").is_file() for folder in folders):
        raise OpenVinoUnavailable("the OpenVINO conversion of this model is not cached yet")
    with _plain_layers(model):
        per_part = (encoder_settings(settings), settings, settings)
        compiled = [
            compile_part(module, inputs, spec, part_settings)
            for (module, inputs, spec), part_settings in zip(parts, per_part, strict=True)
        ]

    prompts_module = parts[2][0]
    assert isinstance(prompts_module, _PromptsModule)
    return OpenVinoSam(compiled[0], compiled[1], compiled[2], prompts_module.pe_tokens, prompts_module.hw, folders)

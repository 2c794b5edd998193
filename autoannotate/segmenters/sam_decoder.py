"""SAM's mask decoder (SAM and MobileSAM), its forward written here from the architecture so that the work on the
image side that every prompt of an image shares is done once per image instead of once per prompt.

The architecture (Kirillov et al., "Segment Anything", 2023, section 3 and appendix A): a two-way transformer of
``depth`` blocks between the prompt tokens (an IoU token, four mask tokens, then the prompt's sparse embeddings) and
the 64x64 image tokens (the image embedding plus the dense prompt embedding, with a fixed positional encoding). Each
block: token self-attention, token-to-image cross-attention, a token MLP, image-to-token cross-attention (which
updates the image tokens); then a final token-to-image attention, the mask upscaling of the image tokens and a
hypernetwork product per mask token, and an MLP on the IoU token.

What is shared: with box and point prompts (no mask prompt) the dense prompt embedding is one learned vector for every
prompt, so before the first block's image-to-token attention the image tokens are the same for all prompts of an
image. The first block's token-to-image keys and values and its image-to-token queries are three projections of the
4096 image tokens; the reference computes them once per prompt (on a copy of the image embedding per prompt), this
forward once per image. That is 3 of the 10 token-sized projections of a prompt, about a fifth of its work. With
``multimask_output=False`` only the first mask token's hypernetwork and product are computed.

The modules' own layers (``nn.Linear``, ``nn.LayerNorm``, the MLPs, the upscaling) are called with their weights as
loaded, so a checkpoint, ``.to(device)``, the oneDNN CPU routing and autocast apply as they do to the reference.
``tests/test_sam_decoder.py`` checks the logits and IoU scores against the module's own forward on the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ImageSide", "SharedImageDecoder", "shared_image_decoder"]


@dataclass(frozen=True)
class ImageSide:
    """The part of the decoder's work that depends on one image only, shared by all its prompts.

    ``tokens``: ``(1, HW, C)`` image tokens (image embedding + dense prompt embedding); ``pe``: ``(1, HW, C)`` their
    positional encoding; ``first_k``, ``first_v``: ``(1, heads, HW, c)`` the first block's token-to-image keys and
    values; ``first_q``: ``(1, heads, HW, c)`` its image-to-token queries; ``hw``: the embedding's ``(H, W)``.
    """

    tokens: torch.Tensor
    pe: torch.Tensor
    first_k: torch.Tensor
    first_v: torch.Tensor
    first_q: torch.Tensor
    hw: tuple[int, int]


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``(B, N, C)`` -> ``(B, heads, N, C / heads)``."""
    b, n, c = x.shape
    return x.reshape(b, n, n_heads, c // n_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``(B, heads, N, c)`` -> ``(B, N, heads * c)``."""
    b, h, n, c = x.shape
    return x.transpose(1, 2).reshape(b, n, h * c)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention over heads-separated tensors; a batch of 1 broadcasts against the other's."""
    weights = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


def _attention(attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One of the transformer's attention layers on ``(B, N, C)`` inputs, all projected here."""
    n = attn.num_heads
    out = _attend(_heads(attn.q_proj(q), n), _heads(attn.k_proj(k), n), _heads(attn.v_proj(v), n))
    return attn.out_proj(_merge(out))


class SharedImageDecoder:
    """``image_side`` once per image, then ``__call__`` per chunk of prompts (single-mask output)."""

    def __init__(self, mask_decoder: nn.Module) -> None:
        self._decoder: Any = mask_decoder
        self._transformer: Any = mask_decoder.transformer

    @property
    def module(self) -> nn.Module:
        """The mask decoder whose layers this forward calls."""
        return self._decoder

    def image_side(self, embedding: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor) -> ImageSide:
        """``embedding``, ``image_pe``: ``(1, C, H, W)``; ``dense``: ``(1, C, H, W)``, the dense prompt embedding
        of every prompt of the image (the no-mask embedding: masks are never prompted here)."""
        h, w = embedding.shape[-2:]
        tokens = (embedding + dense).flatten(2).transpose(1, 2)
        pe = image_pe.flatten(2).transpose(1, 2)
        first = self._transformer.layers[0]
        to_image, to_token = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        keyed = tokens + pe
        return ImageSide(
            tokens=tokens,
            pe=pe,
            first_k=_heads(to_image.k_proj(keyed), to_image.num_heads),
            first_v=_heads(to_image.v_proj(tokens), to_image.num_heads),
            first_q=_heads(to_token.q_proj(keyed), to_token.num_heads),
            hw=(int(h), int(w)),
        )

    def __call__(self, side: ImageSide, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-mask logits ``(B, 1, 4H, 4W)`` and IoU predictions ``(B, 1)`` for ``sparse`` ``(B, N, C)`` prompt
        embeddings, as ``mask_decoder(..., multimask_output=False)`` gives them."""
        decoder, transformer = self._decoder, self._transformer
        b = sparse.shape[0]
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        prompt = torch.cat((output_tokens.unsqueeze(0).expand(b, -1, -1), sparse), dim=1)  # also their pos. enc.
        queries = prompt
        keys = side.tokens  # (1, HW, C) until the first block's image-to-token attention makes it per prompt
        for i, layer in enumerate(transformer.layers):
            if layer.skip_first_layer_pe:
                queries = _attention(layer.self_attn, queries, queries, queries)
            else:
                q = queries + prompt
                queries = queries + _attention(layer.self_attn, q, q, queries)
            queries = layer.norm1(queries)
            to_image, to_token = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
            q = queries + prompt
            if i == 0:
                n = to_image.num_heads
                out = to_image.out_proj(_merge(_attend(_heads(to_image.q_proj(q), n), side.first_k, side.first_v)))
            else:
                out = _attention(to_image, q, keys + side.pe, keys)
            queries = layer.norm2(queries + out)
            queries = layer.norm3(queries + layer.mlp(queries))
            q = queries + prompt
            if i == 0:
                n = to_token.num_heads
                k, v = _heads(to_token.k_proj(q), n), _heads(to_token.v_proj(queries), n)
                out = to_token.out_proj(_merge(_attend(side.first_q, k, v)))
            else:
                out = _attention(to_token, keys + side.pe, q, queries)
            keys = layer.norm4(keys + out)
        q = queries + prompt
        queries = queries + _attention(transformer.final_attn_token_to_image, q, keys + side.pe, keys)
        queries = transformer.norm_final_attn(queries)

        h, w = side.hw
        image = keys.transpose(1, 2).reshape(b, -1, h, w)
        upscaled = decoder.output_upscaling(image)
        hyper = decoder.output_hypernetworks_mlps[0](queries[:, 1, :]).unsqueeze(1)  # the single-mask token
        _, c, uh, uw = upscaled.shape
        logits = (hyper @ upscaled.reshape(b, c, uh * uw)).reshape(b, 1, uh, uw)
        iou = decoder.iou_prediction_head(queries[:, 0, :])[:, :1]
        return logits, iou


def shared_image_decoder(mask_decoder: nn.Module) -> SharedImageDecoder | None:
    """This forward for a SAM/MobileSAM mask decoder (a two-way transformer, plain single-mask hypernetwork), or
    None for a decoder of another shape, which then runs its own forward."""
    transformer = getattr(mask_decoder, "transformer", None)
    layers = getattr(transformer, "layers", None)
    needed = ("iou_token", "mask_tokens", "output_upscaling", "output_hypernetworks_mlps", "iou_prediction_head")
    if transformer is None or not layers or not all(hasattr(mask_decoder, name) for name in needed):
        return None
    if type(mask_decoder).__name__ != "MaskDecoder" or type(transformer).__name__ != "TwoWayTransformer":
        return None  # e.g. SAM 2's decoder: object score token, high-resolution features
    return SharedImageDecoder(mask_decoder)

"""Our forward of SAM's mask decoder (``segmenters/sam_decoder.py``) against the module's own forward, same weights.

The oracle is ultralytics' ``MaskDecoder.forward`` (the architecture of the SAM and MobileSAM reference code), called as
``BoxSegmenter`` used to call it. Random weights give logits of ~0.3; the hypernetwork's last layer is scaled so that
they reach ~10, the magnitude of confident logits of trained weights, where 1e-5 bounds float32 rounding (relative
1e-6). The error grows with the magnitude, and so does the reference's against itself: measured at a largest logit of
15.6 (oneDNN kernels), ours differed by 1.2e-5, and the reference decoding one box per call instead of six at once
by 1.1e-5.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from autoannotate.runtime.cpu_kernels import use_default_kernels, use_onednn
from autoannotate.segmenters.sam_decoder import shared_image_decoder

LOGIT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def mobile_sam() -> Any:
    from ultralytics.models.sam.build import build_mobile_sam

    torch.manual_seed(0)
    model = build_mobile_sam().eval()
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(25.0)
    return model


def _prompts(model: Any, n_boxes: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    corners = torch.rand((n_boxes, 2), generator=gen) * 800
    sizes = 20 + torch.rand((n_boxes, 2), generator=gen) * 200
    boxes = torch.cat([corners, corners + sizes], dim=1)
    points = torch.rand((n_boxes, 2, 2), generator=gen) * 1024
    labels = torch.tensor([[1, 0]] * n_boxes)
    embedding = torch.randn((1, 256, 64, 64), generator=gen)
    return embedding, boxes, points, labels


@pytest.mark.parametrize("kernels", ["default", "onednn"])
@pytest.mark.parametrize("prompt", ["box", "points", "box+points"])
def test_logits_and_scores_match_the_reference_forward(mobile_sam: Any, kernels: str, prompt: str) -> None:
    (use_onednn if kernels == "onednn" else use_default_kernels)(mobile_sam)
    decoder, encoder = mobile_sam.mask_decoder, mobile_sam.prompt_encoder
    ours = shared_image_decoder(decoder)
    assert ours is not None
    embedding, boxes, points, labels = _prompts(mobile_sam, 6, seed=len(prompt))
    with torch.inference_mode():
        sparse, dense = encoder(
            points=(points, labels) if "points" in prompt else None,
            boxes=boxes if "box" in prompt else None,
            masks=None,
        )
        image_pe = encoder.get_dense_pe()
        expected, expected_iou = decoder(
            image_embeddings=embedding,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        side = ours.image_side(embedding, image_pe, dense[:1])
        logits, iou = ours(side, sparse)
        # Two chunks of one image share the same image side and give the same logits as one call.
        first, second = ours(side, sparse[:2]), ours(side, sparse[2:])
    use_default_kernels(mobile_sam)
    assert logits.shape == expected.shape == (6, 1, 256, 256)
    assert iou.shape == expected_iou.shape == (6, 1)
    largest = float(expected.abs().max())
    assert largest > 5.0  # trained-like magnitudes, so the bound below means something
    assert float((logits - expected).abs().max()) <= min(LOGIT_TOLERANCE, 1e-6 * largest)
    assert float((iou - expected_iou).abs().max()) <= LOGIT_TOLERANCE
    chunked = torch.cat([first[0], second[0]])
    assert float((chunked - expected).abs().max()) <= LOGIT_TOLERANCE


def test_the_first_blocks_image_projections_run_once_per_image(mobile_sam: Any) -> None:
    """What the forward is for: the image tokens' projections of the first block are computed for one image, not once
    per prompt as the reference does."""
    decoder, encoder = mobile_sam.mask_decoder, mobile_sam.prompt_encoder
    first = decoder.transformer.layers[0]
    watched = {
        "token_to_image.k": first.cross_attn_token_to_image.k_proj,
        "token_to_image.v": first.cross_attn_token_to_image.v_proj,
        "image_to_token.q": first.cross_attn_image_to_token.q_proj,
    }
    rows: dict[str, int] = dict.fromkeys(watched, 0)

    def counter(name: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            rows[name] += args[0].shape[:-1].numel()

        return hook

    handles = [module.register_forward_pre_hook(counter(name)) for name, module in watched.items()]
    try:
        embedding, boxes, _, _ = _prompts(mobile_sam, 8, seed=1)
        with torch.inference_mode():
            sparse, dense = encoder(points=None, boxes=boxes, masks=None)
            image_pe = encoder.get_dense_pe()
            decoder(embedding, image_pe, sparse, dense, multimask_output=False)
            reference = dict(rows)
            rows.update(dict.fromkeys(watched, 0))
            ours = shared_image_decoder(decoder)
            assert ours is not None
            ours(ours.image_side(embedding, image_pe, dense[:1]), sparse)
    finally:
        for handle in handles:
            handle.remove()
    assert reference == dict.fromkeys(watched, 8 * 64 * 64)
    assert rows == dict.fromkeys(watched, 64 * 64)


def test_other_decoders_keep_their_own_forward() -> None:
    from ultralytics.models.sam.build import build_sam2_t

    sam2 = build_sam2_t()
    assert shared_image_decoder(sam2.sam_mask_decoder) is None
    assert shared_image_decoder(torch.nn.Linear(2, 2)) is None

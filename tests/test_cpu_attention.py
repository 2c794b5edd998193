"""TinyViT's window attention in cache-sized chunks (``runtime/cpu_attention.py``): bit-identical to the module's own
forward on real ultralytics modules, over several chunks; training, autograd and ``torch.export`` take the module's
own forward; a look-alike module that computes something else is left alone; the CPU MobileSAM encoder uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from ultralytics.models.sam.modules.tiny_encoder import Attention

from autoannotate.runtime import cpu_attention
from autoannotate.runtime.cpu_attention import chunk_window_attention, unchunk_window_attention, windows_per_chunk


def _attention(heads: int = 5, window: int = 14, dim: int = 160) -> Attention:
    torch.manual_seed(0)
    module = Attention(dim, dim // heads, heads, attn_ratio=1, resolution=(window, window))
    with torch.no_grad():
        module.attention_biases.normal_()  # zeros when built: a wrong bias table would go unnoticed
    return module.eval()


@pytest.mark.parametrize(("heads", "window", "windows"), [(5, 14, 25), (4, 7, 100), (10, 7, 25)])
def test_chunked_attention_is_bit_identical_over_several_chunks(heads: int, window: int, windows: int) -> None:
    module = _attention(heads, window)
    x = torch.randn(windows, window * window, 160)
    with torch.inference_mode():
        want = module(x)
    assert chunk_window_attention(module) == 1
    assert type(module).__name__ == "ChunkedAttention" and isinstance(module, Attention)
    steps: list[int] = []
    original = cpu_attention.windows_per_chunk

    def recording(*args: int) -> int:
        steps.append(original(*args))
        return steps[-1]

    with pytest.MonkeyPatch.context() as patch, torch.inference_mode():
        patch.setattr(cpu_attention, "windows_per_chunk", recording)
        got = module(x)
    assert steps and -(-windows // steps[0]) >= 2  # at least two chunks
    assert torch.equal(got, want)
    assert unchunk_window_attention(module) == 1 and type(module) is Attention


def test_the_chunk_holds_about_a_mebibyte_of_scores() -> None:
    assert windows_per_chunk(5, 196) == 1  # MobileSAM's stage 3: 0.77 MB a window
    assert windows_per_chunk(4, 49) == 27 and windows_per_chunk(10, 49) == 10
    assert windows_per_chunk(64, 4096) == 1  # never zero


def test_training_autograd_and_export_take_the_modules_own_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _attention(4, 7, 64)
    chunk_window_attention(module)
    calls: list[int] = []
    monkeypatch.setattr(cpu_attention, "windows_per_chunk", lambda *args: calls.append(1) or 1)
    x = torch.randn(3, 49, 64)
    module(x)  # autograd on
    with torch.no_grad():
        module(x)
    assert calls == [1]  # the inference call only
    exported = torch.export.export(module, (x,), strict=False)
    softmaxes = [n for n in exported.graph.nodes if "softmax" in str(n.target)]
    assert len(softmaxes) == 1 and calls == [1]  # one softmax over all windows: the module's own forward


def test_a_look_alike_that_computes_something_else_is_left_alone() -> None:
    class Attention(nn.Module):  # the attributes of TinyViT's, another computation
        def __init__(self) -> None:
            super().__init__()
            real = _attention(4, 7, 64)
            self.__dict__.update({k: v for k, v in real.__dict__.items() if not k.startswith("_")})
            self._modules, self._parameters, self._buffers = real._modules, real._parameters, real._buffers

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(self.qkv(self.norm(x))[..., : self.dh] * 2)

    decoy = Attention().eval()
    assert chunk_window_attention(decoy) == 0 and type(decoy) is Attention


def test_the_cpu_mobile_sam_encoder_attends_in_chunks_and_computes_the_same(mobile_sam_weights: Path) -> None:
    from autoannotate.segmenters.sam import BoxSegmenter

    encoder = BoxSegmenter.from_weights(mobile_sam_weights, "cpu").model.image_encoder
    assert sum(type(m).__name__ == "ChunkedAttention" for m in encoder.modules()) == 10
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        chunked = encoder(x)
        assert unchunk_window_attention(encoder) == 10
        torch.testing.assert_close(encoder(x), chunked, rtol=0, atol=0)


def test_chunking_does_not_depend_on_the_onednn_routing(mobile_sam_weights: Path) -> None:
    """Bit-identical and about the cache, not the kernels: a CPU model left on PyTorch's own kernels (Arm's default,
    or ``AUTOANNOTATE_CPU_KERNELS=default``) attends in chunks too."""
    from autoannotate.segmenters.sam import BoxSegmenter

    encoder = BoxSegmenter.from_weights(mobile_sam_weights, "cpu", onednn=False).model.image_encoder
    assert sum(type(m).__name__ == "ChunkedAttention" for m in encoder.modules()) == 10


def test_modules_of_one_class_and_shape_share_one_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three blocks, two shapes: two probes, all three chunked, each still bit-identical to its own forward."""
    probes: list[int] = []
    original = cpu_attention._chunks_exactly

    def counting(module: nn.Module, *shape: int) -> bool:
        probes.append(shape[0])
        return original(module, *shape)

    monkeypatch.setattr(cpu_attention, "_chunks_exactly", counting)
    blocks = nn.Sequential(_attention(5, 14), _attention(5, 14), _attention(4, 7)).eval()
    with torch.no_grad():  # a second block of the first shape with other weights
        blocks[1].attention_biases.normal_()
        blocks[1].qkv.weight.normal_()
    blocks[1].train(False)  # recomputes its inference bias table from the new biases
    x = [torch.randn(3, 196, 160), torch.randn(3, 196, 160), torch.randn(5, 49, 160)]
    with torch.inference_mode():
        want = [block(xi) for block, xi in zip(blocks, x, strict=True)]
    assert chunk_window_attention(blocks) == 3 and probes == [5, 4]
    with torch.inference_mode():
        assert all(torch.equal(block(xi), w) for block, xi, w in zip(blocks, x, want, strict=True))

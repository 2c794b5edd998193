"""TinyViT's window attention on CPU in cache-sized groups of windows: the same arithmetic, a fraction of the memory
traffic.

Why: MobileSAM's TinyViT encoder attends within windows (7x7 or 14x14 tokens) and computes the scores of every
window of the image at once: in its third stage 25 windows x 5 heads x 196 x 196 floats, 19 MB, written by the
score matmul, read and written again by the scaling, the bias addition and the softmax, and read by the value
matmul. On a CPU core that tensor lives in DRAM; one window's scores (0.77 MB) stay in the core's L2 cache through
all five steps. Measured on the Zen 4 VM at one thread: one stage-3 attention's scores-to-output part 57 -> 14 ms
in isolation, the whole encoder 1.20 -> 1.15 s in fp32 and 0.79 -> 0.74-0.76 s under bf16 autocast, with
bit-identical output, because each window is computed by the same operations on the same numbers, only fewer at a
time.

How: ``chunk_window_attention`` changes the class of each TinyViT ``Attention`` module (ultralytics'
``tiny_encoder.Attention`` and MobileSAM's reference, recognised by their attributes) to a subclass whose
``forward`` runs the windows in groups whose scores fit ``CHUNK_BYTES``; the new forward is kept only where it
gives exactly what the module's own forward gave on a probe input (one probe per class and shape). Training,
autograd and ``torch.export`` (the OpenVINO conversion exports the module's own forward, so its cached graphs stay
valid) take the module's own forward. ``unchunk_window_attention`` changes the classes back. Only
``segmenters/sam.py`` calls it, on CPU models.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import torch
from torch import nn

from autoannotate.runtime.cpu_kernels import swap_classes

__all__ = ["CHUNK_BYTES", "chunk_window_attention", "unchunk_window_attention"]

#: Most bytes of attention scores computed at once: about half a core's L2 cache (1-2 MiB on current x86 cores), so
#: that the scores, the windows' queries, keys and values and the output all stay in it.
CHUNK_BYTES = 1 << 20

# The attributes a TinyViT attention module has (both implementations): what the chunked forward reads.
_ATTRIBUTES = ("norm", "qkv", "proj", "ab", "attention_biases", "num_heads", "key_dim", "d", "dh", "scale")

_MAX_PROBE_WINDOWS = 257
# Set on each chunked class: the class it was made from (what ``unchunk_window_attention`` restores).
_ORIGINAL = "_autoannotate_unchunked"


def windows_per_chunk(heads: int, tokens: int, itemsize: int = 4) -> int:
    """How many windows' scores (``heads x tokens x tokens`` each) fit ``CHUNK_BYTES``; at least one."""
    return max(1, CHUNK_BYTES // (heads * tokens * tokens * itemsize))


def _chunked_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(windows, tokens, C)`` -> ``(windows, tokens, C)``: TinyViT attention with its inference-time bias table
    ``ab`` (heads x tokens x tokens), the windows taken a chunk at a time."""
    if self.training or torch.is_grad_enabled() or torch.compiler.is_exporting() or torch.compiler.is_compiling():
        return cast(torch.Tensor, super(type(self), self).forward(x))  # type: ignore[misc]
    layers: Any = self  # the attributes ``_ATTRIBUTES`` names, checked by ``_is_window_attention``
    windows, tokens, _ = x.shape
    heads, key_dim, value_dim = int(layers.num_heads), int(layers.key_dim), int(layers.d)
    projected = layers.qkv(layers.norm(x)).view(windows, tokens, heads, -1)
    query, key, value = (part.transpose(1, 2) for part in projected.split([key_dim, key_dim, value_dim], dim=3))
    bias = layers.ab.to(x.device)
    step = windows_per_chunk(heads, tokens)
    outputs = []
    for start in range(0, windows, step):
        scores = (query[start : start + step] @ key[start : start + step].transpose(-2, -1)) * layers.scale + bias
        outputs.append(scores.softmax(dim=-1) @ value[start : start + step])
    attended = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return cast(torch.Tensor, layers.proj(attended.transpose(1, 2).reshape(windows, tokens, int(layers.dh))))


@functools.cache
def _chunked_class(original: type[nn.Module]) -> type[nn.Module]:
    """The subclass of ``original`` with the chunked forward (one per original class)."""
    return type(f"Chunked{original.__name__}", (original,), {"forward": _chunked_forward, _ORIGINAL: original})


def _is_window_attention(module: nn.Module) -> bool:
    layers: Any = module
    return (
        type(module).__name__ == "Attention"
        and not module.training
        and all(hasattr(module, name) for name in _ATTRIBUTES)
        and isinstance(layers.ab, torch.Tensor)
        and layers.ab.dim() == 3
        and isinstance(layers.norm, nn.LayerNorm)
    )


def chunk_window_attention(model: nn.Module) -> int:
    """Give every TinyViT attention module in ``model`` (in eval mode) the chunked forward, in place, where it
    computes exactly what the module's own forward does on a probe input. Modules of one class and shape share one
    probe (MobileSAM: 3 probes for 10 modules, 75 ms at load on the Zen 4 VM, 150 ms with one each): whether the
    two forwards agree depends on the operations and shapes, not on the weights. Returns how many changed."""
    verdicts: dict[tuple[Any, ...], bool] = {}
    changed = 0
    for module in model.modules():
        if _ORIGINAL in type(module).__dict__ or not _is_window_attention(module):
            continue
        layers: Any = module
        shape = (int(layers.ab.shape[0]), int(layers.ab.shape[-1]), int(layers.norm.normalized_shape[0]))
        key = (type(module), *shape, layers.ab.device)
        if key not in verdicts:
            verdicts[key] = _chunks_exactly(module, *shape)
        if verdicts[key]:
            module.__class__ = _chunked_class(type(module))  # type: ignore[arg-type]
            changed += 1
    return changed


def _chunks_exactly(module: nn.Module, heads: int, tokens: int, channels: int) -> bool:
    """Whether ``module`` with the chunked forward gives exactly its own forward's output on a probe input (the
    module is left with its own class)."""
    original = type(module)
    # windows for two chunks and part of a third (a chunk holds 1 to 53 of MobileSAM's windows)
    windows = min(2 * windows_per_chunk(heads, tokens) + 1, _MAX_PROBE_WINDOWS)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        try:
            probe = torch.randn(windows, tokens, channels, generator=generator).to(cast(Any, module).ab.device)
            before = module(probe)
            module.__class__ = _chunked_class(original)  # type: ignore[arg-type]
            return torch.equal(module(probe), before)
        except (RuntimeError, TypeError, ValueError, AttributeError):
            return False
        finally:
            module.__class__ = original


def unchunk_window_attention(model: nn.Module) -> int:
    """Undo ``chunk_window_attention``. Returns how many modules changed back."""
    chunked = {type(module) for module in model.modules() if _ORIGINAL in type(module).__dict__}
    return swap_classes(model, {cls: cls.__dict__[_ORIGINAL] for cls in chunked})

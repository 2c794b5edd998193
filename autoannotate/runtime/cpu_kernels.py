"""Float32 linear layers and convolutions on CPU through oneDNN, whatever PyTorch's own dispatch would pick.

Why: PyTorch runs a float32 ``nn.Linear`` on CPU through BLAS (``aten::addmm``, MKL in the official wheels), and a
1x1 ``nn.Conv2d`` on a single thread through im2col plus BLAS (a heuristic in ``ConvParams::use_mkldnn``: "THNN is
faster single-threaded"). Our CPU plan runs one thread per worker, and on the dev machine's AMD EPYC (Zen 5,
AVX-512) MKL's sgemm reaches 70-90 GFLOP/s per core where oneDNN, the library PyTorch already uses for its other
convolutions, reaches 170-220 on the same shapes (the TinyViT MLPs and attention projections, the SAM decoder's
4096-token projections). Measured per image at one thread: MobileSAM encoder 1.20 -> 0.78 s, mask decoder
79 -> 63 ms per box, YOLOv8s 127 -> 102 ms. Both libraries compute in float32 (IEEE, no reduced-precision mode);
results differ by summation order only (max abs difference ~1e-4 on unit-scale activations).

How: ``use_onednn`` changes the class of every plain ``nn.Linear`` and ``nn.Conv2d`` inside a model to a subclass
defined here whose ``forward`` calls ``torch.mkldnn_convolution`` (a linear layer is a 1x1 convolution over a
channels-last ``(1, C, 1, rows)`` view, no copy) when the call is float32 inference on CPU, and the module's own
``forward`` otherwise (CUDA, autocast, other dtypes, autograd, ``padding="same"``, non-zero padding modes). The
parameters, buffers, hooks and state-dict keys are those of the original module, so checkpoints and ``.to(device)``
are unaffected; ``use_default_kernels`` changes the classes back. These are subclasses of torch's layers, not of
ultralytics code: the ultralytics models are used as built, only the kernel behind their torch layers changes.

Only the model modules (``prompts/yolo.py``, ``segmenters/sam.py``: they own torch) import this module.
``onednn_for`` decides for both: on CPU only, on x86-64 by default; ``AUTOANNOTATE_CPU_KERNELS=default`` keeps
PyTorch's own dispatch, ``=onednn`` routes on other architectures too.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ENV_VAR",
    "OneDnnConv2d",
    "OneDnnLinear",
    "onednn_for",
    "onednn_wanted",
    "use_default_kernels",
    "use_onednn",
]

#: Environment variable that, set to ``default``, keeps PyTorch's own CPU kernel choice.
ENV_VAR = "AUTOANNOTATE_CPU_KERNELS"
# Architectures where oneDNN was measured faster (x86-64: AMD Zen 5 here; oneDNN is Intel's own library). On Arm,
# PyTorch's oneDNN goes through the Arm Compute Library, not measured here, so it stays opt-in there.
_MEASURED_MACHINES = frozenset({"x86_64", "amd64"})


def onednn_wanted(environ: Mapping[str, str] | None = None, machine: str | None = None) -> bool:
    """Whether to route: on x86-64 CPUs (where it was measured) when this PyTorch build has oneDNN.

    ``AUTOANNOTATE_CPU_KERNELS`` (in ``environ``, default ``os.environ``) overrides: ``default`` never routes,
    ``onednn`` routes on any architecture. ``machine`` defaults to ``platform.machine()``.
    """
    env = os.environ if environ is None else environ
    choice = env.get(ENV_VAR, "").strip().lower()
    if choice == "default" or not torch.backends.mkldnn.is_available():
        return False
    arch = (platform.machine() if machine is None else machine).lower()
    return choice == "onednn" or arch in _MEASURED_MACHINES


def onednn_for(device: torch.device, requested: bool | None = None) -> bool:
    """Whether a model loaded onto ``device`` should be routed: only on CPU, then ``requested`` if given, else
    ``onednn_wanted()``. The one rule ``Detector.from_weights`` and ``BoxSegmenter.from_weights`` both apply."""
    if device.type != "cpu":
        return False
    return onednn_wanted() if requested is None else requested


def _float32_cpu_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether this call may take the oneDNN route: float32 CPU tensors, no autocast, no autograd, non-empty."""
    return (
        x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.numel() > 0
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


class OneDnnLinear(nn.Linear):
    """``nn.Linear`` whose float32 CPU inference runs as a oneDNN 1x1 convolution (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or not _float32_cpu_inference(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        in_features, out_features = self.in_features, self.out_features
        rows = x.reshape(-1, in_features)  # a view when x is contiguous, else one copy (as F.linear would make)
        # (rows, C) row-major is exactly NHWC with N = H = 1: a channels-last (1, C, 1, rows) view, no copy.
        nhwc = rows.view(1, 1, rows.shape[0], in_features).permute(0, 3, 1, 2)
        out = torch.mkldnn_convolution(
            nhwc, self.weight.view(out_features, in_features, 1, 1), self.bias, [0, 0], [1, 1], [1, 1], 1
        )
        # oneDNN keeps the channels-last layout: (1, out, 1, rows) with NHWC strides is (rows, out) row-major.
        return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], out_features)


class OneDnnConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose float32 CPU inference always runs on oneDNN (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.dim() != 4
            or self.padding_mode != "zeros"
            or isinstance(self.padding, str)
            or not _float32_cpu_inference(x, self.weight)
        ):
            return super().forward(x)
        return torch.mkldnn_convolution(
            x, self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups
        )


_ROUTED: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: OneDnnLinear, nn.Conv2d: OneDnnConv2d}
_DEFAULT: dict[type[nn.Module], type[nn.Module]] = {v: k for k, v in _ROUTED.items()}


def _swap_classes(model: nn.Module, table: Mapping[type[nn.Module], type[nn.Module]]) -> int:
    swapped = 0
    for module in model.modules():
        # Exact type only: a subclass of Linear/Conv2d may have a forward of its own that must keep running.
        target = table.get(type(module))
        if target is not None:
            module.__class__ = target
            swapped += 1
    return swapped


def use_onednn(model: nn.Module) -> int:
    """Route the float32 CPU inference of every plain ``nn.Linear``/``nn.Conv2d`` in ``model`` to oneDNN, in place.

    Returns:
        How many layers now take the oneDNN route (0 when this PyTorch build has no oneDNN).
    """
    if not torch.backends.mkldnn.is_available():
        return 0
    return _swap_classes(model, _ROUTED)


def use_default_kernels(model: nn.Module) -> int:
    """Undo ``use_onednn``: the layers become plain ``nn.Linear``/``nn.Conv2d`` again. Returns how many changed."""
    return _swap_classes(model, _DEFAULT)

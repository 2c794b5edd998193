"""The oneDNN route for float32 CPU layers: the same numbers as PyTorch's own kernels, the route really taken for
float32 inference and never for autocast, autograd, other dtypes or unsupported padding, checkpoints untouched, and
the detector and segmenter loaded with it (or without it when asked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autoannotate.runtime.cpu_kernels import (
    ENV_VAR,
    OneDnnConv2d,
    OneDnnLinear,
    onednn_for,
    onednn_wanted,
    use_default_kernels,
    use_onednn,
)

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")


@pytest.fixture
def onednn_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Counts ``torch.mkldnn_convolution`` calls (the oneDNN route) by the weight shape they were made with."""
    calls: list[tuple[int, ...]] = []
    original = torch.mkldnn_convolution

    def counting(x: torch.Tensor, weight: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(tuple(weight.shape))
        return original(x, weight, *args)

    monkeypatch.setattr(torch, "mkldnn_convolution", counting)
    return calls


def _routed(layer: nn.Module) -> nn.Module:
    assert use_onednn(layer) == 1
    return layer


@pytest.mark.parametrize(
    ("input_shape", "contiguous"),
    [
        ((5, 48), True),  # 2-D rows
        ((2, 7, 48), True),  # batch x tokens x features, as in attention projections
        ((2, 48, 7), False),  # a transposed (non-contiguous) view, as the SAM decoder feeds its first projections
        ((1, 3, 4, 48), True),  # 4-D
    ],
)
def test_linear_matches_pytorch_and_takes_the_onednn_route(
    input_shape: tuple[int, ...], contiguous: bool, onednn_calls: list[tuple[int, ...]]
) -> None:
    torch.manual_seed(0)
    reference = nn.Linear(48, 24)
    routed = _routed(nn.Linear(48, 24))
    routed.load_state_dict(reference.state_dict())
    x = torch.randn(input_shape)
    if not contiguous:
        x = x.transpose(-1, -2)
    with torch.inference_mode():
        expected, got = reference(x), routed(x)
    assert got.shape == expected.shape == (*x.shape[:-1], 24)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert onednn_calls == [(24, 48, 1, 1)]


@pytest.mark.parametrize(
    "conv_kwargs",
    [
        {"kernel_size": 1},  # the single-thread 1x1 case PyTorch sends to im2col + BLAS
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": 3, "padding": 1, "groups": 8},  # depthwise-style, as in MBConv and TinyViT's local conv
        {"kernel_size": (3, 1), "padding": (1, 0), "dilation": (2, 1), "bias": False},
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_matches_pytorch_and_takes_the_onednn_route(
    conv_kwargs: dict, channels_last: bool, onednn_calls: list[tuple[int, ...]]
) -> None:
    torch.manual_seed(0)
    reference = nn.Conv2d(8, 16, **conv_kwargs)
    routed = _routed(nn.Conv2d(8, 16, **conv_kwargs))
    routed.load_state_dict(reference.state_dict())
    x = torch.randn(2, 8, 11, 13)  # non-square, odd sizes
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected, got = reference(x), routed(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert onednn_calls == [tuple(reference.weight.shape)]


def test_other_calls_take_the_layers_own_forward(onednn_calls: list[tuple[int, ...]]) -> None:
    torch.manual_seed(0)
    linear = _routed(nn.Linear(16, 8))
    conv = _routed(nn.Conv2d(4, 4, 3, padding=1))
    x, image = torch.randn(3, 16), torch.randn(1, 4, 6, 6)

    # Autograd: gradients must flow as through a plain layer.
    out = linear(x)
    out.sum().backward()
    assert linear.weight.grad is not None
    # Autocast to bfloat16 (--half on CPU): the layer must compute in bfloat16 as autocast asks.
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x).dtype == torch.bfloat16
        assert conv(image).dtype == torch.bfloat16
    # Other dtypes, 1-D and empty inputs.
    with torch.inference_mode():
        assert linear.double()(x.double()).dtype == torch.float64
        linear.float()
        assert linear(torch.randn(16)).shape == (8,)
        assert linear(torch.zeros(0, 16)).shape == (0, 8)
    assert onednn_calls == []


@pytest.mark.parametrize(
    "conv_kwargs", [{"padding": "same"}, {"padding": 1, "padding_mode": "reflect"}, {"padding": 1, "bias": False}]
)
def test_padding_the_route_cannot_express_falls_back(conv_kwargs: dict, onednn_calls: list[tuple[int, ...]]) -> None:
    torch.manual_seed(0)
    reference = nn.Conv2d(3, 5, 3, **conv_kwargs)
    routed = _routed(nn.Conv2d(3, 5, 3, **conv_kwargs))
    routed.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 9, 7)
    with torch.inference_mode():
        torch.testing.assert_close(routed(x), reference(x), rtol=1e-5, atol=1e-5)
    zero_padding = conv_kwargs.get("padding_mode", "zeros") == "zeros" and not isinstance(conv_kwargs["padding"], str)
    assert len(onednn_calls) == (1 if zero_padding else 0)


def test_swap_keeps_parameters_state_dict_and_subclasses() -> None:
    class OwnForward(nn.Linear):
        """A subclass with a forward of its own: must not be rerouted."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 5 * 5, 6), OwnForward(6, 2), nn.ReLU())
    keys_before = list(model.state_dict())
    weight = model[2].weight

    assert use_onednn(model) == 2
    assert [type(m) for m in model] == [OneDnnConv2d, nn.Flatten, OneDnnLinear, OwnForward, nn.ReLU]
    assert list(model.state_dict()) == keys_before
    assert model[2].weight is weight  # the very same Parameter: optimisers and .to() see no change
    assert use_onednn(model) == 0  # already routed: nothing left to swap

    assert use_default_kernels(model) == 2
    assert [type(m) for m in model] == [nn.Conv2d, nn.Flatten, nn.Linear, OwnForward, nn.ReLU]


@pytest.mark.parametrize(
    ("environ", "machine", "expected"),
    [
        ({}, "x86_64", True),  # measured faster there: on by default
        ({}, "AMD64", True),  # Windows spelling
        ({}, "aarch64", False),  # not measured on Arm: PyTorch's own choice unless asked
        ({ENV_VAR: "onednn"}, "aarch64", True),
        ({ENV_VAR: "default"}, "x86_64", False),
        ({ENV_VAR: " Default "}, "x86_64", False),
        ({ENV_VAR: "something"}, "x86_64", True),  # unknown values change nothing
    ],
)
def test_when_to_route(environ: dict[str, str], machine: str, expected: bool) -> None:
    assert onednn_wanted(environ, machine) is expected


def test_only_cpu_models_are_routed_and_an_explicit_choice_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "default")
    assert onednn_for(torch.device("cpu")) is False  # the environment decides when nothing is asked
    assert onednn_for(torch.device("cpu"), True) is True
    monkeypatch.setenv(ENV_VAR, "onednn")
    assert onednn_for(torch.device("cpu")) is True
    assert onednn_for(torch.device("cpu"), False) is False
    assert onednn_for(torch.device("cuda"), True) is False  # never on an accelerator
    assert onednn_for(torch.device("meta")) is False


@pytest.mark.parametrize("onednn", [True, False])
def test_segmenter_from_weights_routes_on_cpu_unless_told_not_to(mobile_sam_weights: Path, onednn: bool) -> None:
    from autoannotate.segmenters.sam import BoxSegmenter

    segmenter = BoxSegmenter.from_weights(mobile_sam_weights, "cpu", onednn=onednn)
    kinds = [type(m) for m in segmenter.model.modules()]
    routed = kinds.count(OneDnnLinear) + kinds.count(OneDnnConv2d)
    assert (routed > 0 and nn.Linear not in kinds) if onednn else routed == 0


def test_segmenter_follows_the_environment(mobile_sam_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoannotate.segmenters.sam import BoxSegmenter

    monkeypatch.setenv(ENV_VAR, "default")
    segmenter = BoxSegmenter.from_weights(mobile_sam_weights, "cpu")
    assert not any(isinstance(m, (OneDnnLinear, OneDnnConv2d)) for m in segmenter.model.modules())


def test_detector_runs_its_fused_convolutions_on_onednn(
    yolo_weights: Path, onednn_calls: list[tuple[int, ...]]
) -> None:
    """ultralytics' predictor deep-copies and fuses the model on its first call; the routed classes must survive
    that, every convolution of the network must take the route, and the boxes must equal the default kernels'."""
    from autoannotate.prompts.yolo import Detector, DetectSettings

    settings = DetectSettings(conf=1e-4, max_det=10)
    image_bgr = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    default = Detector.from_weights(str(yolo_weights), torch.device("cpu"), onednn=False).with_settings(settings)
    expected = default.detect([image_bgr])[0]
    assert onednn_calls == []

    routed = Detector.from_weights(str(yolo_weights), torch.device("cpu"), onednn=True).with_settings(settings)
    got = routed.detect([image_bgr])[0]
    network = routed._model.predictor.model.model  # type: ignore[attr-defined]  # YOLO -> AutoBackend -> nn.Module
    kinds = [type(m) for m in network.modules()]
    assert nn.Conv2d not in kinds  # fused by the predictor, yet still routed
    assert kinds.count(OneDnnConv2d) > 50 and len(onednn_calls) == kinds.count(OneDnnConv2d)  # each once per image
    assert len(got) == len(expected) == 10
    np.testing.assert_allclose(got.xyxy, expected.xyxy, atol=1e-3)
    np.testing.assert_array_equal(got.class_id, expected.class_id)


def test_detector_routing_leaves_exported_and_unfusable_models_alone() -> None:
    from types import SimpleNamespace

    from autoannotate.prompts.yolo import _use_onednn

    _use_onednn(SimpleNamespace(model="yolo11n.onnx"))  # an exported model: its .model is not an nn.Module

    class Unfusable(nn.Sequential):
        def fuse(self, verbose: bool = True) -> nn.Module:
            raise AttributeError("'Conv' object has no attribute 'bn'")

    network = Unfusable(nn.Conv2d(3, 4, 1))
    _use_onednn(SimpleNamespace(model=network))
    assert type(network[0]) is nn.Conv2d  # not routed: the predictor's own fuse decides what runs

    class Fusable(nn.Sequential):
        def fuse(self, verbose: bool = True) -> nn.Module:
            return self

    fused = Fusable(nn.Conv2d(3, 4, 1), nn.Linear(4, 2))
    _use_onednn(SimpleNamespace(model=fused))
    assert [type(m) for m in fused] == [OneDnnConv2d, OneDnnLinear]


class MBConv(nn.Module):
    """Named as TinyViT's block, with its forward: conv1, act1, conv2, act2, conv3, then the residual and act3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(channels, 4 * channels, 1, bias=False), nn.BatchNorm2d(4 * channels))
        self.act1 = nn.GELU()
        self.conv2 = nn.Sequential(
            nn.Conv2d(4 * channels, 4 * channels, 3, padding=1, groups=4 * channels, bias=False),
            nn.BatchNorm2d(4 * channels),
        )
        self.act2 = nn.GELU()
        self.conv3 = nn.Sequential(nn.Conv2d(4 * channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class MLP(nn.Module):
    """Named as TinyViT's MLP, whose forward is norm, fc1, act, fc2."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(features)
        self.fc1 = nn.Linear(features, 4 * features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class DecoyMLP(MLP):
    """Named as one the fusion knows, but its forward applies the activation before fc1: must not be fused."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(self.act(self.norm(x))))


DecoyMLP.__name__ = "MLP"


def _random_statistics(model: nn.Module) -> nn.Module:
    """Trained-looking batch norms (eval mode, non-trivial running statistics and affine parameters)."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))  # type: ignore[union-attr]
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)  # type: ignore[union-attr]
            module.weight.data.copy_(torch.randn(n, generator=generator))
            module.bias.data.copy_(torch.randn(n, generator=generator))
    return model.eval()


def _stem_and_mbconv() -> nn.Sequential:
    """A TinyViT-like stem (convolution, BatchNorm, GELU), an MBConv and a last convolution, random statistics."""
    torch.manual_seed(0)
    return _random_statistics(
        nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16)),
            nn.GELU(),
            MBConv(16),
            nn.Conv2d(16, 16, 1),
        )
    )


def test_fuse_for_cpu_folds_norms_fuses_gelus_and_computes_the_same(onednn_calls: list[tuple[int, ...]]) -> None:
    """BatchNorms fold into their convolutions, a GELU right after a convolution or linear layer becomes its oneDNN
    post-op (in a Sequential and in TinyViT's MBConv and MLP), a GELU after a residual sum or before its layer stays;
    the outputs match the unfused model's in PyTorch's kernels, in oneDNN's, and back in PyTorch's."""
    import copy

    from autoannotate.runtime.cpu_kernels import Conv2dGelu, LinearGelu, OneDnnConv2dGelu, fuse_for_cpu

    model = _stem_and_mbconv()
    tokens = nn.Sequential(MLP(16), DecoyMLP(16)).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.randn(2, 9, 16)
    reference, reference_tokens = copy.deepcopy(model), copy.deepcopy(tokens)
    with torch.no_grad():
        want, want_tokens = reference(x), reference_tokens(t)
        assert fuse_for_cpu(model) == (4, 3)  # 4 norms; GELUs: the stem's, act1, act2 (not act3)
        assert fuse_for_cpu(tokens) == (0, 1)  # the true MLP only
        assert isinstance(tokens[1].act, nn.GELU) and type(tokens[1].fc1) is nn.Linear
        kinds = [type(m) for m in model.modules()]
        assert nn.BatchNorm2d not in kinds and kinds.count(Conv2dGelu) == 3 and kinds.count(nn.GELU) == 1
        assert type(tokens[0].fc1) is LinearGelu and isinstance(tokens[0].act, nn.Identity)
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(tokens(t), want_tokens, rtol=1e-4, atol=1e-5)
        use_onednn(model)
        use_onednn(tokens)
        assert [type(m) for m in model.modules()].count(OneDnnConv2dGelu) == 3
        fused_calls: list[str] = []
        original = torch.ops.mkldnn._convolution_pointwise

        def counting(*args: object) -> torch.Tensor:
            fused_calls.append(str(args[7]))
            return original(*args)  # type: ignore[no-any-return]

        torch.ops.mkldnn._convolution_pointwise = counting  # type: ignore[attr-defined,assignment]
        try:
            routed, routed_tokens = model(x), tokens(t)
        finally:
            torch.ops.mkldnn._convolution_pointwise = original  # type: ignore[attr-defined]
        assert fused_calls == ["gelu"] * 4  # 3 convolutions and 1 linear layer, each one oneDNN call with its GELU
        torch.testing.assert_close(routed, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(routed_tokens, want_tokens, rtol=1e-4, atol=1e-4)
        use_default_kernels(model)  # as before an export: the GELUs stay with their layers
        assert [type(m) for m in model.modules()].count(Conv2dGelu) == 3
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)


def test_fused_layers_under_bf16_autocast_are_one_bf16_onednn_call_each_as_accurate_as_autocast() -> None:
    """``--half`` on a CPU: each fused layer is one oneDNN call on bf16 input, weight and bias (GELU as its post-op,
    on the float32 accumulator), gives autocast's bf16 output, and is as close to the float32 model as PyTorch's own
    autocast of the unfused model is."""
    import copy

    from autoannotate.runtime.cpu_kernels import fuse_for_cpu

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no bf16 in oneDNN")
    model = _stem_and_mbconv()
    tokens = nn.Sequential(MLP(16)).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.randn(2, 9, 16)
    plain, plain_tokens = copy.deepcopy(model), copy.deepcopy(tokens)
    with torch.no_grad():
        exact, exact_tokens = plain(x), plain_tokens(t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast, autocast_tokens = plain(x), plain_tokens(t)
        fuse_for_cpu(model)
        fuse_for_cpu(tokens)
        use_onednn(model)
        use_onednn(tokens)
        dtypes: list[tuple[torch.dtype, ...]] = []
        original = torch.ops.mkldnn._convolution_pointwise

        def recording(*args: torch.Tensor) -> torch.Tensor:
            dtypes.append(tuple(a.dtype for a in args[:3] if a is not None))
            return original(*args)  # type: ignore[no-any-return]

        torch.ops.mkldnn._convolution_pointwise = recording  # type: ignore[attr-defined,assignment]
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fused, fused_tokens = model(x), tokens(t)
        finally:
            torch.ops.mkldnn._convolution_pointwise = original  # type: ignore[attr-defined]
    assert dtypes == [(torch.bfloat16,) * 3] * 4  # the stem, act1, act2 and the MLP's fc1
    for got, autocast_out, want in ((fused, autocast, exact), (fused_tokens, autocast_tokens, exact_tokens)):
        assert got.dtype == autocast_out.dtype
        error, autocast_error = (float((out.float() - want).abs().mean()) for out in (got, autocast_out))
        assert error <= 1.25 * autocast_error + 1e-6
        torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)


def test_the_mobile_sam_encoder_is_fused_on_cpu_and_computes_what_it_did(mobile_sam_weights: Path) -> None:
    """The CPU segmenter's TinyViT: every BatchNorm folded, the GELUs after its MBConv convolutions, stem and MLPs
    fused; its image embedding within 1e-4 of the same weights unfused (the reference parity test checks the masks),
    and under bf16 autocast as close to the float32 embedding as the unfused encoder's bf16 one."""
    from autoannotate.runtime.cpu_kernels import OneDnnConv2dGelu, OneDnnLinearGelu
    from autoannotate.segmenters.sam import BoxSegmenter

    fused = BoxSegmenter.from_weights(mobile_sam_weights, "cpu").model.image_encoder
    plain = BoxSegmenter.from_weights(mobile_sam_weights, "cpu", onednn=False).model.image_encoder
    kinds = [type(m) for m in fused.modules()]
    assert nn.BatchNorm2d not in kinds and kinds.count(OneDnnLinearGelu) == 10 and kinds.count(OneDnnConv2dGelu) == 5
    assert [type(m) for m in plain.modules()].count(nn.BatchNorm2d) == 27
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        exact = plain(x)
        torch.testing.assert_close(fused(x), exact, rtol=1e-4, atol=1e-4)
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # --half: as close to float32 as autocast unfused is
            with torch.autocast("cpu", dtype=torch.bfloat16):
                half_fused, half_plain = fused(x).float(), plain(x).float()
            error, autocast_error = (float((h - exact).abs().mean()) for h in (half_fused, half_plain))
            assert 0 < error <= 1.1 * autocast_error

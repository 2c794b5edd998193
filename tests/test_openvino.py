"""``--runtime``: the choice rule, the conversion cache (keyed, reused, repaired, shared by concurrent processes), the
fallback to PyTorch with one line, and whole runs on OpenVINO. The MobileSAM reference parity test runs on OpenVINO
in ``test_segment_parity.py``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from helpers import stand_in_model_args, synthetic_scene_bgr

from autoannotate.errors import ConfigError
from autoannotate.runtime.choice import OPENVINO_AUTO_MIN_ITEMS, RuntimeChoice, choose_runtime, requested_runtime
from autoannotate.runtime.openvino_parts import (
    OpenVinoSettings,
    PartSpec,
    compile_part,
    openvino_version,
    part_cache_dir,
)

pytestmark = pytest.mark.skipif(openvino_version() is None, reason="openvino is not installed")
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------ the rule


@pytest.mark.parametrize(
    ("requested", "on_cpu", "installed", "x86_64", "long_run", "expected"),
    [
        # auto on an x86-64 CPU with OpenVINO: a long run converts, a short one uses a cached conversion only
        ("auto", True, True, True, True, RuntimeChoice(openvino=True, convert=True, explicit=False)),
        ("auto", True, True, True, False, RuntimeChoice(openvino=True, convert=False, explicit=False)),
        # auto: not installed, not x86-64 (not measured there), or a GPU run: PyTorch
        ("auto", True, False, True, True, RuntimeChoice(openvino=False, convert=False, explicit=False)),
        ("auto", True, True, False, True, RuntimeChoice(openvino=False, convert=False, explicit=False)),
        ("auto", False, True, True, True, RuntimeChoice(openvino=False, convert=False, explicit=False)),
        # openvino converts whatever the run's size; a failure is then said (explicit)
        ("openvino", True, True, True, False, RuntimeChoice(openvino=True, convert=True, explicit=True)),
        ("openvino", True, False, False, False, RuntimeChoice(openvino=True, convert=True, explicit=True)),
        # torch is torch
        ("torch", True, True, True, True, RuntimeChoice(openvino=False, convert=False, explicit=False)),
    ],
)
def test_choose_runtime(
    requested: str, on_cpu: bool, installed: bool, x86_64: bool, long_run: bool, expected: RuntimeChoice
) -> None:
    got = choose_runtime(requested, on_cpu=on_cpu, installed=installed, x86_64=x86_64, long_run=long_run)
    assert got == expected


def test_environment_replaces_auto_only() -> None:
    assert requested_runtime("auto", {}) == "auto"
    assert requested_runtime("auto", {"AUTOANNOTATE_RUNTIME": "Torch "}) == "torch"
    assert requested_runtime("openvino", {"AUTOANNOTATE_RUNTIME": "torch"}) == "openvino"  # the flag wins
    with pytest.raises(ConfigError, match=r"^invalid AUTOANNOTATE_RUNTIME='cuda': use auto, torch or openvino$"):
        requested_runtime("auto", {"AUTOANNOTATE_RUNTIME": "cuda"})


# ------------------------------------------------------------------------------------------------- the cache


def test_cache_key_changes_with_everything_that_decides_the_graph(tmp_path: Path) -> None:
    spec = PartSpec("mobile_sam/image_encoder", "ab" * 32, 1, ((1, 3, 1024, 1024),))
    base = part_cache_dir(spec, tmp_path, "2026.4.1")
    assert base == part_cache_dir(PartSpec(*vars(spec).values()), tmp_path, "2026.4.1")  # deterministic
    assert base.parent == tmp_path / "openvino" and base.name.startswith("mobile_sam-image_encoder-")
    changed = [
        part_cache_dir(PartSpec(spec.name, "cd" * 32, 1, spec.input_shapes), tmp_path, "2026.4.1"),  # weights
        part_cache_dir(PartSpec(spec.name, spec.model_sha256, 2, spec.input_shapes), tmp_path, "2026.4.1"),
        part_cache_dir(PartSpec(spec.name, spec.model_sha256, 1, ((1, 3, 512, 512),)), tmp_path, "2026.4.1"),
        part_cache_dir(PartSpec("sam_b/image_encoder", spec.model_sha256, 1, spec.input_shapes), tmp_path, "2026.4.1"),
        part_cache_dir(spec, tmp_path, "2026.5.0"),  # the runtime's version
    ]
    assert len({base, *changed}) == 6


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(16, 64)
        self.b = torch.nn.Linear(64, 8)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.b(torch.nn.functional.gelu(self.a(x))), (y * 3.0).softmax(-1)


def _tiny_part(tmp_path: Path) -> tuple[_Tiny, tuple[torch.Tensor, torch.Tensor], PartSpec, OpenVinoSettings]:
    module = _Tiny().eval()
    inputs = (torch.randn(2, 5, 16), torch.randn(2, 3, 16))
    spec = PartSpec("tiny/part", "00" * 32, 1, ((-1, -1, 16), (-1, -1, 16)))
    return module, inputs, spec, OpenVinoSettings("f32", 1, 1, tmp_path / "cache")


class _Wide(torch.nn.Module):
    """A part whose compiled blob is 4 MB: long enough to write that concurrent compiles overlap its writing."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Linear(16, 1024), torch.nn.Linear(1024, 1024)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def _wide_part(root: Path) -> tuple[_Wide, tuple[torch.Tensor], PartSpec, OpenVinoSettings]:
    spec = PartSpec("wide/part", "00" * 32, 1, ((-1, -1, 16),))
    return _Wide().eval(), (torch.randn(2, 5, 16),), spec, OpenVinoSettings("f32", 1, 1, root / "cache")


def test_part_converts_once_then_loads_from_the_cache_and_matches_torch(tmp_path: Path) -> None:
    module, inputs, spec, settings = _tiny_part(tmp_path)
    first = compile_part(module, inputs, spec, settings)
    assert first.converted
    folder = part_cache_dir(spec, settings.cache_root, str(openvino_version()))
    weights = folder / "model.bin"
    assert (folder / "model.xml").is_file()
    # saved as float32 (not compressed to fp16): at least 4 bytes per parameter
    assert weights.stat().st_size >= 4 * sum(p.numel() for p in module.parameters())
    second = compile_part(module, inputs, spec, settings)
    assert not second.converted
    for batch, rows in ((2, 5), (7, 1), (1, 9)):  # the dynamic dimensions take any size
        x, y = torch.randn(batch, rows, 16), torch.randn(batch, 4, 16)
        with torch.no_grad():
            expected = module(x, y)
        got = second(x.numpy(), y.numpy())
        for g, e in zip(got, expected, strict=True):
            assert g.shape == tuple(e.shape)
            assert np.abs(g - e.numpy()).max() <= 1e-6


def test_a_damaged_cache_entry_is_converted_again(tmp_path: Path) -> None:
    module, inputs, spec, settings = _tiny_part(tmp_path)
    compile_part(module, inputs, spec, settings)
    folder = part_cache_dir(spec, settings.cache_root, str(openvino_version()))
    (folder / "model.xml").write_text("<net>cut sh")
    again = compile_part(module, inputs, spec, settings)
    assert again.converted
    got = again(*(t.numpy() for t in inputs))[0]
    with torch.no_grad():
        assert np.abs(got - module(*inputs)[0].numpy()).max() <= 1e-6
    assert not compile_part(module, inputs, spec, settings).converted  # repaired on disk


def test_concurrent_processes_converting_one_part_share_one_cache_entry(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_openvino import _tiny_part
        from autoannotate.runtime.openvino_parts import compile_part
        module, inputs, spec, settings = _tiny_part(Path({str(tmp_path)!r}))
        part = compile_part(module, inputs, spec, settings)
        print(float(part(*(t.numpy() for t in inputs))[0].sum()))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert len(set(outputs)) == 1  # the same numbers from whichever copy each process read or wrote
    entries = sorted(p.name for p in (tmp_path / "cache" / "openvino").iterdir())
    assert [e for e in entries if e != "compiled"] == [
        part_cache_dir(_tiny_part(tmp_path)[2], tmp_path / "cache", str(openvino_version())).name
    ]  # one entry, no staging folder left behind


def test_concurrent_compiles_never_break_on_openvinos_blob_cache(tmp_path: Path) -> None:
    """Four processes compile the same converted 4 MB part 100 times each, out of step by up to 8 ms, each round into
    a fresh blob folder. OpenVINO's blob cache is not safe across processes: without the compile lock 5 of the 400
    compiles failed ("cannot set permissions": the run falls back to PyTorch) in each of two runs, and in two runs of
    four a process died (SIGBUS). None may fail or die, and each round's blob is written and kept."""
    rounds, processes = 100, 4
    module, inputs, spec, settings = _wide_part(tmp_path / "seed")
    compile_part(module, inputs, spec, settings)
    converted = part_cache_dir(spec, settings.cache_root, str(openvino_version()))
    for i in range(rounds):  # the conversion is done: every round only compiles
        shutil.copytree(converted, part_cache_dir(spec, tmp_path / f"round{i}" / "cache", str(openvino_version())))
    script = textwrap.dedent(
        f"""
        import random, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_openvino import _wide_part
        from autoannotate.runtime.openvino_parts import OpenVinoUnavailable, compile_part
        base, me, failed = Path({str(tmp_path)!r}), sys.argv[1], 0
        for i in range({rounds}):
            module, inputs, spec, settings = _wide_part(base / f"round{{i}}")
            (base / f"ready-{{i}}-{{me}}").touch()
            give_up = time.monotonic() + 120  # a process that died never arrives
            while len(list(base.glob(f"ready-{{i}}-*"))) < {processes}:
                if time.monotonic() > give_up:
                    sys.exit(f"round {{i}}: the other processes never arrived")
            random.seed(f"{{me}}-{{i}}")
            end = time.perf_counter() + random.random() * 0.008
            while time.perf_counter() < end:
                pass
            try:
                assert not compile_part(module, inputs, spec, settings).converted
            except OpenVinoUnavailable as err:
                failed += 1
                print(err, file=sys.stderr)
        print(failed)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(k)], stdout=subprocess.PIPE, text=True)
        for k in range(processes)
    ]
    outputs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0] * processes
    assert outputs == ["0"] * processes
    for i in range(rounds):
        assert len(list((tmp_path / f"round{i}" / "cache" / "openvino" / "compiled" / "f32").glob("*.blob"))) == 1


def test_each_precision_keeps_its_own_compiled_blobs(tmp_path: Path) -> None:
    """float32 and bf16 compiles of one graph never share OpenVINO's blob cache: its key ignores the precision for
    MobileSAM's encoder, and a bf16 compile that imported the float32 blob gave all-NaN embeddings."""
    from autoannotate.runtime.openvino_parts import bf16_supported

    module, inputs, spec, settings = _tiny_part(tmp_path)
    f32 = compile_part(module, inputs, spec, settings)
    twin = f32.in_precision("bf16")
    assert (f32.precision, twin.precision, twin.converted) == ("f32", "bf16", False)
    compiled = tmp_path / "cache" / "openvino" / "compiled"
    assert sorted(p.name for p in compiled.iterdir()) == ["bf16", "f32"]
    assert len(list((compiled / "f32").glob("*.blob"))) == 1
    assert len(list((compiled / "bf16").glob("*.blob"))) == 1
    x = [t.numpy() for t in inputs]
    with torch.no_grad():
        expected = module(*inputs)[0].numpy()
    assert np.abs(f32(*x)[0] - expected).max() <= 1e-6
    got = twin(*x)[0]
    assert np.isfinite(got).all() and np.abs(got - expected).max() <= 0.05
    if bf16_supported():  # really computed in bf16: not the float32 result
        assert np.abs(got - expected).max() > 1e-6


def test_a_bf16_output_that_is_not_finite_is_recomputed_in_float32() -> None:
    """bf16 parts whose output is NaN or inf are called again in float32, part by part (each float32 twin compiled
    once, on first need); finite outputs are kept as bf16 gave them."""
    from autoannotate.segmenters.sam_openvino import OpenVinoSam

    calls: list[str] = []
    compiled: list[int] = []

    class Part:
        def __init__(self, index: int, precision: str, value: float, n_out: int) -> None:
            self.index, self.precision, self.value, self.n_out = index, precision, value, n_out

        def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
            calls.append(f"{('enc', 'side', 'prompts')[self.index]} {self.precision}")
            return [np.full((1, 4), self.value, np.float32) for _ in range(self.n_out)]

        def in_precision(self, precision: str) -> Part:
            compiled.append(self.index)
            return Part(self.index, precision, float(self.index + 2), self.n_out)

    ov = OpenVinoSam(
        Part(0, "bf16", np.nan, 1),
        Part(1, "bf16", 1.0, 4),
        Part(2, "bf16", np.inf, 2),
        torch.zeros(1, 4, 4),
        (2, 2),
        (),
    )
    assert float(ov.encode(torch.zeros(2, 3, 4, 4)).max()) == 2.0  # each image of the batch
    side = ov.image_side(torch.zeros(1, 4), torch.zeros(1), torch.zeros(1))
    assert float(side.tokens.max()) == 1.0  # finite in bf16: kept
    logits, iou = ov(side, torch.zeros(3, 2, 4))
    assert float(logits.max()) == float(iou.max()) == 4.0
    assert calls == ["enc bf16", "enc f32", "enc bf16", "enc f32", "side bf16", "prompts bf16", "prompts f32"]
    assert ov.redone_in_f32 == 3
    assert compiled == [0, 2]  # the encoder's twin compiled once for both images; the finite side's never


# --------------------------------------------------------------------------------------------------- whole runs


def _images(root: Path, n: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(root / f"im{i}.png"), synthetic_scene_bgr((60, 90), seed=i))
    return root


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autoannotate.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )


def _segmenter_record(out: Path) -> dict:
    return json.loads((out / "autoannotate.json").read_text())["models"]["segmenter"]


def _label_lines(out: Path) -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) for p in sorted((out / "labels").glob("*.txt"))}


def test_runs_on_openvino_convert_once_then_read_the_cache(
    tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path
) -> None:
    data = _images(tmp_path / "data")
    models = stand_in_model_args(yolo_weights, mobile_sam_weights, max_det=3)
    cache = os.environ["AUTOANNOTATE_CACHE_DIR"]  # the session's: test_segment_parity reads this conversion back
    first = _cli(["run", "--data", str(data), "--output-dir", str(tmp_path / "ov1"), *models, "--runtime", "openvino"])
    assert first.returncode == 0, first.stderr
    record = _segmenter_record(tmp_path / "ov1")
    assert record["runtime"] in (
        f"openvino {openvino_version()} f32 (converted and cached)",
        f"openvino {openvino_version()} f32 (from the cache)",  # another test of this session converted it
    )
    assert Path(cache, "openvino").is_dir()

    # the next run reads the conversion back, and so does --runtime auto however short the run
    second = _cli(["run", "--data", str(data), "--output-dir", str(tmp_path / "ov2"), *models, "--runtime", "openvino"])
    assert second.returncode == 0, second.stderr
    assert _segmenter_record(tmp_path / "ov2")["runtime"] == f"openvino {openvino_version()} f32 (from the cache)"
    assert f", segmenter on openvino {openvino_version()} f32 (from the cache)" in second.stderr  # the device line
    auto_args = ["run", "--data", str(data), "--output-dir", str(tmp_path / "auto"), *models]
    auto = _cli(auto_args, {"AUTOANNOTATE_RUNTIME": ""})
    assert auto.returncode == 0, auto.stderr
    assert _segmenter_record(tmp_path / "auto")["runtime"] == f"openvino {openvino_version()} f32 (from the cache)"

    # the same instances as PyTorch (same detector, masks equal to float rounding: test_segment_parity)
    torch_run = _cli(["run", "--data", str(data), "--output-dir", str(tmp_path / "pt"), *models, "--runtime", "torch"])
    assert torch_run.returncode == 0, torch_run.stderr
    assert _segmenter_record(tmp_path / "pt")["runtime"] == "torch"
    assert _label_lines(tmp_path / "ov1") == _label_lines(tmp_path / "pt") == {"im0.txt": 3, "im1.txt": 3}
    assert "OpenVINO" not in first.stderr + second.stderr + auto.stderr  # no fallback line


def test_auto_on_a_short_run_does_not_convert(tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path) -> None:
    data = _images(tmp_path / "data")
    assert OPENVINO_AUTO_MIN_ITEMS > 2
    fresh = tmp_path / "fresh_cache"
    env = {"AUTOANNOTATE_RUNTIME": "", "AUTOANNOTATE_CACHE_DIR": str(fresh)}
    models = stand_in_model_args(yolo_weights, mobile_sam_weights, max_det=2)
    result = _cli(["run", "--data", str(data), "--output-dir", str(tmp_path / "out"), *models], env)
    assert result.returncode == 0, result.stderr
    assert _segmenter_record(tmp_path / "out")["runtime"] == "torch"
    assert not (fresh / "openvino").exists()
    assert "note:" not in result.stderr  # nothing to say: auto quietly chose PyTorch


def test_openvino_that_cannot_load_falls_back_to_torch_with_one_line(
    tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path
) -> None:
    # a broken OpenVINO install, for real: a package named openvino that fails on import shadows the real one
    shadow = tmp_path / "shadow" / "openvino"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('libopenvino.so.2600: cannot open shared object file')\n")
    data = _images(tmp_path / "data")
    models = stand_in_model_args(yolo_weights, mobile_sam_weights, max_det=2)
    env = {"PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "out"
    result = _cli(["run", "--data", str(data), "--output-dir", str(out), *models, "--runtime", "openvino"], env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "OpenVINO" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("note: OpenVINO could not compile mobile_sam/image_encoder (")
    assert lines[0].endswith("cannot open shared object file); PyTorch runs the segmenter")
    assert "Traceback" not in result.stderr
    assert _segmenter_record(out)["runtime"] == "torch"
    assert _label_lines(out) == {"im0.txt": 2, "im1.txt": 2}


def test_bad_runtime_values_are_one_line_errors(tmp_path: Path, yolo_weights: Path, mobile_sam_weights: Path) -> None:
    data = _images(tmp_path / "data", n=1)
    models = stand_in_model_args(yolo_weights, mobile_sam_weights, max_det=1)
    flag = _cli(["run", "--data", str(data), "--output-dir", str(tmp_path / "a"), *models, "--runtime", "tensorrt"])
    assert flag.returncode == 2
    assert "tensorrt" in flag.stderr and "Traceback" not in flag.stderr
    env = _cli(
        ["run", "--data", str(data), "--output-dir", str(tmp_path / "b"), *models], {"AUTOANNOTATE_RUNTIME": "gpu"}
    )
    assert env.returncode == 2
    expected = "error: invalid AUTOANNOTATE_RUNTIME='gpu': use auto, torch or openvino"
    assert env.stderr.strip().splitlines()[-1] == expected


def test_a_model_without_a_file_is_keyed_by_its_weights() -> None:
    import copy

    from autoannotate.segmenters.sam_openvino import state_dict_sha256

    model = torch.nn.Linear(2, 2)
    twin = copy.deepcopy(model)
    assert state_dict_sha256(model) == state_dict_sha256(twin)
    with torch.no_grad():
        twin.bias[0] += 1e-6
    assert state_dict_sha256(model) != state_dict_sha256(twin)


@pytest.mark.parametrize(
    ("streams", "threads", "encoder_streams"),
    [(1, 1, 1), (2, 2, 1), (3, 3, 1), (4, 4, 2), (8, 8, 4), (8, 16, 8), (4, 16, 4)],
)
def test_the_encoders_streams_get_two_threads_each(streams: int, threads: int, encoder_streams: int) -> None:
    from autoannotate.segmenters.sam_openvino import encoder_settings

    settings = OpenVinoSettings("bf16", streams, threads, Path("cache"))
    assert encoder_settings(settings) == OpenVinoSettings("bf16", encoder_streams, threads, Path("cache"))


def test_the_encoder_is_compiled_with_its_own_streams_and_the_decoder_with_one_per_worker(
    tmp_path: Path, mobile_sam_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real MobileSAM's three parts, as ``use_openvino`` compiles them for two workers on two cores: the encoder
    in one stream of two threads, both decoder parts in two streams (compiling itself is stubbed: only the settings
    each part is given are checked here)."""
    from autoannotate.segmenters import sam_openvino
    from autoannotate.segmenters.sam import BoxSegmenter

    given: dict[str, OpenVinoSettings] = {}

    def record(module: torch.nn.Module, inputs: tuple, spec: PartSpec, settings: OpenVinoSettings) -> object:
        given[spec.name] = settings
        return SimpleNamespace(converted=False, precision=settings.precision)

    monkeypatch.setattr(sam_openvino, "compile_part", record)
    segmenter = BoxSegmenter._load(mobile_sam_weights, "cpu", False, None)
    segmenter.use_openvino(OpenVinoSettings("f32", 2, 2, tmp_path), "00" * 32)
    assert {name: (s.streams, s.threads) for name, s in given.items()} == {
        "mobile_sam/image_encoder": (1, 2),
        "mobile_sam/decoder_image_side": (2, 2),
        "mobile_sam/decoder_prompts": (2, 2),
    }

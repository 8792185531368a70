"""``build`` / ``bench --backend tensorrt`` / ``val --backend tensorrt`` argument handling on the CPU:
the parsers as shipped give every :class:`EngineOptions` field its dataclass default; bad input and a
machine without CUDA or TensorRT end in one clear line; the build flow itself runs with the TensorRT
builder function (and the machine facts it reads) replaced by stand-ins."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
from pathlib import Path

import pytest
import torch

from yolov9_qat.cli import build_parser
from yolov9_qat.errors import UserError
from yolov9_qat.runtime import tensorrt as rt
from yolov9_qat.runtime import trt_cli
from yolov9_qat.runtime.engine_cache import BuildOptions, ShapeProfile, Target, sidecar_paths
from yolov9_qat.runtime.engine_options import GROUPS, EngineOptions, add_engine_args
from yolov9_qat.runtime.precision_graphs import autocast_missing

pytestmark = pytest.mark.cpu

INSPECTOR = {
    "Layers": [
        {"Name": "Reformatting CopyNode for Input Tensor 0 to conv", "LayerType": "Reformat", "ParameterType": "Reformat",
         "Inputs": [{"Name": "images", "Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Name": "r", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]},
        {"Name": "conv", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [{"Name": "r", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
         "Outputs": [{"Name": "output0", "Format/Datatype": "Row major linear FP32"}],
         "Weights": {"Type": "Int8", "Count": 10}, "TacticName": "sm89_xmma_fprop"},
    ],
    "Bindings": ["images", "output0"],
}  # fmt: skip


def tiny_onnx(
    path: Path, h: int | str = 64, w: int | str = 64, qdq: bool = False, batch: int | str = "batch"
) -> Path:
    """images (batch, 3, h, w) -> [Q/DQ] -> Conv -> output0: enough graph for argument handling."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.random.RandomState(0).randn(8, 3, 3, 3).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x" if qdq else "images", "w"], ["output0"], pads=[1, 1, 1, 1])]
    if qdq:
        inits += [
            numpy_helper.from_array(np.array(1 / 127, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
        ]
        nodes[:0] = [
            helper.make_node("QuantizeLinear", ["images", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["x"]),
        ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, h, w])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 8, h, w])], inits,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A float graph at 64 px (dynamic batch), the same with dynamic H / W, and a Q/DQ graph at 16 px."""
    d = tmp_path_factory.mktemp("cli")
    return {
        "float": tiny_onnx(d / "float.onnx"),
        "dynhw": tiny_onnx(d / "dynhw.onnx", "h", "w"),
        "qdq": tiny_onnx(d / "qdq.onnx", 16, 16, qdq=True),
        "static": tiny_onnx(d / "static.onnx", batch=1),
    }


def build_args(onnx: Path | str, **kw: object) -> argparse.Namespace:
    """``yolov9-qat build --onnx ONNX --<k> <v> ...`` through the shipped parser."""
    argv = ["build", "--onnx", str(onnx)]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return build_parser().parse_args(argv)


def assert_one_line(e: pytest.ExceptionInfo[UserError], *words: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    for w in words:
        assert w in msg, msg


# --- arguments: the parsers as shipped ------------------------------------------------------------
FIELDS = {f.name for f in dataclasses.fields(EngineOptions)}
SHAPES = {"min_shapes", "opt_shapes", "max_shapes"}
LOOP = {"use_cuda_graph", "use_spin_wait", "no_data_transfers", "resilience", "warmup_ms", "duration_s"}
MINIMAL = {  # the least each command takes, and the fields its parser should reach
    "build": (["build", "--onnx", "float.onnx"], FIELDS - LOOP),
    "val": (["val", "--backend", "tensorrt", "--weights", "float.onnx", "--data", "d.yaml"], FIELDS - SHAPES - LOOP),
    "bench": (["bench", "--backend", "tensorrt", "--model", "float.onnx"], FIELDS - SHAPES),
}  # fmt: skip
OWN_DEFAULTS = {"val": {"img": 640}}  # a command's own flag with its own default


@pytest.mark.parametrize("command", sorted(MINIMAL))
def test_shipped_parsers_take_the_dataclass_defaults(command: str) -> None:
    """``bench`` / ``val`` / ``build`` as shipped: precision ``auto`` (no flag of a command shadows the
    tier's), every field the command should have is reachable, and the defaults are the dataclass's."""
    argv, fields = MINIMAL[command]
    args = build_parser().parse_args(argv)
    assert FIELDS & set(vars(args)) == fields
    options = EngineOptions.from_namespace(args)
    assert options.precision == "auto"
    assert options == EngineOptions(**OWN_DEFAULTS.get(command, {}))


SET_ALL = {
    "precision": ("--precision", "int8", "int8"),
    "timing_cache": ("--timing-cache", "t.cache", "t.cache"),
    "no_timing_cache": ("--no-timing-cache", None, True),
    "workspace_gib": ("--workspace", "2", 2.0),
    "builder_optimization_level": ("--builder-optimization-level", "3", 3),
    "runner": ("--runner", "trtexec", "trtexec"),
    "engine_cache": ("--engine-cache", "engines", "engines"),
    "device": ("--device", "1", "1"),
    "min_shapes": ("--min-shapes", "images:1x3x64x64", "images:1x3x64x64"),
    "opt_shapes": ("--opt-shapes", "images:4x3x64x64", "images:4x3x64x64"),
    "max_shapes": ("--max-shapes", "images:8x3x64x64", "images:8x3x64x64"),
    "img": ("--img", "320", 320),
    "use_cuda_graph": ("--use-cuda-graph", None, True),
    "use_spin_wait": ("--use-spin-wait", None, True),
    "no_data_transfers": ("--no-data-transfers", None, True),
    "resilience": ("--resilience", None, True),
    "warmup_ms": ("--warmup", "50", 50.0),
    "duration_s": ("--duration", "0.5", 0.5),
}


def test_set_all_covers_every_field() -> None:
    assert set(SET_ALL) == FIELDS


@pytest.mark.parametrize("command", sorted(MINIMAL))
def test_shipped_parsers_set_every_field(command: str) -> None:
    """Each field the command should have, set from its flag, arrives in :class:`EngineOptions`."""
    argv, fields = MINIMAL[command]
    for name in sorted(fields):
        flag, value, _ = SET_ALL[name]
        argv = [*argv, flag] if value is None else [*argv, flag, value]
    options = EngineOptions.from_namespace(build_parser().parse_args(argv))
    assert options == EngineOptions(**{name: SET_ALL[name][2] for name in fields})


def test_shipped_bench_keeps_its_own_loop_flags() -> None:
    """bench's own --warm-up spelling and --batch stay bench's; a bad --precision is argparse's error."""
    args = build_parser().parse_args(
        [*MINIMAL["bench"][0], "--warm-up", "200", "--batch", "1,4", "--use-cuda-graph", "--device", "0"]
    )
    options = EngineOptions.from_namespace(args)
    assert (options.warmup_ms, options.duration_s, options.device) == (200.0, 10.0, "0")
    assert options.use_cuda_graph and not options.resilience and args.batch == "1,4"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*MINIMAL["bench"][0], "--precision", "int4"])


def test_build_arguments_parse(tmp_path: Path) -> None:
    args = build_args(
        "m.onnx", precision="int8", min_shapes="images:1x3x640x640", opt_shapes="images:4x3x640x640",
        max_shapes="images:8x3x640x640", timing_cache="t.cache", save_engine="m.engine", workspace=4,
        generate_graph=True, runner="trtexec",
    )  # fmt: skip
    options = EngineOptions.from_namespace(args)
    assert (options.precision, options.min_shapes, options.max_shapes, options.workspace_gib) == (
        "int8",
        "images:1x3x640x640",
        "images:8x3x640x640",
        4.0,
    )
    assert args.generate_graph and options.runner == "trtexec" and args.save_engine == "m.engine"
    with pytest.raises(SystemExit):
        build_args("m.onnx", precision="int4")


def test_engine_options_check_their_values() -> None:
    for kw, words in (
        ({"precision": "int4"}, ("--precision 'int4'", "auto")),
        ({"runner": "x"}, ("--runner",)),
    ):
        with pytest.raises(UserError) as e:
            EngineOptions(**kw)
        assert_one_line(e, *words)
    with pytest.raises(dataclasses.FrozenInstanceError):
        EngineOptions().precision = "fp16"  # type: ignore[misc]
    for f in dataclasses.fields(EngineOptions):
        assert f.metadata["help"] and f.metadata["group"] in GROUPS, f.name


def test_from_namespace_takes_the_fields_it_finds() -> None:
    ns = argparse.Namespace(precision="fp16", img=320, batch_size=4, weights="w.onnx")
    assert EngineOptions.from_namespace(ns) == EngineOptions(precision="fp16", img=320)
    assert EngineOptions.from_namespace(argparse.Namespace()) == EngineOptions()


def test_add_engine_args_does_not_skip_a_flag_the_parser_has() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--img", type=int, default=640)
    with pytest.raises(argparse.ArgumentError):
        add_engine_args(p, groups=("img",))
    with pytest.raises(ValueError, match="unknown option group"):
        add_engine_args(argparse.ArgumentParser(), groups=("engines",))
    p = argparse.ArgumentParser()
    add_engine_args(p, groups=GROUPS)
    assert EngineOptions.from_namespace(p.parse_args([])) == EngineOptions()


@pytest.mark.parametrize(
    ("text", "index"), [("", 0), (None, 0), ("0", 0), ("1", 1), ("cuda:2", 2), ("0,1", 0), (3, 3)]
)
def test_device_index(text: object, index: int) -> None:
    assert rt.device_index(text) == index


@pytest.mark.parametrize("text", ["cpu", "gpu"])
def test_device_index_errors(text: str) -> None:
    with pytest.raises(UserError):
        rt.device_index(text)


# --- profiles --------------------------------------------------------------------------------------
def test_default_profile_is_the_record_deployment(onnx_files: dict[str, Path]) -> None:
    info = trt_cli.graph_info(onnx_files["float"])
    profile = trt_cli.resolve_profile(info, None, None, None)
    assert profile.specs() == ("images:1x3x64x64", "images:4x3x64x64", "images:8x3x64x64")
    fixed = trt_cli.resolve_profile(info, None, "images:2x3x64x64", None)
    assert fixed.min == fixed.opt == fixed.max == {"images": (2, 3, 64, 64)}
    dyn = trt_cli.graph_info(onnx_files["dynhw"])
    assert trt_cli.resolve_profile(dyn, None, None, None, img=320).opt == {"images": (4, 3, 320, 320)}
    assert trt_cli.resolve_profile(dyn, None, None, None).opt == {"images": (4, 3, 640, 640)}


def test_static_batch_onnx_takes_its_own_batch(onnx_files: dict[str, Path]) -> None:
    """An ONNX exported without --dynamic: the default profile is its batch, min = opt = max; a profile
    or batch it cannot take is one clear error, not a dynamic default that fails in the builder."""
    info = trt_cli.graph_info(onnx_files["static"])
    assert trt_cli.fixed_batch(info) == 1
    assert trt_cli.fixed_batch(trt_cli.graph_info(onnx_files["float"])) is None
    profile = trt_cli.resolve_profile(info, None, None, None)
    assert profile.specs() == ("images:1x3x64x64",) * 3
    chw = (3, 64, 64)
    assert trt_cli.batch_profile(info, chw, "images", 1, 1, 1).specs() == ("images:1x3x64x64",) * 3
    for lo, opt, hi, words in ((1, 4, 4, "batch 4"), (1, 4, 8, "batches 1..8")):
        with pytest.raises(UserError, match="fixed at batch 1") as e:
            trt_cli.batch_profile(info, chw, "images", lo, opt, hi)
        assert_one_line(e, words, "--dynamic")
    with pytest.raises(UserError, match="fixed at 1"):
        trt_cli.resolve_profile(info, "images:1x3x64x64", "images:4x3x64x64", "images:8x3x64x64")
    dyn = trt_cli.graph_info(onnx_files["float"])
    assert trt_cli.batch_profile(dyn, chw, "images", 1, 4, 8).specs()[2] == "images:8x3x64x64"


@pytest.mark.parametrize(
    ("specs", "img", "match"),
    [
        (("images:1x3x64x64", None, None), None, "together"),
        (("images:1x3x32x32", "images:4x3x32x32", "images:8x3x32x32"), None, "fixed at 64"),
        (("input:1x3x64x64", "input:4x3x64x64", "input:8x3x64x64"), None, "no input 'input'"),
        (("images:1x3x64", "images:4x3x64", "images:8x3x64"), None, "dimensions"),
        (("images:8x3x64x64", "images:4x3x64x64", "images:8x3x64x64"), None, "min <= opt <= max"),
        (("images:1x3x64x64", "images:4x3x64x64", "bad"), None, "max-shapes"),
        ((None, None, None), 320, "--img 320"),
    ],
)
def test_bad_profiles(onnx_files: dict[str, Path], specs: tuple, img: int | None, match: str) -> None:
    info = trt_cli.graph_info(onnx_files["float"])
    with pytest.raises(UserError, match=match) as e:
        trt_cli.resolve_profile(info, *specs, img=img)
    assert_one_line(e)


# --- build: input errors first, then the environment ------------------------------------------------
def test_build_missing_onnx(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        trt_cli.cmd_build(build_args(tmp_path / "missing.onnx"))
    assert_one_line(e, "missing.onnx", "no such file")


def test_build_bad_shape_spec(onnx_files: dict[str, Path]) -> None:
    args = build_args(
        onnx_files["float"],
        min_shapes="images:1x3x64",
        opt_shapes="images:4x3x64x64",
        max_shapes="images:8x3x64x64",
    )
    with pytest.raises(UserError) as e:
        trt_cli.cmd_build(args)
    assert_one_line(e, "images")


def test_build_precision_the_graph_cannot_give(onnx_files: dict[str, Path]) -> None:
    with pytest.raises(UserError) as e:
        trt_cli.cmd_build(build_args(onnx_files["float"], precision="int8"))
    assert_one_line(e, "Q/DQ")
    with pytest.raises(UserError) as e:
        trt_cli.cmd_build(build_args(onnx_files["qdq"], precision="fp16"))
    assert_one_line(e, "float graph")


@pytest.mark.skipif(not rt.missing_gpu_stack(), reason="this machine has CUDA and TensorRT")
def test_build_without_gpu_or_tensorrt_is_one_clear_line(onnx_files: dict[str, Path]) -> None:
    with pytest.raises(UserError) as e:
        trt_cli.cmd_build(build_args(onnx_files["float"], precision="fp16"))
    assert_one_line(
        e, "yolov9-qat build", "needs an NVIDIA GPU with TensorRT", 'pip install "yolov9-qat[gpu]"'
    )
    for what in rt.missing_gpu_stack():
        assert what in str(e.value)


def test_missing_pieces_are_all_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rt, "_cuda_available", lambda: False)
    monkeypatch.setattr(rt, "_has_module", lambda name: False)
    with pytest.raises(UserError) as e:
        rt.require_gpu_stack("yolov9-qat build")
    assert_one_line(
        e, "no CUDA device", "TensorRT is not installed", "polygraphy is not installed", "yolov9-qat[gpu]"
    )


def test_build_with_trtexec_runner_but_no_trtexec(
    onnx_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from yolov9_qat.runtime import trtexec

    monkeypatch.setattr(trtexec.shutil, "which", lambda name: None)
    with pytest.raises(UserError) as e:
        trt_cli.cmd_build(build_args(onnx_files["float"], runner="trtexec"))
    assert_one_line(e, "trtexec")


def test_import_tensorrt_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(UserError) as e:
        rt.import_tensorrt()
    assert_one_line(e, "TensorRT cannot be imported", "yolov9-qat[gpu]")


# --- val / bench without a GPU ---------------------------------------------------------------------
def val_predictor(weights: Path | str, **kw: object) -> object:
    """``tensorrt_val_predictor`` as ``val --img 64 --batch-size 4`` calls it."""
    return trt_cli.tensorrt_val_predictor(EngineOptions(img=64, **kw), weights, batch_size=4)


@pytest.mark.skipif(not rt.missing_gpu_stack(), reason="this machine has CUDA and TensorRT")
def test_val_without_gpu_or_tensorrt(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        val_predictor(onnx_files["float"])
    assert_one_line(e, "val --backend tensorrt", "yolov9-qat[gpu]")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(UserError) as e:
        val_predictor(engine)
    assert_one_line(e, "val --backend tensorrt")


def test_val_input_errors(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        val_predictor(tmp_path / "none.onnx")
    pt = tmp_path / "best.pt"
    pt.write_bytes(b"x")
    with pytest.raises(UserError, match=r"an \.onnx file or a TensorRT engine"):
        val_predictor(pt)
    with pytest.raises(UserError, match="fixed at 64x64"):
        trt_cli.tensorrt_val_predictor(EngineOptions(img=640), onnx_files["float"], batch_size=4)
    with pytest.raises(UserError, match="--device cpu"):
        val_predictor(onnx_files["float"], device="cpu")


def test_val_checks_the_class_count(tmp_path: Path, onnx_files: dict[str, Path]) -> None:
    import onnx

    model = onnx.load(str(onnx_files["float"]))
    entry = model.metadata_props.add()
    entry.key, entry.value = "nc", "10"
    path = tmp_path / "meta.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UserError, match="predicts 10 classes, the data set has 3"):
        trt_cli.tensorrt_val_predictor(
            EngineOptions(img=64), path, batch_size=4, data={"names": ["a", "b", "c"]}
        )


@pytest.mark.skipif(not rt.missing_gpu_stack(), reason="this machine has CUDA and TensorRT")
def test_bench_without_gpu(onnx_files: dict[str, Path]) -> None:
    options, model = EngineOptions(), onnx_files["float"]
    with pytest.raises(UserError) as e:
        trt_cli.make_trt_runner(options, model)
    assert_one_line(e, "TensorRT benchmark", "yolov9-qat[gpu]")
    with pytest.raises(UserError) as e:
        trt_cli.bench_tensorrt(options, model, batches=[1])
    assert_one_line(e, "TensorRT benchmark")


def test_bench_input_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--model is required"):
        trt_cli.make_trt_runner(EngineOptions(), None)
    other = tmp_path / "m.pt"
    other.write_bytes(b"x")
    with pytest.raises(UserError, match=r"expected an \.onnx file or a TensorRT engine"):
        trt_cli.make_trt_runner(EngineOptions(), other)


# --- precision mapping -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("precision", "fp16", "int8"),
    [("fp32", False, False), ("fp16", True, False), ("int8", False, True), ("mp", True, True)],
)
def test_trt10_precision_flags(precision: str, fp16: bool, int8: bool) -> None:
    assert rt.precision_flags(precision, typed=False) == {"fp16": fp16, "int8": int8}
    assert rt.precision_flags(precision, typed=True) == {"fp16": False, "int8": False}


def test_create_config_kwargs() -> None:
    options = BuildOptions(
        "mp", ShapeProfile.for_batches((3, 64, 64), 1, 4, 8), timing_cache="t.cache", optimization_level=3
    )
    kw = rt.create_config_kwargs(options, typed=False)
    assert kw == {
        "fp16": True,
        "int8": True,
        "tf32": True,
        "load_timing_cache": "t.cache",
        "builder_optimization_level": 3,
    }
    assert rt.create_config_kwargs(BuildOptions("fp16", options.profile), typed=True, has_tf32=False) == {
        "fp16": False, "int8": False, "tf32": False,
    }  # fmt: skip


def test_polygraphy_accepts_the_config_arguments() -> None:
    pytest.importorskip("polygraphy")
    from polygraphy.backend.trt import CreateConfig, Profile

    options = BuildOptions(
        "mp", ShapeProfile.for_batches((3, 64, 64), 1, 4, 8), timing_cache="t.cache", optimization_level=3
    )
    profile = Profile().add(
        "images",
        min=options.profile.min["images"],
        opt=options.profile.opt["images"],
        max=options.profile.max["images"],
    )
    config = CreateConfig(profiles=[profile], **rt.create_config_kwargs(options, typed=False))
    assert config.fp16 and config.int8 and config.tf32


def test_strongly_typed_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    trt10 = types.SimpleNamespace(BuilderFlag=types.SimpleNamespace(FP16=1, INT8=2, TF32=3))
    trt11 = types.SimpleNamespace(BuilderFlag=types.SimpleNamespace(TF32=3))
    monkeypatch.delenv("YOLOV9_QAT_STRONGLY_TYPED", raising=False)
    assert not rt.strongly_typed(trt10) and rt.strongly_typed(trt11)
    monkeypatch.setenv("YOLOV9_QAT_STRONGLY_TYPED", "1")
    assert rt.strongly_typed(trt10)


# --- the build flow with the TensorRT builder function replaced -------------------------------------
class StandIn:
    """TensorRT stand-ins: version / GPU facts and the builder function (writes bytes, returns the
    inspector JSON). The engine cache, graph derivation, export and reporting run for real."""

    def __init__(self, typed: bool) -> None:
        flags = {"TF32": 3} if typed else {"FP16": 1, "INT8": 2, "TF32": 3}
        self.trt = types.SimpleNamespace(
            __version__="11.0.0" if typed else "10.3.0", BuilderFlag=types.SimpleNamespace(**flags)
        )
        self.calls: list[tuple[Path, BuildOptions, bool]] = []

    def build_engine(self, onnx: Path, options: BuildOptions, out: Path, typed: bool | None = None) -> str:
        self.calls.append((Path(onnx), options, bool(typed)))
        Path(out).write_bytes(b"engine for " + Path(onnx).name.encode())
        return json.dumps(INSPECTOR)


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    def make(typed: bool = False) -> StandIn:
        s = StandIn(typed)
        monkeypatch.setattr(rt, "require_gpu_stack", lambda *a, **k: None)
        monkeypatch.setattr(rt, "import_tensorrt", lambda: s.trt)
        monkeypatch.setattr(
            rt,
            "gpu_target",
            lambda device=0, trt_version=None: Target(s.trt.__version__, "NVIDIA H100 80GB HBM3", "9.0"),
        )
        monkeypatch.setattr(rt, "build_engine", s.build_engine)
        monkeypatch.setattr(torch.cuda, "device", lambda d: __import__("contextlib").nullcontext())
        monkeypatch.delenv("YOLOV9_QAT_STRONGLY_TYPED", raising=False)
        monkeypatch.setenv("YOLOV9_QAT_ENGINE_CACHE", str(tmp_path / "engines"))
        return s

    return make


def test_cmd_build_flow(
    stand_in, onnx_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = stand_in(typed=False)
    save = tmp_path / "out" / "model.int8.engine"
    onnx = tmp_path / "qdq.onnx"
    onnx.write_bytes(onnx_files["qdq"].read_bytes())
    args = build_args(
        onnx, precision="int8", min_shapes="images:1x3x16x16", opt_shapes="images:4x3x16x16",
        max_shapes="images:8x3x16x16", save_engine=save, generate_graph=True, json_out=tmp_path / "build.json",
    )  # fmt: skip
    assert trt_cli.cmd_build(args) == 0
    out = capsys.readouterr().out
    assert (
        f"engine: {save} (int8, built in" in out
        and "layers: 2 layers: INT8 1, FP16 0, FP32 1; 1 Reformat" in out
    )
    (graph_src, options, typed) = s.calls[0]
    assert (
        graph_src == onnx and options.precision == "int8" and not typed
    )  # TensorRT 10: flags on the source graph
    assert options.timing_cache == str(tmp_path / "qdq.engine.timing.cache")
    result = json.loads((tmp_path / "build.json").read_text())
    assert (
        result["engine"] == str(save)
        and not result["cache_hit"]
        and result["layers"]["conv_int8_share"] == 1.0
    )
    assert result["target"] == {
        "trt_version": "10.3.0",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
    }
    assert (
        save.is_file() and sidecar_paths(save)["layers"].is_file() and sidecar_paths(save)["meta"].is_file()
    )
    assert Path(result["graph"]).suffix in (".svg", ".dot") and Path(result["graph"]).is_file()

    # second build: a cache hit, no builder call
    assert trt_cli.cmd_build(args) == 0
    assert "cache hit" in capsys.readouterr().out and len(s.calls) == 1
    # a changed ONNX is rebuilt
    import onnx as onnx_lib

    proto = onnx_lib.load(str(onnx))
    proto.doc_string = "changed"
    onnx_lib.save(proto, str(onnx))
    assert trt_cli.cmd_build(args) == 0 and len(s.calls) == 2


def test_default_engine_name_and_auto_precision(
    stand_in, onnx_files: dict[str, Path], tmp_path: Path
) -> None:
    s = stand_in(typed=False)
    onnx = tmp_path / "gelan.onnx"
    onnx.write_bytes(onnx_files["float"].read_bytes())
    assert trt_cli.cmd_build(build_args(onnx, no_timing_cache=True)) == 0
    assert (tmp_path / "gelan.fp16.engine").is_file()
    assert s.calls[0][1].precision == "fp16" and s.calls[0][1].timing_cache is None
    assert s.calls[0][1].profile.opt == {"images": (4, 3, 64, 64)}


@pytest.mark.skipif(
    bool(autocast_missing()), reason=f"ModelOpt AutoCast needs {', '.join(autocast_missing())}"
)
def test_strongly_typed_build_uses_the_autocast_graph(
    stand_in, onnx_files: dict[str, Path], tmp_path: Path
) -> None:
    s = stand_in(typed=True)
    onnx = tmp_path / "qdq.onnx"
    onnx.write_bytes(onnx_files["qdq"].read_bytes())
    args = build_args(onnx, precision="mp", opt_shapes="images:2x3x16x16")
    assert trt_cli.cmd_build(args) == 0
    graph, _, typed = s.calls[0]
    assert typed and graph != onnx and graph.name.startswith("qdq.mp-autocast-") and graph.parent == tmp_path
    meta = json.loads(sidecar_paths(tmp_path / "qdq.mp.engine")["meta"].read_text())
    assert meta["inputs"]["builder"]["mode"] == "strongly-typed" and "autocast" in meta["inputs"]["builder"]
    # int8 on the strongly typed tier builds the Q/DQ graph itself
    assert trt_cli.cmd_build(build_args(onnx, precision="int8", opt_shapes="images:2x3x16x16")) == 0
    assert s.calls[1][0] == onnx and s.calls[1][2]


def test_shipped_bench_parser_takes_the_tiers_precision(onnx_files: dict[str, Path]) -> None:
    """The parser as shipped: ``bench`` has no --precision of its own shadowing the tier's ``auto``."""
    args = build_parser().parse_args(["bench", "--backend", "tensorrt", "--model", str(onnx_files["float"])])
    precision = EngineOptions.from_namespace(args).precision
    assert precision == "auto"
    assert trt_cli.resolve_precision(precision, onnx_files["float"]) == "fp16"
    assert trt_cli.resolve_precision(precision, onnx_files["qdq"]) == "mp"


@pytest.mark.skipif(not rt.missing_gpu_stack(), reason="this machine has CUDA and TensorRT")
def test_bench_float_onnx_without_gpu_names_what_is_missing(onnx_files: dict[str, Path]) -> None:
    """As a user runs it: a float ONNX, no --precision, no GPU: one line about the GPU, not about Q/DQ."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "yolov9_qat", "bench", "--backend", "tensorrt", "--model", str(onnx_files["float"])],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs an NVIDIA GPU with TensorRT" in lines[0], proc.stderr
    assert "Q/DQ" not in lines[0]


@pytest.mark.parametrize(
    ("device", "n", "env", "index"),
    [
        (0, 1, {}, 0),  # one GPU: no doubt
        (1, 1, {}, None),  # no such device
        (1, 2, {}, None),  # CUDA's default order is fastest first, nvidia-smi's PCI: unknown
        (1, 2, {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, 1),
        (0, 2, {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1"}, None),
    ],
)
def test_nvidia_smi_row_of_a_cuda_device(device: int, n: int, env: dict, index: int | None) -> None:
    """The engine cache's GPU name must be the CUDA device's, not the PCI-order GPU of the same number."""
    assert rt.smi_index(device, n, env) == index

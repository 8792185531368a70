"""``yolov9-qat deploy triton``: the model repository, parsed back into Triton's ``ModelConfig`` schema
and checked field by field against the graph."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
from deploy_graphs import NAMES, assert_one_line_error, graph, graph_io, run_cli
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb2

from yolov9_qat import deploy
from yolov9_qat.export.io_spec import io_json_path, write_io_json

pytestmark = pytest.mark.cpu

TYPES = {"float32": "TYPE_FP32", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "float16": "TYPE_FP16"}
CLASS_OUTPUT = {"plain": 0, "end2end": 3, "deepstream": 0}
# kind: (layout, dynamic batch)
KINDS = {
    "plain": ("plain", False),
    "plain_dynamic": ("plain", True),
    "e2e_onnx": ("end2end", False),
    "ds_float": ("deepstream", True),
    "ds_int8": ("deepstream", False),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "deploy_graphs"


def parse(path: Path) -> Any:
    return text_format.Parse(path.read_text(), pb2.ModelConfig())


def expected_dims(shape: list[Any], batched: bool) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in (shape[1:] if batched else shape)]


def check_against_graph(cfg: Any, onnx_path: Path, layout: str, max_batch: int, folder: Path) -> None:
    """Every input / output of ``cfg`` against the graph: names, data types, dims, label file."""
    inputs, outputs = graph_io(onnx_path)
    batched = max_batch > 0
    assert cfg.max_batch_size == max_batch
    assert [i.name for i in cfg.input] == [t["name"] for t in inputs]
    assert [o.name for o in cfg.output] == [t["name"] for t in outputs]
    for got, want in zip([*cfg.input, *cfg.output], [*inputs, *outputs], strict=True):
        assert pb2.DataType.Name(got.data_type) == TYPES[want["dtype"]], got.name
        assert list(got.dims) == expected_dims(want["shape"], batched), got.name
    fmt = cfg.input[0].format
    assert fmt == (pb2.ModelInput.FORMAT_NCHW if batched else pb2.ModelInput.FORMAT_NONE)
    for i, o in enumerate(cfg.output):
        assert o.label_filename == ("labels.txt" if i == CLASS_OUTPUT[layout] else "")
    assert (folder / "labels.txt").read_text().splitlines() == NAMES
    assert cfg.HasField("dynamic_batching") is batched
    assert [g.count for g in cfg.instance_group] == [1]


@pytest.mark.parametrize("kind", list(KINDS))
def test_onnx_repository_matches_the_graph(kind: str, root: Path, tmp_path: Path, capsys) -> None:
    onnx_path = graph(kind, root)
    rc, out, err = run_cli(["deploy", "triton", "--onnx", str(onnx_path), "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    folder = tmp_path / onnx_path.stem
    cfg = parse(folder / "config.pbtxt")
    layout, dynamic = KINDS[kind]
    assert cfg.name == onnx_path.stem
    assert (cfg.platform, cfg.backend, cfg.default_model_filename) == (
        "onnxruntime_onnx",
        "onnxruntime",
        "model.onnx",
    )
    # dynamic batch axis: the default max_batch_size (16); fixed batch: 0 and full shapes
    check_against_graph(cfg, onnx_path, layout, 16 if dynamic else 0, folder)
    assert cfg.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_AUTO
    assert (folder / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    assert str(folder / "config.pbtxt") in out


def test_flags(root: Path, tmp_path: Path, capsys) -> None:
    onnx_path = graph("plain_dynamic", root)
    argv = ["deploy", "triton", "--onnx", str(onnx_path), "--out", str(tmp_path), "--name", "gelan"]
    argv += ["--max-batch", "8", "--no-dynamic-batching", "--instances", "3"]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 0, err
    cfg = parse(tmp_path / "gelan" / "config.pbtxt")
    assert cfg.name == "gelan" and cfg.max_batch_size == 8
    assert not cfg.HasField("dynamic_batching")
    assert [g.count for g in cfg.instance_group] == [3]
    assert list(cfg.input[0].dims) == [3, 64, 64]


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [(["--max-batch", "4"], "fixed batch of 1"), (["--dynamic-batching"], "fixed batch")],
)
def test_fixed_batch_refuses_batching_flags(flags, fragment, root: Path, tmp_path: Path, capsys) -> None:
    argv = ["deploy", "triton", "--onnx", str(graph("plain", root)), "--out", str(tmp_path), *flags]
    assert_one_line_error(*run_cli(argv, capsys)[::2], fragment)


def test_efficientnms_graph_needs_an_engine(root: Path, tmp_path: Path, capsys) -> None:
    argv = ["deploy", "triton", "--onnx", str(graph("e2e_trt", root)), "--out", str(tmp_path)]
    assert_one_line_error(*run_cli(argv, capsys)[::2], "EfficientNMS_TRT", "--engine")
    assert not (tmp_path / "e2e_trt").exists()


def _fake_engine(path: Path) -> Path:
    path.write_bytes(b"serialized engine bytes")
    return path


def test_engine_described_by_its_io_json(root: Path, tmp_path: Path, capsys) -> None:
    onnx_path = graph("e2e_trt", root)
    engine = _fake_engine(tmp_path / "e2e_trt.engine")
    write_io_json(onnx_path, io_json_path(engine))
    rc, _, err = run_cli(
        ["deploy", "triton", "--engine", str(engine), "--out", str(tmp_path / "repo")], capsys
    )
    assert rc == 0, err
    folder = tmp_path / "repo" / "e2e_trt"
    cfg = parse(folder / "config.pbtxt")
    assert (cfg.platform, cfg.backend, cfg.default_model_filename) == (
        "tensorrt_plan",
        "tensorrt",
        "model.plan",
    )
    check_against_graph(cfg, onnx_path, "end2end", 16, folder)
    assert cfg.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    assert (folder / "1" / "model.plan").read_bytes() == engine.read_bytes()


def test_engine_described_by_onnx_and_its_profile(root: Path, tmp_path: Path, capsys) -> None:
    onnx_path = graph("e2e_trt", root)
    engine = _fake_engine(tmp_path / "best.engine")
    profile = {"min": {"images": [1, 3, 64, 64]}, "opt": {"images": [4, 3, 64, 64]}}
    profile["max"] = {"images": [8, 3, 64, 64]}
    (tmp_path / "best.engine.json").write_text(json.dumps({"inputs": {"profile": profile}}))
    argv = ["deploy", "triton", "--engine", str(engine), "--onnx", str(onnx_path), "--out", str(tmp_path)]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 0, err
    cfg = parse(tmp_path / "best" / "config.pbtxt")
    check_against_graph(cfg, onnx_path, "end2end", 8, tmp_path / "best")  # the profile's maximum
    assert_one_line_error(*run_cli([*argv, "--max-batch", "32"], capsys)[::2], "profile stops at batch 8")


def test_engine_without_description(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(deploy, "_tensorrt_importable", lambda: False)
    engine = _fake_engine(tmp_path / "lonely.engine")
    argv = ["deploy", "triton", "--engine", str(engine), "--out", str(tmp_path / "repo")]
    assert_one_line_error(*run_cli(argv, capsys)[::2], "lonely.io.json", "--onnx")
    assert not (tmp_path / "repo").exists()


class _FakeEngine:
    """The slice of TensorRT's ICudaEngine that the description reads (TensorRT 10 names)."""

    tensors: ClassVar[dict[str, tuple[Any, ...]]] = {  # name: (shape, dtype, is input)
        "images": ((-1, 3, 64, 64), "FLOAT", True),
        "num_dets": ((-1, 1), "INT32", False),
        "det_boxes": ((-1, 100, 4), "FLOAT", False),
        "det_scores": ((-1, 100), "FLOAT", False),
        "det_classes": ((-1, 100), "INT32", False),
    }
    num_io_tensors = len(tensors)

    def get_tensor_name(self, i: int) -> str:
        return list(self.tensors)[i]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][0]

    def get_tensor_dtype(self, name: str) -> Any:
        return types.SimpleNamespace(name=self.tensors[name][1])

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if self.tensors[name][2] else "OUTPUT"

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        return (1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64)


def test_engine_read_by_tensorrt(tmp_path: Path, capsys, monkeypatch) -> None:
    class Runtime:
        def __init__(self, logger: Any) -> None: ...
        def __enter__(self) -> Runtime:
            return self

        def __exit__(self, *exc: Any) -> None: ...
        def deserialize_cuda_engine(self, data: bytes) -> _FakeEngine:
            return _FakeEngine()

    fake = types.SimpleNamespace(
        Logger=type("Logger", (), {"ERROR": 1, "__init__": lambda self, level: None}),
        init_libnvinfer_plugins=lambda logger, ns: True,
        Runtime=Runtime,
        TensorIOMode=types.SimpleNamespace(INPUT="INPUT"),
    )
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(deploy, "_tensorrt_importable", lambda: True)
    engine = _fake_engine(tmp_path / "e2e.plan")
    rc, _, err = run_cli(["deploy", "triton", "--engine", str(engine), "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    cfg = parse(tmp_path / "e2e" / "config.pbtxt")
    assert cfg.max_batch_size == 4  # the engine's own profile
    assert [o.name for o in cfg.output] == list(_FakeEngine.tensors)[1:]
    assert [list(o.dims) for o in cfg.output] == [[1], [100, 4], [100], [100]]
    assert pb2.DataType.Name(cfg.output[3].data_type) == "TYPE_INT32"
    assert not (tmp_path / "e2e" / "labels.txt").exists()  # an engine holds no class names


def test_not_an_onnx_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file\xff\xfe")
    argv = ["deploy", "triton", "--onnx", str(bad), "--out", str(tmp_path / "repo")]
    assert_one_line_error(*run_cli(argv, capsys)[::2], "not an ONNX model")


def test_missing_tritonclient(root: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # import fails as if not installed
    argv = ["deploy", "triton", "--onnx", str(graph("plain", root)), "--out", str(tmp_path)]
    assert_one_line_error(*run_cli(argv, capsys)[::2], 'pip install "yolov9-qat[deploy]"')

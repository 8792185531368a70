"""The graphs each precision builds from; the strongly typed (TensorRT 11) FP16 / MP graphs derived
with ModelOpt AutoCast, cached beside the ONNX and checked against their source on ONNX Runtime
(CPU, graph optimizations off)."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from shared_helpers import _one_thread  # noqa: F401 (an autouse fixture)
from yolov9_qat.errors import UserError
from yolov9_qat.runtime import precision_graphs as pg

pytestmark = pytest.mark.cpu

needs_autocast = pytest.mark.skipif(
    bool(pg.autocast_missing()),
    reason=f"ModelOpt AutoCast needs {', '.join(pg.autocast_missing())} ({pg.AUTOCAST_DEPS_HINT})",
)


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gelan-n (10 classes) at 64 px, dynamic batch; head biases randomised so scores are not ~0."""
    from yolov9_qat.models.yolo import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("gelan-n", nc=10).fuse().eval()
    for seq in [*model.head.cv2, *model.head.cv3]:
        last = [m for m in seq.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        torch.nn.init.normal_(last.bias, 0.0, 1.0)
    out = tmp_path_factory.mktemp("pg") / "gelan-n.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.rand(1, 3, 64, 64),), str(out), dynamo=False, opset_version=17, input_names=["images"],
            output_names=["output0"], dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
        )  # fmt: skip
    return out


def qdq_onnx(path: Path) -> Path:
    """Input Q/DQ -> Conv (per-channel Q/DQ weights) -> SiLU, the pattern of a QAT export."""
    rng = np.random.RandomState(0)
    w = rng.randn(8, 3, 3, 3).astype(np.float32)
    ws = (np.abs(w).reshape(8, -1).max(1) / 127).astype(np.float32)
    wq = np.clip(np.round(w / ws[:, None, None, None]), -127, 127).astype(np.int8)
    inits = [
        numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(ws, "ws"),
        numpy_helper.from_array(np.zeros(8, np.int8), "wz"), numpy_helper.from_array(np.array(1 / 127, np.float32), "xs"),
        numpy_helper.from_array(np.array(0, np.int8), "xz"), numpy_helper.from_array(rng.randn(8).astype(np.float32), "b"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["s"]),
        helper.make_node("Mul", ["c", "s"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 8, 16, 16])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def nms_onnx(path: Path) -> Path:
    """A head followed by EfficientNMS_TRT (domain TRT), the tail of an end-to-end export."""
    nodes = [
        helper.make_node("Mul", ["boxes_in", "k"], ["boxes"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
        helper.make_node(
            "EfficientNMS_TRT", ["boxes", "scores"], ["num_dets", "det_boxes", "det_scores", "det_classes"],
            domain="TRT", background_class=-1, box_coding=0, iou_threshold=0.45, max_output_boxes=100,
            plugin_version="1", score_activation=0, score_threshold=0.25,
        ),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "e2e",
        [helper.make_tensor_value_info("boxes_in", TensorProto.FLOAT, ["batch", 50, 4]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 50, 3])],
        [helper.make_tensor_value_info("num_dets", TensorProto.INT32, ["batch", 1]),
         helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["batch", 100, 4]),
         helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, ["batch", 100]),
         helper.make_tensor_value_info("det_classes", TensorProto.INT32, ["batch", 100])],
        [numpy_helper.from_array(np.full(4, 2.0, np.float32), "k")],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("TRT", 1)]
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = "end2end", "trt"
    onnx.save(model, str(path))
    return path


# --- graph facts and precision checks -------------------------------------------------------------
def test_graph_info(float_onnx: Path, tmp_path: Path) -> None:
    info = pg.graph_info(float_onnx)
    assert not info["qdq"] and info["plugins"] == [] and info["inputs"] == {"images": ["batch", 3, 64, 64]}
    assert list(info["outputs"]) == ["output0"]
    q = pg.graph_info(qdq_onnx(tmp_path / "q.onnx"))
    assert q["qdq"] and q["n_qdq"] == 3
    e = pg.graph_info(nms_onnx(tmp_path / "e.onnx"))
    assert e["plugins"] == ["EfficientNMS_TRT"] and e["metadata"]["end2end"] == "trt"


def test_missing_or_broken_onnx(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        pg.graph_info(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a protobuf")
    with pytest.raises(UserError, match="not a readable ONNX"):
        pg.graph_info(bad)


def test_precision_needs_the_right_graph(float_onnx: Path, tmp_path: Path) -> None:
    q = qdq_onnx(tmp_path / "q.onnx")
    for precision in ("fp16", "fp32"):
        pg.check_precision(float_onnx, precision)
        with pytest.raises(UserError, match="needs a float graph") as e:
            pg.check_precision(q, precision)
        assert "\n" not in str(e.value)
    for precision in ("int8", "mp"):
        pg.check_precision(q, precision)
        with pytest.raises(UserError, match="needs a Q/DQ graph"):
            pg.check_precision(float_onnx, precision)
    with pytest.raises(UserError, match="choose one of"):
        pg.check_precision(float_onnx, "int4")
    assert pg.default_precision(float_onnx) == "fp16" and pg.default_precision(q) == "mp"


def test_flag_tier_builds_from_the_source(float_onnx: Path, tmp_path: Path) -> None:
    q = qdq_onnx(tmp_path / "q.onnx")
    assert pg.graph_for_precision(float_onnx, "fp16", typed=False) == float_onnx
    assert pg.graph_for_precision(float_onnx, "fp32", typed=True) == float_onnx
    assert pg.graph_for_precision(q, "mp", typed=False) == q
    assert pg.graph_for_precision(q, "int8", typed=True) == q
    assert [pg.needs_derived_graph(p, True) for p in ("fp32", "fp16", "int8", "mp")] == [
        False,
        True,
        False,
        True,
    ]


def test_derived_path_is_keyed_by_content(float_onnx: Path, tmp_path: Path) -> None:
    a = pg.derived_path(float_onnx, "fp16")
    assert a.parent == float_onnx.parent and a.name.startswith("gelan-n.fp16-autocast-")
    assert pg.derived_path(float_onnx, "fp16") == a and pg.derived_path(float_onnx, "mp") != a
    copy = tmp_path / "gelan-n.onnx"
    copy.write_bytes(float_onnx.read_bytes() + b"")
    assert pg.derived_path(copy, "fp16").name == a.name
    copy.write_bytes(float_onnx.read_bytes()[:-1] + b"\x00")
    assert pg.derived_path(copy, "fp16").name != a.name
    assert pg.derived_path(float_onnx, "fp16", cache_dir=tmp_path / "c").parent == tmp_path / "c"


def test_missing_autocast_dependencies_are_one_line(
    monkeypatch: pytest.MonkeyPatch, float_onnx: Path
) -> None:
    monkeypatch.setattr(pg, "autocast_missing", lambda: ["onnxscript"])
    with pytest.raises(UserError, match="onnxscript") as e:
        pg.autocast_fp16(float_onnx)
    assert "\n" not in str(e.value)


# --- AutoCast (strongly typed tier) ----------------------------------------------------------------
@needs_autocast
def test_fp16_graph_of_the_float_model(float_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = pg.graph_for_precision(float_onnx, "fp16", typed=True)
    assert out == pg.derived_path(float_onnx, "fp16") and out.is_file()
    model = onnx.load(str(out))
    types = Counter(numpy_helper.to_array(i).dtype for i in model.graph.initializer)
    assert types[np.dtype("float16")] > 100  # conv weights are FP16 now
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # keep_io_types
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(n.op_type == "Conv" for n in model.graph.node)

    rng = np.random.default_rng(1)
    feeds = {"images": rng.random((2, 3, 64, 64), dtype=np.float32)}
    ref = pg.ort_session(float_onnx).run(None, feeds)[0]
    got = pg.ort_session(out).run(None, feeds)[0]
    assert got.dtype == np.float32 and got.shape == ref.shape == (2, 14, 84)
    assert np.abs(got[:, :4] - ref[:, :4]).max() < 1e-3 * np.abs(ref[:, :4]).max() + 0.25  # boxes, pixels
    assert np.abs(got[:, 4:] - ref[:, 4:]).max() < 5e-3  # class scores in [0, 1]
    assert np.abs(got - ref).max() > 0  # it really computes in FP16
    report = pg.compare_on_onnxruntime(float_onnx, out, inputs=feeds)
    assert report["max_rel"] < 5e-3 and report["outputs"]["output0"]["dtype"] == "float32"

    # cached: a second call does not derive again
    monkeypatch.setattr(pg, "autocast_fp16", lambda *a, **k: pytest.fail("derived twice"))
    assert pg.graph_for_precision(float_onnx, "fp16", typed=True) == out


@needs_autocast
def test_mixed_graph_keeps_qdq(tmp_path: Path) -> None:
    q = qdq_onnx(tmp_path / "q.onnx")
    out = pg.graph_for_precision(q, "mp", typed=True)
    src, mixed = onnx.load(str(q)), onnx.load(str(out))
    count = lambda m: Counter(n.op_type for n in m.graph.node if n.op_type in pg.QDQ_OPS)  # noqa: E731
    assert count(mixed) == count(src) == Counter({"DequantizeLinear": 2, "QuantizeLinear": 1})
    assert any(n.op_type == "Cast" for n in mixed.graph.node)
    report = pg.compare_on_onnxruntime(q, out, batch=2, hw=16)
    assert report["max_rel"] < 1e-2


@needs_autocast
def test_end_to_end_graph_keeps_the_nms_plugin(tmp_path: Path) -> None:
    e = nms_onnx(tmp_path / "e2e.onnx")
    out = pg.graph_for_precision(e, "fp16", typed=True)
    model = onnx.load(str(out))
    nms = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert len(nms) == 1 and nms[0].domain == "TRT"
    assert {o.domain for o in model.opset_import} >= {"", "TRT"}
    assert [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output] == [
        ("num_dets", TensorProto.INT32), ("det_boxes", TensorProto.FLOAT),
        ("det_scores", TensorProto.FLOAT), ("det_classes", TensorProto.INT32),
    ]  # fmt: skip
    producers = {o: n for n in model.graph.node for o in n.output}
    for name in nms[0].input:  # the plugin gets FP32 inputs (cast back from the FP16 body)
        assert producers[name].op_type == "Cast"
        assert helper.get_attribute_value(producers[name].attribute[0]) == TensorProto.FLOAT
    assert any(n.op_type == "Sigmoid" for n in model.graph.node)
    assert [(p.key, p.value) for p in model.metadata_props] == [("end2end", "trt")]


def test_plugin_feeding_the_network_is_refused(tmp_path: Path) -> None:
    model = onnx.load(str(nms_onnx(tmp_path / "e.onnx")))
    model.graph.node.append(helper.make_node("Identity", ["det_boxes"], ["more"]))
    with pytest.raises(UserError, match="feeds other layers"):
        pg._split_plugins(model)

"""The Q/DQ placement linter: this package's QAT graphs pass, ModelOpt's defaults and hand-broken
graphs fail with the rule that names the break, a float graph is "not quantized"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from yolov9_qat.export.lint import RULES, lint, lint_file
from yolov9_qat.export.qdq_graph import DQ, Q, QdqGraph

pytestmark = pytest.mark.cpu

DFL_CONV = "/model.22/dfl/conv/Conv"


# -- graph surgery helpers ---------------------------------------------------------------------


def load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path))


def set_const(model: onnx.ModelProto, tensor: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    """Replace the value of an initializer or Constant output ``tensor`` with ``fn(value)``."""
    for init in model.graph.initializer:
        if init.name == tensor:
            init.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(init)), tensor))
            return
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == tensor:
            attr = next(a for a in n.attribute if a.name == "value")
            attr.t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(attr.t))))
            return
    raise KeyError(tensor)


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def scale_q_pair(model: onnx.ModelProto, q_or_dq: onnx.NodeProto, factor: float = 2.0) -> None:
    """Scale the (Q, DQ) pair's shared scale constant: the pair stays consistent."""
    set_const(model, q_or_dq.input[1], lambda s: (s * factor).astype(s.dtype))


def first(g: QdqGraph, op: str, pred: Callable[[onnx.NodeProto], bool]) -> onnx.NodeProto:
    return next(n for n in g.live_nodes(op) if pred(n))


def rules_of(report) -> set[str]:
    return {v.rule for v in report.violations}


# -- this package's graphs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "activation"),
    [("gelan-n", None), ("gelan-n", "FReLU"), ("gelan-n", "AconC"), ("yolov9-t>gelan-t", None)],
)
def test_qat_graphs_pass(onnx_factory, cfg: str, activation: str | None) -> None:
    report = lint(onnx_factory(cfg, activation, "qat"))
    assert report.ok, report.format()
    assert report.status == "ok" and report.violations == []
    s = report.stats
    assert report.allowed_float == [DFL_CONV]  # the DFL's fixed conv, and only it, stays float
    assert s["convs_int8"] == s["convs"] - 1 > 100
    assert s["q"] == s["dq"] == s["qdq_pairs"] == s["activation_q"] + s["weight_q"]
    assert s["weight_q"] == s["convs_int8"]
    assert s["pools_checked"] == 8 and s["resizes_checked"] == 2  # 5 AConv avg-pools, 3 SPPELAN max-pools
    assert s["concats_checked"] >= 20 and s["adds_checked"] >= 14
    text = report.format()
    assert text.splitlines()[0].startswith(f"{onnx_factory(cfg, activation, 'qat')}: ok: ")
    assert DFL_CONV in text


def test_scales_as_initializers_pass(qat_onnx) -> None:
    """Scales / zero points read from initializers as well as from Constant nodes."""
    model = load(qat_onnx)
    consts = [n for n in model.graph.node if n.op_type == "Constant"]
    for n in consts:
        model.graph.initializer.append(
            numpy_helper.from_array(numpy_helper.to_array(n.attribute[0].t), n.output[0])
        )
        model.graph.node.remove(n)
    report = lint(model)
    assert report.ok, report.format()
    assert report.stats["activation_q"] == lint(qat_onnx).stats["activation_q"]


def test_no_allow_float_flags_the_dfl(qat_onnx) -> None:
    report = lint(qat_onnx, allow_float=())
    assert rules_of(report) == {"conv-input", "conv-weight"}
    assert {v.node for v in report.violations} == {DFL_CONV}
    assert report.allowed_float == []


# -- ModelOpt's defaults -----------------------------------------------------------------------


def test_plain_modelopt_defaults_fail(onnx_factory) -> None:
    """INT8_DEFAULT_CFG quantizes conv inputs and weights (and nn.MaxPool2d inputs), each with its
    own scale: Concat inputs disagree, residual Adds / average pools / Resize run in float."""
    report = lint(onnx_factory("gelan-n", None, "plain"))
    assert not report.ok and report.status == "violations"
    counts = report.counts()
    assert set(counts) == {"concat-scale", "add-scale", "pool-scale", "resize-scale"}, report.format()
    # structural: every residual add, every avg-pool (functional, so not quantized), both upsamples
    assert counts["add-scale"] == 14 and counts["pool-scale"] == 5 and counts["resize-scale"] == 2
    assert counts["concat-scale"] >= 4  # the ELAN concats whose inputs are quantized elsewhere
    by_node = {v.node: v for v in report.violations}
    assert by_node["/model.4/cv2/cv2.0/m/m.0/Add"].rule == "add-scale"
    assert by_node["/model.3/AveragePool"].rule == "pool-scale"
    assert {"/model.10/Resize", "/model.13/Resize"} <= set(by_node)
    concat = report.by_rule("concat-scale")[0]
    assert concat.node.endswith("/Concat") and "different scales" in concat.message
    assert any(n.endswith("QuantizeLinear") for n in concat.nodes[1:])  # names the disagreeing Q nodes
    text = report.format()
    assert "concat-scale" in text and "/model.10/Resize" in text
    assert text.splitlines()[0].endswith(
        f"{len(report.violations)} violations (concat-scale {counts['concat-scale']}, add-scale 14, "
        "pool-scale 5, resize-scale 2)"
    )


# -- hand-broken graphs: one rule each ---------------------------------------------------------


def _only(report, rule: str) -> list:
    assert rules_of(report) == {rule}, report.format()
    return report.violations


def test_removed_input_qdq_breaks_conv_input(qat_onnx) -> None:
    model = load(qat_onnx)
    conv = node(model, "/model.1/conv/Conv")
    dq = node(model, conv.input[0].rsplit("_output_0", 1)[0])  # the DQ feeding it
    q = node(model, dq.input[0].rsplit("_output_0", 1)[0])
    assert (q.op_type, dq.op_type) == (Q, DQ)
    conv.input[0] = q.input[0]  # bypass the pair
    (v,) = _only(lint(model), "conv-input")
    assert v.node == "/model.1/conv/Conv" and "float input" in v.message


def test_removed_weight_qdq_breaks_conv_weight(qat_onnx) -> None:
    model = load(qat_onnx)
    conv = node(model, "/model.1/conv/Conv")
    conv.input[1] = "model.1.conv.weight"
    (v,) = _only(lint(model), "conv-weight")
    assert v.node == "/model.1/conv/Conv" and "not dequantized" in v.message


def test_wrong_weight_axis_breaks_conv_weight(qat_onnx) -> None:
    model = load(qat_onnx)
    for n in model.graph.node:
        if n.name.startswith("/model.1/conv/weight_quantizer/") and n.op_type in (Q, DQ):
            next(a for a in n.attribute if a.name == "axis").i = 1
    (v, *_) = _only(lint(model), "conv-weight")
    assert v.node == "/model.1/conv/Conv" and "axis" in v.message


def test_concat_input_scale_breaks_concat_scale(qat_onnx) -> None:
    model = load(qat_onnx)
    g = QdqGraph(model)
    concat = first(g, "Concat", lambda n: all(g.producer[t].op_type == DQ for t in n.input))
    scale_q_pair(model, g.producer[concat.input[1]])
    (v,) = _only(lint(model), "concat-scale")
    assert v.node == concat.name and g.producer[concat.input[1]].name in v.nodes
    assert "2 different scales" in v.message


def test_elan_concat_consumer_scale_breaks_concat_scale(qat_onnx) -> None:
    """A block-internal concat with float inputs: the Q after it must match the Q nodes that
    quantize its inputs elsewhere (TensorRT moves the Q back across the concat)."""
    model = load(qat_onnx)
    q = node(model, "/model.2/cv4/conv/input_quantizer/QuantizeLinear")
    scale_q_pair(model, q, 1.5)
    (v,) = _only(lint(model), "concat-scale")
    assert v.node == "/model.2/Concat" and q.name in v.nodes


def test_add_input_scale_breaks_add_scale(qat_onnx) -> None:
    model = load(qat_onnx)
    g = QdqGraph(model)
    add = first(g, "Add", lambda n: all(getattr(g.producer.get(t), "op_type", "") == DQ for t in n.input))
    scale_q_pair(model, g.producer[add.input[1]])
    (v,) = _only(lint(model), "add-scale")
    assert v.node == add.name and "different scales" in v.message


def test_add_without_qdq_breaks_add_scale(qat_onnx) -> None:
    model = load(qat_onnx)
    g = QdqGraph(model)
    add = first(g, "Add", lambda n: all(getattr(g.producer.get(t), "op_type", "") == DQ for t in n.input))
    dq = g.producer[add.input[1]]
    add.input[1] = g.producer[dq.input[0]].input[0]  # the float branch output
    (v,) = _only(lint(model), "add-scale")
    assert v.node == add.name and "float" in v.message


def test_float_pool_input_breaks_pool_scale(qat_onnx) -> None:
    model = load(qat_onnx)
    pool = node(model, "/model.3/AveragePool")
    dq = node(model, pool.input[0].rsplit("_output_0", 1)[0])
    pool.input[0] = node(model, dq.input[0].rsplit("_output_0", 1)[0]).input[0]  # skip the Q/DQ
    (v,) = _only(lint(model), "pool-scale")
    assert v.node == "/model.3/AveragePool" and "float input" in v.message


def test_avgpool_may_requantize_with_its_own_scale(qat_onnx) -> None:
    """Averaging does not commute with rounding: AConv's pool output takes cv1's own scale."""
    model = load(qat_onnx)
    g = QdqGraph(model)
    pool = node(model, "/model.3/AveragePool")
    (q,) = g.requant(pool.output[0])
    scale_q_pair(model, q, 3.0)
    assert lint(model).ok


def test_maxpool_requant_scale_breaks_pool_scale(tiny_model) -> None:
    assert lint(tiny_model(0.05, 0.05, "MaxPool")).ok
    (v,) = _only(lint(tiny_model(0.05, 0.1, "MaxPool")), "pool-scale")
    assert v.nodes == ("op", "dq_in", "q_out") and "different scale" in v.message
    assert lint(tiny_model(0.05, 0.1, "AveragePool")).ok


def test_resize_input_scale_breaks_resize_scale(qat_onnx) -> None:
    model = load(qat_onnx)
    g = QdqGraph(model)
    resize = first(g, "Resize", lambda n: True)
    scale_q_pair(model, g.producer[resize.input[0]], 0.5)
    (v,) = _only(lint(model), "resize-scale")
    assert v.node == resize.name and "different scale" in v.message


def test_requantized_float_op_is_a_float_island(qat_onnx) -> None:
    """DQ -> a float op -> Q of another scale: the op (here an avg-pool turned into a Relu) runs in
    float between INT8 layers."""
    model = load(qat_onnx)
    pool = node(model, "/model.3/AveragePool")
    pool.op_type = "Relu"
    del pool.attribute[:]
    scale_q_pair(model, node(model, "/model.3/cv1/conv/input_quantizer/QuantizeLinear"))
    (v,) = _only(lint(model), "float-island")
    assert v.node == "/model.3/AveragePool" and "Relu" in v.message


def test_allowed_float_conv_between_int8_layers_is_a_float_island(qat_onnx) -> None:
    model = load(qat_onnx)
    conv = node(model, "/model.1/conv/Conv")
    conv.input[0] = "/model.0/act/Mul_output_0"  # the previous conv's activation, no Q/DQ
    conv.input[1] = "model.1.conv.weight"
    (v,) = _only(lint(model, allow_float=("dfl", "model.1")), "float-island")
    assert v.nodes == ("/model.1/conv/Conv", "/model.0/conv/Conv")


def test_asymmetric_zero_point_breaks_qdq_format(qat_onnx) -> None:
    model = load(qat_onnx)
    q = node(model, "/model.1/conv/input_quantizer/QuantizeLinear")
    set_const(model, q.input[2], lambda z: (z + 3).astype(z.dtype))
    found = _only(lint(model), "qdq-format")
    assert {v.node for v in found} == {q.name, q.name.replace("QuantizeLinear", "DequantizeLinear")}
    assert all("asymmetric" in v.message for v in found)


def test_q_dq_pair_mismatch_breaks_qdq_format(qat_onnx) -> None:
    model = load(qat_onnx)
    dq = node(model, "/model.1/conv/input_quantizer/DequantizeLinear")
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "other_scale"))
    dq.input[1] = "other_scale"
    (v,) = _only(lint(model), "qdq-format")
    assert v.nodes == ("/model.1/conv/input_quantizer/QuantizeLinear", dq.name) and "disagree" in v.message


# -- not quantized, files ----------------------------------------------------------------------


def test_float_graph_is_not_quantized(onnx_factory) -> None:
    path = onnx_factory("gelan-n", None, "float")
    report = lint(path)
    assert not report.quantized and report.status == "not quantized"
    assert not report.ok and report.violations == []
    assert report.stats["convs"] == 130 and report.stats["q"] == 0
    code, text = lint_file(path)
    assert code == 1 and "not quantized" in text and len(text.splitlines()) == 1


def test_lint_file(qat_onnx, onnx_factory, tmp_path) -> None:
    code, text = lint_file(qat_onnx)
    assert code == 0 and text.startswith(f"{qat_onnx}: ok: ")
    code, text = lint_file(onnx_factory("gelan-n", None, "plain"))
    assert code == 1 and "[concat-scale] " in text and "[add-scale] /model.4/cv2/cv2.0/m/m.0/Add" in text


@pytest.mark.parametrize("content", [None, b"", b"this is not an onnx model\n" * 10, bytes(range(256)) * 4])
def test_lint_file_bad_files_one_line(tmp_path, content: bytes | None) -> None:
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    code, text = lint_file(path)
    assert code == 2
    assert len(text.splitlines()) == 1 and str(path) in text and "Traceback" not in text


def test_rule_ids_documented() -> None:
    import yolov9_qat.export.lint as mod

    assert list(RULES) == list(mod.REGISTRY)
    for rule_id, registered in mod.REGISTRY.items():
        assert registered.id == rule_id and RULES[rule_id] == registered.description
        assert callable(registered.check)
        assert f"``{rule_id}``" in (mod.__doc__ or "")


def test_rule_registered_once() -> None:
    from yolov9_qat.export.lint import rule

    with pytest.raises(ValueError, match="registered twice"):
        rule("conv-input", "again")(lambda ctx: [])

"""Quantized Convs as ConvInteger (``to_ort_integer``): same function as the Q/DQ graph, integer kernels.

Tolerances. ConvInteger's int32 sum is exact, so a rewritten conv differs from the exact value
``acc * s_x * s_w + b`` (float64) only by its float epilogue: the int32 -> float conversion, the
rounding of the multiplier ``s_x * s_w`` to float32, the product and the bias add, each at most
``u = 2**-24`` relative, hence ``|y - exact| <= 4u * (|acc * s_x * s_w| + |b|)``
(:func:`test_each_conv_exact_to_float_rounding` feeds every conv the Q/DQ graph's own input codes).
Through the whole network a float-rounding difference flips a quantizer's code where a value lies
within rounding of a code boundary (+-1, rarely), and a flip propagates downstream (the untrained
test network is chaotic: one flip at layer 3 becomes a few % of the codes at the head, as it does
between the Q/DQ graph and the same graph with its weights dequantized ahead of time). So
:func:`test_outputs_match_qdq_graph` checks the codes of every quantizer whose upstream codes agree
(+-1, at most 1e-3 of them) and bounds the outputs loosely (2e-3 of their range, 2e-4 .. 6e-4
measured).
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_models import build, single_thread
from onnx import TensorProto, helper, numpy_helper

from yolov9_qat.export.lint import lint
from yolov9_qat.export.onnx import ExportOptions, export_onnx
from yolov9_qat.export.ort_rewrite import IntegerReport, fold_weight, to_ort_integer, to_u8
from yolov9_qat.export.qdq_graph import QdqGraph

#: one worker builds the session's ort-placement models (shared with test_ort_qlinear.py) under -n
pytestmark = [pytest.mark.cpu, pytest.mark.xdist_group("ort-placement-models")]

U = 2.0**-24  # float32 unit roundoff
DFL = "/model.22/dfl/conv/Conv"
CONF = 1e-3  # the untrained test model's class scores peak near 1.4e-3


def _has_vnni() -> bool:
    """x86 without VNNI: ONNX Runtime's U8S8 kernels use VPMADDUBSW, whose int16 pair sums can
    saturate, so ConvInteger is not exact there (nor is QLinearConv)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown: assume a current CPU
    return "avx512_vnni" in flags or "avx_vnni" in flags


needs_exact_kernels = pytest.mark.skipif(
    not _has_vnni(), reason="x86 CPU without VNNI: ONNX Runtime's U8S8 GEMM may saturate"
)


def session(
    model: onnx.ModelProto, level: ort.GraphOptimizationLevel | None = None, **opts
) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    if level is not None:
        o.graph_optimization_level = level
    for k, v in opts.items():
        setattr(o, k, v)
    return ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, x: np.ndarray, **kw) -> dict[str, np.ndarray]:
    """Outputs by name; a fixed batch-1 graph is run image by image (outputs concatenated)."""
    s = session(model, **kw)
    name, names = s.get_inputs()[0].name, [o.name for o in s.get_outputs()]
    batches = [x] if s.get_inputs()[0].shape[0] != 1 else [x[i : i + 1] for i in range(len(x))]
    outs = [s.run(None, {name: b}) for b in batches]
    return {n: np.concatenate([o[k] for o in outs]) for k, n in enumerate(names)}


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names`` (types from shape inference)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    types = {
        v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(out).graph.value_info
    }
    have = {o.name for o in out.graph.output}
    for n in names:
        if n not in have:
            out.graph.output.append(helper.make_tensor_value_info(n, types.get(n, TensorProto.FLOAT), None))
    return out


def activation_codes(model: onnx.ModelProto) -> list[str]:
    g = QdqGraph(model)
    return [n.output[0] for n in g.live_nodes("QuantizeLinear") if not g.is_weight(n)]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s8(qat_onnx) -> onnx.ModelProto:
    return onnx.load(str(qat_onnx))


@pytest.fixture(scope="module")
def rewritten(s8) -> tuple[onnx.ModelProto, IntegerReport]:
    report = IntegerReport()
    return to_ort_integer(s8, report=report), report


@pytest.fixture(scope="module")
def inputs(images) -> np.ndarray:
    """Two real images and two of uniform noise, batch 4."""
    noise = np.random.default_rng(3).random((2, *images.shape[1:]), dtype=np.float32)
    return np.concatenate([images[:2].numpy(), noise])


@pytest.fixture(scope="module")
def dynamic_exports(images, loader, tmp_path_factory) -> dict[str, Path]:
    """gelan-n QAT exported with a dynamic batch, plain and end-to-end (ONNX NMS)."""
    root = tmp_path_factory.mktemp("ort_integer")
    with single_thread():
        model = build(images, loader, "gelan-n", None, "qat")
        size = images.shape[-1]
        plain = export_onnx(
            model, root / "plain.onnx", ExportOptions(imgsz=size, dynamic=True, simplify=True)
        )
        e2e = export_onnx(
            model,
            root / "e2e.onnx",
            ExportOptions(
                imgsz=size, dynamic=True, simplify=True, end2end="onnx", conf_thres=CONF, max_det=50
            ),
        )
    return {"plain": plain, "e2e": e2e}


# -- structure -----------------------------------------------------------------------------------


def test_quantized_convs_become_convinteger(s8, rewritten, tmp_path) -> None:
    model, report = rewritten
    onnx.checker.check_model(model, full_check=True)
    n_int8 = lint(s8).stats["convs_int8"]
    assert len(report.rewritten) == n_int8 > 100
    assert report.left_float == {DFL: "data input is not a DequantizeLinear output"}  # float by design
    g = QdqGraph(model)
    convs = g.live_nodes("Conv")
    assert [g.name(n) for n in convs] == [DFL]
    assert not any(g.dq_source(n.input[0]) for n in convs)  # no float Conv reads a DQ output any more
    ints = g.live_nodes("ConvInteger")
    assert len(ints) == n_int8
    for n in ints:  # int8 activations x uint8 weights (+128, zero point 128): ORT's U8S8 kernels
        assert g.const(n.input[1]).dtype == np.uint8 and int(g.const(n.input[3])) == 128
        assert int(g.const(n.input[2])) == 0 and g.const(n.input[2]).dtype == np.int8
    # no weight Q/DQ left; the activation Q/DQ are the same as before
    assert not any(
        g.is_weight(n) for n in g.live_nodes("QuantizeLinear", "DequantizeLinear") if n.input[0] != ""
    )
    assert len(activation_codes(model)) == len(activation_codes(s8))

    # what ONNX Runtime runs: the ConvIntegers stay, the one float conv is the DFL's
    opt = tmp_path / "optimized.onnx"
    session(model, optimized_model_filepath=str(opt))
    ops = [n.op_type for n in onnx.load(str(opt)).graph.node]
    assert ops.count("ConvInteger") == n_int8 and ops.count("Conv") == 1


def test_input_untouched_and_written_atomically(qat_onnx, s8, rewritten, tmp_path) -> None:
    assert s8.SerializeToString() == onnx.load(str(qat_onnx)).SerializeToString()
    out = tmp_path / "sub" / "int.onnx"
    model = to_ort_integer(qat_onnx, out)
    assert [p.name for p in out.parent.iterdir()] == ["int.onnx"]
    assert (
        onnx.load(str(out)).SerializeToString()
        == model.SerializeToString()
        == rewritten[0].SerializeToString()
    )


def test_fold_weight_matches_onnxruntime(s8) -> None:
    """The int8 weights folded here are the weight QuantizeLinear outputs ORT computes."""
    g = QdqGraph(s8)
    dqs = [n for n in g.live_nodes("DequantizeLinear") if g.is_weight(n)]
    qs = [g.producer[n.input[0]].output[0] for n in dqs]
    x = np.zeros((1, 3, 64, 64), np.float32)
    got = run(with_outputs(s8, qs), x, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    for dq, q in zip(dqs, qs, strict=True):
        w, scale = fold_weight(g, dq)
        assert w.dtype == np.int8 and np.array_equal(w, got[q]), q
        assert np.array_equal(scale, np.broadcast_to(g.const(dq.input[1]), scale.shape))


# -- numerics ------------------------------------------------------------------------------------


def _prune(model: onnx.ModelProto) -> None:
    """Keep the nodes the graph outputs need, and the graph inputs they read."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    need, stack, keep = set(), [o.name for o in graph.output], set()
    while stack:
        t = stack.pop()
        if t in need:
            continue
        need.add(t)
        if t in producer:
            keep.add(id(producer[t]))
            stack.extend(i for i in producer[t].input if i)
    nodes = [n for n in graph.node if id(n) in keep]
    inputs = [i for i in graph.input if i.name in need]
    del graph.node[:], graph.input[:]
    graph.node.extend(nodes)
    graph.input.extend(inputs)


def _float_output(g: QdqGraph, conv: onnx.NodeProto) -> str:
    """The float tensor a ConvInteger stands for: ConvInteger -> DequantizeLinear [-> Add(bias)]."""
    (dq,) = g.consumers[conv.output[0]]
    after = g.consumers.get(dq.output[0], [])
    if len(after) == 1 and after[0].op_type == "Add" and after[0].input[1] in g.init:
        return after[0].output[0]
    return dq.output[0]


@needs_exact_kernels
def test_each_conv_exact_to_float_rounding(s8, rewritten, inputs) -> None:
    """Every conv, fed the Q/DQ graph's own input codes, is within 4u of the exact value."""
    model, _ = rewritten
    g, gi = QdqGraph(s8), QdqGraph(model)
    ints = gi.live_nodes("ConvInteger")
    # the float tensor each ConvInteger stands for: ConvInteger -> DequantizeLinear [-> Add(bias)]
    outs: dict[str, list[str]] = {}
    for n in ints:
        outs.setdefault(n.input[0], []).append(_float_output(gi, n))
    codes = sorted(outs)
    conv_outs = [o for os_ in outs.values() for o in os_]
    ref = run(with_outputs(s8, codes + conv_outs), inputs)

    forced = onnx.ModelProto()  # the rewritten graph with every conv input fed from outside
    forced.CopyFrom(model)
    keep = [n for n in forced.graph.node if not (n.output and n.output[0] in codes)]
    del forced.graph.node[:]
    forced.graph.node.extend(keep)
    forced.graph.input.extend(helper.make_tensor_value_info(c, TensorProto.INT8, None) for c in codes)
    del forced.graph.output[:]
    forced.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in conv_outs)
    _prune(forced)
    s = session(forced)
    got = dict(zip(conv_outs, s.run(conv_outs, {i.name: ref[i.name] for i in s.get_inputs()}), strict=True))

    by_out = {n.output[0]: n for n in g.live_nodes("Conv")}
    worst_int = worst_qdq = 0.0
    for o in conv_outs:
        conv = by_out[o]
        dq_x, dq_w = g.producer[conv.input[0]], g.producer[conv.input[1]]
        qx = g.qparams(dq_x)
        w, s_w = fold_weight(g, dq_w)
        attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        pads = attrs.get("pads", [0, 0, 0, 0])
        assert pads[:2] == pads[2:]
        kw = {
            "stride": tuple(attrs.get("strides", (1, 1))),
            "padding": tuple(pads[:2]),
            "dilation": tuple(attrs.get("dilations", (1, 1))),
            "groups": attrs.get("group", 1),
        }
        xq = torch.from_numpy(ref[dq_x.input[0]].astype(np.float64) - float(qx.zero_point.ravel()[0]))
        wq = torch.from_numpy(w.astype(np.float64))
        acc = torch.nn.functional.conv2d(xq, wq, **kw).numpy()
        mag = torch.nn.functional.conv2d(xq.abs(), wq.abs(), **kw).numpy()
        scale = (float(np.float32(qx.scale.ravel()[0])) * s_w.astype(np.float64)).reshape(1, -1, 1, 1)
        bias = g.const(conv.input[2]).astype(np.float64).reshape(1, -1, 1, 1) if len(conv.input) > 2 else 0.0
        exact = acc * scale + bias
        terms = np.abs(acc * scale) + np.abs(bias)
        err = np.abs(got[o] - exact)
        assert np.all(err <= 4 * U * terms + 1e-30), (o, float((err / (terms + 1e-30)).max() / U))
        worst_int = max(worst_int, float((err / (terms + 1e-30)).max()))
        worst_qdq = max(
            worst_qdq, float((np.abs(ref[o] - exact) / (mag * scale + np.abs(bias) + 1e-30)).max())
        )
    assert len(conv_outs) == len(ints)
    logging.getLogger(__name__).info(
        "worst relative error: integer %.2f u, Q/DQ float %.2f u", worst_int / U, worst_qdq / U
    )


def upstream_codes(model: onnx.ModelProto) -> dict[str, set[str]]:
    """Activation Q output -> the activation Q outputs its input is computed from (all of them)."""
    g = QdqGraph(model)
    codes = set(activation_codes(model))
    direct: dict[str, set[str]] = {}
    for c in codes:
        found, stack, seen = set(), [g.producer[c].input[0]], set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in codes:
                found.add(t)
            elif t in g.producer:
                stack.extend(i for i in g.producer[t].input if i and g.is_act(i))
        direct[c] = found
    closed: dict[str, set[str]] = {}

    def close(c: str) -> set[str]:
        if c not in closed:
            closed[c] = set(direct[c])
            for u in direct[c]:
                closed[c] |= close(u)
        return closed[c]

    return {c: close(c) for c in codes}


@needs_exact_kernels
def test_outputs_match_qdq_graph(s8, rewritten, inputs) -> None:
    """End to end. Every quantizer whose upstream codes all agree with the Q/DQ graph's sees the same
    convs' outputs up to float rounding, so its codes agree but for rare +-1 flips (a value within
    rounding of a code boundary). Flips then propagate through the network (a random-weight one is
    chaotic), and the outputs stay within 2e-3 of their range (2e-4 .. 6e-4 measured)."""
    model, _ = rewritten
    codes = activation_codes(s8)
    want = run(with_outputs(s8, codes), inputs)
    got = run(with_outputs(model, codes), inputs)
    ups = upstream_codes(s8)
    clean = [c for c in codes if all(np.array_equal(want[u], got[u]) for u in ups[c])]
    assert len(clean) >= 5
    for c in clean:
        d = np.abs(want[c].astype(np.int32) - got[c].astype(np.int32))
        assert d.max() <= 1 and (d > 0).mean() <= 1e-3, (c, int(d.max()), float((d > 0).mean()))
    out = want["output0"]
    assert np.abs(got["output0"] - out).max() <= 2e-3 * np.abs(out).max()
    assert np.abs(got["output0"][:, 4:] - out[:, 4:]).max() <= 1e-3  # class scores (sigmoid)


# -- dynamic batch, end-to-end graphs, other forms -----------------------------------------------


@needs_exact_kernels
def test_dynamic_batch(dynamic_exports, inputs) -> None:
    src = onnx.load(str(dynamic_exports["plain"]))
    model = to_ort_integer(src)
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    for batch in (1, 3):
        want, got = run(src, inputs[:batch])["output0"], run(model, inputs[:batch])["output0"]
        assert got.shape == want.shape and got.shape[0] == batch
        assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()  # see test_outputs_match_qdq_graph


@needs_exact_kernels
def test_end2end_graph_survives(dynamic_exports, inputs) -> None:
    src = onnx.load(str(dynamic_exports["e2e"]))
    report = IntegerReport()
    model = to_ort_integer(src, report=report)
    onnx.checker.check_model(model, full_check=True)
    names = [o.name for o in model.graph.output]
    assert names == [o.name for o in src.graph.output] and names[0] == "num_dets"
    assert len(report.rewritten) > 100 and list(report.left_float) == ["/model/model.22/dfl/conv/Conv"]
    assert {p.key: p.value for p in model.metadata_props} == {p.key: p.value for p in src.metadata_props}
    want, got = run(src, inputs), run(model, inputs)
    for k, a in want.items():
        assert got[k].dtype == a.dtype and got[k].shape == a.shape, k
    assert want["num_dets"].sum() > 4  # something detected

    def sure(r: dict[str, np.ndarray], i: int) -> list[tuple[int, np.ndarray, float]]:
        """Image i's detections scored clear of the threshold (by more than rounding)."""
        k = int(r["num_dets"][i, 0])
        return [
            (int(c), b, float(sc))
            for c, b, sc in zip(
                r["det_classes"][i, :k], r["det_boxes"][i, :k], r["det_scores"][i, :k], strict=True
            )
            if sc > CONF + 1e-5
        ]

    tol = 2e-3 * float(np.abs(want["det_boxes"]).max())  # as for output0 (the untrained boxes are wide)
    for i in range(len(inputs)):  # the same confident detections, whatever their order
        for a, b in ((want, got), (got, want)):
            others = sure(b, i)
            for c, box, sc in sure(a, i):
                assert any(
                    c == c2 and np.abs(box - b2).max() <= tol and abs(sc - s2) <= 1e-5
                    for c2, b2, s2 in others
                )


def test_uint8_activations_and_int8_weight_initializers(s8, inputs, caplog) -> None:
    """A to_u8 graph rewrites too (slower U8U8 kernels, a warning); DQ on int8 weight initializers
    (no Q) is read as is; both give the same convs as the int8 graph."""
    g = QdqGraph(s8)
    pre = onnx.ModelProto()  # weight Q folded into int8 initializers ahead
    pre.CopyFrom(s8)
    for n in pre.graph.node:
        if n.op_type == "DequantizeLinear" and g.is_weight(n) and g.producer.get(n.input[0]) is not None:
            q = g.producer[n.input[0]]
            w, _ = fold_weight(g, n)
            name = q.output[0] + "_int8"
            pre.graph.initializer.append(numpy_helper.from_array(w, name))
            n.input[0] = name
    base = to_ort_integer(s8)
    with caplog.at_level(logging.WARNING, logger="yolov9_qat.export"):
        from_u8 = to_ort_integer(to_u8(s8))
    assert any("uint8 activations" in r.getMessage() for r in caplog.records)
    from_init = to_ort_integer(pre)
    codes = activation_codes(s8)
    want = run(with_outputs(base, codes), inputs)
    for m in (from_u8, from_init):
        onnx.checker.check_model(m, full_check=True)
        assert sum(n.op_type == "ConvInteger" for n in m.graph.node) == sum(
            n.op_type == "ConvInteger" for n in base.graph.node
        )
    assert np.array_equal(run(from_init, inputs)["output0"], want["output0"])
    # the same integers (x + 128, zero point 128), but ONNX Runtime picks its U8U8 and U8S8 kernels per
    # CPU: bit-identical on the AMD EPYC, within float rounding of the rescale on an AMX Xeon (0.099 at
    # most, 5.5 % of the outputs), so the bound of test_outputs_match_qdq_graph
    got, out = run(from_u8, inputs)["output0"], want["output0"]
    assert np.abs(got - out).max() <= 2e-3 * np.abs(out).max()
    assert np.abs(got[:, 4:] - out[:, 4:]).max() <= 1e-3  # class scores (sigmoid)


def _grouped_model(
    channels: int, group: int, per_channel: bool = True, opset: int = 17, seed: int = 0
) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray, np.ndarray, float]:
    """``X -> Q/DQ -> Conv(3x3, group, Q/DQ weight per channel or per tensor, bias) -> Y``, int8."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(channels, channels // group, 3, 3)).astype(np.float32)
    s_w = (np.abs(w).reshape(channels, -1).max(1) / 127).astype(np.float32)
    if not per_channel:
        s_w = np.array(s_w.max(), np.float32)
    axis = {"axis": 0} if per_channel else {}
    b = rng.normal(size=channels).astype(np.float32)
    s_x = 0.02
    inits = [
        numpy_helper.from_array(np.array(s_x, np.float32), "s_x"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(s_w, "s_w"),
        numpy_helper.from_array(np.zeros(s_w.shape, np.int8), "zp_w"),
        numpy_helper.from_array(b, "b"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["X", "s_x", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s_x", "zp"], ["xd"]),
        helper.make_node("QuantizeLinear", ["w", "s_w", "zp_w"], ["wq"], **axis),
        helper.make_node("DequantizeLinear", ["wq", "s_w", "zp_w"], ["wd"], **axis),
        helper.make_node("Conv", ["xd", "wd", "b"], ["Y"], name="conv", pads=[1, 1, 1, 1], group=group),
    ]
    graph = helper.make_graph(
        nodes,
        "grouped",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", channels, 12, 12])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", channels, 12, 12])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset >= 15 else 7
    x = rng.normal(scale=1.5, size=(2, channels, 12, 12)).astype(np.float32)  # saturates some codes
    return model, x, w, b, s_x


@needs_exact_kernels
@pytest.mark.parametrize(
    ("group", "depthwise", "rewritten_"), [(8, False, False), (8, True, True), (2, False, True)]
)
def test_grouped_and_depthwise(group: int, depthwise: bool, rewritten_: bool) -> None:
    """Depthwise convs (one input channel per group) stay float unless asked; grouped ones are
    rewritten; either way the output is the exact one to float rounding."""
    model, x, _, b, s_x = _grouped_model(8, group)
    report = IntegerReport()
    out = to_ort_integer(model, depthwise=depthwise, report=report)
    onnx.checker.check_model(out, full_check=True)
    assert (report.rewritten == ["conv"]) is rewritten_
    if not rewritten_:
        assert "depthwise" in report.left_float["conv"]
    ops = [n.op_type for n in out.graph.node]
    assert ("ConvInteger" in ops) is rewritten_ and ("Conv" in ops) is not rewritten_
    g = QdqGraph(model)
    w, s_w = fold_weight(g, g.producer["wd"])
    xq = np.clip(np.rint(x / np.float32(s_x)), -128, 127).astype(np.float64)
    kw = {"padding": 1, "groups": group}
    acc = torch.nn.functional.conv2d(
        torch.from_numpy(xq), torch.from_numpy(w.astype(np.float64)), **kw
    ).numpy()
    scale = (float(np.float32(s_x)) * s_w.astype(np.float64)).reshape(1, -1, 1, 1)
    exact = acc * scale + b.astype(np.float64).reshape(1, -1, 1, 1)
    got = run(out, x)["Y"]
    terms = np.abs(acc * scale) + np.abs(b).reshape(1, -1, 1, 1)
    bound = 4 * U if rewritten_ else (9 * 8 // group + 4) * U  # the float conv: a K-term float sum
    mag = torch.nn.functional.conv2d(
        torch.from_numpy(np.abs(xq)), torch.from_numpy(np.abs(w).astype(np.float64)), **kw
    ).numpy()
    assert np.all(np.abs(got - exact) <= bound * (mag * scale + terms))
    if rewritten_:
        assert np.all(np.abs(got - exact) <= 4 * U * terms + 1e-30)


@needs_exact_kernels
def test_frelu_depthwise_convs_stay_float(onnx_factory, inputs) -> None:
    """FReLU's depthwise 3x3 convs are left float (with why); every other quantized conv is integer."""
    src = onnx.load(str(onnx_factory("gelan-n", "FReLU", "qat")))
    report = IntegerReport()
    model = to_ort_integer(src, report=report)
    onnx.checker.check_model(model, full_check=True)
    depthwise = {k for k, why in report.left_float.items() if why.startswith("depthwise")}
    assert len(depthwise) > 50 and set(report.left_float) == depthwise | {DFL}
    assert len(report.rewritten) + len(depthwise) == lint(src).stats["convs_int8"]
    want, got = run(src, inputs)["output0"], run(model, inputs)["output0"]
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()  # see test_outputs_match_qdq_graph
    every = to_ort_integer(src, depthwise=True)
    assert sum(n.op_type == "Conv" for n in every.graph.node) == 1  # only the DFL's
    assert np.abs(run(every, inputs)["output0"] - want).max() <= 2e-3 * np.abs(want).max()


@needs_exact_kernels
def test_per_tensor_weights_before_opset_13() -> None:
    """Opset 12 has no per-axis DequantizeLinear: the int32 sum is scaled by Cast -> Mul instead."""
    model, x, _, b, s_x = _grouped_model(6, 1, per_channel=False, opset=12)
    out = to_ort_integer(model)
    onnx.checker.check_model(out, full_check=True)
    assert [n.op_type for n in out.graph.node] == [
        "QuantizeLinear",
        "ConvInteger",
        "Cast",
        "Mul",
        "Add",
    ]
    g = QdqGraph(model)
    w, s_w = fold_weight(g, g.producer["wd"])
    assert s_w.shape == (6,) and np.all(s_w == s_w[0])
    xq = np.clip(np.rint(x / np.float32(s_x)), -128, 127).astype(np.float64)
    acc = torch.nn.functional.conv2d(torch.from_numpy(xq), torch.from_numpy(w.astype(np.float64)), padding=1)
    scale = float(np.float32(s_x)) * float(s_w[0])
    exact = acc.numpy() * scale + b.astype(np.float64).reshape(1, -1, 1, 1)
    terms = np.abs(acc.numpy() * scale) + np.abs(b).reshape(1, -1, 1, 1)
    assert np.all(np.abs(run(out, x)["Y"] - exact) <= 4 * U * terms + 1e-30)

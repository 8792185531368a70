"""Rewrites of Q/DQ graphs for ONNX Runtime: uint8 activations, integer convs, QLinear ops.

Three rewrites of an exported Q/DQ graph, each exact or within float rounding, that let ONNX Runtime
run it with its fast integer kernels: :func:`to_u8`, :func:`to_ort_integer` and
:func:`to_ort_qlinear` (sections below). The graph is read through
:class:`yolov9_qat.export.qdq_graph.QdqGraph`.

uint8 activations (:func:`to_u8`)
---------------------------------
Rewrite int8 activation Q/DQ to uint8 with zero point + 128: the same numbers, faster on x86 ORT.
TensorRT wants symmetric int8 Q/DQ (zero point 0) everywhere. ONNX Runtime on x86 runs int8
activations x int8 weights (S8S8) through slow kernels, while uint8 activations x int8 weights
(U8S8) use VNNI (the measured figures are in the README, "Export, lint, ONNX Runtime"). The two forms
are the same quantization:

* QuantizeLinear saturates to the target type's range, so with ``q8 = clamp(round(x / s) + z,
  -128, 127)`` the uint8 form gives ``clamp(round(x / s) + z + 128, 0, 255) = q8 + 128``, exactly;
* DequantizeLinear gives ``(q8 + 128 - (z + 128)) * s = (q8 - z) * s``, the same float.

So every activation Q/DQ pair (the Q reads an activation, not a constant) with an int8 zero point
``z`` becomes uint8 with zero point ``z + 128`` (``0 -> 128`` for this package's symmetric graphs),
scale unchanged. Weight Q/DQ (on constants, per channel, axis 0) stay int8 (S8). New zero-point
initializers are created (``<old name>_u8``) rather than editing the old ones, which may be shared
(a Constant used by a weight Q/DQ too); zero-point Constants / initializers left unused are dropped.

A Q is rewritten only with every one of its readers: if its output feeds anything other than a
DequantizeLinear with an int8 zero point (a graph output, a QLinear op), it is left alone, since the
integer tensor's type must not change under another reader.

ONNX Runtime integer convs (:func:`to_ort_integer`)
----------------------------------------------------
Why: ONNX Runtime's CPU QDQ fusion makes ``DQ -> Conv -> Q`` a QLinearConv, but in the TensorRT
placement a Conv is followed by its float activation (the next Q comes after it), so ORT
dequantizes and runs every conv in float: the Q/DQ graph is slower than the FP32 one. Putting a Q
right after each conv would add a rounding step the model was not trained with. Instead each
quantized Conv becomes ``ConvInteger(x_q, W_u8, zp_x, 128)`` (an exact int32 sum) ->
``DequantizeLinear(int32, s_x * s_w[c], axis=1)`` -> ``Add(bias)``: the same function up to float
rounding, with the activation, Q/DQ and everything else unchanged.

* Kernels: ORT's ConvInteger is one GEMM with the weights as MLAS's A side and the im2col'ed input
  as B. int8 weights select a slow generic kernel (5-6x slower than ORT's float conv, measured);
  uint8 weights (``q_w + 128``, zero point 128: the same integers) with int8 activations select
  U8S8 (VNNI), the fastest. So give it the int8 (TensorRT) graph: uint8 activations
  (:func:`to_u8`) run U8U8, about 1.7x slower than U8S8.
* Exactness: the int32 sum is exact (``K * 128 * 255 < 2**31``); the epilogue rounds the int32 to
  float, the multiplier ``s_x * s_w[c]`` (computed in float64) to float32, their product and the
  bias add: within ``4 * 2**-24`` of the exact value, relative, where the Q/DQ graph's float conv
  rounds each of its K products and partial sums. Not on x86 CPUs without VNNI (AVX2 / AVX-512F
  only): there MLAS's U8S8 kernels use VPMADDUBSW, whose int16 pair sums can saturate (as in
  QLinearConv).
* Depthwise convs (FReLU's 3x3, one input channel per group) stay float by default: ConvInteger
  runs one GEMM per group, about 3x slower than ORT's float depthwise conv. Other grouped convs
  (the detect head's) are rewritten.
* Weight ``Q -> DQ`` pairs on float constants are folded to initializers as ORT computes the Q.
* Speed (ORT 1.32, gelan-c 640, batch 1, 2 threads, idle AVX-512 VNNI CPU): 232 ms against FP32
  282 ms and the Q/DQ graph's 383 ms; ORT's own ``quantize_static`` model (QLinearConv, activations
  quantized too) takes 139 ms. ConvInteger's GEMM is about 3x slower than QLinearConv's kernels
  (im2col, weights not prepacked, int32 output) and the float epilogue costs about a quarter.

Graphs of the ``ort`` placement (:func:`to_ort_qlinear`)
--------------------------------------------------------
``quantize --placement ort`` quantizes every op's output as well (conv outputs, SiLU's sigmoid and
product, the residual Add), each tensor once, so ONNX Runtime's own QDQ fusion finds ``DQ -> op -> Q``
everywhere. Two exact rewrites finish the job: :func:`to_u8`, then :func:`sink_dq`, which moves each
DQ below the ops that only move values (Split / Slice of ``chunk``, Concat, MaxPool, nearest Resize)
and drops the ``DQ -> Q`` pairs of one quantization that this leaves, so those ops run on uint8
and nothing is requantized in float. Speed (ORT 1.32, gelan-c 640, 2 threads, VNNI): 0.45x FP32 at
batch 1 and 4, 1.01x ``quantize_static``'s model (``benchmarks/bench_ort.py``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from yolov9_qat.export.qdq_graph import CONST, DQ, Q, QdqGraph, QParams, load_model, weight_shape
from yolov9_qat.utils.files import atomic_write_bytes

log = logging.getLogger("yolov9_qat.export")


def _int8_zero_point(g: QdqGraph, node: onnx.NodeProto) -> np.ndarray | None:
    """The node's int8 zero point (zeros when omitted on an int8 DQ), else ``None``."""
    qp = g.qparams(node)
    if qp is None or qp.dtype != "int8":
        return None
    if len(node.input) > 2 and node.input[2]:
        return g.const(node.input[2])
    return np.zeros((), np.int8)


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 1
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out


def to_u8(model: onnx.ModelProto | str | Path, out_path: str | Path | None = None) -> onnx.ModelProto:
    """The U8S8 form of ``model`` (a ModelProto, left untouched, or an ONNX file).

    Activation Q/DQ: int8 zero point ``z`` -> uint8 zero point ``z + 128``, same scale; weights stay
    int8. Written atomically to ``out_path`` when given. Outputs are bit-identical to the int8
    graph's (see the module docstring).
    """
    if isinstance(model, onnx.ModelProto):
        src = onnx.ModelProto()
        src.CopyFrom(model)
    else:
        src = load_model(model)
    g = QdqGraph(src)
    graph = src.graph
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    taken |= {i.name for i in graph.input}
    new_zp: dict[str, str] = {}  # (old zero-point name or node name) -> new uint8 initializer
    replaced: set[str] = set()
    rewritten_q: list[str] = []
    skipped = 0

    def rewrite(node: onnx.NodeProto, zp: np.ndarray) -> None:
        old = node.input[2] if len(node.input) > 2 else ""
        key = old or f"{node.name or node.output[0]}:zero_point"
        if key not in new_zp:
            value = (np.asarray(zp).astype(np.int16) + 128).astype(np.uint8)
            name = _unique(f"{old or node.output[0] + '_zero_point'}_u8", taken)
            graph.initializer.append(numpy_helper.from_array(value, name))
            new_zp[key] = name
        if old:
            replaced.add(old)
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = new_zp[key]
        for a in node.attribute:  # opset 21: an explicit output type
            if a.name == "output_dtype" and a.i == TensorProto.INT8:
                a.i = TensorProto.UINT8

    for q in [n for n in g.nodes if n.op_type == Q and not g.is_weight(n)]:
        zq = _int8_zero_point(g, q)
        if zq is None:
            continue
        readers = g.consumers.get(q.output[0], [])
        zdq = [
            _int8_zero_point(g, d) if d.op_type == DQ and d.input[0] == q.output[0] else None for d in readers
        ]
        if q.output[0] in g.outputs or any(z is None for z in zdq):
            skipped += 1
            continue
        rewrite(q, zq)
        for d, z in zip(readers, zdq, strict=True):
            rewrite(d, z)  # type: ignore[arg-type]
        rewritten_q.append(q.output[0])

    retyped = set(rewritten_q)
    for vi in list(graph.value_info) + list(graph.output):
        if vi.name in retyped and vi.type.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = TensorProto.UINT8
    _drop_unused(src, replaced)
    if skipped:
        log.warning(
            "%d activation QuantizeLinear nodes left int8 (read by other than DequantizeLinear)", skipped
        )
    log.debug("rewrote %d activation Q/DQ pairs to uint8 (zero point + 128)", len(rewritten_q))
    if out_path is not None:
        atomic_write_bytes(out_path, src.SerializeToString())
    return src


def _drop_unused(model: onnx.ModelProto, names: set[str]) -> None:
    """Remove the initializers / Constant nodes among ``names`` that nothing reads any more."""
    graph = model.graph
    used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    dead = names - used
    keep_init = [t for t in graph.initializer if t.name not in dead]
    if len(keep_init) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep_init)
    keep_nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in dead)]
    if len(keep_nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep_nodes)


def count_qdq(model: onnx.ModelProto | str | Path) -> dict[str, dict[str, int]]:
    """Q/DQ nodes by role and integer type, and their zero points.

    ``{"activation_q": {"int8": n}, "activation_dq": {...}, "weight_q": {...}, "weight_dq": {...},
    "activation_zero_point": {"0": n}, "weight_zero_point": {"0": n}}``: node counts; a zero point
    is the node's (per-channel: its one value, or ``"varied"``), ``"?"`` where not constant.
    """
    m = model if isinstance(model, onnx.ModelProto) else load_model(model)
    g = QdqGraph(m)
    out: dict[str, Counter] = {
        k: Counter()
        for k in (
            "activation_q",
            "activation_dq",
            "weight_q",
            "weight_dq",
            "activation_zero_point",
            "weight_zero_point",
        )
    }
    for n in g.nodes:
        if n.op_type not in (Q, DQ):
            continue
        role = "weight" if g.is_weight(n) else "activation"
        qp = g.qparams(n)
        out[f"{role}_{'q' if n.op_type == Q else 'dq'}"][qp.dtype if qp else "?"] += 1
        if qp is None:
            zp = "?"
        else:
            z = qp.zero_point.ravel()
            zp = str(int(z[0])) if z.size and np.all(z == z[0]) else "varied"
        out[f"{role}_zero_point"][zp] += 1
    return {k: dict(v) for k, v in out.items()}


# -- ONNX Runtime: quantized convs as ConvInteger ------------------------------------------------


@dataclass
class IntegerReport:
    """What :func:`to_ort_integer` did: the convs rewritten, and those left float (name -> why)."""

    rewritten: list[str] = field(default_factory=list)
    left_float: dict[str, str] = field(default_factory=dict)


def fold_weight(g: QdqGraph, dq: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | str:
    """``(int8 weight, float32 scale per output channel)`` of a conv's weight DQ, else why not.

    The DQ reads an int8 constant, or the QuantizeLinear of a float constant, which is evaluated
    here as the operator is defined (and ONNX Runtime computes it): ``w / scale`` in float32,
    rounded half to even, saturated to [-128, 127].
    """
    qp = g.qparams(dq)
    if qp is None or qp.dtype != "int8":
        return f"weight DequantizeLinear is not constant int8 ({qp.dtype if qp else 'non-constant'})"
    if np.any(qp.zero_point != 0):
        return "asymmetric weight (zero point != 0)"
    src = g.producer.get(dq.input[0])
    if src is not None and src.op_type == Q:
        w, qs = g.const(src.input[0]), g.qparams(src)
        if w is None or qs is None or qs.dtype != "int8" or not qs.same(qp) or w.ndim < 3:
            return "weight QuantizeLinear is not a constant int8 one matching its DequantizeLinear"
        scale = np.asarray(g.const(src.input[1]), np.float32)
        if scale.size > 1:
            if (qs.axis if qs.axis is not None else 1) % w.ndim != 0:
                return f"weight quantized on axis {qs.axis}, not 0"
            scale = scale.reshape((-1,) + (1,) * (w.ndim - 1))
        q = np.clip(np.rint(w.astype(np.float32) / scale), -128, 127).astype(np.int8)
    else:
        q = g.const(dq.input[0])
        if q is None or q.dtype != np.int8 or q.ndim < 3:
            return "weight DequantizeLinear does not read an int8 constant"
    s = np.asarray(g.const(dq.input[1]), np.float32).ravel()
    if s.size > 1 and (qp.axis if qp.axis is not None else 1) % q.ndim != 0:
        return f"weight scale on axis {qp.axis}, not 0"
    if s.size not in (1, q.shape[0]):
        return f"{s.size} weight scales for {q.shape[0]} output channels"
    return q, np.broadcast_to(s, (q.shape[0],)).astype(np.float32)


def _conv_inputs(
    g: QdqGraph, n: onnx.NodeProto, depthwise: bool
) -> tuple[onnx.NodeProto, onnx.NodeProto, np.ndarray | None] | str:
    """``(data DQ, weight DQ, bias)`` of a Conv :func:`to_ort_integer` rewrites, else why not."""
    if len(n.input) < 2:
        return "no weight input"
    dq_x = g.producer.get(n.input[0])
    if dq_x is None or dq_x.op_type != DQ or g.is_weight(dq_x):
        return "data input is not a DequantizeLinear output"
    qx = g.qparams(dq_x)
    if qx is None or qx.dtype not in ("uint8", "int8") or not qx.per_tensor:
        return f"data DequantizeLinear is not per-tensor 8-bit ({qx.describe() if qx else 'non-constant'})"
    dq_w = g.producer.get(n.input[1])
    if dq_w is None or dq_w.op_type != DQ or not g.is_weight(dq_w):
        return "weight is not dequantized"
    group = next((int(a.i) for a in n.attribute if a.name == "group"), 1)
    if group > 1 and not depthwise and (weight_shape(g, dq_w) or ())[1:2] == (1,):
        return f"depthwise (group={group}): ConvInteger runs it one channel at a time"
    bias = None
    if len(n.input) > 2 and n.input[2]:
        bias = g.const(n.input[2])
        if bias is None:
            return "bias is not a constant"
    return dq_x, dq_w, bias


def to_ort_integer(
    model: onnx.ModelProto | str | Path,
    out_path: str | Path | None = None,
    depthwise: bool = False,
    report: IntegerReport | None = None,
) -> onnx.ModelProto:
    """``model`` (a Q/DQ graph, left untouched, or its file) with its quantized Convs as ConvInteger.

    A Conv reading ``DQ(x_q, per-tensor s_x, zp)`` whose weight is ``DQ(int8 W, per-channel s_w,
    zero point 0)`` (a Q -> DQ pair on a float constant is folded first, :func:`fold_weight`)
    becomes ``ConvInteger(x_q, W + 128, zp, 128)`` -> ``DequantizeLinear(int32, s_x * s_w[c],
    axis=1)`` [-> ``Add(bias)``]; see the section "ONNX Runtime integer convs" of the module
    docstring. Give it the int8 (TensorRT) form, not :func:`to_u8`'s: uint8 activations work but
    select slower kernels. Depthwise convs (one input channel per group) stay float unless
    ``depthwise``; other grouped convs are rewritten. Nodes that reach no graph output are dropped.
    ``report`` (if given) lists the convs rewritten and why others were not. Written atomically to
    ``out_path`` when given.
    """
    if isinstance(model, onnx.ModelProto):
        src = onnx.ModelProto()
        src.CopyFrom(model)
    else:
        src = load_model(model)
    graph = src.graph
    opset = next((o.version for o in src.opset_import if o.domain in ("", "ai.onnx")), 0)
    g = QdqGraph(src)
    rep = report if report is not None else IntegerReport()
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    taken |= {i.name for i in graph.input} | {n.name for n in graph.node}
    read_before = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    inits: list[onnx.TensorProto] = []
    weights: dict[str, tuple[str, np.ndarray, int]] = {}  # weight DQ output -> (name, scale, rank)
    zero_points: dict[tuple[str, int], str] = {}
    replace: dict[int, list[onnx.NodeProto]] = {}
    uint8_x = 0

    def init(name: str, value: np.ndarray) -> str:
        name = _unique(name, taken)
        inits.append(numpy_helper.from_array(value, name))
        return name

    def zero_point(value: np.ndarray) -> str:
        key = (value.dtype.name, int(value))
        if key not in zero_points:
            zero_points[key] = init(f"ort_integer_zero_point_{key[0]}_{key[1]}", value)
        return zero_points[key]

    for n in g.live_nodes("Conv"):
        name = g.name(n)
        found = _conv_inputs(g, n, depthwise)
        if isinstance(found, str):
            rep.left_float[name] = found
            continue
        dq_x, dq_w, bias = found
        if dq_w.output[0] not in weights:
            fw = fold_weight(g, dq_w)
            if isinstance(fw, str):
                rep.left_float[name] = fw
                continue
            w_u8 = (fw[0].astype(np.int16) + 128).astype(np.uint8)  # ConvInteger's A side: unsigned
            weights[dq_w.output[0]] = (init(f"{n.input[1]}_uint8", w_u8), fw[1], fw[0].ndim)
        w_name, s_w, rank = weights[dq_w.output[0]]
        qx = g.qparams(dq_x)
        assert qx is not None  # checked by _conv_inputs
        uint8_x += qx.dtype == "uint8"
        x_zp = np.asarray(int(qx.zero_point.ravel()[0]), dtype=qx.dtype)
        mult = (float(qx.scale.ravel()[0]) * s_w.astype(np.float64)).astype(np.float32)
        chan_shape = (1, mult.size) + (1,) * (rank - 2)
        out = n.output[0]
        acc = _unique(f"{out}_int32", taken)
        conv = onnx.helper.make_node(
            "ConvInteger",
            [dq_x.input[0], w_name, zero_point(x_zp), zero_point(np.asarray(128, np.uint8))],
            [acc],
            name=_unique(f"{name}_integer", taken),
        )
        conv.attribute.extend(n.attribute)  # auto_pad, dilations, group, kernel_shape, pads, strides
        nodes = [conv]
        scaled = out if bias is None else _unique(f"{out}_unbiased", taken)
        if opset >= 13:  # per-axis DequantizeLinear: one pass instead of Cast + Mul
            scale = init(f"{name}_scale", mult)
            nodes.append(
                onnx.helper.make_node(
                    DQ, [acc, scale], [scaled], name=_unique(f"{name}_scale", taken), axis=1
                )
            )
        else:
            cast = _unique(f"{out}_float", taken)
            nodes.append(
                onnx.helper.make_node(
                    "Cast", [acc], [cast], name=_unique(f"{name}_cast", taken), to=TensorProto.FLOAT
                )
            )
            scale = init(f"{name}_scale", mult.reshape(chan_shape))
            nodes.append(
                onnx.helper.make_node("Mul", [cast, scale], [scaled], name=_unique(f"{name}_scale", taken))
            )
        if bias is not None:
            b = init(f"{name}_bias", np.asarray(bias, np.float32).reshape(chan_shape))
            nodes.append(
                onnx.helper.make_node("Add", [scaled, b], [out], name=_unique(f"{name}_bias", taken))
            )
        replace[id(n)] = nodes
        rep.rewritten.append(name)

    new_nodes = [m for n in graph.node for m in replace.get(id(n), [n])]
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(inits)
    _drop_dead(src, read_before)
    if uint8_x:
        log.warning(
            "%d ConvInteger read uint8 activations: ONNX Runtime runs them U8U8 (slower than int8 "
            "activations, U8S8); rewrite the int8 graph, not to_u8's",
            uint8_x,
        )
    for k, why in rep.left_float.items():
        log.debug("conv left float: %s (%s)", k, why)
    log.debug("rewrote %d convs to ConvInteger, %d left float", len(rep.rewritten), len(rep.left_float))
    if out_path is not None:
        atomic_write_bytes(out_path, src.SerializeToString())
    return src


def _drop_dead(model: onnx.ModelProto, read_before: set[str]) -> None:
    """Remove the nodes that reach no graph output, the initializers that something read before the
    rewrite and nothing reads now, and the value_info of tensors no longer computed."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output if o}
    live: set[int] = set()
    stack = [producer[o.name] for o in graph.output if o.name in producer]
    while stack:
        n = stack.pop()
        if id(n) in live:
            continue
        live.add(id(n))
        stack.extend(producer[t] for t in n.input if t in producer)
    keep = [n for n in graph.node if id(n) in live]
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    keep_init = [t for t in graph.initializer if t.name in read or t.name not in read_before]
    if len(keep_init) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep_init)
    made = {o for n in graph.node for o in n.output}
    keep_vi = [v for v in graph.value_info if v.name in made]
    if len(keep_vi) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(keep_vi)


# --- ONNX Runtime integer ops end to end (graphs of the ``ort`` placement) ------------------------

#: ops that only select or copy values (data input indices): ``DQ -> op`` equals ``op -> DQ`` exactly
_SINK_INPUTS: dict[str, tuple[int, ...] | None] = {
    "Slice": (0,),
    "Split": (0,),
    "MaxPool": (0,),
    "Resize": (0,),
    "Concat": None,  # every input
}


def has_output_qdq(model: onnx.ModelProto) -> bool:
    """Whether convs write quantized outputs (a graph of the ``ort`` placement: some Conv's only
    reader is an activation QuantizeLinear)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    return any(
        [c.op_type for c in consumers.get(n.output[0], [])] == [Q]
        for n in model.graph.node
        if n.op_type == "Conv"
    )


def _same_qparams(a: QParams | None, b: QParams | None) -> bool:
    """Both per tensor, one integer type, equal scale and zero point."""
    return (
        a is not None
        and b is not None
        and a.per_tensor
        and b.per_tensor
        and a.dtype == b.dtype
        and np.array_equal(a.scale, b.scale)
        and np.array_equal(a.zero_point, b.zero_point)
    )


def sink_dq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Move DequantizeLinear below the ops that only move values, and drop ``DQ -> Q`` pairs of one
    quantization: exact rewrites (the same numbers), so that ONNX Runtime keeps integer tensors from
    one integer op to the next.

    * ``DQ(x) -> Slice / Split / MaxPool / Resize(nearest)`` and ``Concat`` of DQs with one scale and
      zero point become the op on the integers, then one DQ per output (selecting, max and nearest
      resizing commute with an increasing affine map);
    * ``DQ(p) -> Q(p)`` (same per-tensor scale, zero point and type) is the identity on the integers:
      the Q's readers read the DQ's input.

    Returns the new model (``model`` is left untouched) and counts ``{"sunk", "folded"}``.
    """
    src = onnx.ModelProto()
    src.CopyFrom(model)
    g = QdqGraph(src)
    graph = src.graph
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    taken |= {i.name for i in graph.input}
    producer = dict(g.producer)
    after: dict[int, list[onnx.NodeProto]] = {}
    copied: dict[int, QParams | None] = {}  # new DQ -> the quantization of the DQ it copies

    def qparams(node: onnx.NodeProto) -> QParams | None:
        return copied[id(node)] if id(node) in copied else g.qparams(node)

    sunk = 0
    for n in g._topo():
        idx = _SINK_INPUTS.get(n.op_type, ())
        if idx == ():
            continue
        if n.op_type == "Resize" and any(
            a.name == "mode" and onnx.helper.get_attribute_value(a) != b"nearest" for a in n.attribute
        ):
            continue
        if n.op_type == "MaxPool" and len([o for o in n.output if o]) != 1:
            continue
        positions = list(range(len(n.input))) if idx is None else list(idx)
        dqs = [producer.get(n.input[i]) for i in positions]
        if not dqs or any(d is None or d.op_type != DQ for d in dqs):
            continue
        qps = [qparams(d) for d in dqs if d is not None]
        if not all(_same_qparams(qps[0], p) for p in qps):
            continue
        ref = dqs[0]
        for i, d in zip(positions, dqs, strict=True):
            n.input[i] = d.input[0]  # type: ignore[union-attr]
        for j, out in enumerate(n.output):
            if not out:
                continue
            ints = _unique(f"{out}_int", taken)
            n.output[j] = ints
            dq = onnx.helper.make_node(
                DQ,
                [ints, *ref.input[1:]],
                [out],
                name=_unique(f"{n.name or out}_dq{j}", taken),  # type: ignore[union-attr]
            )
            for a in ref.attribute:  # type: ignore[union-attr]
                dq.attribute.append(a)
            after.setdefault(id(n), []).append(dq)
            producer[out] = dq
            copied[id(dq)] = qps[0]
        sunk += 1
    nodes: list[onnx.NodeProto] = []
    for n in graph.node:
        nodes.append(n)
        nodes.extend(after.get(id(n), []))

    # DQ(p) -> Q(p): the Q's readers take the DQ's integer input
    rename: dict[str, str] = {}
    dropped: set[int] = set()
    for n in nodes:
        if n.op_type != Q or n.output[0] in g.outputs:
            continue
        d = producer.get(n.input[0])
        if d is None or d.op_type != DQ or g.kind.get(d.input[0]) == CONST:
            continue
        if _same_qparams(qparams(d), g.qparams(n)):
            rename[n.output[0]] = d.input[0]
            dropped.add(id(n))
    for n in nodes:
        for i, t in enumerate(n.input):
            while t in rename:
                t = rename[t]
            n.input[i] = t
    read_before = {t for n in graph.node for t in n.input}
    del graph.node[:]
    graph.node.extend(n for n in nodes if id(n) not in dropped)
    _drop_dead(src, read_before)
    return src, {"sunk": sunk, "folded": len(dropped)}


def to_ort_qlinear(
    model: onnx.ModelProto | str | Path, out_path: str | Path | None = None
) -> onnx.ModelProto:
    """A graph of the ``ort`` placement as ONNX Runtime runs it fastest: uint8 activations
    (:func:`to_u8`) and DQ moved below value-moving ops (:func:`sink_dq`); both exact. ONNX Runtime then
    fuses QLinearConv / QLinearSigmoid / QLinearMul / QLinearAdd / QLinearConcat / QLinearAveragePool
    itself, whose integer requantization rounds as the model's own quantizers do."""
    u8 = to_u8(model)
    out, counts = sink_dq(u8)
    log.debug("sank %d DequantizeLinear nodes, folded %d DQ -> Q pairs", counts["sunk"], counts["folded"])
    if out_path is not None:
        atomic_write_bytes(out_path, out.SerializeToString())
    return out

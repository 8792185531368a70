"""Q/DQ placement lint: does an ONNX graph follow TensorRT's explicit-quantization rules?

TensorRT runs a layer in INT8 only where QuantizeLinear/DequantizeLinear (Q/DQ) nodes say so, and it
runs it *fast* only where the Q/DQ around it agree (see :mod:`yolov9_qat.quant.rules` for how this
package places them). A graph that breaks the rules still builds, but with reformat layers, and INT8
ends up no faster than FP16. This module checks an exported graph, so that a placement bug shows up
as named nodes instead of as a slow engine.

Rules (ids as reported in :attr:`Violation.rule`; each is a check function registered with
:func:`rule`, and :data:`RULES` lists them, id -> description, in report order):

``conv-input``
    every Conv / ConvTranspose (and Gemm / MatMul with a constant weight) reads a DequantizeLinear
    output on its data input (directly, or through pure data-movement ops such as Reshape).
``conv-weight``
    its weight comes through a DequantizeLinear of a constant (a Q->DQ pair on the float weight, or
    a DQ of an int8 constant); per-channel scales must lie on the output-channel axis (axis 0 for
    Conv, 1 for ConvTranspose) and have one value per channel.
``concat-scale``
    every quantized input of a Concat carries one scale and zero point: DQ inputs directly, float
    inputs through the Q nodes that quantize the same tensor elsewhere; and the Q nodes that
    re-quantize the Concat's output use that scale too. A Concat mixing INT8 and float inputs with
    no Q after it is reported too.
``add-scale``
    both inputs of a residual Add (two activations from different sources, not the pointwise
    arithmetic of one activation function such as AconC) come from DQ nodes of one scale.
``pool-scale``
    MaxPool / AveragePool (and their Global forms) read a DQ output. Max-pooling commutes with
    quantization, so where a MaxPool's output is re-quantized, the Q nodes use its input's scale.
    Averaging does not commute with rounding: an AveragePool's output may be re-quantized with a
    scale of its own (TensorRT runs DQ -> AvgPool -> Q as one INT8 pooling with an input and an
    output scale; :data:`yolov9_qat.quant.rules.RULES` gives AConv / ADown's pool output cv1's scale).
``resize-scale``
    Resize reads a DQ output; a nearest Resize (upsample) is re-quantized with its input's scale, a
    linear / cubic one, like AveragePool, may take its own.
``float-island``
    float compute between INT8 layers: a node (not Q/DQ, not data movement, not one of the ops
    above) whose inputs all come from DQ nodes and whose output is re-quantized with a different
    scale; or a Conv left float by ``allow_float`` whose input comes from another Conv without
    Q/DQ on the way while its own output is quantized again downstream (``allow_float`` exempts a
    conv from ``conv-input`` / ``conv-weight``, not from this rule: TensorRT puts reformats around
    it all the same).
``qdq-format``
    every Q/DQ is 8-bit symmetric: int8 with zero point 0, or, for activations only, uint8 with
    zero point 128 (the same grid, shifted; the form :mod:`yolov9_qat.export.ort_rewrite` writes for
    ONNX Runtime); activations per tensor; scales finite and positive; a Q and the DQ reading it use
    one scale and zero point.

Which nodes are checked. The graph's live nodes only (dead nodes, such as the unused Casts ModelOpt's
exporter leaves, are counted in the stats and ignored). Shape arithmetic (anything computed from
Shape / constants only) is ignored. Nodes after the last Q of the graph (the head's decode: box
integral, anchors, sigmoid, NMS) are the float *tail*: the Concat / Add / pool / island rules skip
tail nodes unless they read a DQ output. The conv rules check every conv, tail included, except the
convs matched by ``allow_float``.

``allow_float`` (default :data:`DEFAULT_ALLOW_FLOAT`: ``("dfl",)``): patterns (``fnmatch`` style,
case-insensitive) matched against each part of a Conv's node name and of its weight's name (split
at ``/``, ``.`` and ``:``), each ``/`` component of the node name (``model.5``), each dotted module
prefix of the weight's name (``model.5.cv1``) and the whole names. Matched convs are exempt from
``conv-input`` / ``conv-weight``; the weight name keeps matching when a tool strips node names. The default covers the DFL's fixed 1x1 conv (``/model.22/dfl/conv/Conv``,
weight ``model.22.dfl.conv.weight``), which :data:`yolov9_qat.quant.rules.FLOAT` deliberately leaves
in float: the distribution integral runs after the head's last DQ, like the rest of the box decode.

The graph is read through :class:`yolov9_qat.export.qdq_graph.QdqGraph`: scales and zero points
may be initializers or Constant nodes, and two quantizations are the same when their scales agree
to a relative 1e-6 and their zero points are the same offset from the middle of the integer range
(int8 zp 0 == uint8 zp 128).

A graph with no Q/DQ at all is *not quantized*: :attr:`LintReport.quantized` is ``False``, no rule
runs and :attr:`LintReport.ok` is ``False`` — a float graph is not a pass of an INT8 check.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from yolov9_qat.errors import UserError
from yolov9_qat.export.qdq_graph import (
    CONST,
    DQ,
    TRANSPARENT,
    Q,
    QdqGraph,
    QParams,
    load_model,
    weight_shape,
)

#: rules that do not apply to a graph of another Q/DQ placement (``placement`` in the ONNX metadata,
#: written by ``export``; see :data:`yolov9_qat.quant.rules.PLACEMENTS`), with the reason
PLACEMENT_EXEMPT: dict[str, dict[str, str]] = {
    "ort": {
        "float-island": "the ort placement quantizes each op's output on purpose: ONNX Runtime runs "
        "DQ -> op -> Q as one integer op (QLinearSigmoid, QLinearMul, QLinearAdd ...)",
    },
}

#: the counts in :attr:`LintReport.stats`
STAT_KEYS: tuple[str, ...] = (
    "nodes",
    "dead_nodes",
    "convs",
    "convs_int8",
    "convs_allowed_float",
    "q",
    "dq",
    "qdq_pairs",
    "activation_q",
    "activation_dq",
    "weight_q",
    "weight_dq",
    "tail_nodes",
    "concats_checked",
    "adds_checked",
    "pools_checked",
    "resizes_checked",
)

#: the float convs accepted by default: the DFL's fixed 1x1 conv (see the module docstring)
DEFAULT_ALLOW_FLOAT: tuple[str, ...] = ("dfl",)

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOLS = ("MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool")
RESIZES = ("Resize", "Upsample")
#: elementwise ops: a chain of them over one activation is that activation's epilogue
POINTWISE = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Max",
        "Min",
        "Pow",
        "Neg",
        "Abs",
        "Exp",
        "Log",
        "Sqrt",
        "Reciprocal",
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Softplus",
        "Softsign",
        "Mish",
        "Gelu",
        "Erf",
        "Clip",
        "Identity",
        "Cast",
    }
)


@dataclass(frozen=True)
class Violation:
    """One broken rule: its id (:data:`RULES`), the node(s) involved (the subject first), why."""

    rule: str
    nodes: tuple[str, ...]
    message: str

    @property
    def node(self) -> str:
        """The node the violation is about."""
        return self.nodes[0] if self.nodes else ""

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}"


@dataclass
class LintReport:
    """The outcome of :func:`lint`."""

    violations: list[Violation] = field(default_factory=list)
    #: counts: nodes, convs, convs_int8, convs_allowed_float, q, dq, qdq_pairs, ... (see :func:`lint`)
    stats: dict[str, int] = field(default_factory=dict)
    #: ``False``: the graph has no Q/DQ at all (no rule ran)
    quantized: bool = True
    #: the convs left float by ``allow_float``
    allowed_float: list[str] = field(default_factory=list)
    #: the file or graph name, for :meth:`format`
    source: str = ""
    #: the Q/DQ placement the graph was checked for, and the rules skipped for it (id -> why)
    placement: str = "trt"
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """A quantized graph with no violation."""
        return self.quantized and not self.violations

    @property
    def status(self) -> str:
        """``"ok"``, ``"violations"`` or ``"not quantized"``."""
        if not self.quantized:
            return "not quantized"
        return "violations" if self.violations else "ok"

    def counts(self) -> dict[str, int]:
        """Violations per rule id, in :data:`RULES` order."""
        c = Counter(v.rule for v in self.violations)
        return {r: c[r] for r in REGISTRY if c[r]}

    def by_rule(self, rule: str) -> list[Violation]:
        return [v for v in self.violations if v.rule == rule]

    def format(self) -> str:
        """A human-readable summary, then one line per violation with its node names."""
        s = self.stats
        name = self.source or "graph"
        if not self.quantized:
            return (
                f"{name}: not quantized: no QuantizeLinear/DequantizeLinear nodes; its "
                f"{s.get('convs', 0)} convs run in float (this is not an INT8 graph)"
            )
        allowed = f", {len(self.allowed_float)} float by allow_float" if self.allowed_float else ""
        summary = (
            f"{s.get('convs', 0)} convs ({s.get('convs_int8', 0)} INT8{allowed}), "
            f"{s.get('qdq_pairs', 0)} Q/DQ pairs ({s.get('activation_q', 0)} activation, "
            f"{s.get('weight_q', 0)} weight); checked {s.get('concats_checked', 0)} concats, "
            f"{s.get('adds_checked', 0)} adds, {s.get('pools_checked', 0)} pools, "
            f"{s.get('resizes_checked', 0)} resizes"
        )
        if self.ok:
            lines = [f"{name}: ok: {summary}"]
        else:
            per_rule = ", ".join(f"{r} {n}" for r, n in self.counts().items())
            lines = [f"{name}: {len(self.violations)} violations ({per_rule})", f"  {summary}"]
        if self.allowed_float:
            lines.append(f"  float by allow_float: {', '.join(self.allowed_float)}")
        for rule, why in self.skipped.items():
            lines.append(f"  {rule} not checked ({self.placement} placement): {why}")
        lines.extend(f"  {v}" for v in self.violations)
        return "\n".join(lines)


# -- rules -------------------------------------------------------------------------------------


@dataclass
class _Context:
    g: QdqGraph
    allow: tuple[str, ...]
    stats: Counter = field(default_factory=Counter)
    tail_free: set[int] = field(default_factory=set)  # ids of non-tail nodes

    def checked(self, node: onnx.NodeProto) -> bool:
        """Not in the float tail, or reading a DQ output."""
        if id(node) in self.tail_free:
            return True
        return any(self.g.dq_source(t) is not None for t in node.input if self.g.is_act(t))


#: a rule's check: the violations it finds in the graph of a :class:`_Context`
Check = Callable[[_Context], list[Violation]]


@dataclass(frozen=True)
class LintRule:
    """A registered rule: its id (as in :attr:`Violation.rule`), what it checks, its check."""

    id: str
    description: str
    check: Check


#: rule id -> :class:`LintRule`, in report order (the order the checks are defined below)
REGISTRY: dict[str, LintRule] = {}


def rule(rule_id: str, description: str) -> Callable[[Check], Check]:
    """Register the decorated check as rule ``rule_id`` (``description``: one line for :data:`RULES`)."""

    def register(check: Check) -> Check:
        if rule_id in REGISTRY:
            raise ValueError(f"lint rule {rule_id!r} is registered twice")
        REGISTRY[rule_id] = LintRule(rule_id, description, check)
        return check

    return register


def _float_convs(meta: dict[str, str]) -> tuple[str, ...]:
    """The module paths the exporter says stay float on purpose (``float_convs`` metadata, a JSON list)."""
    import json

    try:
        paths = json.loads(meta.get("float_convs", "[]"))
    except ValueError:
        raise UserError(f"float_convs metadata is not a JSON list: {meta['float_convs'][:60]!r}") from None
    return tuple(str(p) for p in paths)


def _allowed(name: str, weight: str, patterns: Sequence[str]) -> bool:
    """Whether a conv (node ``name``, weight ``weight``) matches one of ``patterns``: a part of either
    name (split at ``/ . :``), a ``/`` component of the node name (``model.1``), a dotted module
    prefix of the weight, or a whole name; ``fnmatch`` globs, case-insensitive."""
    name, weight = name.lower(), weight.lower()
    parts = re.split(r"[/.:]", name) + re.split(r"[/.:]", weight) + name.split("/") + [name, weight]
    prefixes = [".".join(weight.split(".")[:k]) for k in range(1, weight.count(".") + 1)]
    return any(fnmatch.fnmatchcase(p, pat.lower()) for pat in patterns for p in parts + prefixes if p)


def _weighted(g: QdqGraph) -> list[tuple[onnx.NodeProto, str, str]]:
    """``(node, data input, weight input)`` of every live Conv-like node with a constant weight."""
    out = []
    for n in g.live_nodes(*WEIGHTED):
        if len(n.input) < 2:
            continue
        a, b = n.input[0], n.input[1]
        if n.op_type in ("Conv", "ConvTranspose") or g.kind.get(b) == CONST:
            out.append((n, a, b))
        elif n.op_type == "MatMul" and g.kind.get(a) == CONST:
            out.append((n, b, a))
    return out


def _is_allowed_conv(ctx: _Context, node: onnx.NodeProto, weight: str) -> bool:
    return _allowed(ctx.g.name(node), weight, ctx.allow)


@rule("conv-input", "every Conv / ConvTranspose / weighted Gemm-MatMul reads a DequantizeLinear output")
def check_conv_input(ctx: _Context) -> list[Violation]:
    """``conv-input``: every conv-like node reads a DQ output on its data input."""
    g, out = ctx.g, []
    for n, data, weight in _weighted(g):
        if _is_allowed_conv(ctx, n, weight):
            continue
        if g.dq_source(data) is None:
            p = g.producer.get(data)
            src = f"{p.op_type} {g.name(p)}" if p is not None else f"graph input {data!r}"
            out.append(
                Violation(
                    "conv-input",
                    (g.name(n),) + ((g.name(p),) if p is not None else ()),
                    f"{n.op_type} reads a float input (from {src}), not a DequantizeLinear output",
                )
            )
    return out


def _expected_axis(g: QdqGraph, node: onnx.NodeProto) -> int:
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        return 0 if attrs.get("transB", 0) else 1
    if node.op_type == "MatMul":
        return -1
    return 0


@rule("conv-weight", "conv weights come through DequantizeLinear (per-channel on the output axis)")
def check_conv_weight(ctx: _Context) -> list[Violation]:
    """``conv-weight``: weights come through DQ of a constant, per-channel on the output axis."""
    g, out = ctx.g, []
    for n, _data, weight in _weighted(g):
        if _is_allowed_conv(ctx, n, weight):
            continue
        name = g.name(n)
        dq = g.dq_source(weight)
        if dq is None:
            out.append(Violation("conv-weight", (name,), f"{n.op_type} weight {weight!r} is not dequantized"))
            continue
        src = g.producer.get(dq.input[0])
        from_q = src is not None and src.op_type == Q and g.kind.get(src.input[0]) == CONST
        if not from_q and g.kind.get(dq.input[0]) != CONST:
            out.append(
                Violation(
                    "conv-weight", (name, g.name(dq)), f"weight DQ {g.name(dq)} does not read a constant"
                )
            )
            continue
        qp = g.qparams(dq)
        if qp is None or qp.per_tensor:
            continue
        axis = _expected_axis(g, n)
        shape = weight_shape(g, dq)
        rank = len(shape) if shape else None
        got = qp.axis if qp.axis is None or qp.axis >= 0 or rank is None else qp.axis + rank
        want = axis if axis >= 0 or rank is None else axis + rank
        if got != want:
            out.append(
                Violation(
                    "conv-weight",
                    (name, g.name(dq)),
                    f"per-channel weight scale on axis {qp.axis}, not on the output-channel axis {want}",
                )
            )
        elif shape is not None and want is not None and shape[want] != qp.scale.size:
            out.append(
                Violation(
                    "conv-weight",
                    (name, g.name(dq)),
                    f"{qp.scale.size} weight scales for {shape[want]} output channels",
                )
            )
    return out


def _input_quant(ctx: _Context, tensor: str) -> tuple[str, list[tuple[onnx.NodeProto, QParams | None]]]:
    """How an activation input is quantized: ``("dq", [(dq, qp)])``, ``("float", [(q, qp), ...])``
    (the Q nodes quantizing the same tensor elsewhere) or ``("float", [])`` (nowhere)."""
    g = ctx.g
    dq = g.dq_source(tensor)
    if dq is not None:
        return "dq", [(dq, g.qparams(dq))]
    return "float", [(q, g.qparams(q)) for q in g.requant(g.root(tensor))]


def _distinct(items: Iterable[tuple[str, onnx.NodeProto, QParams | None]]) -> list[QParams]:
    uniq: list[QParams] = []
    for _, _, qp in items:
        if qp is not None and not any(qp.same(u) for u in uniq):
            uniq.append(qp)
    return uniq


def _describe(g: QdqGraph, items: Sequence[tuple[str, onnx.NodeProto, QParams | None]]) -> str:
    """``scale A (int8 zp 0): input 0 DQ /a, consumer Q /b; scale B (...): ...``"""
    groups: list[tuple[QParams | None, list[str]]] = []
    for role, n, qp in items:
        label = f"{role} {g.name(n)}"
        for gq, labels in groups:
            if (qp is None and gq is None) or (qp is not None and gq is not None and qp.same(gq)):
                if label not in labels:
                    labels.append(label)
                break
        else:
            groups.append((qp, [label]))
    return "; ".join(f"{qp.describe() if qp else 'non-constant'}: {', '.join(ls)}" for qp, ls in groups)


@rule("concat-scale", "a Concat's inputs and the Q nodes after it share one scale")
def check_concat_scale(ctx: _Context) -> list[Violation]:
    """``concat-scale``: one scale over a Concat's quantized inputs and the Q nodes after it."""
    g, out = ctx.g, []
    for n in g.live_nodes("Concat"):
        if not g.is_act(n.output[0]):
            continue
        items: list[tuple[str, onnx.NodeProto, QParams | None]] = []
        unquantized: list[str] = []
        n_dq = 0
        for k, t in enumerate(n.input):
            if not g.is_act(t):
                continue
            how, qs = _input_quant(ctx, t)
            n_dq += how == "dq"
            if not qs:
                unquantized.append(f"input {k}")
            items.extend((f"input {k} {'DQ' if how == 'dq' else 'via Q'}", q, qp) for q, qp in qs)
        consumers = [("consumer Q", q, g.qparams(q)) for q in g.requant(n.output[0])]
        if not n_dq and not consumers:
            continue  # a float concat (shape arithmetic, head decode) or a float island (other rule)
        ctx.stats["concats_checked"] += 1
        items.extend(consumers)
        uniq = _distinct(items)
        involved = (g.name(n), *dict.fromkeys(g.name(q) for _, q, _ in items))
        if len(uniq) > 1:
            out.append(
                Violation(
                    "concat-scale",
                    involved,
                    f"inputs and consumers use {len(uniq)} different scales: {_describe(g, items)}",
                )
            )
        elif n_dq and unquantized and not consumers:
            out.append(
                Violation(
                    "concat-scale",
                    involved,
                    f"mixes INT8 inputs with float {', '.join(unquantized)} and is not re-quantized",
                )
            )
    return out


def _source(g: QdqGraph, tensor: str, memo: dict[str, str]) -> str:
    """Where an activation's values come from, following one-activation pointwise chains back."""
    if tensor in memo:
        return memo[tensor]
    memo[tensor] = tensor  # cycles guard
    n = g.producer.get(tensor)
    src = tensor
    if n is not None and n.op_type in POINTWISE:
        srcs = {_source(g, t, memo) for t in n.input if g.is_act(t)}
        if len(srcs) == 1:
            src = srcs.pop()
    memo[tensor] = src
    return src


@rule("add-scale", "both inputs of a residual Add are dequantized with one scale")
def check_add_scale(ctx: _Context) -> list[Violation]:
    """``add-scale``: both inputs of a residual Add come from DQ nodes of one scale."""
    g, out, memo = ctx.g, [], {}
    for n in g.live_nodes("Add", "Sum"):
        acts = [t for t in n.input if g.is_act(t)]
        if len(acts) < 2 or len({_source(g, t, memo) for t in acts}) < 2:
            continue  # a bias / constant add, or the arithmetic of one activation (AconC, ...)
        if not ctx.checked(n):
            continue
        ctx.stats["adds_checked"] += 1
        items, floats = [], []
        for k, t in enumerate(acts):
            dq = g.dq_source(t)
            if dq is None:
                p = g.producer.get(g.root(t))
                floats.append(f"input {k} (from {p.op_type} {g.name(p)})" if p is not None else f"input {k}")
            else:
                items.append((f"input {k} DQ", dq, g.qparams(dq)))
        involved = (g.name(n), *(g.name(q) for _, q, _ in items))
        if floats:
            out.append(
                Violation(
                    "add-scale",
                    involved,
                    f"residual Add reads float {', '.join(floats)}: both inputs need Q/DQ of one scale",
                )
            )
        elif len(_distinct(items)) > 1:
            out.append(
                Violation("add-scale", involved, f"inputs use different scales: {_describe(g, items)}")
            )
    return out


def _commutes(node: onnx.NodeProto) -> bool:
    """Max-pooling and nearest resizing commute with quantization (the output keeps the scale)."""
    if node.op_type in ("MaxPool", "GlobalMaxPool"):
        return True
    if node.op_type in RESIZES:
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"nearest")
        return mode == b"nearest"
    return False


def _check_passthrough(ctx: _Context, ops: Sequence[str], rule_id: str, stat: str) -> list[Violation]:
    g, out = ctx.g, []
    for n in g.live_nodes(*ops):
        if not n.input or not g.is_act(n.input[0]) or not ctx.checked(n):
            continue
        ctx.stats[stat] += 1
        dq = g.dq_source(n.input[0])
        if dq is None:
            p = g.producer.get(n.input[0])
            src = f"{p.op_type} {g.name(p)}" if p is not None else "a graph input"
            out.append(
                Violation(rule_id, (g.name(n),), f"{n.op_type} reads a float input (from {src}), not a DQ")
            )
            continue
        if not _commutes(n):
            continue
        qp = g.qparams(dq)
        items = [("input DQ", dq, qp)] + [("consumer Q", q, g.qparams(q)) for q in g.requant(n.output[0])]
        if len(_distinct(items)) > 1:
            out.append(
                Violation(
                    rule_id,
                    (g.name(n), *(g.name(q) for _, q, _ in items)),
                    f"re-quantized with a different scale: {_describe(g, items)}",
                )
            )
    return out


@rule("pool-scale", "pools read a DQ output; MaxPool is re-quantized with its input's scale")
def check_pool_scale(ctx: _Context) -> list[Violation]:
    """``pool-scale``: pools read a DQ; MaxPool is re-quantized with its input's scale."""
    return _check_passthrough(ctx, POOLS, "pool-scale", "pools_checked")


@rule("resize-scale", "Resize reads a DQ output; nearest Resize is re-quantized with its input's scale")
def check_resize_scale(ctx: _Context) -> list[Violation]:
    """``resize-scale``: Resize reads a DQ; nearest Resize is re-quantized with its input's scale."""
    return _check_passthrough(ctx, RESIZES, "resize-scale", "resizes_checked")


_OWN_RULE = frozenset({Q, DQ, "Concat", "Add", "Sum", *WEIGHTED, *POOLS, *RESIZES, *TRANSPARENT})


def _upstream_conv(g: QdqGraph, tensor: str) -> list[onnx.NodeProto]:
    """The nearest conv-like nodes behind ``tensor`` with no DQ on the way (a float path)."""
    found, stack, seen = [], [tensor], {tensor}
    while stack:
        t = stack.pop()
        p = g.producer.get(t)
        if p is None or p.op_type in (Q, DQ):
            continue
        if p.op_type in WEIGHTED:
            found.append(p)
            continue
        for i in p.input:
            if g.is_act(i) and i not in seen:
                seen.add(i)
                stack.append(i)
    return found


@rule("float-island", "no float compute between INT8 layers")
def check_float_island(ctx: _Context) -> list[Violation]:
    """``float-island``: float compute between INT8 layers."""
    g, out = ctx.g, []
    for n in g.live_nodes():
        if n.op_type in _OWN_RULE or not ctx.checked(n) or not any(g.is_act(o) for o in n.output):
            continue
        acts = [t for t in n.input if g.is_act(t)]
        dqs = [g.dq_source(t) for t in acts]
        if not acts or any(d is None for d in dqs):
            continue
        qs = [q for o in n.output if o for q in g.requant(o)]
        items = [("input DQ", d, g.qparams(d)) for d in dqs if d is not None]
        items += [("consumer Q", q, g.qparams(q)) for q in qs]
        if qs and len(_distinct(items)) > 1:
            out.append(
                Violation(
                    "float-island",
                    (g.name(n), *(g.name(q) for _, q, _ in items)),
                    f"{n.op_type} runs in float between INT8 layers and is re-quantized with another "
                    f"scale: {_describe(g, items)}",
                )
            )
    for n, data, weight in _weighted(g):
        if not _is_allowed_conv(ctx, n, weight) or id(n) not in ctx.tail_free:
            continue
        if g.dq_source(data) is not None:
            continue
        ups = _upstream_conv(g, data)
        if ups:
            out.append(
                Violation(
                    "float-island",
                    (g.name(n), *(g.name(u) for u in ups)),
                    f"float {n.op_type} (allow_float) between INT8 layers: it reads "
                    f"{', '.join(g.name(u) for u in ups)} without Q/DQ and its output is quantized again",
                )
            )
    return out


@rule("qdq-format", "8-bit symmetric Q/DQ (int8 zp 0, or uint8 zp 128 for activations), matching pairs")
def check_qdq_format(ctx: _Context) -> list[Violation]:
    """``qdq-format``: 8-bit symmetric Q/DQ, per-tensor activations, matching Q->DQ pairs."""
    g, out = ctx.g, []
    for n in g.live_nodes(Q, DQ):
        weight = g.is_weight(n)
        qp = g.qparams(n)
        name = g.name(n)
        if qp is None:
            out.append(Violation("qdq-format", (name,), "scale or zero point is not a constant"))
            continue
        problems = []
        if not (np.all(np.isfinite(qp.scale)) and np.all(qp.scale > 0)):
            problems.append("non-positive or non-finite scale")
        ok_types = ("int8",) if weight else ("int8", "uint8")
        if qp.dtype not in ok_types:
            problems.append(f"{qp.dtype} (want {' or '.join(ok_types)})")
        elif np.any(qp.offset != 0):
            want = "0" if qp.dtype == "int8" else "128"
            problems.append(
                f"asymmetric: {qp.dtype} zero point {qp.zero_point.ravel()[:4].tolist()} (want {want})"
            )
        if not weight and not qp.per_tensor:
            problems.append(f"activation quantized per channel ({qp.scale.size} scales)")
        if problems:
            out.append(Violation("qdq-format", (name,), "; ".join(problems)))
        if n.op_type == Q:
            for d in g.live_consumers(n.output[0]):
                if d.op_type != DQ:
                    continue
                dp = g.qparams(d)
                if dp is not None and not (qp.same(dp) and qp.dtype == dp.dtype):
                    out.append(
                        Violation(
                            "qdq-format",
                            (name, g.name(d)),
                            f"Q and its DQ disagree: {qp.describe()} vs {dp.describe()}",
                        )
                    )
    return out


#: rule id -> what it checks (details in the module docstring), in report order
RULES: dict[str, str] = {r.id: r.description for r in REGISTRY.values()}


def lint(
    model: onnx.ModelProto | str | Path,
    allow_float: Sequence[str] = DEFAULT_ALLOW_FLOAT,
    rules: Iterable[str] | None = None,
    placement: str | None = None,
) -> LintReport:
    """Check ``model`` (a ModelProto or an ONNX file) against the Q/DQ rules (:data:`RULES`).

    ``allow_float``: name patterns of the convs that may stay float (default: the DFL's conv); the
    module paths in the graph's ``float_convs`` metadata (``quantize --head-float``) are added.
    ``rules``: a subset of rule ids to run (default: all but those :data:`PLACEMENT_EXEMPT` lists
    for ``placement``, which defaults to the graph's ``placement`` metadata, else ``trt``). ``stats`` holds every count of
    :data:`STAT_KEYS` (live / dead nodes, convs and INT8 convs, Q, DQ, Q->DQ pairs by role, the
    float ``tail_nodes`` after the last activation Q, and how many concats / adds / pools / resizes
    the scale rules checked).
    """
    source = ""
    if not isinstance(model, onnx.ModelProto):
        source = str(model)
        model = load_model(model)
    source = source or model.graph.name
    g = QdqGraph(model)
    meta = {p.key: p.value for p in model.metadata_props}
    if placement is None:
        placement = meta.get("placement", "trt")
    allow_float = tuple(allow_float) + _float_convs(meta)
    skipped = dict(PLACEMENT_EXEMPT.get(placement, {})) if rules is None else {}
    selected = [r for r in REGISTRY if r not in skipped] if rules is None else list(rules)
    unknown = [r for r in selected if r not in REGISTRY]
    if unknown:
        raise UserError(f"unknown lint rule(s) {', '.join(unknown)}; rules: {', '.join(REGISTRY)}")
    live = g.live_nodes()
    stats: Counter = Counter(dict.fromkeys(STAT_KEYS, 0))
    stats.update(nodes=len(live), dead_nodes=len(g.nodes) - len(live))
    allowed: list[str] = []
    for n, data, weight in _weighted(g):
        stats["convs"] += 1
        if g.dq_source(data) is not None and g.dq_source(weight) is not None:
            stats["convs_int8"] += 1
        elif _allowed(g.name(n), weight, allow_float):
            allowed.append(g.name(n))
    stats["convs_allowed_float"] = len(allowed)
    for n in live:
        if n.op_type in (Q, DQ):
            kind = "weight" if g.is_weight(n) else "activation"
            stats["q" if n.op_type == Q else "dq"] += 1
            stats[f"{kind}_{'q' if n.op_type == Q else 'dq'}"] += 1
            if n.op_type == Q:
                stats["qdq_pairs"] += sum(d.op_type == DQ for d in g.live_consumers(n.output[0]))
    if not stats["q"] and not stats["dq"]:
        return LintReport([], dict(stats), quantized=False, source=source)
    tail_free = g.head_of_q()
    stats["tail_nodes"] = sum(
        1 for n in live if n.output and g.is_act(n.output[0]) and id(n) not in tail_free
    )
    ctx = _Context(g, tuple(allow_float), stats, tail_free)
    violations: list[Violation] = []
    for rule_id, registered in REGISTRY.items():
        if rule_id in selected:
            violations.extend(registered.check(ctx))
    return LintReport(
        violations,
        dict(stats),
        quantized=True,
        allowed_float=allowed,
        source=source,
        placement=placement,
        skipped=skipped,
    )


def lint_file(path: str | Path, allow_float: Sequence[str] = DEFAULT_ALLOW_FLOAT) -> tuple[int, str]:
    """``(exit code, text)`` for a command line: 0 ok, 1 violations or not quantized, 2 a missing or
    malformed file (one line)."""
    try:
        report = lint(path, allow_float=allow_float)
    except UserError as e:
        return UserError.exit_code, str(e)
    return (0 if report.ok else 1), report.format()

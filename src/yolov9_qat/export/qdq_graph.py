"""An ONNX graph indexed for Q/DQ analysis, and the ONNX loader the export tools share.

:class:`QdqGraph` reads a model's top-level graph once and answers the questions the Q/DQ linter
(:mod:`yolov9_qat.export.lint`) and the ONNX Runtime rewrites (:mod:`yolov9_qat.export.ort_rewrite`)
ask of it:

* structure: each tensor's producer and consumers, the live nodes (those that reach a graph output;
  the rest are dead, such as the unused Casts ModelOpt's exporter leaves), node names (``"<op>_<index>"``
  for unnamed nodes);
* tensor kinds: ``"const"`` (initializers, Constant outputs and what is computed from them only:
  weights, weight Q/DQ outputs), ``"shape"`` (computed from an activation's shape: Shape / Size and
  what follows) or ``"act"`` (depends on the values of a graph input);
* constants: the value of an initializer or Constant output (through Identity), and the
  quantization (:class:`QParams`) of each QuantizeLinear / DequantizeLinear (Q/DQ) node whose scale
  and zero point are constants (initializers or Constant nodes);
* walks through pure data movement (:data:`TRANSPARENT`: Reshape, Transpose, Slice, ...): the DQ a
  tensor comes from, the activation Q nodes that re-quantize it, and the nodes from which an
  activation Q can be reached (everything after the last one is the graph's float tail).

Two quantizations are the same (:meth:`QParams.same`) when their scales agree to a relative 1e-6
and their zero points are the same offset from the middle of the integer range (int8 zp 0 == uint8
zp 128).

:func:`load_model` reads an ONNX file, turning a missing or malformed file into one
:class:`~yolov9_qat.errors.UserError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from yolov9_qat.errors import UserError

Q, DQ = "QuantizeLinear", "DequantizeLinear"

#: data movement that commutes with per-tensor quantization (input 0 is the data)
TRANSPARENT = frozenset(
    {
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Transpose",
        "Slice",
        "Split",
        "Gather",
        "Identity",
        "Expand",
        "Tile",
        "DepthToSpace",
        "SpaceToDepth",
        "Cast",
    }
)
_NO_VALUE = frozenset({"Shape", "Size"})  # outputs that depend on an activation's shape, not its values
#: the zero point of each integer type's symmetric grid
_MIDDLE = {"int8": 0, "uint8": 128, "int16": 0, "uint16": 32768, "int4": 0, "uint4": 8}
_RTOL = 1e-6

CONST, SHAPE, ACT = "const", "shape", "act"


@dataclass(frozen=True)
class QParams:
    """The quantization a Q or DQ node applies."""

    scale: np.ndarray
    zero_point: np.ndarray  # as int64
    dtype: str  # numpy name of the integer type: "int8", "uint8", ... ("?" when unknown)
    axis: int | None  # None: per tensor

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1

    @property
    def offset(self) -> np.ndarray:
        """Zero point relative to the middle of the integer range (0 for a symmetric grid)."""
        return self.zero_point - _MIDDLE.get(self.dtype, 0)

    @property
    def bits(self) -> int:
        return {"int4": 4, "uint4": 4, "int16": 16, "uint16": 16}.get(self.dtype, 8)

    def same(self, other: QParams) -> bool:
        """The same quantization grid (int8 zp 0 and uint8 zp 128 are the same)."""
        if self.bits != other.bits or self.scale.size != other.scale.size:
            return False
        if self.offset.size != other.offset.size and min(self.offset.size, other.offset.size) != 1:
            return False
        return bool(
            np.allclose(self.scale.ravel(), other.scale.ravel(), rtol=_RTOL, atol=0)
            and np.array_equal(
                np.broadcast_to(self.offset.ravel(), self.scale.ravel().shape),
                np.broadcast_to(other.offset.ravel(), self.scale.ravel().shape),
            )
        )

    def describe(self) -> str:
        sc = f"{float(self.scale.ravel()[0]):.6g}" if self.per_tensor else f"[{self.scale.size} per channel]"
        zp = self.zero_point.ravel()
        z = str(int(zp[0])) if zp.size and np.all(zp == zp[0]) else "varied"
        return f"scale {sc} ({self.dtype} zp {z})"


class QdqGraph:
    """An ONNX graph indexed for Q/DQ analysis: producers, consumers, constants, tensor kinds.

    Every tensor has a kind: ``"const"`` (initializers, Constant outputs and what is computed from
    them only: weights, weight Q/DQ outputs), ``"shape"`` (computed from an activation's shape) or
    ``"act"`` (depends on the values of a graph input). ``live`` are the nodes that reach a graph
    output. Only the top-level graph is read (no If / Loop bodies).
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        g = model.graph
        self.nodes: list[onnx.NodeProto] = list(g.node)
        self.init: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self._names: dict[int, str] = {}
        for i, n in enumerate(self.nodes):
            self._names[id(n)] = n.name or f"{n.op_type}_{i}"
            for o in n.output:
                if o:
                    self.producer[o] = n
            for t in n.input:
                if t:
                    self.consumers.setdefault(t, []).append(n)
        self.outputs = {o.name for o in g.output}
        self.kind: dict[str, str] = {}
        for t in self.init:
            self.kind[t] = CONST
        for i in g.input:
            if i.name not in self.init:
                self.kind[i.name] = ACT
        for n in self._topo():
            kinds = {self.kind.get(t, CONST) for t in n.input if t}
            if ACT in kinds:
                k = SHAPE if n.op_type in _NO_VALUE else ACT
            elif SHAPE in kinds:
                k = SHAPE
            else:
                k = CONST
            for o in n.output:
                if o:
                    self.kind[o] = k
        self.live = self._live()
        self._const_cache: dict[str, np.ndarray | None] = {}
        self._qp: dict[int, tuple[onnx.NodeProto, QParams | None]] = {}

    # -- structure ---------------------------------------------------------------------------
    def _topo(self) -> list[onnx.NodeProto]:
        known = set(self.init) | {i.name for i in self.model.graph.input} | {""}
        pending = list(self.nodes)
        order: list[onnx.NodeProto] = []
        while pending:
            rest = []
            for n in pending:
                if all(t in known for t in n.input):
                    order.append(n)
                    known.update(n.output)
                else:
                    rest.append(n)
            if len(rest) == len(pending):  # unresolved inputs (not topologically sortable): keep order
                order.extend(rest)
                break
            pending = rest
        return order

    def _live(self) -> set[int]:
        live: set[int] = set()
        stack = [self.producer[o] for o in self.outputs if o in self.producer]
        while stack:
            n = stack.pop()
            if id(n) in live:
                continue
            live.add(id(n))
            stack.extend(self.producer[t] for t in n.input if t in self.producer)
        return live

    def name(self, node: onnx.NodeProto) -> str:
        """The node's name (``"<op>_<index>"`` when it has none)."""
        return self._names[id(node)]

    def live_nodes(self, *ops: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if id(n) in self.live and (not ops or n.op_type in ops)]

    def is_act(self, tensor: str) -> bool:
        return self.kind.get(tensor) == ACT

    def live_consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.consumers.get(tensor, []) if id(n) in self.live]

    # -- constants and Q/DQ parameters --------------------------------------------------------
    def const(self, tensor: str) -> np.ndarray | None:
        """The value of an initializer or Constant output (through Identity), else ``None``."""
        if tensor in self._const_cache:
            return self._const_cache[tensor]
        value: np.ndarray | None = None
        if tensor in self.init:
            value = numpy_helper.to_array(self.init[tensor])
        elif tensor in self.producer:
            n = self.producer[tensor]
            if n.op_type == "Constant":
                value = _constant_value(n)
            elif n.op_type == "Identity":
                value = self.const(n.input[0])
        self._const_cache[tensor] = value
        return value

    def qparams(self, node: onnx.NodeProto) -> QParams | None:
        """Scale, zero point, integer type and axis of a Q or DQ node (``None``: not constant)."""
        hit = self._qp.get(id(node))
        if hit is None or hit[0] is not node:  # keyed by id: check it is the same object
            hit = self._qp[id(node)] = (node, self._read_qparams(node))
        return hit[1]

    def _read_qparams(self, node: onnx.NodeProto) -> QParams | None:
        scale = self.const(node.input[1]) if len(node.input) > 1 else None
        if scale is None:
            return None
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp = self.const(zp_name) if zp_name else None
        if zp_name and zp is None:
            return None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if zp is not None:
            dtype = zp.dtype.name
        elif attrs.get("output_dtype"):
            dtype = onnx.helper.tensor_dtype_to_np_dtype(attrs["output_dtype"]).name
        elif node.op_type == Q:
            dtype = "uint8"  # ONNX default
        else:
            dtype = self._dq_input_dtype(node)
        zp_arr = np.zeros(1, np.int64) if zp is None else np.asarray(zp).astype(np.int64)
        scale = np.asarray(scale, dtype=np.float64)
        axis = int(attrs.get("axis", 1)) if scale.size > 1 else None
        return QParams(scale, zp_arr, dtype, axis)

    def _dq_input_dtype(self, node: onnx.NodeProto) -> str:
        src = self.producer.get(node.input[0])
        if src is not None and src.op_type == Q:
            qp = self.qparams(src)
            return qp.dtype if qp else "?"
        value = self.const(node.input[0])
        return value.dtype.name if value is not None else "?"

    def is_weight(self, node: onnx.NodeProto) -> bool:
        """A Q / DQ on a constant (a weight) rather than on an activation."""
        return self.kind.get(node.input[0], CONST) == CONST

    # -- walks ---------------------------------------------------------------------------------
    def dq_source(self, tensor: str) -> onnx.NodeProto | None:
        """The DQ node ``tensor`` comes from, directly or through data-movement ops, else ``None``."""
        seen = 0
        while tensor in self.producer and seen < 64:
            n = self.producer[tensor]
            if n.op_type == DQ:
                return n
            if n.op_type not in TRANSPARENT or not n.input:
                return None
            tensor = n.input[0]
            seen += 1
        return None

    def root(self, tensor: str) -> str:
        """``tensor`` followed back through data-movement ops to where its values were computed."""
        seen = 0
        while tensor in self.producer and seen < 64:
            n = self.producer[tensor]
            if n.op_type not in TRANSPARENT or not n.input or not self.is_act(n.input[0]):
                break
            tensor = n.input[0]
            seen += 1
        return tensor

    def requant(self, tensor: str) -> list[onnx.NodeProto]:
        """The activation Q nodes that quantize ``tensor``, directly or through data-movement ops."""
        found: list[onnx.NodeProto] = []
        stack, seen = [tensor], {tensor}
        while stack:
            t = stack.pop()
            for n in self.live_consumers(t):
                if n.op_type == Q and n.input[0] == t:
                    found.append(n)
                elif n.op_type in TRANSPARENT and n.input[0] == t:
                    for o in n.output:
                        if o and o not in seen:
                            seen.add(o)
                            stack.append(o)
        return found

    def head_of_q(self) -> set[int]:
        """The live activation nodes from which an activation Q can be reached (the rest: the tail)."""
        out: set[int] = set()
        stack = [n for n in self.live_nodes(Q) if not self.is_weight(n)]
        while stack:
            n = stack.pop()
            if id(n) in out:
                continue
            out.add(id(n))
            for t in n.input:
                p = self.producer.get(t)
                if p is not None and self.is_act(t):
                    stack.append(p)
        return out


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(a))
    return None


def weight_shape(g: QdqGraph, dq: onnx.NodeProto) -> tuple[int, ...] | None:
    """The shape of the constant a weight DQ dequantizes (through a Q of a float constant), else ``None``."""
    src = g.producer.get(dq.input[0])
    t = src.input[0] if src is not None and src.op_type == Q else dq.input[0]
    value = g.const(t)
    return None if value is None else tuple(value.shape)


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file; a missing or malformed file is a :class:`UserError`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such ONNX file")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf decode errors and the like
        raise UserError(f"{p}: not a readable ONNX model ({type(e).__name__})") from None
    if not model.graph.node or not model.graph.output:
        raise UserError(f"{p}: not an ONNX model (no graph nodes or outputs)")
    return model

"""What an exported graph takes and gives, as plain data: ``describe(onnx)`` and ``<stem>.io.json``.

The description is what a serving configuration (Triton, DeepStream) or a hand-written client needs and
cannot guess: tensor names, shapes (symbolic dimensions by name, e.g. ``"batch"``), numpy dtypes, the
output layout, the pre-processing the model was trained with, the class names and the NMS settings of an
end-to-end graph. The graph is the source of truth for names, shapes and dtypes (users may rename
tensors at export); the ONNX ``metadata_props`` written by :mod:`yolov9_qat.export.onnx` add what the
graph cannot say (class names, stride, NMS thresholds).

Layouts (:data:`LAYOUTS`):

* ``plain``: one output (B, 4 + nc, anchors): ``cx, cy, w, h`` in input pixels, then one sigmoid score
  per class; NMS is the consumer's.
* ``end2end``: four outputs ``num_dets`` (B, 1) int32, ``det_boxes`` (B, K, 4) ``x1 y1 x2 y2``,
  ``det_scores`` (B, K), ``det_classes`` (B, K) int32; NMS is in the graph (TensorRT's
  ``EfficientNMS_TRT`` plugin, ``nms_op`` ``trt``, or ONNX ``NonMaxSuppression``, ``onnx``).
* ``deepstream``: one output (B, anchors, 6): ``x1, y1, x2, y2, score, class`` (DeepStream-Yolo's).

Newer exports name their layout in the metadata (``layout``); for older files it is inferred from the
outputs. Only the standard library is imported at module level (``onnx`` inside the functions).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from yolov9_qat.errors import UserError
from yolov9_qat.export.layouts import LAYOUTS, layout_of, read_metadata

SCHEMA = 1
IO_JSON_SUFFIX = ".io.json"

# what the model was trained on (yolov9_qat.data: letterbox with pad 114, split evenly; RGB; /255)
PREPROCESS: dict[str, Any] = {
    "pixel_format": "RGB",
    "tensor_layout": "NCHW",
    "scale": 1.0 / 255.0,
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
    "letterbox": {"keep_aspect_ratio": True, "pad_value": 114, "centered": True},
}

# per layout: the role of each output, in order, and what it holds
_ROLES: dict[str, tuple[tuple[str, str], ...]] = {
    "plain": (("predictions", "cx, cy, w, h (input pixels), then one sigmoid score per class"),),
    "end2end": (
        ("num_dets", "detections kept per image; rows past it are zero padding"),
        ("boxes", "x1, y1, x2, y2 (input pixels)"),
        ("scores", "class score of each detection"),
        ("classes", "class index of each detection"),
    ),
    "deepstream": (("detections", "per anchor: x1, y1, x2, y2 (input pixels), best class score, its index"),),
}
_BOX_FORMAT = {"plain": "cxcywh", "end2end": "xyxy", "deepstream": "xyxy"}


def io_json_path(model_path: str | Path) -> Path:
    """``best.onnx`` -> ``best.io.json`` (also for an engine built from it: ``best.engine``)."""
    p = Path(model_path)
    return p.with_name(p.stem + IO_JSON_SUFFIX)


def _load(onnx_path: Path) -> Any:
    import onnx

    if not onnx_path.is_file():
        raise UserError(f"{onnx_path}: no such file")
    try:
        return onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, truncated file, ... : one line, no traceback
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{onnx_path}: not an ONNX model ({why})") from None


def _tensor(value_info: Any) -> dict[str, Any]:
    from onnx import helper

    t = value_info.type.tensor_type
    shape: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        else:
            shape.append(d.dim_param or None)  # None: unnamed symbolic dimension
    try:
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name
    except Exception:
        raise UserError(f"tensor {value_info.name!r}: unsupported element type {t.elem_type}") from None
    return {"name": value_info.name, "shape": shape, "dtype": dtype}


def _nms_op(proto: Any) -> str | None:
    ops = {n.op_type for n in proto.graph.node}
    if "EfficientNMS_TRT" in ops:
        return "trt"
    if "NonMaxSuppression" in ops:
        return "onnx"
    return None


def infer_layout(outputs: list[dict[str, Any]], meta: dict[str, Any], path: Path | str = "") -> str:
    """The layout (:func:`yolov9_qat.export.layouts.layout_of`); a graph that does not tell is an error."""
    layout = layout_of([o["name"] for o in outputs], meta, [o["shape"] for o in outputs])
    if layout is not None:
        return layout
    names = tuple(o["name"] for o in outputs)
    raise UserError(
        f"{path}: cannot tell the output layout of outputs {', '.join(names) or '(none)'} "
        "(no 'layout' metadata; expected output0, the four end-to-end outputs or output)"
    )


def _nms_settings(proto: Any, meta: dict[str, Any], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The end-to-end graph's NMS settings: the metadata's, else the plugin node's attributes."""
    nms = meta.get("nms")
    if isinstance(nms, dict) and nms:
        return {k: nms.get(k) for k in ("iou_thres", "conf_thres", "max_det")}
    out: dict[str, Any] = {"iou_thres": None, "conf_thres": None, "max_det": None}
    from onnx import helper

    for node in proto.graph.node:
        if node.op_type == "EfficientNMS_TRT":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            out.update(
                iou_thres=attrs.get("iou_threshold"),
                conf_thres=attrs.get("score_threshold"),
                max_det=attrs.get("max_output_boxes"),
            )
    k = (outputs[1]["shape"] + [None, None])[1]  # det_boxes (B, K, 4): K detection slots
    if out["max_det"] is None and isinstance(k, int):
        out["max_det"] = k
    return out


def _check_outputs(layout: str, outputs: list[dict[str, Any]], path: Path) -> None:
    want = len(_ROLES[layout])
    if len(outputs) != want:
        raise UserError(f"{path}: the {layout} layout has {want} output(s), the graph has {len(outputs)}")
    ranks = {"plain": (3,), "end2end": (2, 3, 2, 2), "deepstream": (3,)}[layout]
    for o, rank in zip(outputs, ranks, strict=True):
        if o["shape"] and len(o["shape"]) != rank:  # an undeclared shape ([]) is left to the runtime
            raise UserError(
                f"{path}: output {o['name']!r} has shape {o['shape']}, the {layout} layout needs rank {rank}"
            )
    last = (outputs[0]["shape"] or [None])[-1]
    if layout == "deepstream" and isinstance(last, int) and last != 6:
        raise UserError(
            f"{path}: output {outputs[0]['name']!r} is not (batch, anchors, 6): {outputs[0]['shape']}"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def describe(onnx_path: str | Path) -> dict[str, Any]:
    """Everything a consumer needs to feed ``onnx_path`` and read its outputs, as JSON-ready data.

    Keys: ``schema``, ``model`` (file name), ``onnx_sha256``, ``producer``, ``layout``, ``nms_op``
    (``"trt"``, ``"onnx"`` or ``None``), ``inputs`` / ``outputs`` (``name``, ``shape``, ``dtype`` and, for
    outputs, ``role`` and ``content``), ``box_format``, ``batch`` (an int, or ``"dynamic"``),
    ``dynamic_batch``, ``imgsz`` ([h, w]), ``anchors`` (candidate boxes per image, derived from ``imgsz``
    and ``stride``: the graph may leave that dimension symbolic), ``preprocess`` (pixel format, tensor layout, scale, mean,
    std, letterbox), ``stride``, ``names``, ``nc``, ``precision`` (``"int8"`` for a Q/DQ graph) and
    ``nms`` (``iou_thres``, ``conf_thres``, ``max_det`` of an end-to-end graph, else ``None``).

    Raises :class:`UserError` (one line) for a file that is not an ONNX detector export.
    """
    path = Path(onnx_path)
    proto = _load(path)
    meta = read_metadata(proto)
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [_tensor(v) for v in proto.graph.input if v.name not in initializers]
    outputs = [_tensor(v) for v in proto.graph.output]
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
        shapes = ", ".join(f"{t['name']} {t['shape']}" for t in inputs) or "none"
        raise UserError(f"{path}: expected one image input (batch, 3, height, width), got {shapes}")
    layout = infer_layout(outputs, meta, path)
    _check_outputs(layout, outputs, path)
    for o, (role, content) in zip(outputs, _ROLES[layout], strict=True):
        o.update(role=role, content=content)

    image = inputs[0]
    batch_dim = image["shape"][0]
    dynamic = not isinstance(batch_dim, int)
    hw = image["shape"][2:]
    if all(isinstance(d, int) for d in hw):
        imgsz = [int(d) for d in hw]
    else:
        imgsz = [int(d) for d in meta["imgsz"]] if isinstance(meta.get("imgsz"), list) else None

    names = meta.get("names")
    names = [str(n) for n in names] if isinstance(names, list) else None
    nc = int(meta["nc"]) if str(meta.get("nc", "")).isdigit() else None
    if nc is None and names is not None:
        nc = len(names)
    head = outputs[0]["shape"]
    if nc is None and layout == "plain" and len(head) == 3 and isinstance(head[1], int):
        nc = int(head[1]) - 4
    if names is None and nc is not None:
        names = [str(i) for i in range(nc)]
    if names is not None and nc is not None and len(names) != nc:
        raise UserError(f"{path}: metadata names {len(names)} classes, nc says {nc}")

    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
    precision = "int8" if qdq else str(meta.get("precision") or "fp32")
    if precision == "int8" and not qdq:  # metadata says int8 but the graph has no scales to run it
        precision = "fp32"
    stride = [int(s) for s in meta["stride"]] if isinstance(meta.get("stride"), list) else None
    anchors = sum((imgsz[0] // s) * (imgsz[1] // s) for s in stride) if imgsz and stride else None
    return {
        "schema": SCHEMA,
        "model": path.name,
        "onnx_sha256": _sha256(path),
        "producer": meta.get("producer") or proto.producer_name or None,
        "layout": layout,
        "nms_op": _nms_op(proto) if layout == "end2end" else None,
        "inputs": inputs,
        "outputs": outputs,
        "box_format": _BOX_FORMAT[layout],
        "box_units": "input pixels",
        "batch": int(batch_dim) if not dynamic else "dynamic",
        "dynamic_batch": dynamic,
        "imgsz": imgsz,
        "preprocess": json.loads(json.dumps(PREPROCESS)),  # a copy the caller may change
        "stride": stride,
        "anchors": anchors,
        "names": names,
        "nc": nc,
        "precision": precision,
        "nms": _nms_settings(proto, meta, outputs) if layout == "end2end" else None,
    }


def write_io_json(onnx_path: str | Path, out: str | Path | None = None) -> Path:
    """Write :func:`describe` of ``onnx_path`` to ``out`` (default ``<stem>.io.json`` beside it),
    atomically; returns the path written."""
    from yolov9_qat.utils.files import atomic_write_json

    target = Path(out) if out is not None else io_json_path(onnx_path)
    return atomic_write_json(target, describe(onnx_path))


def read_io_json(path: str | Path) -> dict[str, Any]:
    """A description written by :func:`write_io_json` (checked for the keys a deployment needs)."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .io.json ({str(e).splitlines()[0]})") from None
    need = ("layout", "inputs", "outputs", "batch", "names", "nc", "precision")
    missing = [k for k in need if not isinstance(spec, dict) or k not in spec]
    if missing:
        raise UserError(f"{path}: not a yolov9-qat .io.json (missing {', '.join(missing)})")
    if spec.get("schema", SCHEMA) > SCHEMA:
        raise UserError(f"{path}: .io.json schema {spec['schema']} is newer than this yolov9-qat ({SCHEMA})")
    if spec["layout"] not in LAYOUTS:
        raise UserError(f"{path}: unknown layout {spec['layout']!r}")
    return spec

"""Small ONNX files for the deploy tests, built once per process (cached by kind).

``graph(kind, root)``: ``plain`` (fixed batch 1), ``plain_dynamic``, ``e2e_trt`` (EfficientNMS_TRT,
dynamic batch), ``e2e_onnx`` (NonMaxSuppression, fixed batch 2) from a fused gelan-n at 64 px exported
with the package's exporter; ``ds_float`` (dynamic batch) and ``ds_int8`` (Q/DQ, fixed batch 4): tiny
DeepStream-layout graphs made with ``onnx.helper`` (input ``input``, output ``output`` (B, 64, 6),
metadata ``layout=deepstream``); ``ds_renamed``: the same with user-chosen tensor names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

NAMES = ["circle", "traffic light", "triangle"]
IMG = 64
KINDS = ("plain", "plain_dynamic", "e2e_trt", "e2e_onnx", "ds_float", "ds_int8", "ds_renamed")

_CACHE: dict[str, Path] = {}
_MODEL: list[Any] = []


def _model() -> Any:
    if not _MODEL:
        import torch

        from yolov9_qat.models.yolo import DetectionModel

        torch.manual_seed(0)
        _MODEL.append(DetectionModel("gelan-n", nc=len(NAMES), names=NAMES).fuse().eval())
    return _MODEL[0]


def _export(path: Path, **opts: Any) -> Path:
    from yolov9_qat.export.onnx import ExportOptions, export_onnx
    from yolov9_qat.utils.runs import torch_threads

    with torch_threads(1):
        return export_onnx(_model(), path, ExportOptions(imgsz=IMG, **opts))


def deepstream_graph(
    path: Path,
    batch: int | str = "batch",
    int8: bool = False,
    input_name: str = "input",
    output_name: str = "output",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """``input`` (B, 3, 64, 64) -> [Q/DQ] -> Conv 8x8/8 (6 channels) -> (B, 64, 6) ``output``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(6, 3, 8, 8)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([0, 6, -1], np.int64), "shape"),
    ]
    nodes = []
    x = input_name
    if int8:
        inits += [
            numpy_helper.from_array(np.array(1 / 127, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "zp"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", [x, "s", "zp"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
        ]
        x = "xd"
    nodes += [
        helper.make_node("Conv", [x, "w"], ["c"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], [output_name], perm=[0, 2, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "deepstream",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, IMG, IMG])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, 64, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "names": json.dumps(NAMES),
        "nc": str(len(NAMES)),
        "stride": json.dumps([8]),
        "imgsz": json.dumps([IMG, IMG]),
        "precision": "int8" if int8 else "fp32",
        "dynamic": json.dumps(not isinstance(batch, int)),
        "end2end": "",
        "layout": "deepstream",
    }
    meta.update(metadata or {})
    for k, v in meta.items():
        if v is not None:
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def graph(kind: str, root: Path) -> Path:
    """The ONNX file of ``kind`` (see the module docstring), made once under ``root``."""
    if kind not in _CACHE:
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"{kind}.onnx"
        if kind == "plain":
            _export(path)
        elif kind == "plain_dynamic":
            _export(path, dynamic=True)
        elif kind == "e2e_trt":
            _export(path, end2end="trt", dynamic=True)
        elif kind == "e2e_onnx":
            _export(path, end2end="onnx", batch=2)
        elif kind == "ds_float":
            deepstream_graph(path)
        elif kind == "ds_int8":
            deepstream_graph(path, batch=4, int8=True)
        elif kind == "ds_renamed":
            deepstream_graph(path, input_name="pixels", output_name="candidates")
        else:
            raise ValueError(kind)
        _CACHE[kind] = path
    return _CACHE[kind]


def graph_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) read straight from the ONNX graph: name, shape (symbolic dims as their
    names), numpy dtype name; the reference the tests compare every written file against."""
    import onnx
    from onnx import helper

    proto = onnx.load(str(path), load_external_data=False)

    def one(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        return {"name": v.name, "shape": shape, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    inits = {i.name for i in proto.graph.initializer}
    return [one(v) for v in proto.graph.input if v.name not in inits], [one(v) for v in proto.graph.output]


def run_cli(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    """``yolov9-qat <argv>`` in-process: (exit status, stdout, stderr)."""
    from yolov9_qat.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_one_line_error(rc: int, err: str, *fragments: str) -> None:
    """Exit status 2 and exactly one line on stderr holding every fragment."""
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("yolov9-qat deploy: error: "), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])

"""Model builders of the export tests (a plain module: the conftest's fixtures and test files import it).

``build(images, loader, cfg, activation, kind)``: a fused gelan-style model with settled batch-norm
statistics, ``kind="qat"`` this package's placement (:func:`prepare_qat_model` + :func:`calibrate`),
``"qat_ort"`` the ``ort`` placement, ``"plain"`` ModelOpt's defaults (this package's quantized twins
unregistered), ``"float"`` no quantization; ``tiny_qdq_model`` a hand-made Q/DQ graph.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from yolov9_qat.bench.untrained import settle_batchnorm
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.utils.runs import torch_threads

IMG = 64
NC = 10

single_thread = partial(torch_threads, 1)


def float_model(images: torch.Tensor, cfg: str = "gelan-n", activation: str | None = None) -> DetectionModel:
    """A fused float model; ``cfg="yolov9-t>gelan-t"`` builds yolov9-t and reparameterizes it."""
    torch.manual_seed(0)
    if ">" in cfg:
        from yolov9_qat.models.reparam import reparameterize

        src_cfg, dst_cfg = cfg.split(">")
        src = settle_batchnorm(
            DetectionModel(src_cfg, nc=NC, activation=activation), [images, images.flip(-1)]
        )
        model = reparameterize(src, dst_cfg, check=False)
    else:
        model = settle_batchnorm(DetectionModel(cfg, nc=NC, activation=activation), [images, images.flip(-1)])
    return model.fuse().eval()


def export(model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """The package's export (opset 17, fixed batch ``x.shape[0]``)."""
    from yolov9_qat.export.onnx import ExportOptions, export_onnx

    return export_onnx(model, path, ExportOptions(imgsz=x.shape[-1], batch=x.shape[0]))


@contextlib.contextmanager
def twins_unregistered() -> Iterator[None]:
    """Inside, ModelOpt's registry holds none of this package's quantized twins (plain ModelOpt)."""
    from modelopt.torch.quantization.nn import QuantModuleRegistry

    from yolov9_qat.quant.modules import TWINS, register_twins

    for original in TWINS:
        if original in QuantModuleRegistry:
            QuantModuleRegistry.unregister(original)
    try:
        yield
    finally:
        register_twins()


def build(images: torch.Tensor, loader, cfg: str, activation: str | None, kind: str) -> nn.Module:
    model = float_model(images, cfg, activation)
    if kind in ("qat", "qat_ort"):
        from yolov9_qat.quant.quantize import calibrate, prepare_qat_model

        model = prepare_qat_model(model, calib_method="max", placement="ort" if kind == "qat_ort" else "trt")
        calibrate(model, loader, n_batches=1)
    elif kind == "plain":
        import modelopt.torch.quantization as mtq

        with twins_unregistered():
            model = mtq.quantize(model, copy.deepcopy(mtq.INT8_DEFAULT_CFG), forward_loop=lambda m: m(images))
    elif kind != "float":
        raise ValueError(kind)
    return model.eval()


def tiny_qdq_model(
    scale_in: float = 0.05,
    scale_out: float = 0.05,
    op: str = "MaxPool",
    shared_zero_point: bool = False,
) -> onnx.ModelProto:
    """``X -> Q/DQ(scale_in) -> op -> Q/DQ(scale_out) -> Conv(Q/DQ weight) -> Y``, opset 17, int8
    symmetric. ``shared_zero_point``: the weight's and the activations' Q/DQ read one zero-point
    initializer (the weight then per tensor)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4, 3, 3)).astype(np.float32)
    zp = np.array(0, np.int8)
    inits = [
        numpy_helper.from_array(np.array(scale_in, np.float32), "s_in"),
        numpy_helper.from_array(np.array(scale_out, np.float32), "s_out"),
        numpy_helper.from_array(zp, "zp"),
        numpy_helper.from_array(w, "w"),
    ]
    if shared_zero_point:
        inits.append(numpy_helper.from_array(np.array(np.abs(w).max() / 127, np.float32), "w_scale"))
        w_zp, w_axis = "zp", []
    else:
        inits.append(
            numpy_helper.from_array((np.abs(w).reshape(3, -1).max(1) / 127).astype(np.float32), "w_scale")
        )
        inits.append(numpy_helper.from_array(np.zeros(3, np.int8), "w_zp"))
        w_zp, w_axis = "w_zp", [helper.make_attribute("axis", 0)]
    op_attrs = {"kernel_shape": [2, 2], "strides": [1, 1]} if "Pool" in op else {}
    nodes = [
        helper.make_node("QuantizeLinear", ["X", "s_in", "zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "s_in", "zp"], ["xd"], name="dq_in"),
        helper.make_node(op, ["xd"], ["p"], name="op", **op_attrs),
        helper.make_node("QuantizeLinear", ["p", "s_out", "zp"], ["pq"], name="q_out"),
        helper.make_node("DequantizeLinear", ["pq", "s_out", "zp"], ["pd"], name="dq_out"),
        helper.make_node("QuantizeLinear", ["w", "w_scale", w_zp], ["wq"], name="q_w"),
        helper.make_node("DequantizeLinear", ["wq", "w_scale", w_zp], ["wd"], name="dq_w"),
        helper.make_node("Conv", ["pd", "wd"], ["Y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    for n in nodes:
        if n.name in ("q_w", "dq_w"):
            n.attribute.extend(w_axis)
    side = 8 if "Pool" not in op else 9
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4, side, side])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model

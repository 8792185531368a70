"""Shared work for the export tests: small calibrated models exported to ONNX with Q/DQ.

``onnx_factory(cfg, activation, kind)`` builds (once per session) a fused gelan-style model with
settled batch-norm statistics and exports it at 64 px: ``kind="qat"`` is this package's placement
(:func:`prepare_qat_model` + :func:`calibrate`), ``"qat_ort"`` the same with ``placement="ort"``
(every op's output quantized, for ONNX Runtime's integer kernels), ``"plain"`` is ModelOpt's defaults
(``mtq.quantize(model, INT8_DEFAULT_CFG)``, with this package's quantized twins unregistered, so the
graph is what a user gets without the rules), ``"float"`` no quantization at all.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from yolov9_qat.bench.untrained import settle_batchnorm
from yolov9_qat.data.config import load_data_yaml
from yolov9_qat.data.dataset import create_dataloader
from yolov9_qat.data.synth import generate
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.utils.runs import torch_threads

IMG = 64
NC = 10


single_thread = partial(torch_threads, 1)  # test_ort_integer.py uses it through this module


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture(scope="session")
def loader(tmp_path_factory):
    root = generate(
        tmp_path_factory.mktemp("synth_export"), seed=5, n_train=8, n_val=4, imgsz=IMG, progress=False
    )
    data = load_data_yaml(root)
    out, _ = create_dataloader(data["train"], imgsz=IMG, batch_size=4, stride=32, augment=False, workers=0)
    return out


@pytest.fixture(scope="session")
def images(loader) -> torch.Tensor:
    with single_thread():
        return next(iter(loader))[0].float() / 255


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


@pytest.fixture(scope="session")
def onnx_factory(images, loader, tmp_path_factory) -> Callable[..., Path]:
    """``make(cfg="gelan-n", activation=None, kind="qat") -> Path`` of the exported ONNX (cached)."""
    root = tmp_path_factory.mktemp("onnx_export")
    cache: dict[tuple[str, str | None, str], Path] = {}

    def make(cfg: str = "gelan-n", activation: str | None = None, kind: str = "qat") -> Path:
        key = (cfg, activation, kind)
        if key not in cache:
            with single_thread():
                model = build(images, loader, cfg, activation, kind)
                name = f"{cfg.replace('>', '_to_')}-{activation or 'default'}-{kind}.onnx"
                cache[key] = export(model, images[:1], root / name)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def ort_placement_factory(images, loader, tmp_path_factory) -> Callable[[str], tuple[nn.Module, Path]]:
    """``make(activation) -> (model, path)``: gelan-n in the ``ort`` placement, calibrated, and its
    export at 64 px with batch 2 (cached per activation)."""
    root = tmp_path_factory.mktemp("ort_placement")
    cache: dict[str, tuple[nn.Module, Path]] = {}

    def make(activation: str) -> tuple[nn.Module, Path]:
        if activation not in cache:
            with single_thread():
                model = build(images, loader, "gelan-n", activation, "qat_ort")
                cache[activation] = (model, export(model, images[:2], root / f"{activation}.onnx"))
        return cache[activation]

    return make


@pytest.fixture(scope="session")
def qat_onnx(onnx_factory) -> Path:
    return onnx_factory("gelan-n", None, "qat")


@pytest.fixture(scope="session")
def x(images) -> torch.Tensor:
    """One image, as the exported graphs take it."""
    return images[:1]


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


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., onnx.ModelProto]:
    """:func:`tiny_qdq_model` (a builder)."""
    return tiny_qdq_model

"""ONNX export of float and QAT (Q/DQ) models in one of three layouts (:mod:`yolov9_qat.export.layouts`): plain
(``output0``: (B, 4 + nc, A)), end-to-end (NMS inside the graph, see :mod:`yolov9_qat.export.end2end`)
or DeepStream-Yolo's (``output``: (B, A, 6), see :mod:`yolov9_qat.export.deepstream`). Tensor names can
be overridden (``input_name``, ``output_names``); readers find the layout in the metadata.

The file is written atomically; its metadata (``names``, ``stride``, ``imgsz``, ``activation``,
``precision``, ``end2end`` ...) travels in the ONNX ``metadata_props`` so that the ONNX Runtime and
TensorRT backends know what they run without the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from yolov9_qat import __version__
from yolov9_qat.errors import UserError
from yolov9_qat.export import deepstream
from yolov9_qat.export.end2end import FLAVOURS, End2End
from yolov9_qat.export.layouts import DEFAULT_NAMES, layout_of, read_metadata
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.utils.files import atomic_save

log = logging.getLogger("yolov9_qat.export")

MIN_QDQ_OPSET = 13  # per-channel QuantizeLinear / DequantizeLinear (axis attribute)
DEFAULT_OPSET = 17


@dataclass
class ExportOptions:
    imgsz: int = 640
    batch: int = 1
    dynamic: bool = False
    simplify: bool = False
    opset: int = DEFAULT_OPSET
    end2end: str | None = None  # None, "trt" or "onnx"
    iou_thres: float = 0.45
    conf_thres: float = 0.25
    max_det: int = 100
    deepstream: bool = False  # DeepStream-Yolo's single output (B, A, 6); exclusive with end2end
    input_name: str | None = None  # default: ``images`` (``input`` for the DeepStream layout)
    output_names: tuple[str, ...] | None = None  # default: the layout's names
    extra_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> str:
        return "end2end" if self.end2end else "deepstream" if self.deepstream else "plain"

    def tensor_names(self) -> tuple[str, list[str]]:
        """The input name and the output names of the exported graph (the layout's, or the user's)."""
        inp, default_outs = DEFAULT_NAMES[self.layout]
        outs = list(default_outs)
        if self.output_names is not None:
            if len(self.output_names) != len(outs):
                raise UserError(
                    f"--output-names: the {self.layout} layout has {len(outs)} output(s) "
                    f"({', '.join(outs)}), got {len(self.output_names)}"
                )
            outs = list(self.output_names)
        names = [self.input_name or inp, *outs]
        if len(set(names)) != len(names) or not all(names):
            raise UserError(f"tensor names must be distinct and non-empty, got {', '.join(names)}")
        return names[0], names[1:]


def is_quantized(model: nn.Module) -> bool:
    return hasattr(model, "qat")


def load_for_export(weights: str | Path) -> tuple[DetectionModel, dict[str, Any]]:
    """The model a checkpoint holds, ready to export: a QAT checkpoint's fake-quantized model, or the
    fused float GELAN model (a dual-head YOLOv9 is reparameterized first)."""
    from yolov9_qat.models import checkpoint
    from yolov9_qat.models.checkpoint import is_qat_checkpoint, load_float_model
    from yolov9_qat.quant.io import apply_qat_state

    ck = checkpoint.load(weights)
    if is_qat_checkpoint(ck):
        model = apply_qat_state(ck.model, ck.extra["qat"], where=str(weights))
        return model, {"precision": "int8", "source_meta": ck.meta}
    model, info = load_float_model(weights)
    return model, {"precision": "fp32", "source_meta": info}


def metadata(model: DetectionModel, opts: ExportOptions, precision: str) -> dict[str, str]:
    """The ``metadata_props`` written into every exported file."""
    meta = {
        "producer": f"yolov9-qat {__version__}",
        "names": json.dumps(list(model.names)),
        "nc": str(model.nc),
        "stride": json.dumps([int(s) for s in model.stride.tolist()]),
        "imgsz": json.dumps([opts.imgsz, opts.imgsz]),
        "activation": str(model.activation),
        "cfg": str(model.cfg_name),
        "precision": precision,
        "dynamic": json.dumps(bool(opts.dynamic)),
        "end2end": opts.end2end or "",
        "layout": opts.layout,
    }
    qat = getattr(model, "qat", None)
    if isinstance(qat, dict) and precision == "int8":
        meta["placement"] = str(qat.get("placement", "trt"))  # Q/DQ rules: trt or ort (lint reads it)
        if qat.get("head_float"):  # the head's output convs stay float on purpose (lint reads it)
            from yolov9_qat.quant.rules import head_output_paths

            meta["float_convs"] = json.dumps(list(head_output_paths(model)))
    if opts.end2end:
        meta["nms"] = json.dumps(
            {"iou_thres": opts.iou_thres, "conf_thres": opts.conf_thres, "max_det": opts.max_det}
        )
    meta.update({k: str(v) for k, v in opts.extra_metadata.items()})
    return meta


def graph_layout(proto: onnx.ModelProto) -> str:
    """The graph's layout (:data:`yolov9_qat.export.layouts.LAYOUTS`): from the metadata, else (older or foreign files) from the
    output names."""
    names = [o.name for o in proto.graph.output]
    shapes = [[d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in proto.graph.output]
    return layout_of(names, read_metadata(proto), shapes) or "plain"


def _set_metadata(proto: onnx.ModelProto, meta: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants and drop dead nodes with onnxslim (keeps Q/DQ and plugin nodes)."""
    import onnxslim

    try:
        slim = onnxslim.slim(proto)
    except Exception as e:  # the simplifier is an optimisation: never lose the export over it
        log.warning("onnxslim failed (%s); keeping the unsimplified graph", str(e).splitlines()[0])
        return proto
    return slim if slim is not None else proto


@contextlib.contextmanager
def without_jit_lint() -> Iterator[None]:
    """TorchScript's graph linter off while the TorchScript exporter runs.

    The exporter re-checks the whole traced graph after each of its passes (10 times); the check only
    raises on a malformed graph and changes nothing, and it was a third of a Q/DQ gelan-n export (7 of
    20 s at 64 px). What is written is still checked, by ``onnx.checker``; the exported file is the same
    byte for byte (``tests/quant/test_export.py``).
    """
    lint = getattr(torch._C, "_jit_pass_lint", None)
    if lint is None:  # a torch without the pass: nothing to skip
        yield
        return
    torch._C._jit_pass_lint = lambda graph: None
    try:
        yield
    finally:
        torch._C._jit_pass_lint = lint


def export_onnx(
    model: DetectionModel, out: str | Path, opts: ExportOptions, precision: str | None = None
) -> Path:
    """Export ``model`` (float or quantized, eval mode, CPU) to ``out`` and return the path."""
    if opts.opset < MIN_QDQ_OPSET and is_quantized(model):
        raise UserError(f"--opset {opts.opset}: Q/DQ graphs need opset {MIN_QDQ_OPSET} or newer")
    if opts.end2end is not None and opts.end2end not in FLAVOURS:
        raise UserError(f"--nms {opts.end2end}: choose one of {', '.join(FLAVOURS)}")
    if opts.end2end and opts.deepstream:
        raise UserError("the end-to-end and DeepStream layouts are exclusive: export them one at a time")
    input_name, outputs = opts.tensor_names()
    stride = int(model.stride.max())
    if opts.imgsz % stride:
        raise UserError(f"--img {opts.imgsz} is not a multiple of the model's stride {stride}")
    precision = precision or ("int8" if is_quantized(model) else "fp32")
    model = model.cpu().eval()
    net: nn.Module = model
    if opts.end2end:
        net = End2End(model, opts.end2end, opts.iou_thres, opts.conf_thres, opts.max_det).eval()
    elif opts.deepstream:
        net = deepstream.DeepStreamOutput(model).eval()
    x = torch.zeros(opts.batch, 3, opts.imgsz, opts.imgsz)
    dynamic_axes = {name: {0: "batch"} for name in [input_name, *outputs]} if opts.dynamic else None
    out = Path(out)

    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings(), without_jit_lint():
            warnings.simplefilter("ignore")  # tracer chatter about shapes and Q/DQ
            torch.onnx.export(
                net, (x,), str(tmp), dynamo=False, opset_version=opts.opset, input_names=[input_name],
                output_names=outputs, dynamic_axes=dynamic_axes, do_constant_folding=True,
            )  # fmt: skip
        proto = onnx.load(str(tmp))
        if opts.simplify:
            proto = simplify(proto)
        _set_metadata(proto, metadata(model, opts, precision))
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))

    return atomic_save(out, write)


def default_output(weights: str | Path, end2end: str | None, deepstream: bool = False) -> Path:
    """``best.pt`` -> ``best.onnx``; end-to-end: ``best-end2end-trt.onnx`` / ``best-end2end-onnx.onnx``;
    DeepStream layout: ``best-deepstream.onnx``."""
    p = Path(weights)
    if end2end:
        return p.with_name(f"{p.stem}-end2end-{end2end}.onnx")
    return p.with_name(f"{p.stem}-deepstream.onnx" if deepstream else f"{p.stem}.onnx")

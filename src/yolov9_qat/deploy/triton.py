"""A Triton Inference Server model repository for an exported ONNX file or a TensorRT engine::

    DIR/<name>/config.pbtxt     the model configuration (a ``ModelConfig`` protobuf, text format)
    DIR/<name>/labels.txt       class names, one per line
    DIR/<name>/1/model.onnx     (or model.plan) a copy of the model, version 1

The configuration is built as Triton's own ``model_config_pb2.ModelConfig`` message (from
``tritonclient``) and printed with ``google.protobuf.text_format``, so every field name and enum value is
checked by the schema. Inputs and outputs (names, data types, dims) come from the graph.

Batching, as Triton documents it (model_configuration.md, "Maximum Batch Size"): ``max_batch_size > 0``
says that every input and output has a leading batch dimension that Triton may fill with 1 to
``max_batch_size`` requests, and then ``dims`` leave it out; ``max_batch_size: 0`` says the model does
not batch that way, and ``dims`` are the full shapes. Triton's ONNX Runtime backend only accepts
``max_batch_size > 0`` when the graph's first dimension is dynamic (``CompareDimsSupported`` in
onnxruntime_backend's ``onnxruntime_utils.cc``: "the first dimension must be -1"), and a fixed-shape graph
cannot run the smaller batches the dynamic batcher would form, so:

* dynamic batch axis: ``max_batch_size`` = ``--max-batch`` (default 16; for an engine, its profile's
  maximum when ``E.json`` says it), ``dims`` without the batch, dynamic batching on;
* fixed batch B (1 or more): ``max_batch_size: 0``, ``dims`` = the full shape with B, no dynamic
  batching (a request carries exactly B images).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from yolov9_qat.deploy import (
    INSTALL_HINT,
    check_engine_matches,
    class_names,
    copy_file,
    describe_engine,
    engine_batch_range,
    require_file,
    write_labels,
)
from yolov9_qat.errors import UserError

log = logging.getLogger("yolov9_qat.deploy")

DEFAULT_MAX_BATCH = 16
LABELS = "labels.txt"

# numpy dtype name -> Triton's DataType enum name
_TRITON_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
}
# model kind -> (platform, backend, default_model_filename), as Triton's backends name them
_PLATFORMS = {
    "onnx": ("onnxruntime_onnx", "onnxruntime", "model.onnx"),
    "plan": ("tensorrt_plan", "tensorrt", "model.plan"),
}
# the output whose label file is referenced: the one that carries the class of each detection
_CLASS_OUTPUT = {"plain": 0, "end2end": 3, "deepstream": 0}


def model_config_pb2() -> Any:
    """Triton's ``model_config_pb2`` module, or one line telling how to install it."""
    try:
        from tritonclient.grpc import model_config_pb2 as pb2
    except ImportError as e:
        raise UserError(
            f"deploy triton needs tritonclient ({str(e).splitlines()[0]}): {INSTALL_HINT}"
        ) from None
    return pb2


def _data_type(pb2: Any, tensor: dict[str, Any]) -> int:
    name = _TRITON_TYPES.get(str(tensor["dtype"]))
    if name is None:
        raise UserError(f"tensor {tensor['name']!r}: dtype {tensor['dtype']} has no Triton data type")
    return pb2.DataType.Value(name)


def _dims(shape: list[Any], batched: bool) -> list[int]:
    """Triton dims: -1 for a symbolic dimension; without the leading batch when ``batched``."""
    return [int(d) if isinstance(d, int) else -1 for d in (shape[1:] if batched else shape)]


def max_batch_size(
    spec: dict[str, Any],
    requested: int | None,
    profile_batch: tuple[int, int] | None = None,
) -> int:
    """Triton's ``max_batch_size`` for the described graph (see the module docstring)."""
    tensors = [*spec["inputs"], *spec["outputs"]]
    dynamic = all(t["shape"] and not isinstance(t["shape"][0], int) for t in tensors)
    if not dynamic:
        if requested is not None:
            what = (
                f"a fixed batch of {spec['batch']}"
                if isinstance(spec["batch"], int)
                else "no batch axis common to every input and output"
            )
            raise UserError(
                f"--max-batch {requested}: the graph has {what}, so Triton's max_batch_size must be 0 "
                "(full shapes, no batching); export with --dynamic to batch"
            )
        return 0
    if requested is not None and requested < 1:
        raise UserError(f"--max-batch {requested}: must be 1 or more")
    if profile_batch is not None:
        lo, hi = profile_batch
        if requested is not None and requested > hi:
            raise UserError(f"--max-batch {requested}: the engine's optimization profile stops at batch {hi}")
        if lo > 1:
            log.warning("the engine's profile starts at batch %d: smaller batches will be refused", lo)
        return requested or hi
    return requested or DEFAULT_MAX_BATCH


def build_model_config(
    spec: dict[str, Any],
    *,
    name: str,
    kind: str,
    max_batch: int | None = None,
    dynamic_batching: bool | None = None,
    instances: int = 1,
    profile_batch: tuple[int, int] | None = None,
    label_filename: str | None = LABELS,
) -> Any:
    """The ``ModelConfig`` message for the described graph; ``kind`` is ``"onnx"`` or ``"plan"``."""
    pb2 = model_config_pb2()
    if kind not in _PLATFORMS:
        raise ValueError(f"kind must be 'onnx' or 'plan', got {kind!r}")
    if instances < 1:
        raise UserError(f"--instances {instances}: must be 1 or more")
    cfg = pb2.ModelConfig()
    cfg.name = name
    platform, backend, filename = _PLATFORMS[kind]
    cfg.platform, cfg.backend, cfg.default_model_filename = platform, backend, filename
    cfg.max_batch_size = max_batch_size(spec, max_batch, profile_batch)
    batched = cfg.max_batch_size > 0
    for t in spec["inputs"]:
        inp = cfg.input.add(name=t["name"], data_type=_data_type(pb2, t), dims=_dims(t["shape"], batched))
        if len(inp.dims) == 3:  # Triton's ValidateModelInput: FORMAT_NCHW needs exactly 3 dims (C, H, W)
            inp.format = pb2.ModelInput.FORMAT_NCHW
    label_output = _CLASS_OUTPUT[spec["layout"]]
    for i, t in enumerate(spec["outputs"]):
        out = cfg.output.add(name=t["name"], data_type=_data_type(pb2, t), dims=_dims(t["shape"], batched))
        if label_filename and i == label_output:
            # the class names, in class-index order (model_config.proto documents label_filename for
            # classification outputs; on a detector it names the classes for the client)
            out.label_filename = label_filename
    if dynamic_batching is None:
        dynamic_batching = batched
    if dynamic_batching:
        if not batched:
            raise UserError(
                "--dynamic-batching: the graph has a fixed batch (max_batch_size 0), Triton cannot batch "
                "requests for it; export with --dynamic"
            )
        cfg.dynamic_batching.SetInParent()
    group = cfg.instance_group.add(count=int(instances))
    if kind == "plan":
        group.kind = pb2.ModelInstanceGroup.KIND_GPU  # a TensorRT engine runs on the GPU only
    return cfg


def config_text(cfg: Any, header: str = "") -> str:
    """``cfg`` in protobuf text format (what Triton reads from ``config.pbtxt``)."""
    from google.protobuf import text_format

    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + text_format.MessageToString(cfg)


def parse_config(text: str) -> Any:
    """A ``config.pbtxt`` text back into a ``ModelConfig`` (the schema rejects unknown fields)."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2().ModelConfig())


def _model_name(name: str | None, source: Path) -> str:
    name = name or source.stem
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise UserError(f"--name {name!r}: a Triton model name is a folder name (no '/', not hidden)")
    return name


def _copy_onnx(src: Path, dst: Path) -> None:
    """Copy an ONNX file and any external-data files it names (kept beside it)."""
    import onnx

    copy_file(src, dst)
    proto = onnx.load(str(src), load_external_data=False)
    locations = set()
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    for loc in sorted(locations):
        extra = src.parent / loc
        if not extra.is_file():
            raise UserError(f"{src}: its external data file {loc} is missing")
        copy_file(extra, dst.parent / loc)


def write_repository(
    out: str | Path,
    *,
    onnx: str | Path | None = None,
    engine: str | Path | None = None,
    name: str | None = None,
    max_batch: int | None = None,
    dynamic_batching: bool | None = None,
    instances: int = 1,
) -> dict[str, Any]:
    """Write ``out/<name>/{config.pbtxt,labels.txt,1/model.*}`` and return what was written.

    With ``engine`` the model is the TensorRT plan and ``onnx`` (optional) describes it; otherwise the
    model is ``onnx`` itself, run by ONNX Runtime.
    """
    model_config_pb2()  # fail early, before anything is copied, when tritonclient is missing
    if engine is not None:
        source = require_file(engine, "engine")
        spec, described_by = describe_engine(source, onnx)
        check_engine_matches(source, spec)
        kind, filename = "plan", "model.plan"
        profile_batch = engine_batch_range(source, spec["inputs"][0]["name"]) or _profile_of(spec)
        if profile_batch is None and spec.get("dynamic_batch"):
            log.warning(
                "%s: no profile found (no %s.json beside it): max_batch_size must not exceed the batch "
                "the engine was built for",
                source,
                source.name,
            )
    elif onnx is not None:
        from yolov9_qat.export.io_spec import describe

        source = require_file(onnx, "ONNX file")
        spec, described_by = describe(source), str(source)
        kind, filename, profile_batch = "onnx", "model.onnx", None
        if spec.get("nms_op") == "trt":
            raise UserError(
                f"{source}: its NMS is TensorRT's EfficientNMS_TRT plugin, which ONNX Runtime cannot run; "
                "build an engine (yolov9-qat build) and pass --engine, or export with --nms onnx"
            )
    else:
        raise UserError("give --onnx FILE or --engine FILE")
    model_name = _model_name(name, source)
    names = class_names(spec, described_by) if spec.get("names") else None
    if names is None:
        log.warning("%s: no class names (an engine read by TensorRT): no labels.txt written", described_by)
    cfg = build_model_config(
        spec,
        name=model_name,
        kind=kind,
        max_batch=max_batch,
        dynamic_batching=dynamic_batching,
        instances=instances,
        profile_batch=profile_batch,
        label_filename=LABELS if names else None,
    )
    folder = Path(out) / model_name
    model_path = folder / "1" / filename
    if kind == "onnx":
        _copy_onnx(source, model_path)
    else:
        copy_file(source, model_path)
    labels = write_labels(folder / LABELS, names) if names else None
    from yolov9_qat.utils.files import atomic_write_text

    header = (
        f"Triton model configuration written by yolov9-qat deploy triton\n"
        f"model: {source.name} ({spec['layout']} layout, graph precision {spec.get('precision') or '?'}); "
        f"described by {Path(described_by).name}"
    )
    config = atomic_write_text(folder / "config.pbtxt", config_text(cfg, header))
    return {
        "config": config,
        "model": model_path,
        "labels": labels,
        "max_batch_size": cfg.max_batch_size,
        "layout": spec["layout"],
        "platform": cfg.platform,
    }


def _profile_of(spec: dict[str, Any]) -> tuple[int, int] | None:
    """(min, max) batch of a description read from the engine by TensorRT (``profile``), if any."""
    prof = spec.get("profile") or {}
    try:
        return int(prof["min"][0]), int(prof["max"][0])
    except (KeyError, IndexError, TypeError):
        return None

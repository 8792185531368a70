"""Serving configurations for exported models: a Triton model repository (:mod:`.triton`) and a
DeepStream nvinfer configuration (:mod:`.deepstream`), both written from the graph's own description
(:func:`yolov9_qat.export.io_spec.describe`), never from assumptions about tensor names.

This module holds what both share: describing a TensorRT engine (which has no metadata of its own),
reading the engine-cache sidecar ``E.json`` (its optimization profile), and the label file. Only the
standard library is imported at module level: the CLI imports this package to build its parser.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from yolov9_qat.errors import UserError

log = logging.getLogger("yolov9_qat.deploy")

INSTALL_HINT = 'pip install "yolov9-qat[deploy]"'
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

_TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def require_file(path: str | Path, what: str) -> Path:
    """``path`` as a :class:`Path`, or one clear line when it is not a file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p}: no such file")
    return p


def engine_sidecar(engine: str | Path) -> dict[str, Any] | None:
    """The metadata ``E.json`` that ``yolov9-qat build`` writes beside an engine ``E`` (``None`` when
    there is none or it does not parse)."""
    side = Path(engine).with_name(Path(engine).name + ".json")
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        log.warning("%s: unreadable engine metadata, ignored", side)
        return None
    return meta if isinstance(meta, dict) else None


def engine_batch_range(engine: str | Path, input_name: str) -> tuple[int, int] | None:
    """(min, max) batch of the engine's optimization profile for ``input_name``, from ``E.json``."""
    meta = engine_sidecar(engine) or {}
    profile = (meta.get("inputs") or {}).get("profile") or {}
    try:
        lo, hi = profile["min"][input_name][0], profile["max"][input_name][0]
    except (KeyError, IndexError, TypeError):
        return None
    return int(lo), int(hi)


def _tensorrt_importable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def describe_engine_with_tensorrt(engine: Path) -> dict[str, Any]:
    """A description of ``engine`` read by TensorRT itself (names, shapes, dtypes, profile). The class
    names are not in an engine: ``names`` is ``None`` unless the layout gives ``nc`` (plain)."""
    from yolov9_qat.export.io_spec import PREPROCESS, infer_layout

    try:
        import tensorrt as trt
    except Exception as e:
        raise UserError(f"TensorRT cannot be imported ({str(e).splitlines()[0]})") from None
    logger = trt.Logger(trt.Logger.ERROR)
    trt.init_libnvinfer_plugins(logger, "")  # end-to-end engines hold the EfficientNMS_TRT plugin
    with trt.Runtime(logger) as runtime:
        eng = runtime.deserialize_cuda_engine(engine.read_bytes())
    if eng is None:
        raise UserError(f"TensorRT cannot deserialize {engine} (another TensorRT version or GPU?)")
    inputs, outputs = [], []
    profile: dict[str, list[int]] = {}
    for i in range(eng.num_io_tensors):
        name = eng.get_tensor_name(i)
        dims = [int(d) for d in eng.get_tensor_shape(name)]
        shape: list[int | str | None] = [
            d if d >= 0 else ("batch" if j == 0 else None) for j, d in enumerate(dims)
        ]
        kind = getattr(eng.get_tensor_dtype(name), "name", "").upper()
        if kind not in _TRT_DTYPES:
            raise UserError(f"{engine}: tensor {name!r} has type {kind or '?'}, which cannot be served here")
        tensor = {"name": name, "shape": shape, "dtype": _TRT_DTYPES[kind]}
        if eng.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            inputs.append(tensor)
            lo, _opt, hi = eng.get_tensor_profile_shape(name, 0)
            profile = {"min": [int(d) for d in lo], "max": [int(d) for d in hi]}
        else:
            outputs.append(tensor)
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
        raise UserError(f"{engine}: expected one image input (batch, 3, height, width)")
    layout = infer_layout(outputs, {}, engine)
    batch = inputs[0]["shape"][0]
    hw = inputs[0]["shape"][2:]
    nc = None
    if layout == "plain" and isinstance(outputs[0]["shape"][1], int):
        nc = int(outputs[0]["shape"][1]) - 4
    return {
        "schema": 1,
        "model": engine.name,
        "layout": layout,
        "inputs": inputs,
        "outputs": outputs,
        "batch": batch if isinstance(batch, int) else "dynamic",
        "dynamic_batch": not isinstance(batch, int),
        "profile": profile or None,
        "imgsz": [int(d) for d in hw] if all(isinstance(d, int) for d in hw) else None,
        "preprocess": json.loads(json.dumps(PREPROCESS)),
        "names": [str(i) for i in range(nc)] if nc is not None else None,
        "nc": nc,
        "precision": None,  # the engine's layers may mix precisions; TensorRT does not say one
        "nms": None,
    }


def describe_engine(engine: str | Path, onnx: str | Path | None = None) -> tuple[dict[str, Any], str]:
    """(description, where it came from) of a TensorRT engine, which carries no metadata: the ONNX it
    was built from (``onnx``), else the ``<stem>.io.json`` beside the engine, else TensorRT itself when
    it can be imported; one clear line when none is available."""
    from yolov9_qat.export.io_spec import describe, io_json_path, read_io_json

    engine = require_file(engine, "engine")
    if onnx is not None:
        return describe(require_file(onnx, "ONNX file")), str(onnx)
    side = io_json_path(engine)
    if side.is_file():
        return read_io_json(side), str(side)
    if _tensorrt_importable():
        return describe_engine_with_tensorrt(engine), "TensorRT"
    raise UserError(
        f"{engine}: an engine does not describe itself; give --onnx (the graph it was built from) or put "
        f"its {side.name} beside it (written at export), or run where TensorRT is installed"
    )


def check_engine_matches(engine: Path, spec: dict[str, Any]) -> None:
    """Warn when ``E.json`` says the engine was built from another ONNX file than ``spec`` describes."""
    built_from = ((engine_sidecar(engine) or {}).get("inputs") or {}).get("onnx_sha256")
    described = spec.get("onnx_sha256")
    if built_from and described and built_from != described:
        log.warning(
            "%s was built from another ONNX file (sha256 %s...) than the one described (%s...)",
            engine,
            built_from[:12],
            described[:12],
        )


def class_names(spec: dict[str, Any], where: str) -> list[str]:
    """The class names, one line each (a newline inside a name would shift every label after it)."""
    names = spec.get("names")
    if not names:
        raise UserError(f"{where}: no class names (and no class count) to write labels.txt from")
    return [" ".join(str(n).split()) or str(i) for i, n in enumerate(names)]


def write_labels(path: str | Path, names: list[str]) -> Path:
    """``labels.txt``: one class name per line, in class-index order (Triton's and nvinfer's format)."""
    from yolov9_qat.utils.files import atomic_write_text

    return atomic_write_text(path, "".join(f"{n}\n" for n in names))


def copy_file(src: Path, dst: Path) -> Path:
    """Copy ``src`` to ``dst`` atomically (a temp file beside ``dst``, then a rename)."""
    from yolov9_qat.utils.files import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst

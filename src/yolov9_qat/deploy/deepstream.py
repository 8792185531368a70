"""A DeepStream ``nvinfer`` configuration (``config_infer_primary_yolov9.txt``) and ``labels.txt`` for an
exported ONNX file (and optionally the TensorRT engine built from it).

The values follow the graph (:func:`yolov9_qat.export.io_spec.describe`):

* ``network-mode``: 1 (INT8) for a Q/DQ graph, whose scales are in the graph (explicit quantization, so
  no ``int8-calib-file``); 2 (FP16) for a float graph, 0 (FP32) when asked;
* ``batch-size``: the graph's fixed batch, or for a dynamic one the engine profile's maximum (``E.json``)
  or ``--batch-size``;
* ``cluster-mode`` and the bounding-box parser by layout: the ``deepstream`` layout's raw candidates are
  read by DeepStream-Yolo's ``NvDsInferParseYolo`` and clustered by nvinfer (2, NMS); an end-to-end
  graph already ran NMS, so its four outputs are read by NVIDIA's ``NvDsInferParseCustomEfficientNMSTLT``
  (deepstream_tao_apps, ``post_processor/nvdsinfer_custombboxparser_tao.cpp``: keep count, boxes
  x1 y1 x2 y2 in network pixels, scores, int32 classes, in that order: this package's end-to-end outputs)
  and nvinfer does no clustering (4). A plain graph has no parser: it is refused.

Key meanings: NVIDIA's Gst-nvinfer documentation ("Gst-nvinfer File Configuration Specifications") and
the comments of NVIDIA-AI-IOT/yolo_deepstream's and DeepStream-Yolo's ``config_infer_primary_*.txt``.
The file is written with :mod:`configparser` (GLib key-file syntax: ``key=value``, ``#`` comment lines,
no inline comments); every key has a comment line above it.
"""

from __future__ import annotations

import configparser
import io
import logging
import os
from pathlib import Path
from typing import Any

from yolov9_qat.deploy import (
    check_engine_matches,
    class_names,
    engine_batch_range,
    engine_sidecar,
    require_file,
    write_labels,
)
from yolov9_qat.errors import UserError

log = logging.getLogger("yolov9_qat.deploy")

CONFIG_NAME = "config_infer_primary_yolov9.txt"
LABELS = "labels.txt"
NET_SCALE_FACTOR = "0.0039215697906911373"  # 1/255 as DeepStream-Yolo writes it
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer: 0=FP32, 1=INT8, 2=FP16
CLUSTER_NMS, CLUSTER_NONE = 2, 4  # nvinfer: 1=DBSCAN, 2=NMS, 3=DBSCAN+NMS hybrid, 4=none

# layout -> (parse-bbox-func-name, custom-lib-path, where the parser comes from)
PARSERS = {
    "deepstream": (
        "NvDsInferParseYolo",
        "nvdsinfer_custom_impl_Yolo/libnvdsinfer_custom_impl_Yolo.so",
        "DeepStream-Yolo (marcoslucianops), nvdsinfer_custom_impl_Yolo",
    ),
    "end2end": (
        "NvDsInferParseCustomEfficientNMSTLT",
        "post_processor/libnvds_infercustomparser_tao.so",
        "NVIDIA deepstream_tao_apps, post_processor",
    ),
}
# DeepStream-Yolo's config_infer_primary_yoloV9.txt [class-attrs-all] (the deepstream layout has no NMS
# settings of its own)
DEFAULT_IOU, DEFAULT_CONF, DEFAULT_TOPK = 0.45, 0.25, 300


def _plain_refusal(where: str) -> str:
    return (
        f"{where} has the plain layout (one raw head output), which no nvinfer bounding-box parser reads: "
        "export with --include onnx_deepstream (nvinfer clusters the candidates) or onnx_end2end (NMS in "
        "the graph)"
    )


def _rel(path: Path, start: Path) -> str:
    """``path`` relative to the config's folder (nvinfer resolves relative paths against it)."""
    return os.path.relpath(path.resolve(), start.resolve())


def _network_mode(spec: dict[str, Any], precision: str) -> int:
    qdq = spec.get("precision") == "int8"
    if precision == "auto":
        return NETWORK_MODES["int8" if qdq else "fp16"]
    if precision not in NETWORK_MODES:
        raise UserError(f"--precision {precision}: choose auto, fp32, fp16 or int8")
    if precision == "int8" and not qdq:
        raise UserError(
            "--precision int8: the graph is a float one (no Q/DQ scales) and nvinfer would need a "
            "calibration table; quantize it (yolov9-qat quantize) and export the QAT checkpoint"
        )
    if precision != "int8" and qdq:
        raise UserError(
            f"--precision {precision}: a Q/DQ (INT8) graph is built with INT8 enabled; use int8 or auto"
        )
    return NETWORK_MODES[precision]


def _batch_size(spec: dict[str, Any], requested: int | None, profile: tuple[int, int] | None) -> int:
    if requested is not None and requested < 1:
        raise UserError(f"--batch-size {requested}: must be 1 or more")
    if not spec.get("dynamic_batch"):
        fixed = int(spec["batch"])
        if requested is not None and requested != fixed:
            raise UserError(f"--batch-size {requested}: the graph has a fixed batch of {fixed}")
        return fixed
    if profile is not None:
        lo, hi = profile
        if requested is not None and not lo <= requested <= hi:
            raise UserError(
                f"--batch-size {requested}: the engine's optimization profile covers batch {lo} to {hi}"
            )
        return requested or hi
    return requested or 1


def _check_outputs(spec: dict[str, Any], where: str) -> None:
    outs = spec["outputs"]
    if spec["layout"] == "end2end":
        want = {0: "int32", 1: "float32", 2: "float32", 3: "int32"}
    else:
        want = {0: "float32"}
    for i, dtype in want.items():
        if outs[i]["dtype"] != dtype:
            raise UserError(
                f"{where}: output {outs[i]['name']!r} is {outs[i]['dtype']}, the "
                f"{PARSERS[spec['layout']][0]} parser reads {dtype}"
            )


def build_config(
    spec: dict[str, Any],
    *,
    onnx_file: str,
    engine_file: str,
    labels_file: str,
    batch_size: int,
    network_mode: int,
    gpu_id: int = 0,
    conf_thres: float | None = None,
    iou_thres: float | None = None,
    topk: int | None = None,
    parse_func: str | None = None,
    custom_lib: str | None = None,
) -> configparser.ConfigParser:
    """The nvinfer configuration for the described graph, every key preceded by a comment line."""
    layout = spec["layout"]
    if layout == "plain":
        raise UserError(_plain_refusal(spec.get("model") or "the graph"))
    func, lib, origin = PARSERS[layout]
    nms = spec.get("nms") or {}
    iou = iou_thres if iou_thres is not None else nms.get("iou_thres") or DEFAULT_IOU
    conf = conf_thres if conf_thres is not None else nms.get("conf_thres") or DEFAULT_CONF
    k = topk if topk is not None else nms.get("max_det") or DEFAULT_TOPK
    graph_conf = nms.get("conf_thres")
    if layout == "end2end" and graph_conf is not None and conf < graph_conf:
        log.warning(
            "pre-cluster-threshold %.3g: the graph already dropped scores below %.3g", conf, graph_conf
        )
    mode_name = {v: k for k, v in NETWORK_MODES.items()}[network_mode]

    cp = configparser.ConfigParser(allow_no_value=True, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # nvinfer keys are case-sensitive and hyphenated: keep them as written
    cp.add_section("property")
    section = cp["property"]
    seen: set[str] = set()

    def comment(text: str, where: configparser.SectionProxy) -> None:
        key = f"# {text}"
        if key in seen:
            raise AssertionError(f"duplicate comment {text!r}")
        seen.add(key)
        where[key] = None

    def put(key: str, value: Any, doc: str, where: configparser.SectionProxy = section) -> None:
        comment(f"{key}: {doc}", where)
        where[key] = str(value)

    comment(f"nvinfer configuration written by yolov9-qat deploy deepstream for {spec.get('model')}", section)
    comment(
        f"graph: {layout} layout, {spec.get('precision')}, input {spec['inputs'][0]['name']} "
        f"{spec['inputs'][0]['shape']}, {spec.get('nc')} classes",
        section,
    )
    put("gpu-id", gpu_id, "GPU to run on")
    put("net-scale-factor", NET_SCALE_FACTOR, "y = net-scale-factor * (x - mean): pixels / 255, as trained")
    put("model-color-format", 0, "input channel order: 0=RGB, 1=BGR, 2=GRAY (trained on RGB)")
    put("onnx-file", onnx_file, "the ONNX graph (relative paths are relative to this file)")
    put(
        "model-engine-file",
        engine_file,
        "serialized TensorRT engine: used when it exists and fits, else built from onnx-file and saved here",
    )
    put("labelfile-path", labels_file, "class names, one per line, in class-index order")
    put("batch-size", batch_size, "frames per inference (the graph's batch, or its engine profile's maximum)")
    put(
        "network-mode",
        network_mode,
        f"0=FP32, 1=INT8, 2=FP16; {mode_name}"
        + (
            ": explicit quantization, the Q/DQ graph carries its scales, so no int8-calib-file"
            if network_mode == 1
            else ""
        ),
    )
    put("num-detected-classes", spec["nc"], "number of classes the detector predicts")
    put("interval", 0, "batches to skip between inferences (0: infer every batch)")
    put("gie-unique-id", 1, "this inference engine's id in the pipeline's metadata")
    put("process-mode", 1, "1=primary (whole frames), 2=secondary (objects)")
    put("network-type", 0, "0=detector, 1=classifier, 2=segmentation, 3=instance segmentation")
    if layout == "deepstream":
        put("cluster-mode", CLUSTER_NMS, "1=DBSCAN, 2=NMS, 3=DBSCAN+NMS, 4=none; the raw candidates need NMS")
    else:
        put("cluster-mode", CLUSTER_NONE, "1=DBSCAN, 2=NMS, 3=DBSCAN+NMS, 4=none; NMS ran in the graph")
    put("maintain-aspect-ratio", 1, "letterbox: scale keeping the aspect ratio, as trained")
    put("symmetric-padding", 1, "letterbox padding split evenly on both sides (centred), as trained")
    put(
        "parse-bbox-func-name",
        parse_func or func,
        f"bounding-box parser for the {layout} outputs, from {origin}",
    )
    put("custom-lib-path", custom_lib or lib, f"the library holding that parser (build it from {origin})")

    cp.add_section("class-attrs-all")
    attrs = cp["class-attrs-all"]
    comment("thresholds for every class", attrs)
    put("pre-cluster-threshold", conf, "score below which candidates are dropped before clustering", attrs)
    iou_doc = "IoU above which nvinfer's NMS (cluster-mode=2) merges two boxes" + (
        "" if layout == "deepstream" else " (unused here: the graph's NMS ran at this IoU)"
    )
    put("nms-iou-threshold", iou, iou_doc, attrs)
    put("topk", k, "detections kept per frame, best first", attrs)
    return cp


def config_text(cp: configparser.ConfigParser) -> str:
    """The file's text: ``key=value`` lines (no spaces around ``=``), comment lines above the keys."""
    buf = io.StringIO()
    cp.write(buf, space_around_delimiters=False)
    return buf.getvalue()


def read_config(path: str | Path) -> configparser.ConfigParser:
    """Read an nvinfer configuration back (comment lines skipped, keys kept as written)."""
    cp = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    cp.optionxform = str
    cp.read(path)
    return cp


def write_deepstream(
    out: str | Path,
    *,
    onnx: str | Path,
    engine: str | Path | None = None,
    batch_size: int | None = None,
    precision: str = "auto",
    gpu_id: int = 0,
    conf_thres: float | None = None,
    iou_thres: float | None = None,
    topk: int | None = None,
    parse_func: str | None = None,
    custom_lib: str | None = None,
) -> dict[str, Any]:
    """Write ``out/config_infer_primary_yolov9.txt`` and ``out/labels.txt``; return what was written."""
    from yolov9_qat.export.io_spec import describe
    from yolov9_qat.utils.files import atomic_write_text

    onnx_path = require_file(onnx, "ONNX file")
    spec = describe(onnx_path)
    if spec["layout"] == "plain":
        raise UserError(_plain_refusal(str(onnx_path)))
    _check_outputs(spec, str(onnx_path))
    if spec.get("nc") is None:
        raise UserError(f"{onnx_path}: no class count in its metadata (nc), needed by num-detected-classes")
    mode = _network_mode(spec, precision)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    profile = None
    if engine is not None:
        engine_path = require_file(engine, "engine")
        check_engine_matches(engine_path, spec)
        profile = engine_batch_range(engine_path, spec["inputs"][0]["name"])
        batch = _batch_size(spec, batch_size, profile)
        engine_file = _rel(engine_path, folder)
        built = ((engine_sidecar(engine_path) or {}).get("inputs") or {}).get("precision")
        if built and {"int8": 1, "mp": 1, "fp16": 2, "fp32": 0}.get(built, mode) != mode:
            log.warning("%s was built as %s, network-mode says %d", engine_path, built, mode)
    else:
        batch = _batch_size(spec, batch_size, None)
        # the name nvinfer saves an engine it builds under (nvdsinfer_model_builder.cpp:
        # <model>_b<batch>_gpu<id>_<mode>.engine), so that the next start finds and reuses it
        mode_name = {0: "fp32", 1: "int8", 2: "fp16"}[mode]
        engine_file = f"{_rel(onnx_path, folder)}_b{batch}_gpu{gpu_id}_{mode_name}.engine"
        if mode == 1:
            log.warning(
                "network-mode=1 without --engine: some DeepStream releases build INT8 only with a "
                "calibration file and fall back to FP16; build the engine first "
                "(yolov9-qat build --onnx %s --precision int8) and pass it with --engine",
                onnx_path,
            )
    labels = write_labels(folder / LABELS, class_names(spec, str(onnx_path)))
    cp = build_config(
        spec,
        onnx_file=_rel(onnx_path, folder),
        engine_file=engine_file,
        labels_file=LABELS,
        batch_size=batch,
        network_mode=mode,
        gpu_id=gpu_id,
        conf_thres=conf_thres,
        iou_thres=iou_thres,
        topk=topk,
        parse_func=parse_func,
        custom_lib=custom_lib,
    )
    config = atomic_write_text(folder / CONFIG_NAME, config_text(cp))
    return {
        "config": config,
        "labels": labels,
        "layout": spec["layout"],
        "network_mode": mode,
        "batch_size": batch,
        "cluster_mode": int(cp["property"]["cluster-mode"]),
    }

"""``yolov9-qat deploy triton|deepstream``: serving configurations for an exported model.

Only :mod:`argparse` is imported here (the top-level CLI builds every parser on each call); the work is
imported when a command runs.
"""

from __future__ import annotations

import argparse

from yolov9_qat.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``triton`` and ``deepstream`` sub-commands to the ``deploy`` parser."""
    sub = parser.add_subparsers(dest="deploy_target", metavar="{triton,deepstream}", required=True)

    help_t = "a Triton model repository (config.pbtxt, labels.txt, 1/model.onnx or model.plan)"
    t = sub.add_parser("triton", help=help_t, description=help_t)
    t.add_argument(
        "--onnx",
        default=None,
        help="ONNX file, served by ONNX Runtime; with --engine, the graph the engine was built from (it "
        "describes the engine)",
    )
    t.add_argument(
        "--engine",
        default=None,
        help="TensorRT engine, served by TensorRT; described by --onnx, else the <stem>.io.json beside it, "
        "else by TensorRT itself",
    )
    t.add_argument("--out", required=True, help="model repository folder")
    t.add_argument("--name", default=None, help="model name (default: the file's stem)")
    t.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="max_batch_size for a dynamic batch axis (default 16, or the engine profile's maximum)",
    )
    t.add_argument(
        "--dynamic-batching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Triton's dynamic batcher (default: on when the batch axis is dynamic)",
    )
    t.add_argument("--instances", type=int, default=1, help="model instances (instance_group count)")

    help_d = "a DeepStream nvinfer configuration (config_infer_primary_yolov9.txt) and labels.txt"
    d = sub.add_parser("deepstream", help=help_d, description=help_d)
    d.add_argument("--onnx", required=True, help="ONNX file, deepstream or end-to-end layout")
    d.add_argument("--engine", default=None, help="TensorRT engine built from it (model-engine-file)")
    d.add_argument("--out", required=True, help="folder for the configuration and labels.txt")
    d.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="nvinfer batch-size (default: the graph's batch, the engine profile's maximum, or 1)",
    )
    d.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "int8"],
        default="auto",
        help="network-mode (auto: INT8 for a Q/DQ graph, FP16 otherwise)",
    )
    d.add_argument("--gpu-id", type=int, default=0)
    d.add_argument("--conf-thres", type=float, default=None, help="pre-cluster-threshold (default: graph's)")
    d.add_argument("--iou-thres", type=float, default=None, help="nms-iou-threshold (default: graph's)")
    d.add_argument("--topk", type=int, default=None, help="detections per frame (default: graph's)")
    d.add_argument("--parse-func", default=None, help="override parse-bbox-func-name")
    d.add_argument("--custom-lib", default=None, help="override custom-lib-path")


def run(args: argparse.Namespace) -> int:
    """Run ``deploy triton`` or ``deploy deepstream``; user errors raise :class:`UserError`."""
    target = getattr(args, "deploy_target", None)
    if target == "triton":
        from yolov9_qat.deploy.triton import write_repository

        if args.onnx is None and args.engine is None:
            raise UserError("give --onnx FILE (ONNX Runtime) or --engine FILE (TensorRT)")
        written = write_repository(
            args.out,
            onnx=args.onnx,
            engine=args.engine,
            name=args.name,
            max_batch=args.max_batch,
            dynamic_batching=args.dynamic_batching,
            instances=args.instances,
        )
        files = [written["config"], written["model"], written["labels"]]
        print(
            f"Triton model {written['config'].parent.name} ({written['platform']}, {written['layout']} "
            f"layout, max_batch_size {written['max_batch_size']}): {', '.join(str(f) for f in files if f)}"
        )
        return 0
    if target == "deepstream":
        from yolov9_qat.deploy.deepstream import write_deepstream

        written = write_deepstream(
            args.out,
            onnx=args.onnx,
            engine=args.engine,
            batch_size=args.batch_size,
            precision=args.precision,
            gpu_id=args.gpu_id,
            conf_thres=args.conf_thres,
            iou_thres=args.iou_thres,
            topk=args.topk,
            parse_func=args.parse_func,
            custom_lib=args.custom_lib,
        )
        print(
            f"nvinfer configuration ({written['layout']} layout, network-mode {written['network_mode']}, "
            f"batch-size {written['batch_size']}, cluster-mode {written['cluster_mode']}): "
            f"{written['config']}, {written['labels']}"
        )
        return 0
    raise UserError("choose a target: deploy triton or deploy deepstream")

"""ONNX Runtime (CPU) benchmark: one network as six models, FP32 vs our QAT graphs vs ORT's own PTQ.

gelan-c (untrained weights, batch-norm statistics settled on a few synthetic images so that the
activations have realistic ranges, fused) is built once and written, under ``--cache-dir`` keyed by
cfg and image size (reruns skip all of it), as

1. ``FP32``: the float ONNX (``export_onnx``, dynamic batch, simplified);
2. ``QAT S8S8``: our quantized ONNX in TensorRT's placement as exported (``prepare_qat_model`` +
   percentile ``calibrate``): symmetric int8 activations, run as is;
3. ``QAT U8S8``: the same file after the u8 rewrite (``OrtModel(rewrite="u8")``: uint8 activations,
   zero point 128, bit-identical outputs);
4. ``QAT integer``: the same file with every quantized conv as an exact ``ConvInteger``
   (``OrtModel(rewrite="integer")``, what ``val`` / ``bench`` run for TensorRT's placement on a VNNI CPU);
5. ``QAT ort placement``: the same network quantized with ``placement="ort"`` (every op's output
   quantized, what QAT then trains with), after the exact u8 + DQ-sinking rewrite
   (``OrtModel(rewrite="qlinear")``): ONNX Runtime runs QLinearConv / QLinearSigmoid / QLinearMul ...
   end to end;
6. ``ORT PTQ``: the peer, ``onnxruntime.quantization.quantize_static`` of the float ONNX (QDQ,
   uint8 activations, per-channel int8 weights, MinMax over the calibration images).

Each is timed with ``yolov9_qat.bench.harness`` (trtexec's method: time-based warm-up, then a fixed
duration, every inference timed) at every batch size, the models interleaved per batch size so that
drift in the machine's load hits them alike. Prints p50 / p99 latency, qps, images/s, the
median-latency ratios against FP32 and the peer, the kernels ONNX Runtime chose (op counts of its
optimized graph), and the target checks at every batch size, for the integer rewrite of TensorRT's
placement and for the ort placement: median latency <= 0.7 x FP32 and <= 1.05 x the peer.

    python benchmarks/bench_ort.py --cfg gelan-c --img 640 --batch 1,4 --threads 2 --json-out ort.json
    python benchmarks/bench_ort.py --duration 2 --warmup 200        # a quick trial
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from yolov9_qat.bench.device import cpu_device
from yolov9_qat.bench.harness import BenchConfig, parse_batches, run_benchmark
from yolov9_qat.bench.untrained import untrained_model
from yolov9_qat.data.config import load_data_yaml
from yolov9_qat.data.dataset import create_dataloader
from yolov9_qat.data.synth import generate
from yolov9_qat.export.onnx import ExportOptions, export_onnx
from yolov9_qat.export.ort_rewrite import count_qdq, to_ort_integer, to_ort_qlinear, to_u8
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.quant.quantize import calibrate, prepare_qat_model
from yolov9_qat.runtime.onnxruntime import OrtModel, OrtRunner

FP32, S8, U8, INT = "FP32", "QAT S8S8 (as exported)", "QAT U8S8 (u8 rewrite)", "QAT integer (ConvInteger)"
ORTQ = "QAT ort placement (u8 + QLinear)"
PEER = "ORT PTQ (quantize_static)"
TARGET_VS_FP32, TARGET_VS_PEER = 0.7, 1.05
OPS = ("QLinearConv", "ConvInteger", "Conv", "QLinearSigmoid", "QuantizeLinear", "DequantizeLinear")


# --- the model and its three ONNX files ------------------------------------------------------------


def calib_images(args: argparse.Namespace) -> list[torch.Tensor]:
    """``--calib-images`` synthetic images at ``--img`` (letterboxed, float 0..1), in batches of 2."""
    yaml = generate(
        Path(args.cache_dir) / f"synth-{args.img}", n_train=args.calib_images, n_val=1, imgsz=args.img,
        progress=False,
    )  # fmt: skip
    loader, _ = create_dataloader(
        load_data_yaml(yaml)["train"], imgsz=args.img, batch_size=2, stride=32, augment=False, workers=0
    )
    return [b[0].float() / 255 for b in loader]


def float_model(cfg: str, images: list[torch.Tensor]) -> DetectionModel:
    return untrained_model(cfg, images, nc=80)


class Reader:
    """ONNX Runtime's ``CalibrationDataReader`` over the calibration images, one image per call."""

    def __init__(self, images: list[torch.Tensor], input_name: str) -> None:
        self.items = iter([{input_name: x[i : i + 1].numpy()} for x in images for i in range(x.shape[0])])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def ort_ptq(fp32: Path, out: Path, images: list[torch.Tensor]) -> None:
    """The peer: ORT's static QDQ quantization of the float ONNX (U8 activations, per-channel S8 weights)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    tmp = out.with_name(out.name + ".tmp")
    quantize_static(
        str(fp32), str(tmp), Reader(images, name), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
    )  # fmt: skip
    os.replace(tmp, out)


def build(args: argparse.Namespace) -> dict[str, Path]:
    """The three ONNX files, made only where ``--cache-dir`` lacks them (``--rebuild``: always)."""
    root = Path(args.cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    paths = {k: root / f"{args.cfg}-{args.img}-{k}.onnx" for k in ("fp32", "qat", "qat-ort", "ort-ptq")}
    if args.rebuild:
        for p in paths.values():
            p.unlink(missing_ok=True)
    if not paths["fp32"].is_file():
        paths["ort-ptq"].unlink(missing_ok=True)  # made from the float file: make it again too
    if all(p.is_file() for p in paths.values()):
        print(f"cached: {', '.join(str(p) for p in paths.values())}")
        return paths
    opts = ExportOptions(imgsz=args.img, dynamic=True, simplify=True)
    images = calib_images(args)
    if not all(paths[k].is_file() for k in ("fp32", "qat", "qat-ort")):
        t0 = time.perf_counter()
        model = float_model(args.cfg, images)
        print(f"{args.cfg}: batch-norm settled on {sum(len(x) for x in images)} images in {time.perf_counter() - t0:.0f} s")  # fmt: skip
        if not paths["fp32"].is_file():
            export_onnx(model, paths["fp32"], opts)
            print(f"exported {paths['fp32']}")
        for key, placement in (("qat", "trt"), ("qat-ort", "ort")):
            if not paths[key].is_file():
                t0 = time.perf_counter()
                qat = prepare_qat_model(copy.deepcopy(model), calib_method="percentile", placement=placement)
                calibrate(qat, images, n_batches=len(images))
                export_onnx(qat.eval(), paths[key], opts)
                print(f"calibrated and exported {paths[key]} ({placement} placement) in {time.perf_counter() - t0:.0f} s")  # fmt: skip
    if not paths["ort-ptq"].is_file():
        t0 = time.perf_counter()
        ort_ptq(paths["fp32"], paths["ort-ptq"], images)
        print(f"quantize_static wrote {paths['ort-ptq']} in {time.perf_counter() - t0:.0f} s")
    return paths


# --- what ONNX Runtime runs --------------------------------------------------------------------------


def optimized_ops(proto: onnx.ModelProto, threads: int) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime runs after its optimizations (``optimized_model_filepath``),
    as ``op`` or ``domain:op``."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bench_ort_") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        graph = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    ops = Counter(
        f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in graph.node
    )
    return dict(sorted(ops.items()))


def op_summary(ops: dict[str, int]) -> dict[str, int]:
    """``OPS`` over all domains (``Conv`` also counts FusedConv and the NCHWc Conv)."""
    out = Counter()
    for key, n in ops.items():
        op = key.rsplit(":", 1)[-1]
        if op in ("FusedConv",):
            op = "Conv"
        if op in OPS:
            out[op] += n
    return {op: out.get(op, 0) for op in OPS}


def graph_info(path: Path, rewrite: str, threads: int) -> dict[str, Any]:
    proto = onnx.load(str(path))
    if rewrite == "u8":
        proto = to_u8(proto)
    elif rewrite == "qlinear":
        proto = to_ort_qlinear(proto)
    elif rewrite == "integer":
        proto = to_ort_integer(proto)
    ops = optimized_ops(proto, threads)
    qdq = count_qdq(proto) if any(n.op_type == "QuantizeLinear" for n in proto.graph.node) else {}
    return {"qdq": qdq, "optimized_ops": ops, "conv_ops": op_summary(ops)}


# --- report ------------------------------------------------------------------------------------------


def median(rep: dict[str, Any], batch: int) -> float:
    return next(r["latency_ms"]["median"] for r in rep["results"] if r["batch"] == batch)


def table(reports: dict[str, dict], infos: dict[str, dict], batches: list[int]) -> str:
    lines = [
        "| Model | Batch | p50 (ms) | p99 (ms) | qps | images/s | vs FP32 | vs peer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in batches:
        for label, rep in reports.items():
            r = next(r for r in rep["results"] if r["batch"] == b)
            p50 = r["latency_ms"]["median"]
            lines.append(
                f"| {label} | {b} | {p50:.1f} | {r['latency_ms']['p99']:.1f} | {r['throughput_qps']:.2f} "
                f"| {r['ips']:.2f} | {p50 / median(reports[FP32], b):.2f}x | {p50 / median(reports[PEER], b):.2f}x |"
            )
    lines += ["", "| Model | " + " | ".join(OPS) + " |", "|---|" + "---|" * len(OPS)]
    for label, info in infos.items():
        lines.append(f"| {label} | " + " | ".join(str(info["conv_ops"][op]) for op in OPS) + " |")
    for label, info in infos.items():
        c = info["conv_ops"]
        if info["qdq"] and c["Conv"] and not (c["QLinearConv"] or c["ConvInteger"]):
            lines.append(
                f"\nnote: {label} runs all {c['Conv']} convolutions in float: ONNX Runtime fuses Q/DQ into "
                "QLinearConv only around DQ -> Conv -> Q, and here no QuantizeLinear follows the convs"
            )
    return "\n".join(lines)


def checks(reports: dict[str, dict], batches: list[int]) -> list[dict[str, Any]]:
    out = []
    for model, ref, limit in (
        (INT, FP32, TARGET_VS_FP32), (INT, PEER, TARGET_VS_PEER),
        (ORTQ, FP32, TARGET_VS_FP32), (ORTQ, PEER, TARGET_VS_PEER),
    ):  # fmt: skip
        ratios = {b: median(reports[model], b) / median(reports[ref], b) for b in batches}
        out.append(
            {
                "check": f"{model} median latency <= {limit} x {ref}",
                "limit": limit,
                "ratios": {str(b): round(r, 3) for b, r in ratios.items()},
                "pass": all(r <= limit for r in ratios.values()),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default="gelan-c")
    ap.add_argument("--img", type=int, default=640)
    ap.add_argument("--batch", default="1,4", help="batch sizes, comma separated")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (and torch's)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured per model and batch")
    ap.add_argument("--warmup", type=float, default=500.0, help="warm-up per model and batch, ms")
    ap.add_argument("--calib-images", type=int, default=8, help="synthetic images for BN, QAT and ORT calibration")  # fmt: skip
    ap.add_argument("--cache-dir", default="/tmp/bench_ort")
    ap.add_argument("--rebuild", action="store_true", help="export and quantize again even if cached")
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()
    batches = parse_batches(args.batch)
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # no per-session warnings about unused initializers and such

    paths = build(args)
    specs = {
        FP32: (paths["fp32"], "none"), S8: (paths["qat"], "none"), U8: (paths["qat"], "u8"),
        INT: (paths["qat"], "integer"), ORTQ: (paths["qat-ort"], "qlinear"), PEER: (paths["ort-ptq"], "none"),
    }  # fmt: skip
    infos = {label: graph_info(path, rw, args.threads) for label, (path, rw) in specs.items()}
    models = {label: OrtModel(path, threads=args.threads, rewrite=rw) for label, (path, rw) in specs.items()}
    config = BenchConfig(warmup_ms=args.warmup, duration_s=args.duration)
    reports: dict[str, dict] = {}
    for b in batches:  # interleaved: every model at this batch size, then the next batch size
        for label, m in models.items():
            rep = run_benchmark(OrtRunner(m, imgsz=args.img), [b], config, model=args.cfg, precision=m.precision, progress=False)  # fmt: skip
            if label in reports:
                reports[label]["results"] += rep["results"]
            else:
                reports[label] = {**rep, "label": label}
            r = rep["results"][0]
            print(f"  {label:<28} batch {b}: p50 {r['latency_ms']['median']:.1f} ms ({r['iterations']} runs)")

    print(f"\n{args.cfg} {args.img}x{args.img}, ONNX Runtime {ort.__version__} CPU, {args.threads} threads, "
          f"{args.duration:g} s per case ({cpu_device(args.threads)['Device']})\n")  # fmt: skip
    print(table(reports, infos, batches))
    results = checks(reports, batches)
    print()
    for c in results:
        ratios = ", ".join(f"batch {b}: {r:.2f}x" for b, r in c["ratios"].items())
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['check']} ({ratios})")
    if args.json_out:
        doc = {
            "args": vars(args),
            "device": cpu_device(args.threads),
            "onnxruntime": ort.__version__,
            "models": [
                {
                    "label": label,
                    "onnx": str(specs[label][0]),
                    "rewrite": specs[label][1],
                    **infos[label],
                    "report": reports[label],
                }
                for label in specs
            ],
            "checks": results,
        }
        Path(args.json_out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The options of a ``quantize`` run (:class:`QuantizeOptions`) and the quantization vocabulary
(calibration methods, placements). The ``quantize`` command's flags are generated from these fields;
standard library only, so building the command line does not import torch or ModelOpt."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yolov9_qat.options import option

#: ``max``: the largest |x| seen; histogram methods: ``percentile`` (of |x|), ``mse`` (least squared
#: quantization error), ``entropy`` (least KL divergence, TensorRT's classic calibrator)
CALIB_METHODS: tuple[str, ...] = ("mse", "percentile", "entropy", "max")
#: MSE histogram calibration: the best QAT AP of the four methods over the five activations (README's
#: calibration table, ``benchmarks/bench_quant_variants.py --calib``); upstream YOLOv9-QAT moved from
#: the 99.999th percentile to it as well
DEFAULT_CALIB_METHOD = "mse"
DEFAULT_PERCENTILE = 99.999
#: ``trt``: TensorRT's rules (the record's); ``ort``: also quantize every op's output for ONNX Runtime
PLACEMENTS: tuple[str, ...] = ("trt", "ort")
DEFAULT_PLACEMENT = "trt"


@dataclass(frozen=True)
class QuantizeOptions:
    """Everything ``quantize`` takes besides the checkpoint and the data set. Defaults are upstream
    YOLOv9-QAT's (batch 10, 200 iterations x 10 epochs, lr 1e-5, seed 57, MSE histogram calibration
    over 25 batches, feature MSE alone)."""

    hyp: str | Mapping[str, Any] = option("hyp.scratch-high", "hyper-parameter YAML (name, path or a mapping): the QAT loader's augmentation and the detection loss's gains")  # fmt: skip
    img: int = option(640, "image size", flags=("--img", "--imgsz"), type=int)
    batch_size: int = option(10, "total batch size (all processes)", flags=("--batch-size", "--batch"), type=int)  # fmt: skip
    device: str = option("", "cpu, 0 or 0,1 (default: GPU 0 if there is one)")
    iters: int = option(200, "QAT iterations per epoch", type=int)
    epochs: int = option(10, "QAT epochs (0: PTQ only)", type=int)
    seed: int = option(57, "random seed", type=int)
    supervision_stride: int = option(1, "supervise every N-th layer's output", type=int)
    eval_origin: bool = option(True, "skip the float model's evaluation", negate=True)
    eval_ptq: bool = option(True, "skip the PTQ evaluation", negate=True)
    calib_method: str = option(DEFAULT_CALIB_METHOD, "calibration method", choices=CALIB_METHODS)
    calib_batches: int = option(25, "calibration batches read", type=int)
    calib_batch_size: int | None = option(
        None,
        "images per calibration batch (default: --batch-size; independent of the engine's batch)",
        type=int,
    )
    skip_layers: tuple[int, ...] = option(
        (), "layers kept in float", cli=False
    )  # --skip-layers: cli.py parses it
    percentile: float = option(DEFAULT_PERCENTILE, "percentile of the percentile method", cli=False)
    placement: str = option(
        DEFAULT_PLACEMENT, "Q/DQ rules: trt (TensorRT's, the record's) or ort (every op's output too: ONNX "
        "Runtime's integer kernels on the CPU)", choices=PLACEMENTS,
    )  # fmt: skip
    head_float: bool = option(
        False, "keep the detect head's last 1x1 convs float (as upstream's tools do; default: INT8 in, float "
        "out); stored in the checkpoint and the ONNX metadata, respected by lint",
    )  # fmt: skip
    activation: str | None = option(None, "expected activation (checked against the checkpoint)")
    lr: float = option(1e-5, "QAT learning rate", type=float)
    float_control: bool = option(
        False, "also fine-tune the float model with the QAT run's exact schedule, quantizers off "
        "(summary.json: origin_ft; QAT - origin_ft is the cost of quantization alone)",
    )  # fmt: skip
    det_loss_weight: float = option(
        0.0, "add the detection loss to the feature MSE (0: upstream)", type=float
    )
    workers: int = option(2, "data-loader processes per process", type=int)
    project: str = option("runs/qat", "runs folder (a str or a Path)")
    name: str = option("exp", "run name (runs/qat/<name>)")
    exist_ok: bool = option(False, "reuse runs/qat/<name> instead of numbering a new one")
    progress: bool = option(True, "no progress bars", negate=True)

"""The GPU record (``reproduce --profile gpu``, ``pytest -m gpu``): per activation, QAT of the user's
converted checkpoint on the user's data, ONNX export, TensorRT engines per precision (INT8, FP16, MP)
and batch size (1, 4, 8, 12, 16, and the Resilience engine), TensorRT evaluation.

Without ``--weights`` the latency half still runs: an untrained ``gelan-c`` of each activation, PTQ
calibrated on random images, has the same graph and the same speed as a trained one; the accuracy
figures then need ``--weights`` and ``--data``. The TensorRT work goes through
:mod:`yolov9_qat.runtime.trt_cli`, the same code as ``build`` / ``bench`` / ``val --backend tensorrt``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from yolov9_qat.errors import UserError
from yolov9_qat.record.cache import Cache
from yolov9_qat.record.pipeline import ACTIVATIONS, METRIC_KEYS
from yolov9_qat.record.rows import ROW, Row, names, select

BATCHES = (1, 4, 8, 12, 16)
#: the GPU record's rows (:data:`yolov9_qat.record.rows.ROWS`): latency rows per TensorRT precision
#: (fp16 runs the float (Origin) graph), evaluation rows
PRECISIONS: tuple[str, ...] = names(select("gpu", latency=True))
ACCURACY_ROWS: tuple[Row, ...] = select("gpu", accuracy=True)
#: the modules each step runs: their import closure keys the step's artefacts (:func:`code_version`)
STEP_ROOTS: dict[str, tuple[str, ...]] = {
    "gpu_models": (
        "yolov9_qat.export.onnx", "yolov9_qat.quant.pipeline", "yolov9_qat.bench.untrained",
        "yolov9_qat.quant.quantize",
    ),
    "gpu_val": (
        "yolov9_qat.data.config", "yolov9_qat.eval.evaluator", "yolov9_qat.runtime.engine_options",
        "yolov9_qat.runtime.trt_cli",
    ),
    "gpu_bench": ("yolov9_qat.runtime.engine_options", "yolov9_qat.runtime.trt_cli"),
}  # fmt: skip


def weights_for(template: str, act: str) -> Path | None:
    """``--weights`` for activation ``act``: a path, or a template with ``{act}`` (one file per activation)."""
    if not template:
        return None
    p = Path(template.format(act=act)) if "{act}" in template else Path(template)
    if not p.is_file():
        raise UserError(f"--weights {p}: no such file")
    return p


class GpuRecord:
    """The steps of the GPU record over a :class:`Cache` (engines live in TensorRT's own engine cache)."""

    def __init__(
        self, cache: Cache, data: str = "", weights: str = "", img: int = 640, device: str = "0",
        duration_s: float = 10.0, warmup_ms: float = 500.0, batches: tuple[int, ...] = BATCHES,
    ) -> None:  # fmt: skip
        from yolov9_qat.runtime.tensorrt import require_gpu_stack

        require_gpu_stack("the GPU record")
        self.cache, self.data, self.weights, self.img, self.device = cache, data, weights, img, device or "0"
        self.duration_s, self.warmup_ms, self.batches = duration_s, warmup_ms, tuple(batches)
        self.gpu = torch.cuda.get_device_name(int(self.device.split(",")[0]))

    def _key(self, act: str) -> dict[str, Any]:
        w = weights_for(self.weights, act)
        return {"act": act, "img": self.img, "data": self.data, "weights": str(w) if w else "",
                "weights_size": w.stat().st_size if w else 0}  # fmt: skip

    def models(self, act: str) -> Path:
        """Folder with ``fp32.onnx`` and ``int8.onnx`` (and ``summary.json`` when trained weights were given)."""
        from yolov9_qat.export.onnx import ExportOptions, export_onnx, load_for_export

        def build(tmp: Path) -> None:
            opts = ExportOptions(imgsz=self.img, dynamic=True, simplify=True)
            w = weights_for(self.weights, act)
            if w is not None and self.data:
                from yolov9_qat.quant.pipeline import quantize

                summary = quantize(
                    w, self.data, img=self.img, device=self.device, project=tmp, name="qat", exist_ok=True
                )
                (tmp / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
                qat, _ = load_for_export(summary["weights_out"]["qat_best"])
                fp32, _ = load_for_export(w)
            else:
                fp32, qat = _untrained_pair(act, self.img)
            export_onnx(fp32, tmp / "fp32.onnx", opts, precision="fp32")
            export_onnx(qat, tmp / "int8.onnx", opts, precision="int8")

        return self.cache.get("gpu_models", self._key(act), build, STEP_ROOTS["gpu_models"])

    def accuracy(self, act: str) -> dict[str, dict[str, float]]:
        """The evaluation rows (:data:`ACCURACY_ROWS`: Origin (Pytorch), INT8 (Pytorch), INT8 (TensorRT));
        empty without ``--weights`` and ``--data``."""
        folder = self.models(act)
        if not (folder / "summary.json").is_file():
            return {}
        summary = json.loads((folder / "summary.json").read_text())
        pick = lambda m: {k: float(m[k]) for k in METRIC_KEYS}  # noqa: E731
        return {
            row.name: pick(summary[row.summary] if row.summary else self.tensorrt_metrics(act, row))
            for row in ACCURACY_ROWS
        }

    def tensorrt_metrics(self, act: str, row: Row) -> dict[str, Any]:
        """The evaluator's result for evaluation row ``row``: its ONNX graph on TensorRT (cached)."""
        folder = self.models(act)
        if row.onnx is None or row.precision is None:
            raise ValueError(f"{row.name}: not a TensorRT evaluation row")
        onnx, precision = folder / f"{row.onnx}.onnx", row.precision

        def build(tmp: Path) -> None:
            from yolov9_qat.data.config import load_data_yaml
            from yolov9_qat.eval.evaluator import Evaluator
            from yolov9_qat.runtime.engine_options import EngineOptions
            from yolov9_qat.runtime.trt_cli import tensorrt_val_predictor

            data = load_data_yaml(self.data)
            options = EngineOptions(precision=precision, img=self.img, device=self.device)
            predict = tensorrt_val_predictor(options, onnx, batch_size=32, data=data)
            result = Evaluator.for_data(data, self.img, batch_size=32).run(predict)
            (tmp / "metrics.json").write_text(json.dumps(result, default=str))

        key = {**self._key(act), "gpu": self.gpu, "row": row.name, "from": folder.name}
        out = self.cache.get("gpu_val", key, build, STEP_ROOTS["gpu_val"])
        return json.loads((out / "metrics.json").read_text())

    def latency(self, act: str, precision: str) -> dict[str, dict[str, float]]:
        """Rows ``"1"`` ... ``"16"`` and ``"resilience"``: p99 ms, qps, images/s (trtexec's method)."""
        rows = {}
        for r in self.bench_report(act, precision)["results"]:
            name = "resilience" if r.get("label") == "Resilience" else str(r["batch"])
            rows[name] = {"p99_ms": r["latency_ms"]["p99"], "qps": r["throughput_qps"], "ips": r["ips"]}
        return rows

    def engine_layers(self, act: str, precision: str) -> dict[str, Any]:
        """The inspector summary of the batch-1 engine (layer precisions, Reformat count, INT8 conv share)."""
        engines = self.bench_report(act, precision).get("engines") or {}
        entry = engines.get("1") or next(iter(engines.values()), {})
        return entry.get("layers") or {}

    def bench_report(self, act: str, precision: str) -> dict[str, Any]:
        """The ``bench --backend tensorrt`` report of one activation and precision (cached)."""
        from yolov9_qat.runtime.engine_options import EngineOptions
        from yolov9_qat.runtime.trt_cli import bench_tensorrt

        folder = self.models(act)
        onnx = folder / f"{ROW[precision].onnx}.onnx"

        def build(tmp: Path) -> None:
            options = EngineOptions(
                precision=precision, img=self.img, device=self.device, warmup_ms=self.warmup_ms,
                duration_s=self.duration_s, use_cuda_graph=True, use_spin_wait=True, no_data_transfers=True,
                resilience=True, runner="polygraphy",
            )  # fmt: skip
            report = bench_tensorrt(options, onnx, self.batches)
            (tmp / "bench.json").write_text(json.dumps(report, default=str))

        key = {
            **self._key(act),
            "precision": precision,
            "gpu": self.gpu,
            "batches": self.batches,
            "duration": self.duration_s,
            "from": folder.name,
        }
        return json.loads(
            (self.cache.get("gpu_bench", key, build, STEP_ROOTS["gpu_bench"]) / "bench.json").read_text()
        )

    def run(self, activations: tuple[str, ...] = ACTIVATIONS) -> dict[str, Any]:
        from yolov9_qat.bench.device import cuda_device

        dev = cuda_device(int(self.device.split(",")[0]))
        record: dict[str, Any] = {
            "source": "yolov9-qat reproduce --profile gpu",
            "device": {
                "name": dev["Device"],
                "compute_capability": dev["Compute Capability"],
                "sms": dev["SMs"],
            },
            "latency": {a: {p: self.latency(a, p) for p in PRECISIONS} for a in activations},
        }
        accuracy = {a: acc for a in activations if (acc := self.accuracy(a))}
        if accuracy:
            record["accuracy"] = accuracy
        return record


def _untrained_pair(act: str, img: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A float gelan-c of activation ``act`` and its PTQ-calibrated Q/DQ twin (for latency only)."""
    import copy

    from yolov9_qat.bench.untrained import untrained_model
    from yolov9_qat.quant.quantize import calibrate, prepare_qat_model

    images = [torch.rand(2, 3, img, img, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    fp32 = untrained_model("gelan-c", images, nc=80, activation=act)
    qat = prepare_qat_model(copy.deepcopy(fp32), calib_method="max")
    calibrate(qat, images, n_batches=2)
    return fp32, qat.eval()


def run_gpu_record(args: argparse.Namespace) -> int:
    """``yolov9-qat reproduce --profile gpu``."""
    from yolov9_qat.record.report import write_report
    from yolov9_qat.utils.runs import run_dir

    acts = tuple(a for a in (args.activations or ",".join(ACTIVATIONS)).split(",") if a)
    rec = GpuRecord(
        Cache(args.cache_dir or None), data=args.data, weights=args.weights, img=args.img, device=args.device
    )
    record = rec.run(acts)
    save_dir = run_dir(args.project, args.name, args.exist_ok)
    paths = write_report(record, save_dir, title="yolov9-qat record (GPU, TensorRT)")
    print((save_dir / "record.md").read_text())
    print(f"record: {paths['markdown']}")
    return 0

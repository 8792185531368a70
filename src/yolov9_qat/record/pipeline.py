"""The record as a pipeline of cached steps, per activation:

    synth -> train yolov9 -> reparameterize -> quantize (PTQ + QAT) -> export ONNX (float, Q/DQ,
    end-to-end) -> evaluate on ONNX Runtime -> benchmark

Every step is an artefact of :class:`~yolov9_qat.record.cache.Cache` (keyed by its parameters, its
inputs and the code it runs), so ``reproduce`` resumes after an interruption and the test suite's
fixtures share the very same artefacts. A :class:`Profile` holds every knob; ``cpu`` is the record
``reproduce`` writes, ``test`` a smaller one the CI suite builds within its time budget.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from yolov9_qat.errors import UserError
from yolov9_qat.models.activations import canonical_activation
from yolov9_qat.record.cache import Cache
from yolov9_qat.utils.runs import torch_threads

log = logging.getLogger("yolov9_qat.record")

ACTIVATIONS: tuple[str, ...] = ("SiLU", "ReLU", "FReLU", "Mish", "AconC")
#: ONNX graphs per activation: the converted float model, the QAT model, the QAT model with NMS inside,
#: and the QAT model of the ``ort`` placement (quantize --placement ort: ONNX Runtime's integer ops)
ONNX_KINDS: tuple[str, ...] = ("fp32", "int8", "int8_e2e", "int8ort")
#: the QAT placement behind each quantized ONNX kind
PLACEMENT_OF: dict[str, str] = {"int8": "trt", "int8_e2e": "trt", "int8ort": "ort"}
#: what each benchmark row runs on ONNX Runtime: (ONNX kind, rewrite); see runtime/onnxruntime.py
BENCH_KINDS: dict[str, tuple[str, str]] = {
    "fp32": ("fp32", "none"),
    "int8": ("int8", "auto"),  # TensorRT's placement, deployable form: exact integer convs on VNNI CPUs
    "int8_qdq": ("int8", "none"),  # the Q/DQ graph as exported (TensorRT's form)
    "int8ort": ("int8ort", "auto"),  # the ort placement: QLinear ops end to end on VNNI CPUs
}
#: the latency rows of the record (the others stay in the raw benchmark reports)
LATENCY_KINDS: tuple[str, ...] = ("fp32", "int8", "int8ort")
METRIC_KEYS = ("AP", "AP50", "precision", "recall")


@dataclass(frozen=True)
class Profile:
    """Everything that decides the record's numbers (part of every artefact's key)."""

    name: str
    # data: the embedded synthetic set
    synth_seed: int = 0
    n_train: int = 1500
    n_val: int = 300
    imgsz: int = 160
    # training (yolov9, dual head), then reparameterization onto gelan
    cfg: str = "yolov9-n"
    gelan_cfg: str = "gelan-n"
    epochs: int = 6
    batch_size: int = 16
    hyp: str = "hyp.cpu-adamw"
    optimizer: str = "AdamW"
    close_mosaic: int = 0
    seed: int = 0
    # quantization
    calib_method: str = "percentile"
    calib_batches: int = 16
    qat_epochs: int = 2
    qat_iters: int = 80
    qat_lr: float = 1e-4
    qat_batch: int = 10
    det_loss_weight: float = 1.0
    # export, evaluation, benchmark
    opset: int = 17
    val_batch: int = 32
    bench_batches: tuple[int, ...] = (1, 4, 8)
    bench_duration_s: float = 2.0
    bench_warmup_ms: float = 300.0
    threads: int = 0  # 0: all cores
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def key(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d


PROFILES: dict[str, Profile] = {
    "cpu": Profile("cpu"),
    "test": Profile(
        "test", n_train=800, n_val=300, epochs=6, calib_batches=4, qat_epochs=1, qat_iters=30,
        bench_batches=(1, 4), bench_duration_s=0.5, bench_warmup_ms=100.0, threads=1,
    ),
}  # fmt: skip


def get_profile(name: str, **overrides: Any) -> Profile:
    if name not in PROFILES:
        raise UserError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return replace(PROFILES[name], **overrides) if overrides else PROFILES[name]


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    return {k: float(result[k]) for k in METRIC_KEYS}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str))


class Pipeline:
    """The steps of the record for one profile over one cache (see the module docstring)."""

    def __init__(
        self,
        profile: Profile,
        cache: Cache,
        workers: int = 2,
        progress: bool = True,
        echo: Callable[[str], None] | None = print,
    ) -> None:
        self.profile, self.cache, self.workers, self.progress = profile, cache, workers, progress
        self.echo = echo or (lambda _msg: None)
        self.threads = profile.threads or torch.get_num_threads()

    # --- helpers -------------------------------------------------------------------------------
    def _step(
        self, step: str, what: str, params: dict[str, Any], build: Callable[[Path], Any], code: Iterable[str]
    ) -> Path:
        t0 = time.perf_counter()
        built = []

        def run(tmp: Path) -> None:
            self.echo(f"  {what} ...")
            built.append(True)
            build(tmp)

        with torch_threads(self.threads):
            out = self.cache.get(step, {"profile": self.profile.key(), **params}, run, code)
        if built:
            self.echo(f"  {what}: {time.perf_counter() - t0:.0f} s")
        return out

    # --- steps -----------------------------------------------------------------------------------
    def data(self) -> Path:
        """The synthetic data set; returns its ``data.yaml``."""
        from yolov9_qat.data.synth import generate

        p = self.profile

        def build(tmp: Path) -> None:
            import yaml

            data_yaml = generate(
                tmp / "synth",
                seed=p.synth_seed,
                n_train=p.n_train,
                n_val=p.n_val,
                imgsz=p.imgsz,
                progress=False,
            )
            d = yaml.safe_load(data_yaml.read_text())
            d["path"] = "."  # relative to data.yaml: the folder is renamed into the cache after the build
            data_yaml.write_text(yaml.safe_dump(d, sort_keys=False))

        return (
            self._step("synth", "synthetic data set", {}, build, ("data/synth.py",)) / "synth" / "data.yaml"
        )

    def trained(self, act: str) -> Path:
        """``best.pt`` of the yolov9 model trained with activation ``act``."""
        from yolov9_qat.train.trainer import Trainer, TrainOptions

        p, data = self.profile, self.data()

        def build(tmp: Path) -> None:
            opt = TrainOptions(
                data=str(data), cfg=p.cfg, activation=act, epochs=p.epochs, batch_size=p.batch_size, img=p.imgsz,
                hyp=p.hyp, device="cpu", workers=self.workers, project=str(tmp), name="run", exist_ok=True,
                close_mosaic=p.close_mosaic, seed=p.seed, optimizer=p.optimizer, progress=self.progress, noplots=True,
            )  # fmt: skip
            summary = Trainer(opt).run()
            shutil.copy2(summary["weights"], tmp / "best.pt")
            _write_json(tmp / "train.json", summary)

        code = ("models", "train", "data", "eval", "cfg", "utils")
        return (
            self._step("train", f"{act}: train {p.cfg} ({p.epochs} epochs)", {"act": act}, build, code)
            / "best.pt"
        )

    def converted(self, act: str) -> Path:
        """The reparameterized (gelan) float checkpoint."""
        from yolov9_qat.models.checkpoint import load, save
        from yolov9_qat.models.reparam import reparameterize

        src = self.trained(act)

        def build(tmp: Path) -> None:
            model = reparameterize(load(src).model, self.profile.gelan_cfg)
            save(
                model,
                tmp / "converted.pt",
                meta={"reparameterized_from": self.profile.cfg, "activation": act},
            )

        key = {"act": act, "from": src.parent.name}
        return self._step("convert", f"{act}: reparameterize", key, build, ("models", "cfg")) / "converted.pt"

    def quantized(self, act: str, placement: str = "trt") -> Path:
        """The QAT run folder: ``qat.pt`` (best QAT checkpoint) and ``summary.json`` (Origin, PTQ, QAT,
        and Origin fine-tuned: the float control with the QAT run's schedule, quantizers off).

        ``placement="ort"``: the ONNX Runtime placement (no Origin evaluation nor float control: the
        ``trt`` run has them).
        """
        from yolov9_qat.quant.pipeline import quantize

        p, data, src = self.profile, self.data(), self.converted(act)

        def build(tmp: Path) -> None:
            summary = quantize(
                src, data, hyp=p.hyp, img=p.imgsz, batch_size=p.qat_batch, device="cpu", iters=p.qat_iters,
                epochs=p.qat_epochs, seed=p.seed, calib_method=p.calib_method, calib_batches=p.calib_batches,
                project=tmp, name="run", exist_ok=True, lr=p.qat_lr, workers=self.workers,
                progress=self.progress, det_loss_weight=p.det_loss_weight, placement=placement,
                eval_origin=placement == "trt", float_control=placement == "trt",
            )  # fmt: skip
            shutil.copy2(summary["weights_out"]["qat_best"], tmp / "qat.pt")
            _write_json(tmp / "summary.json", summary)

        key: dict[str, Any] = {"act": act, "from": src.parent.name}
        if placement != "trt":
            key["placement"] = placement
        code = ("models", "quant", "train", "data", "eval", "cfg", "utils")
        what = f"{act}: PTQ + QAT ({p.qat_epochs} x {p.qat_iters} it{', ort placement' if placement != 'trt' else ''})"
        return self._step("quantize", what, key, build, code)

    def onnx(self, act: str, kind: str) -> Path:
        """ONNX file ``kind`` (:data:`ONNX_KINDS`) of activation ``act``."""
        from yolov9_qat.export.onnx import ExportOptions, export_onnx, load_for_export

        if kind not in ONNX_KINDS:
            raise ValueError(f"kind must be one of {ONNX_KINDS}")
        p = self.profile
        src = self.converted(act) if kind == "fp32" else self.quantized(act, PLACEMENT_OF[kind]) / "qat.pt"
        e2e = "onnx" if kind.endswith("_e2e") else None

        def build(tmp: Path) -> None:
            model, info = load_for_export(src)
            opts = ExportOptions(
                imgsz=p.imgsz, dynamic=True, simplify=True, opset=p.opset, end2end=e2e,
                iou_thres=0.7, conf_thres=0.001, max_det=300,  # the evaluator's settings: same AP
            )  # fmt: skip
            export_onnx(model, tmp / "model.onnx", opts, precision=info["precision"])

        key = {"act": act, "kind": kind, "from": src.parent.name}
        return (
            self._step(
                "export",
                f"{act}: export {kind} ONNX",
                key,
                build,
                ("models", "quant", "export/onnx.py", "export/end2end.py"),
            )
            / "model.onnx"
        )

    def ort_metrics(self, act: str, kind: str) -> dict[str, Any]:
        """AP, AP50, precision, recall of ONNX graph ``kind`` on ONNX Runtime (rewrite ``auto``, as deployed)."""
        from yolov9_qat.data.config import load_data_yaml
        from yolov9_qat.eval.evaluator import Evaluator
        from yolov9_qat.runtime.onnxruntime import OrtModel

        src = self.onnx(act, kind)

        def build(tmp: Path) -> None:
            evaluator = Evaluator.for_data(
                load_data_yaml(self.data()), self.profile.imgsz, batch_size=self.profile.val_batch, workers=0
            )
            model = OrtModel(src, threads=self.threads)
            result = evaluator.run(model, progress=False)
            _write_json(tmp / "metrics.json", {**result, "runtime": model.describe()})

        key = {"act": act, "kind": kind, "from": src.parent.name}
        code = (
            "eval",
            "runtime",
            "export/qdq_u8.py",
            "export/lint.py",
            "export/end2end.py",
            "bench/device.py",
        )
        out = self._step("ort_eval", f"{act}: evaluate {kind} on ONNX Runtime", key, build, code)
        return json.loads((out / "metrics.json").read_text())

    def bench(self, act: str, kind: str) -> dict[str, Any]:
        """Benchmark report of :data:`BENCH_KINDS` row ``kind`` on ONNX Runtime (this machine)."""
        from yolov9_qat.bench.device import cpu_model
        from yolov9_qat.bench.harness import BenchConfig, run_benchmark
        from yolov9_qat.runtime.onnxruntime import OrtModel, OrtRunner

        onnx_kind, rewrite = BENCH_KINDS[kind]
        src = self.onnx(act, onnx_kind)
        p = self.profile

        def build(tmp: Path) -> None:
            runner = OrtRunner(OrtModel(src, threads=self.threads, rewrite=rewrite), imgsz=p.imgsz)
            config = BenchConfig(warmup_ms=p.bench_warmup_ms, duration_s=p.bench_duration_s)
            report = run_benchmark(runner, p.bench_batches, config, model=act, precision=kind, progress=False)
            _write_json(tmp / "bench.json", report)

        key = {
            "act": act,
            "kind": kind,
            "from": src.parent.name,
            "machine": cpu_model(),
            "threads": self.threads,
        }
        out = self._step(
            "bench",
            f"{act}: benchmark {kind} on ONNX Runtime",
            key,
            build,
            ("bench", "runtime", "export/qdq_u8.py", "export/lint.py"),
        )
        return json.loads((out / "bench.json").read_text())

    # --- the record ------------------------------------------------------------------------------
    def activation_record(self, act: str, bench: bool = True) -> dict[str, Any]:
        """Everything the record says about one activation (accuracy rows, latency rows, extras)."""
        summary = json.loads((self.quantized(act) / "summary.json").read_text())
        summary_ort = json.loads((self.quantized(act, "ort") / "summary.json").read_text())
        best = summary.get("best") or {}
        accuracy = {
            "origin_pytorch": _metrics(summary["origin"]),
            "origin_ft_pytorch": _metrics(summary["origin_ft"]),
            "ptq_pytorch": _metrics(summary["ptq"]),
            "int8_pytorch": _metrics(best),
            "origin_onnxruntime": _metrics(self.ort_metrics(act, "fp32")),
            "int8_onnxruntime": _metrics(self.ort_metrics(act, "int8")),
            "int8ort_pytorch": _metrics(summary_ort.get("best") or {}),
            "int8ort_onnxruntime": _metrics(self.ort_metrics(act, "int8ort")),
        }
        e2e = _metrics(self.ort_metrics(act, "int8_e2e"))
        latency: dict[str, Any] = {}
        raw: dict[str, Any] = {}
        if bench:
            for kind in BENCH_KINDS:
                report = self.bench(act, kind)
                raw[kind] = report
                if kind in LATENCY_KINDS:
                    latency[kind] = {
                        str(r["batch"]): {"p99_ms": r["latency_ms"]["p99"], "qps": r["throughput_qps"], "ips": r["ips"],
                                          "median_ms": r["latency_ms"]["median"]}
                        for r in report["results"]
                    }  # fmt: skip
        return {
            "accuracy": accuracy,
            "latency": latency,
            "int8_end2end_onnxruntime": e2e,
            "bench": raw,
            "qat": summary,
        }

    def run(self, activations: Iterable[str] = ACTIVATIONS, bench: bool = True) -> dict[str, Any]:
        """The whole record; returns the dict ``record.json`` holds (baseline schema + extras)."""
        from yolov9_qat.bench.device import cpu_device

        acts = [canonical_activation(a) for a in activations]
        per_act = {}
        for i, act in enumerate(acts, 1):
            self.echo(f"[{i}/{len(acts)}] {act}")
            per_act[act] = self.activation_record(act, bench=bench)
        dev = cpu_device(self.threads)
        record = {
            "source": f"yolov9-qat reproduce --profile {self.profile.name}",
            "device": {"name": dev["Device"], "threads": self.threads, "vnni": dev["VNNI"]},
            "comparison": {"a": "int8_onnxruntime", "b": "origin_pytorch"},
            "accuracy": {a: r["accuracy"] for a, r in per_act.items()},
            "latency": {a: r["latency"] for a, r in per_act.items() if r["latency"]},
            "extras": {
                a: {
                    "int8_end2end_onnxruntime": r["int8_end2end_onnxruntime"],
                    "bench": r["bench"],
                    "qat_epochs": r["qat"].get("epochs"),
                    "calibration": r["qat"].get("calibration"),
                }
                for a, r in per_act.items()
            },
            "profile": self.profile.key(),
        }
        return record

"""Quantization benchmark: per activation, Origin vs PTQ (max), PTQ (mse) and QAT INT8 in PyTorch.

For each activation (SiLU, ReLU, FReLU, Mish, AconC): train (or reuse) yolov9-n on the default
synthetic set, let ``quantize`` reparameterize it onto gelan-n, and report the record's table
(AP / AP50 / P / R) with the time each stage took. Targets: QAT AP >= Origin AP - 0.005 for every
activation, QAT >= PTQ (max), quantize <= 2 minutes per model.

``--placement ort`` quantizes with the ONNX Runtime placement (every op's output quantized too) and
``--ort`` also exports the QAT model and evaluates it on ONNX Runtime (rewrite ``auto``: QLinear ops
for the ``ort`` placement), the row "INT8 QAT (ONNX Runtime)"; target there: within 0.003 AP of
"INT8 QAT (Pytorch)".

    python benchmarks/bench_quant.py --activations SiLU,ReLU --json-out quant.json
    python benchmarks/bench_quant.py --placement ort --ort --json-out quant-ort.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from yolov9_qat.data.config import load_data_yaml
from yolov9_qat.data.synth import generate
from yolov9_qat.eval.evaluator import Evaluator
from yolov9_qat.export.onnx import ExportOptions, export_onnx, load_for_export
from yolov9_qat.models.activations import ACTIVATIONS
from yolov9_qat.quant.pipeline import quantize
from yolov9_qat.runtime.onnxruntime import OrtModel
from yolov9_qat.train.trainer import Trainer, TrainOptions

KEYS = ("AP", "AP50", "precision", "recall")


def train(act: str, data: str, args: argparse.Namespace) -> tuple[Path, float]:
    run_dir = Path(args.cache_dir) / "runs" / f"yolov9-n-{act}"
    weights = run_dir / "weights" / "best.pt"
    done = run_dir / "results.json"
    if weights.is_file() and done.is_file() and json.loads(done.read_text()).get("finished"):
        return weights, 0.0  # a finished run from before (an interrupted one is trained again)
    t0 = time.perf_counter()
    opt = TrainOptions(
        data=data, cfg="yolov9-n", activation=act, hyp=args.hyp, optimizer=args.optimizer, epochs=args.epochs,
        batch_size=16, img=args.img, device="cpu", workers=2, project=str(Path(args.cache_dir) / "runs"),
        name=f"yolov9-n-{act}", exist_ok=True, close_mosaic=args.epochs, cache=True, noplots=True, progress=False,
    )  # fmt: skip
    Trainer(opt).run()
    return weights, time.perf_counter() - t0


def run(act: str, data: str, args: argparse.Namespace) -> dict:
    weights, t_train = train(act, data, args)
    out: dict = {"activation": act, "train_s": round(t_train, 1)}
    common = dict(
        data=data, img=args.img, batch_size=10, device="cpu", workers=2, progress=False, exist_ok=True,
        project=str(Path(args.cache_dir) / f"qat-{args.placement}"), calib_batches=args.calib_batches,
        placement=args.placement,
    )  # fmt: skip
    for method in ("max", "mse"):
        t0 = time.perf_counter()
        s = quantize(weights, name=f"{act}-ptq-{method}", calib_method=method, epochs=0, **common)
        out["origin"] = out.get("origin") or s["origin"]
        out[f"ptq_{method}"] = {
            **{k: s["ptq"][k] for k in KEYS},
            "time_s": round(time.perf_counter() - t0, 1),
        }
    t0 = time.perf_counter()
    s = quantize(
        weights, name=f"{act}-qat", epochs=args.qat_epochs, iters=args.iters, lr=args.qat_lr,
        det_loss_weight=args.det_loss_weight, eval_origin=False, **common,
    )  # fmt: skip
    out["qat"] = {**{k: s["best"][k] for k in KEYS}, "time_s": round(time.perf_counter() - t0, 1)}
    out["origin"] = {k: out["origin"][k] for k in KEYS}
    if args.ort:
        out["qat_ort"] = ort_metrics(Path(s["weights_out"]["qat_best"]), data, args)
    return out


def ort_metrics(weights: Path, data: str, args: argparse.Namespace) -> dict:
    """Export a QAT checkpoint and evaluate it on ONNX Runtime (2 threads, rewrite ``auto``)."""
    t0 = time.perf_counter()
    onnx_path = weights.with_suffix(".onnx")
    model, info = load_for_export(weights)
    export_onnx(model, onnx_path, ExportOptions(imgsz=args.img, dynamic=True, simplify=True), precision=info["precision"])  # fmt: skip
    ort_model = OrtModel(onnx_path, threads=2)
    res = Evaluator.for_data(load_data_yaml(data), args.img, batch_size=32, workers=0).run(
        ort_model, progress=False
    )
    return {
        **{k: res[k] for k in KEYS},
        "time_s": round(time.perf_counter() - t0, 1),
        "rewrite": ort_model.rewrite,
    }


def table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        lines += [f"\nActivation {r['activation']}\n", "| Eval Model | AP | AP50 | Precision | Recall | time (s) |", "|---|---|---|---|---|---|"]  # fmt: skip
        for label, key in (("Origin (Pytorch)", "origin"), ("PTQ max (Pytorch)", "ptq_max"), ("PTQ mse (Pytorch)", "ptq_mse"), ("INT8 QAT (Pytorch)", "qat"), ("INT8 QAT (ONNX Runtime)", "qat_ort")):  # fmt: skip
            if key not in r:
                continue
            m = r[key]
            t = m.get("time_s", r["train_s"] if key == "origin" else "")
            lines.append(
                f"| {label} | {m['AP']:.4f} | {m['AP50']:.4f} | {m['precision']:.4f} | {m['recall']:.4f} | {t} |"
            )
        ok = r["qat"]["AP"] >= r["origin"]["AP"] - 0.005 and r["qat"]["AP"] >= r["ptq_max"]["AP"]
        lines.append(f"\nQAT AP - Origin AP: {r['qat']['AP'] - r['origin']['AP']:+.4f}; targets met: {ok}")
        if "qat_ort" in r:
            d = r["qat_ort"]["AP"] - r["qat"]["AP"]
            lines.append(
                f"INT8 ONNX Runtime ({r['qat_ort']['rewrite']}) - INT8 Pytorch AP: {d:+.4f}; within 0.003: {abs(d) <= 0.003}"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--activations", default=",".join(ACTIVATIONS))
    ap.add_argument("--cache-dir", default=".cache/bench-quant")
    ap.add_argument("--hyp", default="hyp.cpu-adamw", help="training hyp (default: the CPU record's)")
    ap.add_argument("--optimizer", default="AdamW")
    ap.add_argument("--epochs", type=int, default=6, help="training epochs per activation")
    ap.add_argument("--img", type=int, default=160)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--det-loss-weight", type=float, default=1.0)
    ap.add_argument("--calib-batches", type=int, default=16)
    ap.add_argument(
        "--placement", choices=["trt", "ort"], default="trt", help="Q/DQ rules (quantize --placement)"
    )
    ap.add_argument("--ort", action="store_true", help="also evaluate the QAT model on ONNX Runtime")
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = str(generate(Path(args.cache_dir) / "synth", progress=False))
    rows = [run(act, data, args) for act in args.activations.split(",")]
    print(table(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""QAT variants beside the record's own run, everything else held equal: per activation, AP of PTQ and of
INT8 QAT in PyTorch (fake INT8) and, with ``--ort``, of the exported graph on ONNX Runtime.

The models, data, QAT schedule, selection split, export and ONNX Runtime evaluation are the record
profile's (:class:`yolov9_qat.record.pipeline.Pipeline`; trained and converted models come from the
record cache, built when missing). A variant changes the named quantize options only:

* ``--head-float``: the detect head's last 1x1 convs float (upstream's tools) against INT8 in / float out;
* ``--calib max,percentile,mse,entropy``: one run per calibration method;
* ``--seed-recipe``: the published record's recipe (feature MSE alone, ``det_loss_weight 0``, MSE calibration)
  beside ours (feature MSE plus the detection loss).

    python benchmarks/bench_quant_variants.py --head-float --ort --json-out head_float.json
    python benchmarks/bench_quant_variants.py --calib max,percentile,mse,entropy --json-out calib.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from yolov9_qat.models.activations import ACTIVATIONS
from yolov9_qat.quant.pipeline import quantize
from yolov9_qat.record.cache import Cache
from yolov9_qat.record.pipeline import Pipeline, get_profile

KEYS = ("AP", "AP50", "precision", "recall")


def _pick(m: dict | None) -> dict[str, float] | None:
    return {k: float(m[k]) for k in KEYS} if m else None


def variants(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Variant name -> the quantize options it overrides (``{}``: the record's run, from its cache)."""
    out: dict[str, dict[str, Any]] = {}
    if args.head_float:
        out.update({"default": {}, "head_float": {"head_float": True}})
    default_method = get_profile(args.profile).quant.calib_method
    for method in [m for m in args.calib.split(",") if m]:  # the profile's own method: the record's run
        out[f"calib_{method}"] = {} if method == default_method else {"calib_method": method}
    if args.seed_recipe:
        out.update(
            {"qat_det (ours)": {}, "qat (seed recipe)": {"det_loss_weight": 0.0, "calib_method": "mse"}}
        )
    return out


def run(args: argparse.Namespace) -> dict:
    pipe = Pipeline(
        get_profile(args.profile), Cache(args.cache_dir or None), workers=args.workers, progress=False
    )
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for act in [a for a in args.activations.split(",") if a]:
            rows[act] = {}
            for name, overrides in variants(args).items():
                if not overrides:  # the record's own run: its cached artefacts
                    s = json.loads((pipe.quantized(act) / "summary.json").read_text())
                    ort = _pick(pipe.ort_metrics(act, "int8")) if args.ort else None
                else:
                    folder = Path(tmp) / act / name.split()[0]
                    opts = replace(
                        pipe.quantize_options("trt", folder),
                        eval_origin=False,
                        float_control=False,
                        **overrides,
                    )
                    s = quantize(pipe.converted(act), pipe.data(), opts)
                    ort = None
                    if args.ort:
                        onnx = pipe.export_file(Path(s["weights_out"]["qat_best"]), folder / "qat.onnx")
                        ort = _pick(pipe.evaluate_onnx(onnx))
                rows[act][name] = {
                    "ptq": _pick(s["ptq"]), "qat_pytorch": _pick(s["best"]), "qat_onnxruntime": ort,
                    "best_epoch": s["best"]["epoch"], "options": overrides,
                }  # fmt: skip
                r = rows[act][name]
                print(f"{act:6} {name:18} PTQ {r['ptq']['AP']:.4f}  QAT {r['qat_pytorch']['AP']:.4f}"
                      + (f"  ORT {ort['AP']:.4f}" if ort else ""), flush=True)  # fmt: skip
    return {"profile": args.profile, "rows": rows}


def markdown(result: dict) -> str:
    names = list(next(iter(result["rows"].values())))
    cols = ["PTQ", "QAT (PyTorch)", "QAT (ONNX Runtime)"]
    head = "| activation | " + " | ".join(f"{n}: {c}" for n in names for c in cols) + " |"
    lines = [head, "|" + "---|" * (1 + len(names) * len(cols))]
    for act, per in result["rows"].items():
        cells = []
        for n in names:
            r = per[n]
            for key in ("ptq", "qat_pytorch", "qat_onnxruntime"):
                cells.append(f"{r[key]['AP']:.4f}" if r[key] else "-")
        lines.append(f"| {act} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="test", choices=["test", "cpu"])
    ap.add_argument("--activations", default=",".join(ACTIVATIONS))
    ap.add_argument("--head-float", action="store_true", help="the head-output variant against the default")
    ap.add_argument(
        "--calib", default="", help="calibration methods, one run each (max,percentile,mse,entropy)"
    )
    ap.add_argument("--seed-recipe", action="store_true", help="the published recipe against ours")
    ap.add_argument(
        "--ort", action="store_true", help="also export each QAT model and evaluate it on ONNX Runtime"
    )
    ap.add_argument("--cache-dir", default="", help="record cache (default: the record's)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()
    if not variants(args):
        ap.error("choose --head-float, --calib METHODS and/or --seed-recipe")
    result = run(args)
    print(markdown(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

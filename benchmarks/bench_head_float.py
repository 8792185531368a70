"""Head-output variant: the detect head's last 1x1 convs INT8 in / float out (our default) against float
(``quantize --head-float``, upstream's tools), per activation, AP in PyTorch (fake INT8) and on ONNX Runtime.

Everything else is the record's: the profile's trained and converted models (from the record cache,
built when missing), its QAT options, selection split, export and ONNX Runtime evaluation
(:class:`yolov9_qat.record.pipeline.Pipeline`). The default variant's figures are the record's own
cached artefacts; the head-float run differs from them in that one option only.

    python benchmarks/bench_head_float.py --profile test --json-out head_float.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from yolov9_qat.models.activations import ACTIVATIONS
from yolov9_qat.quant.pipeline import quantize
from yolov9_qat.record.cache import Cache
from yolov9_qat.record.pipeline import Pipeline, get_profile

KEYS = ("AP", "AP50", "precision", "recall")


def _pick(m: dict) -> dict[str, float]:
    return {k: float(m[k]) for k in KEYS}


def run(args: argparse.Namespace) -> dict:
    pipe = Pipeline(
        get_profile(args.profile), Cache(args.cache_dir or None), workers=args.workers, progress=False
    )
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for act in [a for a in args.activations.split(",") if a]:
            summary = json.loads((pipe.quantized(act) / "summary.json").read_text())
            default = {"pytorch": _pick(summary["best"]), "onnxruntime": _pick(pipe.ort_metrics(act, "int8"))}
            opts = replace(
                pipe.quantize_options("trt", Path(tmp) / act),
                head_float=True,
                eval_origin=False,
                float_control=False,
            )
            hf = quantize(pipe.converted(act), pipe.data(), opts)
            onnx = pipe.export_file(Path(hf["weights_out"]["qat_best"]), Path(tmp) / act / "head_float.onnx")
            head_float = {"pytorch": _pick(hf["best"]), "onnxruntime": _pick(pipe.evaluate_onnx(onnx))}
            rows[act] = {
                "default": default,
                "head_float": head_float,
                "delta_ap": {b: head_float[b]["AP"] - default[b]["AP"] for b in ("pytorch", "onnxruntime")},
                "best_epoch": {"default": summary["best"]["epoch"], "head_float": hf["best"]["epoch"]},
            }
            print(
                f"{act:6} AP default {default['pytorch']['AP']:.4f} / {default['onnxruntime']['AP']:.4f}  "
                f"head-float {head_float['pytorch']['AP']:.4f} / {head_float['onnxruntime']['AP']:.4f}  "
                f"(PyTorch / ONNX Runtime)",
                flush=True,
            )
    return {"profile": args.profile, "rows": rows}


def markdown(result: dict) -> str:
    lines = [
        "| activation | INT8 PyTorch: default | head-float | delta | INT8 ONNX Runtime: default | head-float | delta |",
        "|---|---|---|---|---|---|---|",
    ]
    for act, r in result["rows"].items():
        d, h = r["default"], r["head_float"]
        lines.append(
            f"| {act} | {d['pytorch']['AP']:.4f} | {h['pytorch']['AP']:.4f} | {r['delta_ap']['pytorch']:+.4f} "
            f"| {d['onnxruntime']['AP']:.4f} | {h['onnxruntime']['AP']:.4f} | {r['delta_ap']['onnxruntime']:+.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="test", choices=["test", "cpu"])
    ap.add_argument("--activations", default=",".join(ACTIVATIONS))
    ap.add_argument("--cache-dir", default="", help="record cache (default: the record's)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()
    result = run(args)
    print(markdown(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

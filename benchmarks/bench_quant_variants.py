"""QAT variants beside the record's own run, everything else held equal: per activation, AP of PTQ and of
INT8 QAT in PyTorch (fake INT8) and, with ``--ort``, of the exported graph on ONNX Runtime.

The models, data, QAT schedule, selection split, export and ONNX Runtime evaluation are the record
profile's (:class:`yolov9_qat.record.pipeline.Pipeline`; trained and converted models come from the
record cache, built when missing). A variant changes the named quantize options only:

* ``--head-float``: the detect head's last 1x1 convs float (upstream's tools) against INT8 in / float out;
* ``--calib max,percentile,mse,entropy``: one run per calibration method;
* ``--seed-recipe``: the published record's recipe (feature MSE alone, ``det_loss_weight 0``, MSE calibration)
  beside ours (feature MSE plus the detection loss);
* ``--qat-seeds 1,2,3``: the record's own run (ours, with its float control) again with other QAT seeds
  (calibration batches, data order and augmentations all follow the seed): each run's quantization cost,
  INT8 minus its own float control, and over the seeds its mean, sample standard deviation and standard
  error, which say how far one run's cost may land from the true one by chance; ``--recipe seed`` repeats
  the seed recipe instead (its control is Origin; every seed runs afresh, seed 0 must give the record's).

    python benchmarks/bench_quant_variants.py --head-float --ort --json-out head_float.json
    python benchmarks/bench_quant_variants.py --calib max,percentile,mse,entropy --json-out calib.json
    python benchmarks/bench_quant_variants.py --profile cpu --activations FReLU,AconC --qat-seeds 1,2,3,4
    python benchmarks/bench_quant_variants.py --profile cpu --activations ReLU --qat-seeds 1,2 --iters 80

``--iters N`` runs every variant with N QAT iterations per epoch instead of the profile's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from yolov9_qat.models.activations import ACTIVATIONS
from yolov9_qat.quant.pipeline import quantize
from yolov9_qat.record.cache import Cache
from yolov9_qat.record.pipeline import RECIPE_OPTIONS, Pipeline, get_profile

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
    if args.qat_seeds:
        profile_seed = get_profile(args.profile).seed  # the record's QAT seed: its own run, from the cache
        for seed in (int(s) for s in args.qat_seeds.split(",") if s):
            if args.recipe == "seed":  # run afresh, seed 0 too: it must give the record's trt_seed figures
                out[f"qat_seed_{seed}"] = {"seed": seed, **RECIPE_OPTIONS["seed"]}
                continue
            own = seed == profile_seed and not args.iters
            out[f"qat_seed_{seed}"] = {} if own else {"seed": seed, "float_control": True}
    if args.iters:  # another schedule for every variant: none is the record's cached run any more
        out = {name: {**o, "iters": args.iters} for name, o in out.items()}
    return out


def run(args: argparse.Namespace) -> dict:
    pipe = Pipeline(
        get_profile(args.profile), Cache(args.cache_dir or None), workers=args.workers, progress=False
    )
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for act in [a for a in args.activations.split(",") if a]:
            rows[act] = {}
            # the seed recipe's control is Origin itself (the record's trt run evaluates it)
            origin = json.loads((pipe.quantized(act) / "summary.json").read_text())["origin"]
            for name, overrides in variants(args).items():
                if not overrides:  # the record's own run: its cached artefacts
                    s = json.loads((pipe.quantized(act) / "summary.json").read_text())
                    ort = _pick(pipe.ort_metrics(act, "int8")) if args.ort else None
                else:
                    folder = Path(tmp) / act / name.split()[0]
                    opts = replace(
                        pipe.quantize_options("trt", folder),
                        **{"eval_origin": False, "float_control": False, **overrides},
                    )
                    s = quantize(pipe.converted(act), pipe.data(), opts)
                    ort = None
                    if args.ort:
                        onnx = pipe.export_file(Path(s["weights_out"]["qat_best"]), folder / "qat.onnx")
                        ort = _pick(pipe.evaluate_onnx(onnx))
                seed_recipe = name.startswith("qat_seed_") and args.recipe == "seed"
                rows[act][name] = {
                    "ptq": _pick(s["ptq"]), "qat_pytorch": _pick(s["best"]), "qat_onnxruntime": ort,
                    "control": _pick(origin if seed_recipe else s.get("origin_ft")),
                    "control_row": "origin" if seed_recipe else "origin_ft", "best_epoch": s["best"]["epoch"],
                    "options": overrides,
                }  # fmt: skip
                r = rows[act][name]
                cost = (r["qat_pytorch"]["AP"] - r["control"]["AP"]) if r["control"] else None
                print(f"{act:6} {name:18} PTQ {r['ptq']['AP']:.4f}  QAT {r['qat_pytorch']['AP']:.4f}"
                      + (f"  ORT {ort['AP']:.4f}" if ort else "")
                      + (f"  {r['control_row']} {r['control']['AP']:.4f}  cost {cost:+.4f}" if cost is not None else ""),
                      flush=True)  # fmt: skip
    return {
        "profile": args.profile,
        "recipe": args.recipe,
        "rows": rows,
        "cost_over_seeds": cost_over_seeds(rows),
    }


def cost_over_seeds(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per activation, the quantization cost (QAT AP minus its float control's: Origin fine-tuned for
    ours, Origin for the seed recipe) of each ``qat_seed_*`` run, and their mean, sample standard deviation
    and standard error of the mean (two runs or more)."""
    out: dict[str, dict[str, Any]] = {}
    for act, per in rows.items():
        costs = {
            name.removeprefix("qat_seed_"): r["qat_pytorch"]["AP"] - r["control"]["AP"]
            for name, r in per.items()
            if name.startswith("qat_seed_") and r["control"]
        }
        if len(costs) < 2:
            continue
        sd = statistics.stdev(costs.values())
        out[act] = {
            "costs": costs,
            "mean": statistics.mean(costs.values()),
            "std": sd,
            "standard_error": sd / len(costs) ** 0.5,
        }
    return out


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
    spread = result.get("cost_over_seeds") or {}
    if spread:
        lines += ["", "| activation | cost per QAT seed (INT8 - float control, AP) | mean | std | standard error |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for act, c in spread.items():
            per = ", ".join(f"{k}: {v:+.4f}" for k, v in c["costs"].items())
            lines.append(f"| {act} | {per} | {c['mean']:+.4f} | {c['std']:.4f} | {c['standard_error']:.4f} |")
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
        "--qat-seeds", default="", help="QAT seeds, one run each with its float control (the cost's noise)"
    )
    ap.add_argument(
        "--recipe", default="det", choices=["det", "seed"],
        help="--qat-seeds: the recipe the runs repeat: ours (det, control Origin fine-tuned) or the seed's "
        "(feature MSE alone, control Origin)",
    )  # fmt: skip
    ap.add_argument(
        "--iters", type=int, default=0, help="QAT iterations per epoch for every variant (0: the profile's)"
    )
    ap.add_argument(
        "--ort", action="store_true", help="also export each QAT model and evaluate it on ONNX Runtime"
    )
    ap.add_argument("--cache-dir", default="", help="record cache (default: the record's)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()
    if not variants(args):
        ap.error("choose --head-float, --calib METHODS, --seed-recipe and/or --qat-seeds SEEDS")
    result = run(args)
    print(markdown(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""The ``yolov9-qat`` command line: one entry point, one sub-command per step of the record.

Flag names follow the upstream YOLOv9 scripts. A user-caused error ends in one line on stderr and
exit status 2; everything that produces figures also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from yolov9_qat import __version__
from yolov9_qat.errors import UserError

log = logging.getLogger("yolov9_qat")

Handler = Callable[[argparse.Namespace], int | None]
_COMMANDS: dict[str, Handler] = {}


def _command(
    sub: argparse._SubParsersAction, name: str, help: str
) -> Callable[[Handler], argparse.ArgumentParser]:
    def register(fn: Handler) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _COMMANDS[name] = fn
        p.set_defaults(_command=name)
        return p

    return register


def _json_out(args: argparse.Namespace, obj: Any, run_file: Path | None = None) -> None:
    """Write ``obj`` as JSON to the run folder's file and to ``--json-out`` when given."""
    from yolov9_qat.utils.files import atomic_write_json

    if run_file is not None:
        atomic_write_json(run_file, obj)
    if getattr(args, "json_out", None):
        atomic_write_json(args.json_out, obj)


# --- synth -----------------------------------------------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> int:
    from yolov9_qat.data.synth import generate

    data_yaml = generate(args.out, seed=args.seed, n_train=args.train, n_val=args.val, imgsz=args.imgsz)
    print(f"synthetic data set: {data_yaml}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from yolov9_qat.data.coco import prepare_coco

    if args.dataset != "coco":
        raise UserError(f"unknown data set {args.dataset!r}; known: coco")
    data_yaml = prepare_coco(args.dir, source=args.source, splits=args.splits, images=not args.no_images)
    print(f"COCO ready: {data_yaml}")
    return 0


# --- reparameterize ------------------------------------------------------------------------------
def cmd_reparameterize(args: argparse.Namespace) -> int:
    from yolov9_qat.models.checkpoint import load, save
    from yolov9_qat.models.reparam import reparameterize

    ck = load(args.weights)
    converted = reparameterize(ck.model, args.cfg)
    meta = {**ck.meta, "reparameterized_from": str(args.weights), "source_cfg": ck.model.cfg_name}
    out = (
        Path(args.out)
        if args.out
        else Path(args.weights).with_name(Path(args.weights).stem + "-converted.pt")
    )
    save(converted, out, meta=meta)
    before, after = ck.model.info()["params"], converted.info()["params"]
    print(
        f"{args.weights} ({ck.model.cfg_name}, {before:,} params) -> {out} ({converted.cfg_name}, {after:,} params)"
    )
    return 0


# --- info ----------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from yolov9_qat.models.checkpoint import load
    from yolov9_qat.models.yolo import DetectionModel

    if args.weights:
        model = load(args.weights).model
    else:
        model = DetectionModel(args.cfg, nc=args.nc, activation=args.activation)
    if args.fuse:
        model.fuse()
    info = model.info()
    if args.verbose:
        for layer in model.model:
            print(f"{layer.i:>3} {layer.f!s:>20} {layer.type:<14} {layer.np:>10,}")
    print(json.dumps(info))
    _json_out(args, info)
    return 0


# --- train -----------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from yolov9_qat.options import from_namespace
    from yolov9_qat.train.trainer import Trainer, TrainOptions

    summary = Trainer(from_namespace(TrainOptions, args)).run()
    if summary:
        best = summary.get("best") or {}
        print(
            f"trained {summary['epochs_run']} epoch(s) in {summary['wall_s']:.0f} s "
            f"({summary['images_per_s']:.1f} images/s): best AP {best.get('AP', float('nan')):.4f} "
            f"AP50 {best.get('AP50', float('nan')):.4f} -> {summary['weights']}"
        )
        _json_out(args, summary)
    return 0


# --- val -------------------------------------------------------------------------------------------
def cmd_val(args: argparse.Namespace) -> int:
    from yolov9_qat.data.config import load_data_yaml
    from yolov9_qat.eval.evaluator import Evaluator, format_metrics, torch_predictor, write_coco_json
    from yolov9_qat.utils.runs import run_dir, select_device

    data = load_data_yaml(args.data)
    nc = len(data["names"])
    extra: dict[str, Any] = {}
    if args.backend == "onnxruntime":
        from yolov9_qat.runtime.onnxruntime import OrtModel

        ort_model = OrtModel(args.weights, threads=args.threads or None, rewrite=_ort_rewrite(args))
        ort_model.check_input((1, 3, args.img, args.img))
        model_nc = ort_model.metadata.get("nc")
        if model_nc is not None and int(model_nc) != nc:
            raise UserError(f"{args.weights} predicts {model_nc} classes, the data set has {nc}")
        predict = ort_model
        extra["runtime"] = ort_model.describe()
    elif args.backend == "tensorrt":
        from yolov9_qat.runtime.engine_options import EngineOptions
        from yolov9_qat.runtime.trt_cli import tensorrt_val_predictor

        predict = tensorrt_val_predictor(
            EngineOptions.from_namespace(args), args.weights, batch_size=args.batch_size, data=data
        )
    else:
        from yolov9_qat.models.checkpoint import load

        model = load(args.weights).model
        if model.nc != nc:
            raise UserError(f"{args.weights} predicts {model.nc} classes, the data set has {nc}")
        predict = torch_predictor(model, select_device(args.device), half=args.half)
    # upstream val.py: rectangular batches (pad 0.5) for PyTorch models, square for exported ones
    rect = args.rect if args.rect is not None else args.backend == "torch"
    evaluator = Evaluator.for_data(
        data, args.img, batch_size=args.batch_size, workers=args.workers, split=args.task, rect=rect,
        conf_thres=args.conf_thres, iou_thres=args.iou_thres, max_det=args.max_det,
    )  # fmt: skip
    save_dir = run_dir(args.project, args.name, args.exist_ok)
    result = evaluator.run(
        predict,
        plot_dir=save_dir,
        progress=not args.no_progress,
        save_txt=save_dir / "labels" if args.save_txt else None,
        save_conf=args.save_conf,
    )
    result.update(weights=str(args.weights), backend=args.backend, rect=rect, **extra)
    print(format_metrics(result, data["names"], per_class=args.verbose))
    if args.save_json:
        pred_json = write_coco_json(
            save_dir / f"{Path(args.weights).stem}_predictions.json", evaluator.coco_detections
        )
        result["predictions_json"] = str(pred_json)
        print(f"COCO detections: {pred_json} ({len(evaluator.coco_detections)})")
    if args.save_txt:
        print(f"labels: {save_dir / 'labels'}")
    _json_out(args, result, save_dir / "metrics.json")
    print(f"results: {save_dir / 'metrics.json'}")
    return 0


def _ort_rewrite(args: argparse.Namespace) -> str:
    """``--ort-rewrite`` (``--ort-u8`` / ``--no-ort-u8`` are shorthands for ``u8`` / ``none``)."""
    return getattr(args, "ort_rewrite", None) or "auto"


# --- export / lint ---------------------------------------------------------------------------------
EXPORT_FORMATS = ("onnx", "onnx_end2end", "onnx_deepstream")


def cmd_export(args: argparse.Namespace) -> int:
    from yolov9_qat.export.io_spec import write_io_json
    from yolov9_qat.export.onnx import ExportOptions, default_output, export_onnx, load_for_export

    include = [i for part in args.include for i in part.split(",") if i]
    unknown = sorted(set(include) - set(EXPORT_FORMATS))
    if unknown:
        raise UserError(f"--include {','.join(unknown)}: known formats are {', '.join(EXPORT_FORMATS)}")
    output_names = tuple(n for part in args.output_names for n in part.split(",") if n) or None
    if (args.input_name or output_names) and len(include) > 1:
        raise UserError("--input-name / --output-names apply to one format: export one --include at a time")
    model, info = load_for_export(args.weights)
    written = []
    for fmt in include:
        e2e = args.nms if fmt == "onnx_end2end" else None
        ds = fmt == "onnx_deepstream"
        opts = ExportOptions(
            imgsz=args.img, batch=args.batch_size, dynamic=args.dynamic,
            simplify=args.simplify, opset=args.opset, end2end=e2e, iou_thres=args.iou_thres,
            conf_thres=args.conf_thres, max_det=args.topk_all, deepstream=ds,
            input_name=args.input_name or None, output_names=output_names,
            extra_metadata={"weights": Path(args.weights).name},
        )  # fmt: skip
        out = Path(args.out) if args.out and len(include) == 1 else default_output(args.weights, e2e, ds)
        path = export_onnx(model, out, opts, precision=info["precision"])
        io_json = write_io_json(path)
        entry = {
            "format": fmt, "onnx": str(path), "io_json": str(io_json), "precision": info["precision"],
            "layout": opts.layout, "nms": e2e,
        }  # fmt: skip
        print(
            f"exported {args.weights} ({info['precision']}, {opts.layout} layout) -> {path} (+ {io_json.name})"
        )
        if info["precision"] == "int8":
            from yolov9_qat.export.lint import lint

            report = lint(path)
            entry["lint"] = {"ok": report.ok, "violations": len(report.violations)}
            print(
                f"Q/DQ lint: {'no violations' if report.ok else f'{len(report.violations)} violation(s)'}"
                + ("" if report.ok else "\n" + report.format())
            )
        written.append(entry)
    _json_out(args, {"weights": str(args.weights), "exports": written})
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    from yolov9_qat.export.lint import lint_file

    code, text = lint_file(args.onnx)
    if code == 2:
        raise UserError(text.strip().splitlines()[0] if text.strip() else f"{args.onnx}: cannot lint")
    print(text)
    return code


# --- bench -----------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    from yolov9_qat.bench.harness import (
        BenchConfig,
        device_table,
        markdown_table,
        parse_batches,
        run_benchmark,
    )
    from yolov9_qat.utils.runs import run_dir

    try:
        batches = parse_batches(args.batch)
        config = BenchConfig(
            warmup_ms=args.warmup_ms, duration_s=args.duration_s, min_iterations=args.min_iterations
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.backend == "onnxruntime":
        from yolov9_qat.runtime.onnxruntime import OrtModel, OrtRunner

        model = OrtModel(args.model, threads=args.threads or None, rewrite=_ort_rewrite(args))
        runner = OrtRunner(model, imgsz=args.img)
        precision = model.precision + ("" if model.rewrite == "none" else f"-{model.rewrite}")
        report = run_benchmark(
            runner,
            batches,
            config,
            model=Path(args.model).stem,
            precision=precision,
            progress=not args.no_progress,
        )
    else:
        from yolov9_qat.runtime.engine_options import EngineOptions
        from yolov9_qat.runtime.trt_cli import bench_tensorrt

        report = bench_tensorrt(EngineOptions.from_namespace(args), args.model, batches)
    tables = [report]
    if args.end2end:
        report["end2end"] = _bench_end2end(args, batches, config, report)
        tables.append(report["end2end"])
    save_dir = run_dir(args.project, args.name, args.exist_ok)
    print(device_table({k: v for k, v in report["device"].items() if not isinstance(v, dict)}))
    print()
    print(markdown_table(tables))
    if args.end2end:
        for r in report["end2end"]["results"]:
            st = r["extra"]["stages_ms_per_image"]
            print(
                f"end-to-end batch {r['batch']}: per image {st['preprocess']:.2f} ms letterbox + normalise, "
                f"{st['inference']:.2f} ms inference, {st['nms']:.2f} ms NMS"
            )
    for note in report.get("int8_notes") or []:
        print(f"note: {note}")
    _json_out(args, report, save_dir / "bench.json")
    print(f"results: {save_dir / 'bench.json'}")
    return 0


def _bench_end2end(
    args: argparse.Namespace, batches: list[int], config: Any, model_report: dict[str, Any]
) -> dict[str, Any]:
    """``bench --end2end``: the same model through ``detect``'s path, host pixels to boxes."""
    from yolov9_qat.bench.end2end import EndToEndRunner, load_frames, run_end2end
    from yolov9_qat.detect import Detector, prepare_image, resolve_source
    from yolov9_qat.runtime.engine_options import EngineOptions

    detector = Detector(
        args.model, backend=args.backend, imgsz=args.img, device=args.device,
        threads=args.threads, ort_rewrite=_ort_rewrite(args), rect=False,
        engine=EngineOptions.from_namespace(args) if args.backend == "tensorrt" else None,
    )  # fmt: skip
    files = resolve_source(args.source).images if args.source else []
    runner = EndToEndRunner(detector, prepare_image, load_frames(files), model_report["device"])
    precision = str(model_report.get("precision", ""))
    report = run_end2end(
        runner,
        batches,
        config,
        model=Path(args.model).stem,
        precision=precision,
        progress=not args.no_progress,
    )
    report["label"] = f"{precision.upper()} end-to-end ({Path(args.model).stem})"
    report["detect_settings"] = {"conf_thres": detector.conf_thres, "iou_thres": detector.iou_thres}
    return report


# --- reproduce -------------------------------------------------------------------------------------
def cmd_reproduce(args: argparse.Namespace) -> int:
    import time

    from yolov9_qat.record.cache import Cache
    from yolov9_qat.record.pipeline import ACTIVATIONS, Pipeline, get_profile
    from yolov9_qat.record.report import write_report
    from yolov9_qat.utils.runs import run_dir

    if args.profile == "gpu":
        from yolov9_qat.record.gpu import run_gpu_record

        return run_gpu_record(args)
    if args.data or args.weights:
        raise UserError(
            f"--profile {args.profile} runs on the embedded synthetic data and trains its own models; "
            "--data / --weights are for --profile gpu"
        )
    if args.jobs < 0:
        raise UserError(f"--jobs must be 0 (automatic) or a number of processes, not {args.jobs}")
    acts = [a for a in args.activations.split(",") if a] if args.activations else list(ACTIVATIONS)
    overrides = {"threads": args.threads} if args.threads else {}
    profile = get_profile(args.profile, **overrides)
    cache = Cache(args.cache_dir or None, rebuild=[r for r in args.rebuild.split(",") if r])
    save_dir = run_dir(args.project, args.name, args.exist_ok)
    print(f"reproducing the {profile.name} record for {', '.join(acts)} (cache {cache.root})")
    t0 = time.perf_counter()
    pipeline = Pipeline(profile, cache, workers=args.workers, progress=not args.no_progress)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jobs = args.jobs or max(1, cores // pipeline.threads)
    record = pipeline.run(acts, bench=not args.no_bench, jobs=jobs)
    record["wall_s"] = time.perf_counter() - t0
    paths = write_report(record, save_dir, title=f"yolov9-qat record ({profile.name} profile)")
    _json_out(args, record)
    print((save_dir / "record.md").read_text())
    print(f"record: {paths['markdown']} ({record['wall_s'] / 60:.1f} min)")
    return 0


# --- quantize / eval / sensitive ------------------------------------------------------------------
def _skip_layers(text: str) -> list[int]:
    """``--skip-layers 3,7`` or a ``sensitivity.json`` from ``sensitive`` (its top rows by gain)."""
    if not text:
        return []
    path = Path(text)
    if path.suffix == ".json":
        if not path.is_file():
            raise UserError(f"--skip-layers {text}: no such file")
        rows = json.loads(path.read_text())
        rows = rows.get("layers", rows) if isinstance(rows, dict) else rows
        return [int(r["layer"]) for r in rows if float(r.get("gain", 0)) > 0][:3]
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(
            f"--skip-layers {text!r}: give layer indices like 3,7 or a sensitivity.json"
        ) from None


def cmd_quantize(args: argparse.Namespace) -> int:
    from yolov9_qat.options import from_namespace
    from yolov9_qat.quant.options import QuantizeOptions
    from yolov9_qat.quant.pipeline import quantize

    options = from_namespace(QuantizeOptions, args, skip_layers=tuple(_skip_layers(args.skip_layers)))
    summary = quantize(args.weights, args.data, options)
    if summary.get("rank", 0) > 0:  # torchrun: rank 0 reports
        return 0
    rows = [("Origin", summary["origin"]), ("Origin (fine-tuned)", summary["origin_ft"]),
            ("PTQ", summary["ptq"]), ("QAT", summary["best"])]  # fmt: skip
    print(
        f"{'':20}{'AP':>8}{'AP50':>8}{'P':>8}{'R':>8}   ({summary['reported']}; best epoch by {summary['selection']})"
    )
    for label, m in rows:
        if m:
            print(f"{label:20}" + "".join(f"{m[k]:>8.4f}" for k in ("AP", "AP50", "precision", "recall")))
    _json_out(args, summary)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from yolov9_qat.eval.evaluator import format_metrics
    from yolov9_qat.quant.pipeline import evaluate_qat

    result = evaluate_qat(
        args.weights,
        args.data,
        img=args.img,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
    )
    print(format_metrics(result))
    _json_out(args, result)
    return 0


def cmd_sensitive(args: argparse.Namespace) -> int:
    from yolov9_qat.quant.pipeline import sensitive
    from yolov9_qat.quant.sensitivity import format_table

    rows = sensitive(
        args.weights, args.data, hyp=args.hyp, img=args.img, batch_size=args.batch_size, device=args.device,
        calib_method=args.calib_method, calib_batches=args.calib_batches, project=args.project, name=args.name,
        exist_ok=args.exist_ok, workers=args.workers,
    )  # fmt: skip
    print(format_table(rows))
    _json_out(args, rows)
    return 0


def _add_run_flags(p: argparse.ArgumentParser, task: str) -> None:
    p.add_argument("--project", default=f"runs/{task}", help="runs folder")
    p.add_argument("--name", default="exp", help="run name (runs/<task>/<name>)")
    p.add_argument(
        "--exist-ok", action="store_true", help="reuse runs/<task>/<name> instead of numbering a new one"
    )
    p.add_argument("--json-out", default=None, help="also write the figures as JSON here")


def _add_ort_u8(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--ort-rewrite", choices=["auto", "integer", "u8", "none"], default=None,
        help="ONNX Runtime, QAT graphs: integer (exact ConvInteger convs, fastest), u8 (uint8 activations, "
        "bit-identical), none (as written); auto: integer on VNNI CPUs",
    )  # fmt: skip
    g.add_argument(
        "--ort-u8", dest="ort_rewrite", action="store_const", const="u8", help="= --ort-rewrite u8"
    )
    g.add_argument(
        "--no-ort-u8", dest="ort_rewrite", action="store_const", const="none", help="= --ort-rewrite none"
    )


def _add_trt_bench_flags(p: argparse.ArgumentParser) -> None:
    """``bench --backend tensorrt``'s engine, device and loop flags (bench owns --img, --warmup, --duration)."""
    from yolov9_qat.runtime.engine_options import add_engine_args

    add_engine_args(p, groups=("engine", "device", "loop"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yolov9-qat",
        description="YOLOv9 / GELAN: train, reparameterize, quantize (QAT), export, build and benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = _command(sub, "synth", "write the deterministic synthetic detection data set")(cmd_synth)
    p.add_argument("--out", required=True, help="output folder (gets data.yaml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=1500, help="number of training images")
    p.add_argument("--val", type=int, default=300, help="number of validation images")
    p.add_argument("--imgsz", type=int, default=160, help="image side in pixels")

    p = _command(sub, "data", "prepare a real data set (COCO: download or local archives -> YOLO labels)")(
        cmd_data
    )
    p.add_argument("dataset", choices=["coco"], help="which data set")
    p.add_argument("--dir", required=True, help="target folder (gets coco.yaml)")
    p.add_argument(
        "--from", dest="source", default=None, help="base URL or local folder holding the archives"
    )
    p.add_argument("--splits", default="train2017,val2017", help="comma-separated splits")
    p.add_argument("--no-images", action="store_true", help="annotations and labels only")

    p = _command(sub, "reparameterize", "YOLOv9 (dual head) -> GELAN converted model")(cmd_reparameterize)
    p.add_argument("--weights", required=True, help="YOLOv9 checkpoint (upstream or yolov9-qat)")
    p.add_argument("--cfg", required=True, help="GELAN config name (gelan-c) or YAML path")
    p.add_argument("--out", default="", help="output checkpoint (default: <weights>-converted.pt)")

    p = _command(sub, "train", "train a YOLOv9 / GELAN model (also under torchrun)")(cmd_train)
    from yolov9_qat.options import add_options
    from yolov9_qat.train.options import TrainOptions

    add_options(p, TrainOptions)  # every flag and default from the dataclass's fields
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--json-out", default=None, help="also write the figures as JSON here")

    p = _command(sub, "val", "evaluate: AP, AP50, precision, recall")(cmd_val)
    p.add_argument("--weights", required=True, help="checkpoint (or ONNX / engine with --backend)")
    p.add_argument("--data", required=True, help="data.yaml")
    p.add_argument("--img", "--imgsz", "--img-size", type=int, default=640)
    p.add_argument("--batch-size", "--batch", type=int, default=32)
    p.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"], default="torch")
    p.add_argument("--device", default="")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--task", choices=["val", "train", "test"], default="val", help="which split")
    p.add_argument("--conf-thres", type=float, default=0.001)
    p.add_argument("--iou-thres", type=float, default=0.7)
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--half", action="store_true", help="FP16 inference (CUDA)")
    p.add_argument(
        "--rect",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rectangular batches padded by half a stride, as upstream val.py (default: on for --backend "
        "torch, off for ONNX / TensorRT, whose input is --img square)",
    )
    p.add_argument("--save-json", action="store_true", help="write <weights>_predictions.json (COCO results)")
    p.add_argument("--save-txt", action="store_true", help="write labels/<image>.txt detections")
    p.add_argument("--save-conf", action="store_true", help="with --save-txt: add each detection's score")
    p.add_argument("--verbose", action="store_true", help="per-class table")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    _add_ort_u8(p)
    p.add_argument("--no-progress", action="store_true")
    _add_run_flags(p, "val")
    from yolov9_qat.runtime import trt_cli
    from yolov9_qat.runtime.engine_options import add_engine_args

    add_engine_args(p, groups=("engine",))  # val owns --img, --batch-size and --device

    p = _command(sub, "build", "build a TensorRT engine (fp16, int8, mp) from an ONNX file, cached")(
        trt_cli.cmd_build
    )
    trt_cli.add_build_arguments(p)  # --onnx, --save-engine, --generate-graph, --json-out
    add_engine_args(p, groups=("engine", "device", "shapes", "img"))

    p = _command(sub, "export", "export a float or QAT checkpoint to ONNX (plain or end-to-end)")(cmd_export)
    p.add_argument("--weights", required=True, help="checkpoint (float, converted or qat_best_*.pt)")
    p.add_argument(
        "--include",
        nargs="+",
        default=["onnx"],
        help="onnx (plain), onnx_end2end (NMS in the graph) and/or onnx_deepstream (DeepStream-Yolo's "
        "single output (B, anchors, 6)); space or comma separated",
    )
    p.add_argument("--input-name", default="", help="name of the input tensor (default: the layout's)")
    p.add_argument(
        "--output-names", nargs="+", default=[], help="names of the output tensors, in the layout's order"
    )
    p.add_argument("--img", "--imgsz", "--img-size", type=int, default=640)
    p.add_argument("--batch-size", "--batch", type=int, default=1, help="batch size of the traced graph")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch axis")
    p.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument(
        "--nms", choices=["trt", "onnx"], default="trt", help="end-to-end NMS: TensorRT plugin or ONNX op"
    )
    p.add_argument("--topk-all", type=int, default=100, help="end-to-end: detections kept per image")
    p.add_argument("--iou-thres", type=float, default=0.45, help="end-to-end NMS IoU threshold")
    p.add_argument("--conf-thres", type=float, default=0.25, help="end-to-end NMS score threshold")
    p.add_argument("--out", default="", help="output file (one format only; default beside the weights)")
    p.add_argument("--inplace", action="store_true", help="accepted for upstream compatibility (no effect)")
    p.add_argument("--json-out", default=None, help="also write what was exported here")

    p = _command(sub, "lint", "check an ONNX graph's Q/DQ placement against TensorRT's rules")(cmd_lint)
    p.add_argument("onnx", help="ONNX file")

    p = _command(sub, "bench", "latency / throughput per batch size (ONNX Runtime or TensorRT)")(cmd_bench)
    p.add_argument("--model", required=True, help="ONNX file (or engine with --backend tensorrt)")
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt"], default="onnxruntime")
    p.add_argument("--batch", default="1,4,8,12,16", help="comma-separated batch sizes")
    p.add_argument("--img", "--imgsz", type=int, default=None, help="image size for dynamic-size graphs")
    p.add_argument(
        "--warmup",
        "--warm-up",
        dest="warmup_ms",
        type=float,
        default=500.0,
        help="warm-up per batch size, ms",
    )
    p.add_argument(
        "--duration", dest="duration_s", type=float, default=10.0, help="measured time per batch size, s"
    )
    p.add_argument("--min-iterations", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    p.add_argument(
        "--end2end",
        action="store_true",
        help="also time what an application sees per image: host letterbox + normalise, inference, NMS "
        "(or the graph's) and boxes back to the frame, beside the model-only figures",
    )
    p.add_argument(
        "--source", default=None, help="--end2end: images to use as frames (default: random 1280x720 frames)"
    )
    p.add_argument("--no-progress", action="store_true")
    _add_ort_u8(p)
    _add_trt_bench_flags(p)  # --precision (auto: mp for a Q/DQ graph, fp16 otherwise) and the engine flags
    _add_run_flags(p, "bench")

    p = _command(
        sub, "quantize", "Q/DQ placement, calibration (PTQ) and QAT fine-tuning (also under torchrun)"
    )(cmd_quantize)
    p.add_argument("--weights", required=True, help="converted (GELAN) checkpoint; a YOLOv9 one is converted")
    p.add_argument("--data", required=True, help="data.yaml")
    from yolov9_qat.quant.options import CALIB_METHODS, DEFAULT_CALIB_METHOD, QuantizeOptions

    add_options(p, QuantizeOptions)  # every other flag and default from the dataclass's fields
    p.add_argument("--skip-layers", default="", help="layers kept in float: 3,7 or a sensitivity.json")
    p.add_argument("--json-out", default=None, help="also write the figures as JSON here")

    p = _command(sub, "eval", "evaluate a QAT checkpoint in PyTorch (fake INT8)")(cmd_eval)
    p.add_argument("--weights", required=True, help="qat_best_<stem>.pt")
    p.add_argument("--data", required=True)
    p.add_argument("--img", "--imgsz", type=int, default=640)
    p.add_argument("--batch-size", "--batch", type=int, default=10)
    p.add_argument("--device", default="")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json-out", default=None)
    p.add_argument("--name", default="exp", help=argparse.SUPPRESS)

    p = _command(sub, "sensitive", "per-layer quantization sensitivity (AP with one layer in float)")(
        cmd_sensitive
    )
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--hyp", default="hyp.scratch-high")
    p.add_argument("--img", "--imgsz", type=int, default=640)
    p.add_argument("--batch-size", "--batch", type=int, default=10)
    p.add_argument("--device", default="")
    p.add_argument("--calib-method", choices=CALIB_METHODS, default=DEFAULT_CALIB_METHOD)
    p.add_argument("--calib-batches", type=int, default=25)
    p.add_argument("--workers", type=int, default=2)
    _add_run_flags(p, "qat_sensitive")

    p = _command(sub, "reproduce", "the whole record: train, quantize, export, evaluate, benchmark, report")(
        cmd_reproduce
    )
    p.add_argument(
        "--profile", choices=["cpu", "test", "gpu"], default="cpu",
        help="cpu: the CPU record on the embedded data (ONNX Runtime); test: the suite's smaller one; "
        "gpu: TensorRT on your data and weights",
    )  # fmt: skip
    p.add_argument("--activations", default="", help="comma-separated (default: SiLU,ReLU,FReLU,Mish,AconC)")
    p.add_argument("--data", default="", help="gpu profile: data.yaml (e.g. coco.yaml)")
    p.add_argument("--weights", default="", help="gpu profile: converted checkpoint to quantize")
    p.add_argument("--img", "--imgsz", type=int, default=640, help="gpu profile: image size")
    p.add_argument("--device", default="0", help="gpu profile: CUDA device")
    p.add_argument(
        "--cache-dir", default="", help="artefact cache (default $YOLOV9_QAT_CACHE or ~/.cache/yolov9-qat)"
    )
    p.add_argument(
        "--rebuild",
        default="",
        help="steps to rebuild: synth,train,convert,quantize,export,ort_eval,bench or all",
    )
    p.add_argument("--no-bench", action="store_true", help="accuracy only")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per process (0: the profile's choice)")
    p.add_argument(
        "--jobs", type=int, default=0,
        help="activations built at once, in their own processes (0: cores // threads); the benchmarks run "
        "afterwards, alone",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="data-loader processes")
    p.add_argument("--no-progress", action="store_true")
    _add_run_flags(p, "reproduce")

    # --- deployment commands: each lives in its own module (add_arguments(parser), run(args)) -----------
    from yolov9_qat import doctor as _doctor

    _doctor.add_arguments(
        _command(sub, "doctor", "what this machine has and what each command needs")(_doctor.run)
    )
    from yolov9_qat import detect as _detect

    p = _command(sub, "detect", "run a model on images, folders or videos; save annotated pictures")
    _detect.add_arguments(p(_detect.run))
    from yolov9_qat.deploy import cli as _deploy

    _deploy.add_arguments(
        _command(sub, "deploy", "serving configurations: Triton model repository, DeepStream nvinfer")(
            _deploy.run
        )
    )
    # (end of deployment commands)

    p = _command(sub, "info", "model summary: layers, parameters, activation")(cmd_info)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cfg", help="config name or YAML path")
    src.add_argument("--weights", help="checkpoint")
    p.add_argument("--nc", type=int, default=None, help="number of classes (with --cfg)")
    p.add_argument("--activation", default=None, help="SiLU, ReLU, FReLU, Mish or AconC (with --cfg)")
    p.add_argument("--fuse", action="store_true", help="fold Conv+BN and RepConvN branches first")
    p.add_argument("--json-out", default=None, help="also write the summary here")
    p.add_argument("--verbose", action="store_true", help="list the layers")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(message)s",
    )
    name = getattr(args, "_command", None)
    if name is None:
        parser.print_help()
        return 0
    try:
        return int(_COMMANDS[name](args) or 0)
    except UserError as e:
        print(f"yolov9-qat {name}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"yolov9-qat {name}: interrupted", file=sys.stderr)
        return 130

"""Command-line glue of the TensorRT tier: ``yolov9-qat build``, and the TensorRT parts of ``bench``
(``--backend tensorrt``) and ``val`` (``--backend tensorrt``).

Everything a user can get wrong (paths, shape specs, a precision the graph cannot give, no GPU, no
TensorRT) is checked before anything is built and ends in one :class:`UserError` line. Input errors
are reported before environment errors, so a CPU machine still tells you about a bad ``--min-shapes``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from yolov9_qat.errors import UserError
from yolov9_qat.runtime.engine_cache import (
    BuildOptions,
    ShapeProfile,
    parse_shape_spec,
    sidecar_paths,
)
from yolov9_qat.runtime.engine_options import EngineOptions, add_engine_args
from yolov9_qat.runtime.precision_graphs import check_precision, default_precision, graph_info

log = logging.getLogger("yolov9_qat.runtime")

DEPLOY_PROFILE = (1, 4, 8)  # the record's deployment engine: min 1, opt 4, max 8
#: the record's "Resilience" row: the deployment engine (dynamic profile min 1, opt 4, max 8) at batch 8
RESILIENCE = {"min": 1, "opt": 4, "max": 8, "batch": 8}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    """The flags ``yolov9-qat build`` owns (its engine flags come from :func:`add_engine_args`)."""
    p.add_argument("--onnx", required=True, help="ONNX file (plain or end-to-end; float or Q/DQ)")
    p.add_argument(
        "--save-engine", default=None, help="engine path (default: <onnx stem>.<precision>.engine)"
    )
    p.add_argument("--generate-graph", action="store_true", help="also render the engine graph as SVG")
    p.add_argument("--json-out", default=None, help="also write the build summary here")


def add_trt_val_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--backend tensorrt`` flags of a parser that owns ``--img`` and ``--device`` (``detect``)."""
    add_engine_args(p, groups=("engine",))


# --- resolving arguments ---------------------------------------------------------------------------
def _onnx_path(path: str | None, flag: str = "--onnx") -> Path:
    if not path:
        raise UserError(f"{flag} is required")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{flag} {p}: no such file")
    if p.suffix.lower() != ".onnx":
        raise UserError(f"{flag} {p}: expected an .onnx file")
    return p


def resolve_precision(precision: str | None, onnx: Path, info: dict[str, Any] | None = None) -> str:
    """``auto`` -> ``mp`` for a Q/DQ graph, ``fp16`` for a float one; then check the graph can give it."""
    info = info or graph_info(onnx)
    if precision in (None, "", "auto"):
        precision = default_precision(onnx)
    check_precision(onnx, precision, info)
    return precision


def image_input(info: dict[str, Any], img: int | None = None) -> tuple[str, tuple[int, int, int]]:
    """The image input's name and (C, H, W): static dims from the ONNX, dynamic ones from ``img`` (640)."""
    if len(info["inputs"]) != 1:
        raise UserError(f"expected one image input, the ONNX has {sorted(info['inputs'])}")
    name, dims = next(iter(info["inputs"].items()))
    if len(dims) != 4:
        raise UserError(f"input {name!r} has shape {dims}; expected (batch, 3, H, W)")
    c = dims[1] if isinstance(dims[1], int) and dims[1] > 0 else 3
    hw = []
    for d in dims[2:]:
        if isinstance(d, int) and d > 0:
            if img is not None and img != d:
                raise UserError(f"--img {img}: the ONNX input {name!r} is fixed at {dims[2]}x{dims[3]}")
            hw.append(d)
        else:
            hw.append(img or 640)
    return name, (c, hw[0], hw[1])


def fixed_batch(info: dict[str, Any]) -> int | None:
    """The image input's batch size when the ONNX fixes it (exported without ``--dynamic``)."""
    dims = next(iter(info["inputs"].values()), [])
    return dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None


def batch_profile(
    info: dict[str, Any], chw: tuple[int, int, int], name: str, lo: int, opt: int, hi: int
) -> ShapeProfile:
    """The (``lo``, ``opt``, ``hi``) batch profile, or for an ONNX with a fixed batch ``B`` the only
    profile it can take, (B, B, B), when ``opt`` is ``B``; anything else is one clear error."""
    fixed = fixed_batch(info)
    if fixed is None:
        return ShapeProfile.for_batches(chw, lo, opt, hi, name)
    if opt != fixed or not lo <= fixed <= hi:
        want = f"batch {opt}" if lo == 1 and opt == hi else f"batches {lo}..{hi} (opt {opt})"
        raise UserError(
            f"the ONNX input {name!r} is fixed at batch {fixed}, this needs {want}: export it with "
            f"--dynamic, or use batch {fixed}"
        )
    return ShapeProfile.for_batches(chw, fixed, fixed, fixed, name)


def resolve_profile(
    info: dict[str, Any],
    min_spec: str | None,
    opt_spec: str | None,
    max_spec: str | None,
    img: int | None = None,
    default: tuple[int, int, int] = DEPLOY_PROFILE,
) -> ShapeProfile:
    """The optimization profile from ``--min/--opt/--max-shapes`` (all three, or ``--opt-shapes``
    alone for a fixed shape), else ``default`` batches at the ONNX's image size; checked against
    the ONNX's inputs."""
    name, chw = image_input(info, img)
    given = [s is not None for s in (min_spec, opt_spec, max_spec)]
    if not any(given):
        fixed = fixed_batch(info)  # a static-batch ONNX takes its own batch only
        return ShapeProfile.for_batches(chw, *((fixed,) * 3 if fixed else default), name=name)
    if given == [False, True, False]:
        profile = ShapeProfile.parse(opt_spec, opt_spec, opt_spec)  # type: ignore[arg-type]
    elif all(given):
        profile = ShapeProfile.parse(min_spec, opt_spec, max_spec)  # type: ignore[arg-type]
    else:
        raise UserError("give --min-shapes, --opt-shapes and --max-shapes together (or --opt-shapes alone)")
    for inp, shape in profile.max.items():
        if inp not in info["inputs"]:
            raise UserError(f"the ONNX has no input {inp!r} (its inputs: {', '.join(info['inputs'])})")
        dims = info["inputs"][inp]
        if len(dims) != len(shape):
            raise UserError(f"input {inp!r} has {len(dims)} dimensions, the shape spec gives {len(shape)}")
        for i, d in enumerate(dims):
            if isinstance(d, int) and d > 0 and not (profile.min[inp][i] == shape[i] == d):
                raise UserError(
                    f"input {inp!r}: dimension {i} is fixed at {d} in the ONNX, the shape specs differ"
                )
    return profile


def _timing_cache(options: EngineOptions, onnx: Path) -> str | None:
    if options.no_timing_cache:
        return None
    tc = options.timing_cache
    return str(tc) if tc else str(onnx.with_name(onnx.stem + ".engine.timing.cache"))


def build_options(options: EngineOptions, onnx: Path, precision: str, profile: ShapeProfile) -> BuildOptions:
    """The engine cache's :class:`BuildOptions` for ``onnx`` at ``precision`` / ``profile``."""
    return BuildOptions(
        precision,
        profile,
        workspace_gib=options.workspace_gib,
        optimization_level=options.builder_optimization_level,
        timing_cache=_timing_cache(options, onnx),
    )


def _check_environment(what: str, runner: str) -> None:
    from yolov9_qat.runtime.tensorrt import require_gpu_stack

    if runner == "trtexec":
        from yolov9_qat.runtime.trtexec import find_trtexec

        find_trtexec()  # GPU facts then come from PyTorch or nvidia-smi (gpu_name_and_cc)
    else:
        require_gpu_stack(what)


# --- build -----------------------------------------------------------------------------------------
def cmd_build(args: argparse.Namespace) -> int:
    """``yolov9-qat build``: the engine for an ONNX file, through the engine cache."""
    from yolov9_qat.runtime.inspect_engine import format_summary, render_svg
    from yolov9_qat.runtime.tensorrt import build_cached, device_index
    from yolov9_qat.utils.files import atomic_write_json

    options = EngineOptions.from_namespace(args)
    onnx = _onnx_path(args.onnx)
    info = graph_info(onnx)
    precision = resolve_precision(options.precision, onnx, info)
    profile = resolve_profile(info, options.min_shapes, options.opt_shapes, options.max_shapes, options.img)
    build = build_options(options, onnx, precision, profile)
    device = device_index(options.device)
    _check_environment("yolov9-qat build", options.runner)
    save = Path(args.save_engine) if args.save_engine else onnx.with_name(f"{onnx.stem}.{precision}.engine")
    cached = build_cached(
        onnx,
        build,
        cache_dir=options.engine_cache,
        save_engine=save,
        device=device,
        runner=options.runner,
    )
    how = "cache hit" if cached.hit else f"built in {cached.build_s:.1f} s"
    print(f"engine: {save} ({precision}, {how}; cache {cached.engine})")
    lo, opt, hi = profile.specs()
    print(f"profile: min {lo}  opt {opt}  max {hi}")
    summary = cached.summary
    if summary:
        print(f"layers: {format_summary(summary)}")
    result: dict[str, Any] = {
        "engine": str(save),
        "onnx": str(onnx),
        "precision": precision,
        "profile": profile.to_json(),
        "cache_key": cached.key,
        "cache_hit": cached.hit,
        "build_s": cached.build_s,
        "target": {
            k: cached.metadata["inputs"].get(k) for k in ("trt_version", "gpu_name", "compute_capability")
        },
        "layers": summary,
    }
    if args.generate_graph:
        graph_json = save.with_name(save.name + ".graph.json")
        if graph_json.is_file():
            result["graph"] = str(render_svg(graph_json, save.with_name(save.name + ".svg")))
            print(f"graph: {result['graph']}")
        else:
            print("graph: no layer information was recorded for this engine")
    if args.json_out:
        atomic_write_json(args.json_out, result)
    return 0


# --- bench -----------------------------------------------------------------------------------------
def _bench_source(model: str | Path | None) -> tuple[Path, bool]:
    """``--model``: (path, is_engine)."""
    if not model:
        raise UserError("--model is required (an .onnx file or a TensorRT engine)")
    p = Path(model)
    if not p.is_file():
        raise UserError(f"--model {p}: no such file")
    if p.suffix.lower() in ENGINE_SUFFIXES:
        return p, True
    if p.suffix.lower() != ".onnx":
        raise UserError(
            f"--model {p}: expected an .onnx file or a TensorRT engine ({', '.join(ENGINE_SUFFIXES)})"
        )
    return p, False


def _engines_for(
    options: EngineOptions, model: str | Path | None, profile_for: Callable[..., ShapeProfile]
) -> tuple[Callable[[int], Path], str]:
    """(batch -> engine path, precision) for ``model``: per-batch engines built through the cache
    from an ONNX (``profile_for(info, batch, chw, name)`` gives the profile), or the given engine for
    every batch."""
    from yolov9_qat.runtime.tensorrt import build_cached, device_index

    path, is_engine = _bench_source(model)
    device = device_index(options.device)
    if is_engine:
        _check_environment("the TensorRT benchmark", "polygraphy")
        precision = options.precision
        if precision == "auto":
            meta = sidecar_paths(path)["meta"]
            precision = (
                json.loads(meta.read_text()).get("inputs", {}).get("precision", "") if meta.is_file() else ""
            )
        return (lambda batch: path), str(precision)
    info = graph_info(path)
    precision = resolve_precision(options.precision, path, info)
    name, chw = image_input(info, options.img)
    _check_environment("the TensorRT benchmark", options.runner)
    built: dict[int, Path] = {}

    def engine_for(batch: int) -> Path:
        if batch not in built:
            profile = profile_for(info, batch, chw, name)
            cached = build_cached(
                path, build_options(options, path, precision, profile), cache_dir=options.engine_cache,
                device=device, runner=options.runner,
            )  # fmt: skip
            built[batch] = cached.engine
        return built[batch]

    return engine_for, precision


def _runner_flags(options: EngineOptions) -> dict[str, Any]:
    from yolov9_qat.runtime.tensorrt import device_index

    return {
        "device": device_index(options.device),
        "use_cuda_graph": options.use_cuda_graph,
        "spin_wait": options.use_spin_wait,
        "no_data_transfers": options.no_data_transfers,
    }


def make_trt_runner(options: EngineOptions, model: str | Path | None) -> Any:
    """The harness runner for ``bench --backend tensorrt``: one engine per batch size ``b`` with the
    record's benchmark profile (min 1, opt = max = b), built from the ONNX ``model`` through the
    engine cache; or, when ``model`` is an engine, that engine for every batch."""
    from yolov9_qat.runtime.tensorrt import TensorRTRunner

    engines, precision = _engines_for(
        options, model, lambda info, b, chw, name: batch_profile(info, chw, name, 1, b, b)
    )
    runner = TensorRTRunner(engines, **_runner_flags(options))
    runner.precision = precision  # type: ignore[attr-defined]
    return runner


def make_resilience_runner(options: EngineOptions, model: str | Path | None) -> Any:
    """The runner of the "Resilience" row: the (min 1, opt 4, max 8) engine; measure it at batch 8."""
    from yolov9_qat.runtime.tensorrt import TensorRTRunner

    r = RESILIENCE
    engines, precision = _engines_for(
        options,
        model,
        lambda info, b, chw, name: batch_profile(info, chw, name, r["min"], r["opt"], r["max"]),
    )
    runner = TensorRTRunner(engines, **_runner_flags(options))
    runner.precision = precision  # type: ignore[attr-defined]
    return runner


def engine_layers(engine: str | Path) -> dict[str, Any] | None:
    """The layer summary stored beside an engine (``<engine>.layers.json``), counts only."""
    p = Path(engine)
    side = p.with_name(p.name + ".layers.json")
    if not side.is_file():
        return None
    data = json.loads(side.read_text())
    return {k: v for k, v in data.items() if k not in ("layers",)}


def bench_tensorrt(
    options: EngineOptions,
    model: str | Path | None,
    batches: Sequence[int],
    engine_dir: str | Path | None = None,
) -> dict[str, Any]:
    """``bench --backend tensorrt`` in one call: ``model`` (ONNX or engine) at every batch size in
    ``batches``, the Resilience row with ``options.resilience``, the engines' layer summaries and, for
    INT8 / MP engines, the reasons INT8 may not beat FP16. ``runner="trtexec"`` drives trtexec instead
    and parses its summaries (its engines go to ``engine_dir``, default beside the ONNX). Returns the
    harness's report layout (``results`` entries may carry ``label``)."""
    from yolov9_qat.bench.harness import BenchConfig, measure, run_benchmark
    from yolov9_qat.runtime.inspect_engine import explain_int8

    batches = list(batches)
    config = BenchConfig(warmup_ms=float(options.warmup_ms), duration_s=float(options.duration_s))
    if options.runner == "trtexec":
        report = _bench_trtexec(options, model, batches, engine_dir)
    else:
        runner = make_trt_runner(options, model)
        report = run_benchmark(
            runner, batches, config, model=str(_bench_source(model)[0]), precision=runner.precision
        )
        engines = dict(runner.engines_used)
        if options.resilience:
            res = make_resilience_runner(options, model)
            row = asdict(measure(res.prepare(RESILIENCE["batch"]), RESILIENCE["batch"], config))
            row["label"] = "Resilience"
            report["results"].append(row)
            engines["resilience"] = res.engines_used[RESILIENCE["batch"]]
        report["runner"] = "polygraphy"
        report["flags"] = {k: v for k, v in _runner_flags(options).items() if k != "device"}
        report["engines"] = {str(k): {"engine": v, "layers": engine_layers(v)} for k, v in engines.items()}
    if report.get("precision") in ("int8", "mp"):
        notes: list[str] = []
        for entry in report.get("engines", {}).values():
            if entry.get("layers"):
                notes = explain_int8(entry["layers"])
                break
        report["int8_notes"] = notes
    return report


def _bench_trtexec(
    options: EngineOptions, model: str | Path | None, batches: list[int], engine_dir: str | Path | None = None
) -> dict[str, Any]:
    from yolov9_qat.runtime import trtexec
    from yolov9_qat.runtime.tensorrt import device_index, strongly_typed_env

    path, is_engine = _bench_source(model)
    if is_engine:
        raise UserError(
            "--runner trtexec benchmarks from the ONNX (the record's method); give --model F.onnx"
        )
    info = graph_info(path)
    precision = resolve_precision(options.precision, path, info)
    name, chw = image_input(info, options.img)
    _check_environment("the TensorRT benchmark", "trtexec")
    exe = trtexec.find_trtexec()
    major = trtexec.version_major(trtexec.trtexec_version(exe))
    typed = major >= 11 or strongly_typed_env()
    from yolov9_qat.runtime.precision_graphs import graph_for_precision

    graph = graph_for_precision(path, precision, typed)
    flags = trtexec.BenchFlags(
        warmup_ms=float(options.warmup_ms),
        duration_s=float(options.duration_s),
        use_cuda_graph=options.use_cuda_graph,
        use_spin_wait=options.use_spin_wait,
        no_data_transfers=options.no_data_transfers,
    )
    report = trtexec.benchmark(
        graph, precision, batches, chw, flags, out_dir=Path(engine_dir or path.parent), input_name=name,
        typed=typed, timing_cache=_timing_cache(options, path), workspace_gib=options.workspace_gib,
        resilience=options.resilience, device=device_index(options.device), trtexec=exe, stem=path.stem,
        trt_major=major,
    )  # fmt: skip
    report["model"] = str(path)
    return report


# --- val -------------------------------------------------------------------------------------------
def tensorrt_val_predictor(
    options: EngineOptions, weights: str | Path, batch_size: int = 32, data: dict[str, Any] | None = None
) -> Any:
    """``predict`` for ``val --backend tensorrt`` (the record's ``val_trt.sh``): ``weights`` is an
    engine, or an ONNX whose engine (profile min 1, opt = max = ``batch_size`` at ``options.img``) is
    built through the cache first; ``data`` (a loaded data.yaml) checks the class count. End-to-end
    engines return per-image detections."""
    from yolov9_qat.runtime.tensorrt import build_cached, device_index, tensorrt_predictor

    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights {path}: no such file")
    device = device_index(options.device)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        _check_environment("val --backend tensorrt", "polygraphy")
        return tensorrt_predictor(path, device)
    if path.suffix.lower() != ".onnx":
        raise UserError(f"--backend tensorrt takes an .onnx file or a TensorRT engine, not {path.name}")
    info = graph_info(path)
    nc = info["metadata"].get("nc")
    if data is not None and nc is not None and int(nc) != len(data["names"]):
        raise UserError(f"{path} predicts {nc} classes, the data set has {len(data['names'])}")
    precision = resolve_precision(options.precision, path, info)
    batch = int(batch_size or 32)
    name, chw = image_input(info, options.img)
    profile = batch_profile(info, chw, name, 1, batch, batch)
    _check_environment("val --backend tensorrt", options.runner)
    cached = build_cached(
        path, build_options(options, path, precision, profile), cache_dir=options.engine_cache,
        device=device, runner=options.runner,
    )  # fmt: skip
    log.info("TensorRT engine %s (%s)", cached.engine, "cache hit" if cached.hit else "built")
    return tensorrt_predictor(cached.engine, device)


__all__ = [
    "add_build_arguments",
    "add_trt_val_arguments",
    "bench_tensorrt",
    "cmd_build",
    "engine_layers",
    "make_resilience_runner",
    "make_trt_runner",
    "parse_shape_spec",
    "resolve_profile",
    "tensorrt_val_predictor",
]

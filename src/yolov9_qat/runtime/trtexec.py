"""trtexec, the record's tool: its command line built from the same options as the polygraphy path,
run where ``trtexec`` is installed, and its "Performance summary" parsed into the harness's JSON.

The record's benchmark command::

    trtexec --onnx=M.onnx --fp16 --int8 --saveEngine=M_bs4_MP.engine --timingCacheFile=M.engine.timing.cache
            --warmUp=500 --duration=10 --useCudaGraph --useSpinWait --noDataTransfers
            --minShapes=images:1x3x640x640 --optShapes=images:4x3x640x640 --maxShapes=images:4x3x640x640

Latency in the JSON is trtexec's "GPU Compute Time" (what the polygraphy runner measures with CUDA
events); its host "Latency" line is kept under ``extra``. Throughput is trtexec's ``qps`` (batches
per second); ``ips = qps * batch``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from yolov9_qat.errors import UserError
from yolov9_qat.runtime.engine_cache import BuildOptions, ShapeProfile, format_shape_spec
from yolov9_qat.utils.files import atomic_write_text

FLAGS_TRT10 = {"fp32": (), "fp16": ("--fp16",), "int8": ("--int8",), "mp": ("--int8", "--fp16")}
STAT_KEYS = ("min", "mean", "median", "p90", "p95", "p99", "max")
DEVICE_KEYS = {  # trtexec "=== Device Information ===" line -> the record's device block
    "Selected Device": "Device",
    "Compute Capability": "Compute Capability",
    "SMs": "SMs",
    "Device Global Memory": "Device Global Memory",
    "Shared Memory per SM": "Shared Memory per SM",
    "Memory Bus Width": "Memory Bus Width",
    "Application Compute Clock Rate": "Application Compute Clock Rate",
    "Application Memory Clock Rate": "Application Memory Clock Rate",
    "Compute Clock Rate": "Application Compute Clock Rate",  # TensorRT 8.0 - 8.4 spelling
    "Memory Clock Rate": "Application Memory Clock Rate",
}
_PREFIX = re.compile(r"^\s*(?:\[[^\]]*\]\s*)*?(?:\[[A-Z]\]\s*)")  # "[06/12/2024-10:23:45] [I] "
_STAT = re.compile(
    r"(min|max|mean|median|percentile\(\s*([0-9.]+)\s*%\s*\))\s*=\s*([-+0-9.eE]+|nan|inf)\s*ms"
)


@dataclass
class BenchFlags:
    """trtexec's measurement flags (the record: 500 ms, 10 s, CUDA graph, spin wait, no transfers)."""

    warmup_ms: float = 500.0
    duration_s: float = 10.0
    use_cuda_graph: bool = False
    use_spin_wait: bool = False
    no_data_transfers: bool = False


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def precision_args(precision: str, typed: bool, trt_major: int = 10) -> list[str]:
    """``--int8 --fp16`` for mp, ... (TensorRT 10 with builder flags). A strongly typed build takes its
    precisions from the graph: ``--stronglyTyped`` on TensorRT 10 (required there), nothing on 11
    (always typed; the flag is a no-op)."""
    if precision not in FLAGS_TRT10:
        raise UserError(f"precision {precision!r}: choose one of {', '.join(FLAGS_TRT10)}")
    if typed:
        return ["--stronglyTyped"] if trt_major < 11 else []
    return list(FLAGS_TRT10[precision])


def bench_args(bench: BenchFlags, trt_major: int = 10) -> list[str]:
    """Warm-up, duration and the three measurement switches, spelled for the trtexec at hand: up to
    TensorRT 10 CUDA graph, spin wait and no-data-transfers are off unless asked for (``--useCudaGraph
    --useSpinWait --noDataTransfers``); from 11 they are on by default, those flags are deprecated
    no-ops, and off is ``--noCudaGraph --noSpinWait --includeDataTransfers``."""
    out = [f"--warmUp={_num(bench.warmup_ms)}", f"--duration={_num(bench.duration_s)}"]
    switches = (
        (bench.use_cuda_graph, "--useCudaGraph", "--noCudaGraph"),
        (bench.use_spin_wait, "--useSpinWait", "--noSpinWait"),
        (bench.no_data_transfers, "--noDataTransfers", "--includeDataTransfers"),
    )
    if trt_major >= 11:
        return out + [off for on, _, off in switches if not on]
    return out + [flag for on, flag, _ in switches if on]


def build_command(
    onnx: str | os.PathLike[str],
    options: BuildOptions,
    *,
    save_engine: str | os.PathLike[str] | None = None,
    typed: bool = False,
    bench: BenchFlags | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    layer_info: str | os.PathLike[str] | None = None,
    skip_inference: bool = False,
    device: int = 0,
    trtexec: str = "trtexec",
    trt_major: int = 10,
) -> list[str]:
    """The trtexec argument list for one build (+ benchmark when ``bench``), in the record's order,
    for a trtexec of TensorRT ``trt_major`` (:func:`trtexec_version`)."""
    cmd = [trtexec, f"--onnx={onnx}", *precision_args(options.precision, typed, trt_major)]
    if save_engine:
        cmd.append(f"--saveEngine={save_engine}")
    if options.timing_cache:
        cmd.append(f"--timingCacheFile={options.timing_cache}")
    if bench is not None:
        cmd += bench_args(bench, trt_major)
    lo, opt, hi = options.profile.specs()
    cmd += [f"--minShapes={lo}", f"--optShapes={opt}", f"--maxShapes={hi}"]
    if shapes:
        cmd.append(f"--shapes={format_shape_spec(shapes)}")
    if options.workspace_gib:
        cmd.append(f"--memPoolSize=workspace:{round(options.workspace_gib * 1024)}M")
    if options.optimization_level is not None:
        cmd.append(f"--builderOptimizationLevel={options.optimization_level}")
    if layer_info:
        cmd += ["--profilingVerbosity=detailed", f"--exportLayerInfo={layer_info}"]
    if skip_inference:
        cmd.append("--skipInference")
    if device:
        cmd.append(f"--device={device}")
    return cmd


# --- running ---------------------------------------------------------------------------------------
def find_trtexec() -> str:
    """``trtexec`` on PATH (or TensorRT's default ``/usr/src/tensorrt/bin/trtexec``)."""
    exe = shutil.which("trtexec") or shutil.which("/usr/src/tensorrt/bin/trtexec")
    if not exe:
        raise UserError(
            "--runner trtexec needs the `trtexec` binary on PATH (it ships with TensorRT, e.g. "
            "/usr/src/tensorrt/bin/trtexec); use --runner polygraphy otherwise"
        )
    return exe


def parse_version(text: str) -> str | None:
    """TensorRT version from a trtexec log: ``TensorRT version: 10.3.0`` or the banner
    ``[TensorRT v100300]`` (10.3.0) / ``[TensorRT v8601]`` (8.6.1)."""
    m = re.search(r"TensorRT version:\s*([0-9]+(?:\.[0-9]+)+)", text)
    if m:
        return m.group(1)
    m = re.search(r"\[TensorRT v(\d+)\]", text)
    if not m:
        return None
    n = int(m.group(1))
    if n >= 10000:  # 10.x and later: MMmmpp
        return f"{n // 10000}.{(n // 100) % 100}.{n % 100}"
    return f"{n // 1000}.{(n // 100) % 10}.{n % 100}"  # 8.x: Mmpp


def version_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def run_trtexec(
    cmd: list[str], log_path: str | os.PathLike[str] | None = None, timeout: float | None = None
) -> str:
    """Run trtexec, return its log (stdout + stderr); a failure is one line with its last error."""
    try:
        res = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise UserError(f"cannot run {cmd[0]}: not found") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"trtexec did not finish within {timeout:.0f} s") from None
    text = res.stdout or ""
    if log_path:
        atomic_write_text(log_path, text)
    if res.returncode != 0:
        errors = [_strip(ln) for ln in text.splitlines() if "[E]" in ln] or [
            ln.strip() for ln in text.splitlines() if ln.strip()
        ]
        last = errors[-1] if errors else "no output"
        where = f" (log: {log_path})" if log_path else ""
        raise UserError(f"trtexec failed with exit code {res.returncode}: {last[:300]}{where}")
    return text


def trtexec_version(exe: str) -> str:
    """The TensorRT version of a trtexec binary (from its ``--help`` banner)."""
    res = subprocess.run(
        [exe, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    version = parse_version(res.stdout or "")
    if version is None:
        raise UserError(f"cannot tell the TensorRT version of {exe} from its --help output")
    return version


# --- parsing ---------------------------------------------------------------------------------------
def _strip(line: str) -> str:
    return _PREFIX.sub("", line, count=1).strip()


def parse_stats(text: str) -> dict[str, float | None]:
    """``min = 2.7 ms, max = 3.0 ms, mean = ..., median = ..., percentile(90%) = ..., ...`` ->
    ``{"min", "mean", "median", "p90", "p95", "p99", "max"}`` (a percentile the log lacks is None)."""
    found: dict[str, float] = {}
    for m in _STAT.finditer(text):
        key = f"p{float(m.group(2)):g}" if m.group(2) else m.group(1)
        found[key] = float(m.group(3))
    return {k: found.get(k) for k in STAT_KEYS} | {k: v for k, v in found.items() if k not in STAT_KEYS}


def parse_performance_summary(text: str) -> dict[str, Any]:
    """trtexec's last ``=== Performance summary ===`` block -> throughput and latency statistics.

    Reads TensorRT 8.x logs (``percentile(99%)`` only) and 8.6+ / 10.x logs (``percentile(90%)``,
    ``(95%)``, ``(99%)``); ``latency_ms`` is the GPU Compute Time (host ``Latency`` as fallback).
    """
    if not isinstance(text, str) or "Performance summary" not in text:
        raise UserError(
            "no '=== Performance summary ===' block in the trtexec output (did the benchmark run?)"
        )
    block = text[text.rindex("Performance summary") :]
    lines: dict[str, str] = {}
    for raw in block.splitlines()[1:]:
        line = _strip(raw)
        if line.startswith("===") or line.startswith("&&&&"):
            break
        key, sep, rest = line.partition(":")
        if sep and key.strip() and key.strip() not in lines:
            lines[key.strip()] = rest.strip()
    m = re.match(r"([-+0-9.eE]+)\s*qps", lines.get("Throughput", ""))
    if not m:
        raise UserError("trtexec performance summary has no 'Throughput: X qps' line")
    stats = {k: parse_stats(v) for k, v in lines.items() if "=" in v and " ms" in v}
    gpu = stats.get("GPU Compute Time") or stats.get("GPU Compute")
    host = stats.get("Latency") or stats.get("Host Latency")
    # the record's "Latency (99%)" is the figure trtexec prints as "Latency" (host latency: H2D + GPU
    # compute + D2H); GPU compute time is kept beside it, and stands in only where a log has no Latency
    primary = host or gpu
    if not primary or any(primary.get(k) is None for k in ("min", "mean", "median", "max", "p99")):
        raise UserError("trtexec performance summary has no complete 'Latency' / 'GPU Compute Time' line")
    out: dict[str, Any] = {
        "throughput_qps": float(m.group(1)),
        "latency_ms": {k: primary.get(k) for k in STAT_KEYS},
        "latency_source": "Latency" if host else "GPU Compute Time",
        "gpu_compute_ms": {k: gpu.get(k) for k in STAT_KEYS} if gpu else None,
    }
    for key, name in (("Enqueue Time", "enqueue_ms"), ("H2D Latency", "h2d_ms"), ("D2H Latency", "d2h_ms")):
        if key in stats:
            out[name] = {k: stats[key].get(k) for k in STAT_KEYS}
    for key, name in (
        ("Total Host Walltime", "total_host_walltime_s"),
        ("Total GPU Compute Time", "total_gpu_compute_s"),
    ):
        mm = re.match(r"([-+0-9.eE]+)\s*s\b", lines.get(key, ""))
        if mm:
            out[name] = float(mm.group(1))
    # the count of the run this summary closes: the last trace line before it (logs may hold several runs)
    traces = re.findall(
        r"Timing trace has (\d+) queries over ([0-9.eE+-]+) s", text[: text.rindex("Performance summary")]
    )
    if traces:
        out["iterations"] = int(traces[-1][0])
    return out


def parse_device_information(text: str) -> dict[str, Any]:
    """trtexec's ``=== Device Information ===`` block as the record's device block."""
    if "=== Device Information ===" not in text:
        return {}
    block = text[text.index("=== Device Information ===") :].splitlines()[1:]
    out: dict[str, Any] = {}
    for raw in block:
        line = _strip(raw)
        if line.startswith("==="):
            break
        key, sep, value = line.partition(":")
        name = DEVICE_KEYS.get(key.strip())
        if sep and name and name not in out:
            out[name] = value.strip()
    return out


def batch_result(summary: dict[str, Any], batch: int, label: str | None = None) -> dict[str, Any]:
    """One entry of the harness's ``results`` list from a parsed summary."""
    qps = float(summary["throughput_qps"])
    extra = {k: v for k, v in summary.items() if k not in ("throughput_qps", "latency_ms", "iterations")}
    extra["runner"] = "trtexec"
    out = {
        "batch": int(batch),
        "iterations": summary.get("iterations"),
        "latency_ms": summary["latency_ms"],
        "throughput_qps": qps,
        "ips": qps * batch,
        "extra": extra,
    }
    if label:
        out["label"] = label
    return out


# --- build / benchmark -----------------------------------------------------------------------------
def build_engine(
    onnx: str | os.PathLike[str],
    options: BuildOptions,
    out: str | os.PathLike[str],
    *,
    typed: bool = False,
    trtexec: str | None = None,
    device: int = 0,
    trt_major: int = 10,
) -> str | None:
    """Build one engine with trtexec (no benchmark) into ``out``; returns its layer-information JSON."""
    exe = trtexec or find_trtexec()
    with tempfile.TemporaryDirectory() as tmp:
        info = Path(tmp) / "layers.json"
        cmd = build_command(
            onnx,
            options,
            save_engine=out,
            typed=typed,
            layer_info=info,
            skip_inference=True,
            device=device,
            trtexec=exe,
            trt_major=trt_major,
        )
        run_trtexec(cmd)
        return info.read_text() if info.is_file() else None


def engine_name(stem: str, batch: int | str, precision: str) -> str:
    """The record's engine naming: ``<stem>_bs4_MP.engine``."""
    return f"{stem}_bs{batch}_{precision.upper()}.engine"


def benchmark(
    onnx: str | os.PathLike[str],
    precision: str,
    batches: list[int],
    chw: tuple[int, int, int],
    flags: BenchFlags,
    *,
    out_dir: str | os.PathLike[str],
    input_name: str = "images",
    typed: bool = False,
    timing_cache: str | None = None,
    workspace_gib: float | None = None,
    resilience: bool = False,
    device: int = 0,
    trtexec: str | None = None,
    stem: str | None = None,
    trt_major: int = 10,
) -> dict[str, Any]:
    """The record's method with trtexec: per batch ``b`` one build + run with profile (1, b, b); with
    ``resilience`` also the (1, 4, 8) engine at batch 8. Returns the harness's report layout."""
    from yolov9_qat.runtime.inspect_engine import summarize, write_layers_json

    exe = trtexec or find_trtexec()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = [(b, ShapeProfile.for_batches(chw, 1, b, b, input_name), None, None) for b in batches]
    if resilience:
        plan.append(
            (8, ShapeProfile.for_batches(chw, 1, 4, 8, input_name), {input_name: (8, *chw)}, "Resilience")
        )
    results, device_block, commands, layers = [], {}, [], {}
    for batch, profile, shapes, label in plan:
        options = BuildOptions(precision, profile, workspace_gib=workspace_gib, timing_cache=timing_cache)
        tag = "resilience" if label else batch
        engine = out_dir / engine_name(stem or Path(onnx).stem, tag, precision)
        info = engine.with_name(engine.name + ".graph.json")
        cmd = build_command(
            onnx, options, save_engine=engine, typed=typed, bench=flags, shapes=shapes, layer_info=info,
            device=device, trtexec=exe, trt_major=trt_major,
        )  # fmt: skip
        commands.append(" ".join(cmd))
        log = run_trtexec(cmd, log_path=engine.with_name(engine.name + ".log"))
        device_block = device_block or parse_device_information(log)
        results.append(batch_result(parse_performance_summary(log), batch, label))
        if info.is_file():
            summary = summarize(info)
            write_layers_json(summary, engine.with_name(engine.name + ".layers.json"))
            layers[str(tag)] = {
                "engine": str(engine),
                "layers": {k: v for k, v in summary.items() if k not in ("layers", "details")},
            }
    return {
        "backend": "tensorrt",
        "runner": "trtexec",
        "model": str(onnx),
        "precision": precision,
        "device": device_block,
        "config": asdict(flags),
        "results": results,
        "commands": commands,
        "engines": layers,
    }

"""One-call GPU check: the steps that need CUDA (and, where it is importable, TensorRT), run as a user
runs them, on a small synthetic set, with one JSON report.

    python -m yolov9_qat.gpu_check --out gpu_check.json      # or: bash scripts/gpu_check.sh
    python -m yolov9_qat.gpu_check --dry-run                 # the plan, on any machine

Each step is a ``yolov9-qat`` command (or ``torchrun``, or ``pytest -m gpu``) in its own process; a step
whose inputs failed or whose requirement is missing is skipped with the reason. Nothing is downloaded.
Both head variants (the default INT8-in / float-out output convs, and ``quantize --head-float``) are
built into INT8 and MP engines; QAT also runs under ``torchrun`` with nccl (AMP on CUDA in both).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: the synthetic set and sizes of the check: small enough for the whole run to stay within ~8 minutes
N_TRAIN, N_VAL, IMG = 96, 48, 160


@dataclass
class Step:
    name: str
    cmd: list[str]
    needs: tuple[str, ...] = ()  # "cuda", "tensorrt", or earlier steps' names
    timeout_s: float = 300.0
    status: str = "planned"  # ok | failed | skipped
    reason: str = ""
    seconds: float = 0.0
    output_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "yolov9_qat", *args]


def plan(work: Path) -> list[Step]:
    """The steps, in order (pure: no process is started)."""
    data = str(work / "synth" / "data.yaml")
    train_dir = work / "runs" / "train"
    best = str(train_dir / "amp" / "weights" / "best.pt")
    qat_dir = work / "runs" / "qat"
    qat = str(qat_dir / "cuda" / "weights" / "qat_best_best.pt")
    onnx = str(qat_dir / "cuda" / "weights" / "qat_best_best.onnx")
    onnx_head = str(qat_dir / "head_float" / "weights" / "qat_best_best.onnx")
    engines = work / "engines"
    common = ["--data", data, "--img", str(IMG), "--no-progress"]
    # fmt: off
    steps = [
        Step("synth", _cli("synth", "--out", str(work / "synth"), "--train", str(N_TRAIN), "--val", str(N_VAL),
                           "--imgsz", str(IMG)), timeout_s=120),
        Step("train_cuda_amp", _cli("train", "--cfg", "yolov9-n", "--weights", "", "--epochs", "1", "--batch-size", "16",
                                    "--hyp", "hyp.cpu-adamw", "--optimizer", "AdamW", "--device", "0", "--workers", "2",
                                    "--close-mosaic", "0", "--project", str(train_dir), "--name", "amp", "--exist-ok",
                                    "--noplots", *common), needs=("cuda", "synth")),
        Step("torchrun_nccl", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "yolov9_qat",
                               "train", "--cfg", "yolov9-n", "--weights", "", "--epochs", "1", "--batch-size", "16",
                               "--hyp", "hyp.cpu-adamw", "--optimizer", "AdamW", "--device", "0", "--workers", "2",
                               "--close-mosaic", "0", "--project", str(train_dir), "--name", "ddp", "--exist-ok",
                               "--noplots", *common], needs=("cuda", "synth")),
        Step("quantize_cuda", _cli("quantize", "--weights", best, "--epochs", "1", "--iters", "10", "--calib-batches", "2",
                                   "--batch-size", "8", "--device", "0", "--workers", "2", "--project", str(qat_dir),
                                   "--name", "cuda", "--exist-ok", *common), needs=("cuda", "train_cuda_amp")),
        Step("export_onnx", _cli("export", "--weights", qat, "--include", "onnx", "--dynamic", "--img", str(IMG)),
             needs=("quantize_cuda",)),
        Step("quantize_head_float", _cli("quantize", "--weights", best, "--epochs", "1", "--iters", "10",
                                         "--calib-batches", "2", "--batch-size", "8", "--device", "0", "--workers", "2",
                                         "--head-float", "--project", str(qat_dir), "--name", "head_float",
                                         "--exist-ok", *common), needs=("cuda", "train_cuda_amp")),
        Step("export_head_float", _cli("export", "--weights", onnx_head.replace(".onnx", ".pt"), "--include", "onnx",
                                       "--dynamic", "--img", str(IMG)), needs=("quantize_head_float",)),
        Step("quantize_torchrun_nccl", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m",
                                        "yolov9_qat", "quantize", "--weights", best, "--epochs", "1", "--iters", "5",
                                        "--calib-batches", "2", "--batch-size", "8", "--device", "0", "--workers", "2",
                                        "--project", str(qat_dir), "--name", "ddp", "--exist-ok", *common],
             needs=("cuda", "train_cuda_amp")),
        Step("val_half", _cli("val", "--weights", best, "--device", "0", "--half", "--batch-size", "16", "--workers", "2",
                              "--project", str(work / "runs" / "val"), "--name", "half", "--exist-ok", *common),
             needs=("cuda", "train_cuda_amp")),
    ]
    float_onnx = str(train_dir / "amp" / "weights" / "best.onnx")
    steps.append(
        Step("export_float", _cli("export", "--weights", best, "--include", "onnx", "--dynamic", "--img", str(IMG)),
             needs=("train_cuda_amp",))
    )
    builds = [("fp16", float_onnx, "export_float", ""), ("int8", onnx, "export_onnx", ""),
              ("mp", onnx, "export_onnx", ""), ("int8", onnx_head, "export_head_float", "_head_float"),
              ("mp", onnx_head, "export_head_float", "_head_float")]  # FP16 from the float graph, INT8 / MP from Q/DQ
    for precision, src, made_by, variant in builds:
        steps.append(Step(
            f"build_{precision}{variant}",
            _cli("build", "--onnx", src, "--precision", precision, "--min-shapes", f"images:1x3x{IMG}x{IMG}",
                 "--opt-shapes", f"images:4x3x{IMG}x{IMG}", "--max-shapes", f"images:8x3x{IMG}x{IMG}",
                 "--save-engine", str(engines / f"model{variant}.{precision}.engine")),
            needs=("tensorrt", made_by),
        ))
    steps += [
        Step("val_tensorrt", _cli("val", "--backend", "tensorrt", "--weights", onnx, "--batch-size", "8", "--workers", "2",
                                  "--project", str(work / "runs" / "val"), "--name", "trt", "--exist-ok", *common),
             needs=("tensorrt", "export_onnx")),
        Step("bench_tensorrt", _cli("bench", "--backend", "tensorrt", "--model", onnx, "--batch", "1,4,8",
                                    "--use-cuda-graph", "--use-spin-wait", "--no-data-transfers", "--warmup", "200",
                                    "--duration", "2", "--project", str(work / "runs" / "bench"), "--name", "trt",
                                    "--exist-ok", "--no-progress"), needs=("tensorrt", "export_onnx")),
        Step("pytest_gpu", [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-x", "tests/runtime/test_tensorrt_gpu.py"],
             needs=("tensorrt",), timeout_s=420),
    ]
    # fmt: on
    return steps


def environment() -> dict[str, Any]:
    """What this machine has, for the report and the skip decisions."""
    env: dict[str, Any] = {"python": sys.version.split()[0], "cuda": False, "tensorrt": None}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda"] = bool(torch.cuda.is_available())
        if env["cuda"]:
            p = torch.cuda.get_device_properties(0)
            env["gpu"] = p.name
            env["compute_capability"] = f"{p.major}.{p.minor}"
    except ImportError:
        env["torch"] = None
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            import tensorrt

            env["tensorrt"] = tensorrt.__version__
        except Exception as e:  # a stub package that cannot load its libraries
            env["tensorrt_error"] = " ".join(str(e).split())[:200]
    return env


def _skip_reason(step: Step, env: dict[str, Any], done: dict[str, Step]) -> str:
    for need in step.needs:
        if need == "cuda" and not env.get("cuda"):
            return "no CUDA device visible to PyTorch"
        if need == "tensorrt" and not (env.get("cuda") and env.get("tensorrt")):
            return "TensorRT is not importable here" if env.get("cuda") else "no CUDA device"
        if need in done and done[need].status != "ok":
            return f"needs step {need} ({done[need].status})"
    return ""


def run(steps: list[Step], env: dict[str, Any], log: Any = print) -> list[Step]:
    done: dict[str, Step] = {}
    for step in steps:
        reason = _skip_reason(step, env, done)
        if reason:
            step.status, step.reason = "skipped", reason
        else:
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(step.cmd, capture_output=True, text=True, timeout=step.timeout_s)
                step.status = "ok" if proc.returncode == 0 else "failed"
                step.output_tail = (proc.stdout + proc.stderr)[-3000:]
                if proc.returncode:
                    step.reason = (
                        f"exit {proc.returncode}: " + (proc.stderr.strip().splitlines() or [""])[-1][:300]
                    )
            except subprocess.TimeoutExpired:
                step.status, step.reason = "failed", f"timed out after {step.timeout_s:.0f} s"
            step.seconds = round(time.perf_counter() - t0, 1)
        done[step.name] = step
        log(f"{step.name:22} {step.status:8} {step.seconds:7.1f} s  {step.reason}")
    return steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit 0")
    ap.add_argument("--out", default="gpu_check.json", help="the JSON report")
    ap.add_argument("--work", default="", help="working folder (default: a temporary one)")
    args = ap.parse_args(argv)
    env = environment()
    if args.dry_run:
        steps = plan(Path(args.work or "<work>"))
        print(f"environment: {json.dumps(env)}")
        done: dict[str, Step] = {}
        width = max(len(s.name) for s in steps)
        for s in steps:
            reason = _skip_reason(s, env, done)
            s.status = "skipped" if reason else "ok"  # what the run would find
            done[s.name] = s
            print(f"{s.name:{width}} {'would skip: ' + reason if reason else 'would run'}")
            print(f"{'':{width}} {shlex.join(s.cmd)}")
        return 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="yolov9-qat-gpu-check-"))
    steps = plan(work)
    os.environ.setdefault("YOLOV9_QAT_CACHE", str(work / "cache"))
    t0 = time.perf_counter()
    run(steps, env)
    report = {
        "environment": env,
        "wall_s": round(time.perf_counter() - t0, 1),
        "steps": [asdict(s) for s in steps],
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    failed = [s.name for s in steps if s.status == "failed"]
    print(f"report: {args.out}; {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

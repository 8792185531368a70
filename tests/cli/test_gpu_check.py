"""scripts/gpu_check.sh: the one-call GPU check's plan, as a CPU machine sees it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from yolov9_qat.gpu_check import _skip_reason, plan

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.cpu
def test_dry_run_prints_the_plan_and_exits_0() -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for step in ("synth", "train_cuda_amp", "torchrun_nccl", "quantize_cuda", "val_half", "build_int8",
                 "quantize_head_float", "build_int8_head_float", "build_mp_head_float", "quantize_torchrun_nccl",
                 "bench_tensorrt", "pytest_gpu"):  # fmt: skip
        assert step in proc.stdout
    if 'cuda": false' in proc.stdout:  # on a CPU machine every GPU step says why it would not run
        import re

        assert re.search(r"^train_cuda_amp +would skip: no CUDA device", proc.stdout, re.M)
        assert re.search(r"^export_onnx +would skip: needs step quantize_cuda", proc.stdout, re.M)
        assert re.search(r"^build_mp_head_float +would skip: no CUDA device", proc.stdout, re.M)


@pytest.mark.cpu
def test_plan_dependencies_come_first(tmp_path: Path) -> None:
    steps = plan(tmp_path)
    seen: set[str] = set()
    for s in steps:
        for need in s.needs:
            assert need in ("cuda", "tensorrt") or need in seen, f"{s.name} needs {need} before it runs"
        seen.add(s.name)
    assert _skip_reason(steps[1], {"cuda": False}, {}) == "no CUDA device visible to PyTorch"
    assert _skip_reason(steps[1], {"cuda": True}, {}) == ""

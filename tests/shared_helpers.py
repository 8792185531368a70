"""Helpers the test files share (a plain module: ``from shared_helpers import ...``; the root conftest
puts ``tests/`` on the import path)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from yolov9_qat.utils.runs import torch_threads


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread per test module (two pytest workers on two cores)."""
    with torch_threads(1):
        yield


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: int = 900,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess:
    """``python -m yolov9_qat ARGS`` as a user runs it, in its own process (one OpenMP thread)."""
    return subprocess.run(
        [sys.executable, "-m", "yolov9_qat", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip

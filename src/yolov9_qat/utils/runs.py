"""Run folders (``runs/<task>/<name>``, upstream's ``--project`` / ``--name`` / ``--exist-ok``) and devices."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from yolov9_qat.errors import UserError


def run_dir(project: str | Path, name: str, exist_ok: bool = False, mkdir: bool = True) -> Path:
    """``project/name``, or ``project/name2``, ``name3`` ... when it exists and ``exist_ok`` is false."""
    base = Path(project) / name
    path = base
    if not exist_ok:
        n = 2
        while path.exists():
            path = base.with_name(f"{base.name}{n}")
            n += 1
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def select_device(device: str | None = "") -> torch.device:
    """``''`` (CUDA if there is one, else CPU), ``cpu``, ``0``, ``0,1``, ``cuda:0`` -> a torch device.

    Asking for a GPU where there is none is a user error, said in one line.
    """
    spec = (device or "").strip().lower().replace("cuda:", "")
    if spec in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"\d+(,\d+)*", spec):
        raise UserError(f"--device {device!r} is not 'cpu', a GPU index like 0, or a list like 0,1")
    if not torch.cuda.is_available():
        raise UserError(
            f"--device {device} asks for a GPU, but no CUDA device is available here (use --device cpu)"
        )
    first = int(spec.split(",")[0])
    if first >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device(f"cuda:{first}")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch intra-op threads set to ``n`` inside, restored after. (On a small machine shared with
    other processes, OpenMP barriers make small convs far slower with two threads than with one.)"""
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)

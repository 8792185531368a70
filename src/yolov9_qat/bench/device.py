"""The device block of a benchmark report: what the numbers were measured on."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def _cpuinfo() -> dict[str, str]:
    """The first value of each key of ``/proc/cpuinfo`` (keys lower-cased; empty where there is none)."""
    info = Path("/proc/cpuinfo")
    fields: dict[str, str] = {}
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def cpu_generation() -> str:
    """``family F model M`` from ``/proc/cpuinfo`` ("" where it does not say): a marketing name such as
    "AMD EPYC" (what a VM shows) covers several generations, whose kernels round differently."""
    fields = _cpuinfo()
    if "cpu family" not in fields or "model" not in fields:
        return ""
    return f"family {fields['cpu family']} model {fields['model']}"


def cpu_device(threads: int) -> dict[str, Any]:
    """CPU block: model, logical cores, threads used, and whether VNNI (fast int8 dot products) exists."""
    flags = cpu_flags()
    return {
        "Device": cpu_model(),
        "Logical cores": os.cpu_count(),
        "Threads": threads,
        "VNNI": bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags),
        "Platform": f"{platform.system()} {platform.machine()}",
    }


def cuda_device(index: int = 0) -> dict[str, Any]:
    """GPU block as the record prints it (name, compute capability, SMs, memory, clocks where known)."""
    import torch

    p = torch.cuda.get_device_properties(index)
    out: dict[str, Any] = {
        "Device": p.name,
        "Compute Capability": f"{p.major}.{p.minor}",
        "SMs": p.multi_processor_count,
        "Device Global Memory": f"{p.total_memory // 2**20} MiB",
    }
    clock = getattr(p, "clock_rate", None)  # kHz, where torch exposes it
    if clock:
        out["Application Compute Clock Rate"] = f"{clock / 1e6:.3f} GHz"
    mem_clock = getattr(p, "memory_clock_rate", None)
    if mem_clock:
        out["Application Memory Clock Rate"] = f"{mem_clock / 1e6:.3f} GHz"
    return out

"""``yolov9-qat doctor``: what this machine has, and what each command can use here.

    yolov9-qat doctor                          # two aligned tables: the pieces, then the commands
    yolov9-qat doctor --json                   # the same report as JSON
    yolov9-qat doctor --strict --need tensorrt,cuda   # exit 1 when one of those is missing

:func:`probe` looks at every piece (Python, PyTorch and CUDA, TensorRT and its ``EfficientNMS_TRT``
plugin, polygraphy, ``trtexec``, ModelOpt, ONNX Runtime, ...) and returns one check per piece
(``name``, ``status``, ``version``, ``detail``, ``install``); the command table is derived from those
checks (:func:`commands_table`), never written per machine. A status is ``ok``, ``missing`` (not
installed / not present), ``not usable`` (present but broken: ``detail`` is the first line of the error)
or ``unknown`` (a fact that cannot be read on this OS). Every probe catches its own exceptions: a broken
install is reported, never raised.

Only the standard library is imported at module level: ``cli.py`` imports this module to build its
parser, and ``probe`` imports the heavy modules (torch, tensorrt) itself.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

OK, MISSING, NOT_USABLE, UNKNOWN = "ok", "missing", "not usable", "unknown"
SCHEMA = "yolov9-qat-doctor/1"
SUBPROCESS_TIMEOUT_S = 5.0  # nvidia-smi, trtexec --help: a hung driver must not hang the doctor

GPU_EXTRA = 'pip install "yolov9-qat[gpu]"'
TENSORRT_INSTALL = (
    f"{GPU_EXTRA} on a machine with an NVIDIA GPU; without NVIDIA's package index "
    "(--extra-index-url https://pypi.nvidia.com) pip may find only stub `tensorrt` packages that fail at "
    "import: then install TensorRT from NVIDIA (tar / deb / rpm packages or an NGC container)"
)
TRTEXEC_INSTALL = (
    "trtexec is not on pip: it ships with TensorRT's tar / deb / rpm packages and NVIDIA's TensorRT "
    "containers (/usr/src/tensorrt/bin/trtexec); put its folder on PATH"
)
TRTEXEC_DEFAULT = "/usr/src/tensorrt/bin/trtexec"
CUDA_INSTALL = "an NVIDIA GPU with its driver, and a CUDA build of PyTorch (pytorch.org/get-started/locally)"
VNNI_INSTALL = (
    "hardware: an x86 CPU with AVX512-VNNI or AVX-VNNI (ONNX Runtime's u8 integer kernels are fast only "
    "with it)"
)
NMS_PLUGIN_INSTALL = "part of TensorRT (libnvinfer_plugin): reinstall TensorRT with its plugin library"

#: every check :func:`probe` reports, in its order (``--module`` names come after)
CHECK_NAMES = (
    "python", "torch", "cuda", "tensorrt", "trt_nms_plugin", "polygraphy", "trtexec", "modelopt",
    "onnxruntime", "onnx", "onnxslim", "supervision", "tritonclient", "cocoeval", "opencv", "autocast",
    "pytest", "cpu", "vnni",
)  # fmt: skip
#: what ``--strict`` requires when no ``--need`` is given: the base install (``pip install yolov9-qat``)
CORE = (
    "python",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxslim",
    "modelopt",
    "cocoeval",
    "opencv",
    "supervision",
)
#: other spellings accepted by ``--need``
ALIASES = {
    "trt": "tensorrt",
    "gpu": "cuda",
    "cv2": "opencv",
    "opencv-python": "opencv",
    "opencv-python-headless": "opencv",
    "nvidia-modelopt": "modelopt",
    "ort": "onnxruntime",
    "efficientnms_trt": "trt_nms_plugin",
    "triton": "tritonclient",
    "pycocotools": "cocoeval",
    "faster-coco-eval": "cocoeval",
    "faster_coco_eval": "cocoeval",
}


@dataclass
class Check:
    """One piece of the machine: its status, version, what was seen, and how to install it."""

    name: str
    label: str
    status: str
    version: str = ""
    detail: str = ""
    install: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --- helpers ---------------------------------------------------------------------------------------
def error_line(e: BaseException) -> str:
    """``Type: first line of the message`` (the whole story a table cell can hold)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _dist_version(*dists: str) -> str:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except Exception:
            continue
    return ""


def _module_version(mod: Any, *dists: str) -> str:
    version = getattr(mod, "__version__", None)
    if isinstance(version, str) and version:
        return version
    return _dist_version(*dists)


def _find(module: str) -> bool:
    """Whether ``module`` is installed. A dotted name imports its parents: an error there (a broken
    parent package) is raised for the caller to report; a missing parent is False."""
    parts = module.split(".")
    return all(importlib.util.find_spec(".".join(parts[: i + 1])) is not None for i in range(len(parts)))


def import_check(
    name: str,
    label: str,
    module: str,
    install: str,
    dists: Sequence[str] = (),
    then: Callable[[Any, Check], None] | None = None,
) -> Check:
    """Import ``module`` and report it: missing when not installed, not usable when the import fails
    (the error's first line), else ok with its version; ``then(module, check)`` adds facts (its own
    exceptions also end in "not usable")."""
    check = Check(name, label, MISSING, install=install)
    try:
        if not _find(module):
            check.detail = f"`{module}` is not installed"
            return check
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = importlib.import_module(module)
        check.status = OK
        # a submodule (e.g. tritonclient.grpc) reports its package's version
        top = sys.modules.get(module.split(".")[0], mod)
        check.version = _module_version(top, *dists)
        if then is not None:
            then(mod, check)
    except (Exception, SystemExit) as e:
        check.status, check.detail = NOT_USABLE, error_line(e)
    return check


def _guard(name: str, label: str, install: str, fn: Callable[[], Check]) -> Check:
    """Run one probe; whatever it raises becomes its "not usable" line."""
    try:
        return fn()
    except (Exception, SystemExit) as e:
        return Check(name, label, NOT_USABLE, detail=error_line(e), install=install)


def _run_quick(cmd: list[str]) -> str:
    """stdout + stderr of a short command (empty when it cannot run or takes too long)."""
    try:
        res = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return res.stdout or ""


# --- the probes ------------------------------------------------------------------------------------
def _python() -> Check:
    c = Check("python", "Python", OK, platform.python_version(), install="Python >= 3.10")
    c.detail = f"{sys.executable} ({platform.python_implementation()})"
    c.extra = {"executable": sys.executable, "prefix": sys.prefix}
    return c


def _torch_facts(torch: Any, c: Check) -> None:
    cuda_build = getattr(torch.version, "cuda", None)
    c.detail = f"CUDA build {cuda_build}" if cuda_build else "CPU-only build"
    c.extra = {"cuda_build": cuda_build, "threads": torch.get_num_threads()}


def _nvidia_smi() -> list[str]:
    """GPUs the driver sees (``name, driver``), where ``nvidia-smi`` exists."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    out = _run_quick([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"])
    return [ln.strip() for ln in out.splitlines() if ln.strip() and "," in ln]


def _cuda(torch_check: Check) -> Check:
    c = Check("cuda", "CUDA device", MISSING, install=CUDA_INSTALL)
    if torch_check.status != OK:
        c.detail = "needs PyTorch"
        return c
    import torch

    if not torch.cuda.is_available():
        smi = _nvidia_smi()
        seen = f"; nvidia-smi sees: {' | '.join(smi)}" if smi else ""
        if not torch.version.cuda:
            c.detail = f"PyTorch is a CPU-only build{seen}"
        else:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            env = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
            c.detail = f"PyTorch (CUDA {torch.version.cuda}) sees no CUDA device{env}{seen}"
        c.extra = {"available": False, "nvidia_smi": smi}
        return c
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(
            {
                "index": i,
                "name": p.name,
                "compute_capability": f"{p.major}.{p.minor}",
                "memory_mib": p.total_memory // 2**20,
            }
        )
    c.status, c.version = OK, torch.version.cuda or ""
    c.detail = "; ".join(
        f"{g['index']}: {g['name']} (cc {g['compute_capability']}, {g['memory_mib'] // 1024} GiB)"
        for g in gpus
    )
    c.extra = {"available": True, "gpus": gpus}
    return c


def _tensorrt_facts(trt: Any, c: Check) -> None:
    try:
        c.extra = {"major": int(str(c.version).split(".")[0])}
    except ValueError:
        c.extra = {"major": 0}


def _nms_plugin(trt_check: Check) -> Check:
    c = Check("trt_nms_plugin", "EfficientNMS_TRT", MISSING, install=NMS_PLUGIN_INSTALL)
    if trt_check.status != OK:
        c.detail = "needs TensorRT (end-to-end graphs exported with --nms trt)"
        return c
    import tensorrt as trt

    trt.init_libnvinfer_plugins(trt.Logger(trt.Logger.ERROR), "")
    registry = trt.get_plugin_registry()
    creators = getattr(registry, "all_creators", None)
    if creators is None:  # TensorRT < 10
        creators = registry.plugin_creator_list
    versions = sorted(str(cr.plugin_version) for cr in creators if cr.name == "EfficientNMS_TRT")
    if versions:
        c.status, c.version = OK, ", ".join(versions)
        c.detail = f"registered ({len(creators)} plugin creators)"
    else:
        c.detail = f"not in TensorRT's plugin registry ({len(creators)} plugin creators)"
    return c


def _trtexec() -> Check:
    c = Check("trtexec", "trtexec", MISSING, install=TRTEXEC_INSTALL)
    exe = shutil.which("trtexec")
    if not exe and os.access(TRTEXEC_DEFAULT, os.X_OK):
        exe = TRTEXEC_DEFAULT
    if not exe:
        c.detail = f"not on PATH (nor {TRTEXEC_DEFAULT})"
        return c
    from yolov9_qat.runtime.trtexec import parse_version

    c.status, c.extra = OK, {"path": exe}
    version = parse_version(_run_quick([exe, "--help"]))
    c.version = version or ""
    c.detail = exe if version else f"{exe} (version not read from `trtexec --help`)"
    return c


def _onnxruntime_facts(ort: Any, c: Check) -> None:
    providers = list(ort.get_available_providers())
    c.detail = "providers: " + ", ".join(providers)
    c.extra = {"providers": providers}


def _opencv_facts(cv2: Any, c: Check) -> None:
    for dist in (
        "opencv-python-headless",
        "opencv-python",
        "opencv-contrib-python-headless",
        "opencv-contrib-python",
    ):
        if _dist_version(dist):
            c.detail = dist
            return


def _tritonclient_facts(_mod: Any, c: Check) -> None:
    c.version = _dist_version("tritonclient") or c.version
    c.detail = "tritonclient.grpc (the model configuration schema of deploy triton)"


def _modelopt_facts(deep: bool) -> Callable[[Any, Check], None]:
    def facts(_mod: Any, c: Check) -> None:
        c.detail = "needed by quantize / eval / sensitive"
        if deep:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module("modelopt.torch.quantization")
            c.detail += " (modelopt.torch.quantization imports)"
        else:
            c.detail += " (top-level import; --deep: modelopt.torch.quantization too)"

    return facts


def _autocast() -> Check:
    from yolov9_qat.runtime.precision_graphs import AUTOCAST_DEPS

    c = Check("autocast", "ModelOpt AutoCast deps", OK, install='pip install "yolov9-qat[autocast]"')
    missing = [m for m in AUTOCAST_DEPS if not _find(m)]
    c.extra = {"modules": list(AUTOCAST_DEPS), "missing": missing}
    if missing:
        c.status, c.detail = MISSING, "not installed: " + ", ".join(missing)
    else:
        c.detail = ", ".join(AUTOCAST_DEPS) + " (strongly typed TensorRT 11 graphs)"
    return c


def _cpu_facts() -> tuple[Check, Check]:
    from yolov9_qat.bench.device import cpu_flags, cpu_model

    machine = platform.machine()
    logical = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = logical
    cpu = Check("cpu", "CPU", OK, install="")
    cpu.detail = f"{cpu_model()}, {logical} logical cores"
    if usable != logical:
        cpu.detail += f" ({usable} usable by this process)"
    cpu.detail += f", {platform.system()} {machine}"
    cpu.extra = {"model": cpu_model(), "logical_cores": logical, "usable_cores": usable, "machine": machine}

    vnni = Check("vnni", "CPU VNNI", MISSING, install=VNNI_INSTALL)
    flags = cpu_flags()
    found = sorted({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
    vnni.extra = {"flags": found}
    if found:
        vnni.status, vnni.detail = OK, " ".join(found)
    elif machine.lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        vnni.detail = f"x86 instructions; this CPU is {machine}"
    elif not flags:
        vnni.status, vnni.detail = UNKNOWN, "CPU flags not readable here (no /proc/cpuinfo)"
    else:
        vnni.detail = "no avx512_vnni / avx_vnni: ONNX Runtime's u8 integer kernels run slowly"
    return cpu, vnni


#: the checks that are one import: name -> (label, import name, install line, distributions with its version)
IMPORTS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "torch": ("PyTorch", "torch", 'pip install "torch>=2.2" "torchvision>=0.17"', ("torch",)),
    "tensorrt": ("TensorRT", "tensorrt", TENSORRT_INSTALL, ("tensorrt",)),
    "polygraphy": ("polygraphy", "polygraphy", GPU_EXTRA, ("polygraphy",)),
    "modelopt": ("NVIDIA ModelOpt", "modelopt", 'pip install "nvidia-modelopt>=0.47"', ("nvidia-modelopt",)),
    "onnxruntime": (
        "ONNX Runtime", "onnxruntime", 'pip install "onnxruntime>=1.17"', ("onnxruntime", "onnxruntime-gpu"),
    ),
    "onnx": ("onnx", "onnx", 'pip install "onnx>=1.15"', ("onnx",)),
    "onnxslim": ("onnxslim", "onnxslim", 'pip install "onnxslim>=0.1.30"', ("onnxslim",)),
    "supervision": ("supervision", "supervision", 'pip install "supervision>=0.25"', ("supervision",)),
    "tritonclient": (
        "tritonclient", "tritonclient.grpc", 'pip install "yolov9-qat[deploy]"', ("tritonclient",),
    ),
    "cocoeval": (
        "faster-coco-eval", "faster_coco_eval", 'pip install "faster-coco-eval>=1.8"', ("faster-coco-eval",),
    ),
    "opencv": (
        "OpenCV", "cv2", 'pip install "opencv-python-headless>=4.8"',
        ("opencv-python-headless", "opencv-python"),
    ),
    "pytest": ("pytest", "pytest", 'pip install "yolov9-qat[test]"', ("pytest",)),
}  # fmt: skip
#: install lines of the checks that are not one import
INSTALLS = {
    "python": "Python >= 3.10",
    "cuda": CUDA_INSTALL,
    "trt_nms_plugin": NMS_PLUGIN_INSTALL,
    "trtexec": TRTEXEC_INSTALL,
    "autocast": 'pip install "yolov9-qat[autocast]"',
    "cpu": "",
    "vnni": VNNI_INSTALL,
}
LABELS = {
    "python": "Python",
    "cuda": "CUDA device",
    "trt_nms_plugin": "EfficientNMS_TRT",
    "trtexec": "trtexec",
    "autocast": "ModelOpt AutoCast deps",
    "cpu": "CPU",
    "vnni": "CPU VNNI",
}


def probe(modules: Sequence[str] = (), deep: bool = False) -> dict[str, Any]:
    """Look at this machine: one check per piece (:data:`CHECK_NAMES`, then ``modules``), then the
    command table derived from them.

    ``modules`` adds a check per import name (``--module NAME``); ``deep`` also imports the heavy parts
    of ModelOpt (``modelopt.torch.quantization``, several seconds). Nothing is printed: anything an
    import writes to ``sys.stdout`` goes to ``sys.stderr``.
    """
    from yolov9_qat import __version__

    t0 = time.perf_counter()
    facts: dict[str, Callable[[Any, Check], None]] = {
        "torch": _torch_facts,
        "tensorrt": _tensorrt_facts,
        "modelopt": _modelopt_facts(deep),
        "onnxruntime": _onnxruntime_facts,
        "tritonclient": _tritonclient_facts,
        "opencv": _opencv_facts,
    }
    done: dict[str, Check] = {}
    cpu_pair: list[Check] = []

    def cpu(i: int) -> Check:
        if not cpu_pair:
            cpu_pair.extend(_cpu_facts())
        return cpu_pair[i]

    special: dict[str, Callable[[], Check]] = {
        "python": _python,
        "cuda": lambda: _cuda(done["torch"]),
        "trt_nms_plugin": lambda: _nms_plugin(done["tensorrt"]),
        "trtexec": _trtexec,
        "autocast": _autocast,
        "cpu": lambda: cpu(0),
        "vnni": lambda: cpu(1),
    }
    with contextlib.redirect_stdout(sys.stderr):
        for name in CHECK_NAMES:
            if name in IMPORTS:
                label, module, install, dists = IMPORTS[name]
                done[name] = import_check(name, label, module, install, dists, facts.get(name))
            else:
                done[name] = _guard(name, LABELS[name], INSTALLS[name], special[name])
        for module in modules:
            if module and module not in done:
                done[module] = import_check(
                    module, module, module, f"install the package that provides `{module}`"
                )
    report_checks = [asdict(c) for c in done.values()]
    return {
        "schema": SCHEMA,
        "yolov9_qat": __version__,
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "checks": report_checks,
        "commands": commands_table(report_checks),
        "seconds": round(time.perf_counter() - t0, 3),
    }


# --- the commands ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """One way to run a command: the checks it needs, and those it only needs to be fast."""

    label: str
    needs: tuple[str, ...]
    fast_with: tuple[str, ...] = ()


#: what each check is called in "needs ..." phrases
NEED_PHRASE = {
    "cuda": "a CUDA GPU",
    "tensorrt": "TensorRT",
    "trt_nms_plugin": "TensorRT's EfficientNMS_TRT plugin",
    "trtexec": "trtexec on PATH",
    "modelopt": "NVIDIA ModelOpt",
    "onnxruntime": "ONNX Runtime",
    "opencv": "OpenCV",
    "autocast": "ModelOpt AutoCast's modules",
    "vnni": "a CPU with VNNI",
    "torch": "PyTorch",
}

_EVAL = ("torch", "opencv", "cocoeval")
_TRT = ("cuda", "tensorrt", "polygraphy")  # the polygraphy runner (the default); TRT 11 adds autocast


def _command_specs(trt_needs: tuple[str, ...]) -> list[tuple[str, tuple[Backend, ...]]]:
    return [
        ("synth", (Backend("cpu", ("opencv",)),)),
        ("reparameterize", (Backend("torch cpu", ("torch",)),)),
        ("info", (Backend("torch cpu", ("torch",)),)),
        ("train", (Backend("torch cpu", _EVAL), Backend("torch cuda", (*_EVAL, "cuda")))),
        (
            "val",
            (
                Backend("torch cpu", _EVAL),
                Backend("torch cuda", (*_EVAL, "cuda")),
                Backend("onnxruntime", (*_EVAL, "onnxruntime"), fast_with=("vnni",)),
                Backend("tensorrt", (*_EVAL, *trt_needs)),
            ),
        ),
        (
            "quantize / eval / sensitive",
            (Backend("torch cpu", (*_EVAL, "modelopt")), Backend("torch cuda", (*_EVAL, "modelopt", "cuda"))),
        ),
        (
            "export",
            (
                Backend("onnx (float weights)", ("torch", "onnx")),
                Backend("onnx (QAT weights)", ("torch", "onnx", "modelopt")),
                Backend("--simplify", ("onnxslim",)),
            ),
        ),
        ("lint", (Backend("onnx", ("onnx",)),)),
        (
            "bench",
            (
                Backend("onnxruntime", ("onnxruntime", "onnx"), fast_with=("vnni",)),
                Backend("tensorrt (polygraphy)", trt_needs),
                Backend("tensorrt (--runner trtexec)", ("cuda", "trtexec")),
            ),
        ),
        (
            "build",
            (
                Backend("tensorrt (polygraphy)", (*trt_needs, "onnx")),
                Backend("tensorrt, end-to-end (--nms trt)", (*trt_needs, "onnx", "trt_nms_plugin")),
                Backend("tensorrt (--runner trtexec)", ("cuda", "trtexec")),
            ),
        ),
        (
            "detect",
            (
                Backend("torch", ("torch", "opencv", "supervision")),
                Backend("onnxruntime", ("onnxruntime", "opencv", "supervision")),
                Backend("tensorrt", (*trt_needs, "opencv", "supervision")),
            ),
        ),
        (
            "deploy triton",
            (
                Backend("onnx model", ("tritonclient", "onnx")),
                Backend("tensorrt engine (read by TensorRT)", ("tritonclient", "cuda", "tensorrt")),
            ),
        ),
        (
            "deploy deepstream",
            (
                Backend("onnx model", ("onnx",)),
                Backend("tensorrt engine (read by TensorRT)", ("cuda", "tensorrt")),
            ),
        ),
        (
            "reproduce",
            (
                Backend("--profile cpu / test", (*_EVAL, "modelopt", "onnx", "onnxslim", "onnxruntime")),
                Backend("--profile gpu", (*_EVAL, "modelopt", "onnx", "onnxslim", *trt_needs)),
            ),
        ),
        (
            "pytest -m cpu",
            (
                Backend(
                    "cpu", ("pytest", *_EVAL, "modelopt", "onnx", "onnxslim", "onnxruntime", "supervision")
                ),
            ),
        ),
        ("pytest -m gpu", (Backend("gpu", ("pytest", "cuda", "tensorrt", "polygraphy")),)),
    ]


def commands_table(checks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each command -> its backends, each ``ok`` or ``unavailable`` with what it lacks (from ``checks``)."""
    by_name = {c["name"]: c for c in checks}

    def bad(name: str) -> bool:
        return by_name.get(name, {}).get("status") != OK

    def phrase(name: str) -> str:
        text = NEED_PHRASE.get(name, by_name.get(name, {}).get("label") or name)
        status = by_name.get(name, {}).get("status", MISSING)
        return text if status == MISSING else f"{text} ({status})"

    trt_needs = _TRT
    trt = by_name.get("tensorrt", {})
    strongly_typed = os.environ.get("YOLOV9_QAT_STRONGLY_TYPED", "") not in ("", "0")
    if trt.get("status") == OK and ((trt.get("extra") or {}).get("major", 0) >= 11 or strongly_typed):
        trt_needs = (*_TRT, "autocast")

    rows = []
    for command, backends in _command_specs(trt_needs):
        out = []
        for b in backends:
            lacking = [n for n in dict.fromkeys(b.needs) if bad(n)]
            slow = [n for n in b.fast_with if bad(n)]
            if lacking:
                status, detail = "unavailable", "needs " + ", ".join(phrase(n) for n in lacking)
            elif slow:
                status, detail = OK, "slow here: fast with " + ", ".join(phrase(n) for n in slow)
            else:
                status, detail = OK, ""
            out.append({"backend": b.label, "status": status, "needs": lacking, "detail": detail})
        rows.append({"command": command, "backends": out})
    return rows


# --- output ----------------------------------------------------------------------------------------
def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def format_table(report: dict[str, Any], detail_width: int = 110) -> str:
    """The report as plain text: the pieces, what to install for the missing ones, then the commands."""
    lines = [f"yolov9-qat {report.get('yolov9_qat', '')} doctor: {report.get('platform', '')}", ""]
    rows = [("check", "status", "version", "detail")]
    rows += [
        (
            c["name"],
            c["status"],
            _clip(c.get("version") or "-", 24),
            _clip(c.get("detail") or "", detail_width),
        )
        for c in report["checks"]
    ]
    lines += _aligned(rows)
    fixes = [c for c in report["checks"] if c["status"] != OK and c.get("install")]
    if fixes:
        lines += ["", "to install what is missing:"]
        lines += _aligned([(f"  {c['name']}", c["install"]) for c in fixes])
    lines += [""]
    rows = [("command", "backend", "status")]
    for cmd in report["commands"]:
        for i, b in enumerate(cmd["backends"]):
            status = b["status"] if not b["detail"] else f"{b['status']}: {b['detail']}"
            rows.append((cmd["command"] if i == 0 else "", b["backend"], status))
    lines += _aligned(rows)
    need = report.get("need")
    if need:
        missing = need["missing"]
        lines += [
            "",
            "needed: "
            + ", ".join(need["names"])
            + (f"; missing: {', '.join(missing)}" if missing else "; all ok"),
        ]
    lines.append(f"(probed in {report.get('seconds', 0):.1f} s)")
    return "\n".join(lines)


def resolve_needs(text: Sequence[str] | str | None, known: Sequence[str] = CHECK_NAMES) -> list[str]:
    """``--need`` values (comma separated, repeatable, aliases allowed) -> check names; unknown ones are a
    :class:`~yolov9_qat.errors.UserError` naming the known ones."""
    from yolov9_qat.errors import UserError

    parts = [text] if isinstance(text, str) else list(text or [])
    names = [p.strip() for part in parts for p in part.split(",") if p.strip()]
    out: list[str] = []
    for n in names:
        name = n if n in known else ALIASES.get(n.lower(), n.lower())
        if name not in known:
            raise UserError(
                f"--need {n!r}: not a check; known: {', '.join(known)} (an import name: add --module {n})"
            )
        if name not in out:
            out.append(name)
    return out


@contextlib.contextmanager
def _stdout_fd_to_stderr() -> Iterator[None]:
    """Native libraries may print on import: keep file descriptor 1 clean for ``--json``."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# --- the command -----------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``yolov9-qat doctor``."""
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the tables")
    p.add_argument("--json-out", default=None, help="also write the JSON report here (atomically)")
    p.add_argument(
        "--need",
        action="append",
        default=[],
        help="checks this machine must have, comma separated (e.g. tensorrt,cuda); with --strict a missing "
        "one exits 1",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a --need check is not ok (no --need: the base install, " + ",".join(CORE) + ")",
    )
    p.add_argument(
        "--module",
        action="append",
        default=[],
        help="also check that this import name imports (repeatable, comma separated)",
    )
    p.add_argument("--deep", action="store_true", help="also import modelopt.torch.quantization (slow)")
    return p


def run(args: argparse.Namespace) -> int:
    """``yolov9-qat doctor``: print the report; 0 unless ``--strict`` and a needed check is missing."""
    modules = [m.strip() for part in (args.module or []) for m in part.split(",") if m.strip()]
    need = resolve_needs(args.need, [*CHECK_NAMES, *modules])  # a typo fails before the probes run
    if args.strict and not need:
        need = list(CORE)
    guard = _stdout_fd_to_stderr() if args.json else contextlib.nullcontext()
    with guard:
        report = probe(modules=modules, deep=args.deep)
    if need:
        status = {c["name"]: c["status"] for c in report["checks"]}
        report["need"] = {"names": need, "missing": [n for n in need if status[n] != OK]}
    if args.json_out:
        from yolov9_qat.utils.files import atomic_write_json

        atomic_write_json(args.json_out, report)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    if args.strict and report.get("need", {}).get("missing"):
        print(
            f"yolov9-qat doctor: missing: {', '.join(report['need']['missing'])}",
            file=sys.stderr,
        )
        return 1
    return 0

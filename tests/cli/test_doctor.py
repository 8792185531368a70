"""``yolov9-qat doctor``: the real probes on this machine, the derived command table, and broken installs
reported instead of raised."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from yolov9_qat import cli, doctor

ROOT = Path(__file__).resolve().parents[2]
STATUSES = {doctor.OK, doctor.MISSING, doctor.NOT_USABLE, doctor.UNKNOWN}


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return doctor.probe()


def _check(report: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in report["checks"] if c["name"] == name]
    return found


def _doctor(argv: list[str]) -> int:
    """``yolov9-qat doctor ARGV`` through the module's own parser and ``run`` (as cli.main calls it)."""
    parser = argparse.ArgumentParser(prog="yolov9-qat doctor")
    doctor.add_arguments(parser)
    return doctor.run(parser.parse_args(argv))


def _backend(report: dict[str, Any], command: str, backend: str) -> dict[str, Any]:
    (row,) = [r for r in report["commands"] if r["command"] == command]
    (found,) = [b for b in row["backends"] if b["backend"] == backend]
    return found


@pytest.mark.cpu
def test_every_check_is_reported_with_its_fields(report: dict[str, Any]) -> None:
    assert [c["name"] for c in report["checks"]] == list(doctor.CHECK_NAMES)
    for c in report["checks"]:
        assert {"name", "status", "version", "detail", "install"} <= set(c), c
        assert c["status"] in STATUSES, c
        if c["status"] not in (doctor.OK, doctor.UNKNOWN) and c["name"] != "cpu":
            assert c["install"], f"{c['name']} is {c['status']} but says nothing about installing it"
    json.dumps(report)  # plain data all the way down


@pytest.mark.cpu
def test_torch_and_cuda_as_torch_sees_them(report: dict[str, Any]) -> None:
    import torch

    t = _check(report, "torch")
    assert t["status"] == "ok" and t["version"] == torch.__version__
    assert t["extra"]["cuda_build"] == torch.version.cuda
    assert t["detail"] == (f"CUDA build {torch.version.cuda}" if torch.version.cuda else "CPU-only build")
    cuda = _check(report, "cuda")
    if torch.cuda.is_available():
        assert cuda["status"] == "ok"
        assert [g["name"] for g in cuda["extra"]["gpus"]] == [
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        ]
        major, minor = torch.cuda.get_device_capability(0)
        assert cuda["extra"]["gpus"][0]["compute_capability"] == f"{major}.{minor}"
    else:
        assert cuda["status"] == "missing" and cuda["extra"]["available"] is False
        assert "CUDA" in cuda["install"]
        assert _backend(report, "val", "torch cuda")["status"] == "unavailable"
        assert "a CUDA GPU" in _backend(report, "val", "tensorrt")["detail"]
    assert _backend(report, "val", "torch cpu")["status"] == "ok"


@pytest.mark.cpu
def test_onnxruntime_providers(report: dict[str, Any]) -> None:
    import onnxruntime

    ort = _check(report, "onnxruntime")
    assert ort["status"] == "ok" and ort["version"] == onnxruntime.__version__
    assert ort["extra"]["providers"] == onnxruntime.get_available_providers()
    assert _backend(report, "val", "onnxruntime")["status"] == "ok"


@pytest.mark.cpu
def test_tensorrt_missing_with_install_line_or_its_version(report: dict[str, Any]) -> None:
    trt = _check(report, "tensorrt")
    plugin = _check(report, "trt_nms_plugin")
    if importlib.util.find_spec("tensorrt") is None:
        assert trt["status"] == "missing" and trt["version"] == ""
        assert 'pip install "yolov9-qat[gpu]"' in trt["install"]
        assert "pypi.nvidia.com" in trt["install"] and "stub" in trt["install"]
        assert plugin["status"] == "missing" and "needs TensorRT" in plugin["detail"]
        assert "TensorRT" in _backend(report, "build", "tensorrt (polygraphy)")["detail"]
    else:
        import tensorrt

        assert trt["status"] == "ok" and trt["version"] == tensorrt.__version__
        assert plugin["status"] in ("ok", "missing", "not usable")


@pytest.mark.cpu
def test_cpu_facts_come_from_the_bench_device_block(report: dict[str, Any]) -> None:
    from yolov9_qat.bench.device import cpu_device, cpu_flags, cpu_model

    cpu, vnni = _check(report, "cpu"), _check(report, "vnni")
    assert cpu["extra"]["model"] == cpu_model() and cpu["extra"]["logical_cores"] == os.cpu_count()
    has = sorted({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())
    assert vnni["extra"]["flags"] == has
    assert (vnni["status"] == "ok") == bool(has) == cpu_device(1)["VNNI"]


@pytest.mark.cpu
def test_command_table_is_derived_from_the_checks(report: dict[str, Any]) -> None:
    checks = copy.deepcopy(report["checks"])
    for c in checks:
        c["status"] = "ok"
    _check({"checks": checks}, "tensorrt")["extra"] = {"major": 10}
    every = doctor.commands_table(checks)
    assert all(b["status"] == "ok" and not b["detail"] for r in every for b in r["backends"])

    _check({"checks": checks}, "tensorrt")["extra"] = {"major": 11}  # strongly typed: AutoCast's modules too
    _check({"checks": checks}, "autocast")["status"] = "missing"
    _check({"checks": checks}, "vnni")["status"] = "missing"
    rows = {(r["command"], b["backend"]): b for r in doctor.commands_table(checks) for b in r["backends"]}
    assert rows[("build", "tensorrt (polygraphy)")]["needs"] == ["autocast"]
    assert rows[("build", "tensorrt (--runner trtexec)")]["status"] == "ok"
    assert rows[("bench", "onnxruntime")]["status"] == "ok"
    assert "VNNI" in rows[("bench", "onnxruntime")]["detail"]

    _check({"checks": checks}, "cuda")["status"] = "not usable"
    rows = {(r["command"], b["backend"]): b for r in doctor.commands_table(checks) for b in r["backends"]}
    assert rows[("val", "tensorrt")]["detail"].startswith("needs a CUDA GPU (not usable)")
    assert rows[("val", "onnxruntime")]["status"] == "ok"


@pytest.mark.cpu
def test_table_is_aligned_and_names_the_fixes(report: dict[str, Any]) -> None:
    text = doctor.format_table(report)
    lines = text.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("check "))
    rows = lines[header : header + 1 + len(report["checks"])]
    col = rows[0].index("status")
    for ln, c in zip(rows[1:], report["checks"], strict=True):
        assert ln.startswith(c["name"] + " ") and ln[col:].startswith(c["status"]), ln
    for c in report["checks"]:
        if c["status"] != "ok" and c["install"]:
            assert c["install"] in text
    assert any(ln.startswith("val ") for ln in lines) and any(ln.startswith("pytest -m gpu") for ln in lines)


@pytest.mark.cpu
def test_json_cli_parses_and_writes_the_same_file(tmp_path: Path) -> None:
    out = tmp_path / "doctor" / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "yolov9_qat", "doctor", "--json", "--json-out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert [c["name"] for c in printed["checks"]] == list(doctor.CHECK_NAMES)
    assert printed["schema"] == doctor.SCHEMA and printed["commands"]
    assert json.loads(out.read_text()) == printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.json"]  # no temporary file left


@pytest.mark.cpu
def test_strict_need_tensorrt(report: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert _doctor(["--need", "tensorrt"]) == 0  # reporting alone never fails
    capsys.readouterr()
    code = _doctor(["--strict", "--need", "trt,cuda"])
    out, err = capsys.readouterr()
    if importlib.util.find_spec("tensorrt") is None:
        assert code == 1
        assert "missing: tensorrt" in err and "needed: tensorrt, cuda; missing: tensorrt" in out
    else:
        wanted = {_check(report, n)["status"] for n in ("tensorrt", "cuda")}
        assert code == (0 if wanted == {"ok"} else 1)


@pytest.mark.cpu
def test_unknown_need_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor", "--strict", "--need", "tensorrtt"]) == 2
    err = capsys.readouterr().err
    assert "--need 'tensorrtt': not a check" in err and "tensorrt" in err and "--module" in err


@pytest.mark.cpu
def test_a_module_that_raises_on_import_is_not_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "doctor_broken_mod.py").write_text(
        'raise RuntimeError("libfoo.so.3: cannot open shared object file\\nsecond line")\n'
    )
    (tmp_path / "doctor_exiting_mod.py").write_text("import sys\nsys.exit('goodbye')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = ["doctor_broken_mod", "doctor_exiting_mod", "doctor_absent_mod"]
    rep = doctor.probe(modules=names)
    broken, exiting, absent = (_check(rep, n) for n in names)
    assert broken["status"] == "not usable"
    assert broken["detail"] == "RuntimeError: libfoo.so.3: cannot open shared object file"
    assert exiting["status"] == "not usable" and exiting["detail"] == "SystemExit: goodbye"
    assert absent["status"] == "missing" and "doctor_absent_mod" in absent["install"]

    code = _doctor(["--module", "doctor_broken_mod", "--strict", "--need", "doctor_broken_mod"])
    out = capsys.readouterr().out
    assert code == 1
    assert any(ln.startswith("doctor_broken_mod") and "not usable" in ln for ln in out.splitlines())


@pytest.mark.cpu
@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="a real TensorRT is installed here"
)
def test_broken_tensorrt_installs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``tensorrt`` that fails at import (no libnvinfer), then one that imports but has no plugin API."""
    pkg = tmp_path / "tensorrt"
    pkg.mkdir()
    init = pkg / "__init__.py"
    init.write_text(
        'raise ImportError("libnvinfer.so.10: cannot open shared object file: No such file or directory")\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    rep = doctor.probe()
    trt, plugin = _check(rep, "tensorrt"), _check(rep, "trt_nms_plugin")
    assert trt["status"] == "not usable" and trt["detail"].startswith("ImportError: libnvinfer.so.10")
    assert plugin["status"] == "missing"
    assert "TensorRT (not usable)" in _backend(rep, "build", "tensorrt (polygraphy)")["detail"]

    init.write_text('__version__ = "11.0.0"\n')  # imports, but no Logger / plugin registry
    importlib.invalidate_caches()
    try:
        rep = doctor.probe()
    finally:
        sys.modules.pop("tensorrt", None)
    trt, plugin = _check(rep, "tensorrt"), _check(rep, "trt_nms_plugin")
    assert trt["status"] == "ok" and trt["version"] == "11.0.0" and trt["extra"]["major"] == 11
    assert plugin["status"] == "not usable" and plugin["detail"].startswith("AttributeError:")
    assert plugin["install"]


@pytest.mark.cpu
def test_install_lines_match_pyproject() -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    assert any(r.startswith("tensorrt") for r in extras["gpu"]) and any(
        r.startswith("polygraphy") for r in extras["gpu"]
    )
    assert any(r.startswith("tritonclient") for r in extras["deploy"])
    assert "autocast" in extras and "test" in extras
    core = set(meta["dependencies"])
    for name, (_label, _module, install, _dists) in doctor.IMPORTS.items():
        pinned = [part.strip('"') for part in install.split()[2:]]
        if install.startswith('pip install "yolov9-qat['):
            extra = install.split("[", 1)[1].split("]", 1)[0]
            assert extra in extras, (name, install)
        else:
            for req in pinned:
                assert req in core, f"{name}: {req} is not a core dependency in pyproject.toml"


@pytest.mark.cpu
def test_module_is_light_and_registered() -> None:
    code = (
        "import sys, yolov9_qat.doctor; "
        "heavy = [m for m in ('numpy', 'torch', 'tensorrt', 'onnxruntime', 'modelopt') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    args = cli.build_parser().parse_args(["doctor", "--json", "--need", "tensorrt,cuda", "--strict"])
    assert args._command == "doctor" and args.strict and args.json and args.need == ["tensorrt,cuda"]

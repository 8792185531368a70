"""trtexec: the record's command line from our options, and its logged summaries parsed into the
harness's JSON (sample logs written here in trtexec's format: TensorRT 10 / 8.6 and older 8.x)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from yolov9_qat.errors import UserError
from yolov9_qat.runtime import trtexec as tx
from yolov9_qat.runtime.engine_cache import BuildOptions, ShapeProfile

pytestmark = pytest.mark.cpu

# The record's INT8 (SiLU) row at batch 4 (p99 9.78 ms, 103 qps, 412 IPS), as TensorRT 10 logs it.
TRT10_LOG = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v100300] [b17] # trtexec --onnx=qat_best_yolov9-c7-converted.onnx --fp16 --int8 --useCudaGraph --useSpinWait --noDataTransfers
[11/02/2024-14:03:11] [I] === Model Options ===
[11/02/2024-14:03:11] [I] Format: ONNX
[11/02/2024-14:03:11] [I] Model: qat_best_yolov9-c7-converted.onnx
[11/02/2024-14:03:11] [I] === Device Information ===
[11/02/2024-14:03:11] [I] Available Devices:
[11/02/2024-14:03:11] [I]   Device 0: "NVIDIA GeForce RTX 4050 Laptop GPU" UUID: GPU-4c1d7a7e-6f59-2b55-8d61-0e3c0b6f8a51
[11/02/2024-14:03:11] [I] Selected Device: NVIDIA GeForce RTX 4050 Laptop GPU
[11/02/2024-14:03:11] [I] Selected Device ID: 0
[11/02/2024-14:03:11] [I] Selected Device UUID: GPU-4c1d7a7e-6f59-2b55-8d61-0e3c0b6f8a51
[11/02/2024-14:03:11] [I] Compute Capability: 8.9
[11/02/2024-14:03:11] [I] SMs: 20
[11/02/2024-14:03:11] [I] Device Global Memory: 6140 MiB
[11/02/2024-14:03:11] [I] Shared Memory per SM: 100 KiB
[11/02/2024-14:03:11] [I] Memory Bus Width: 96 bits (ECC disabled)
[11/02/2024-14:03:11] [I] Application Compute Clock Rate: 2.355 GHz
[11/02/2024-14:03:11] [I] Application Memory Clock Rate: 7.825 GHz
[11/02/2024-14:03:11] [I]
[11/02/2024-14:03:11] [I] Note: The application clock rates do not reflect the actual clock rates that the GPU is currently running at.
[11/02/2024-14:03:11] [I]
[11/02/2024-14:03:11] [I] TensorRT version: 10.3.0
[11/02/2024-14:05:40] [I] Engine built in 148.913 sec.
[11/02/2024-14:05:41] [I] Starting inference
[11/02/2024-14:05:51] [I] Warmup completed 52 queries over 500 ms
[11/02/2024-14:05:51] [I] Timing trace has 1030 queries over 10.0088 s
[11/02/2024-14:05:51] [I]
[11/02/2024-14:05:51] [I] === Trace details ===
[11/02/2024-14:05:51] [I] Trace averages of 10 runs:
[11/02/2024-14:05:51] [I] Average on 10 runs - GPU latency: 9.6928 ms - Host latency: 9.6928 ms (enqueue 0.0103516 ms)
[11/02/2024-14:05:51] [I]
[11/02/2024-14:05:51] [I] === Performance summary ===
[11/02/2024-14:05:51] [I] Throughput: 102.912 qps
[11/02/2024-14:05:51] [I] Latency: min = 9.54175 ms, max = 10.0547 ms, mean = 9.69843 ms, median = 9.69458 ms, percentile(90%) = 9.73047 ms, percentile(95%) = 9.74805 ms, percentile(99%) = 9.78125 ms
[11/02/2024-14:05:51] [I] Enqueue Time: min = 0.00610352 ms, max = 0.0444336 ms, mean = 0.0104522 ms, median = 0.0101318 ms, percentile(90%) = 0.0117188 ms, percentile(95%) = 0.0124512 ms, percentile(99%) = 0.0187988 ms
[11/02/2024-14:05:51] [I] H2D Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, percentile(90%) = 0 ms, percentile(95%) = 0 ms, percentile(99%) = 0 ms
[11/02/2024-14:05:51] [I] GPU Compute Time: min = 9.54175 ms, max = 10.0547 ms, mean = 9.69843 ms, median = 9.69458 ms, percentile(90%) = 9.73047 ms, percentile(95%) = 9.74805 ms, percentile(99%) = 9.78125 ms
[11/02/2024-14:05:51] [I] D2H Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, percentile(90%) = 0 ms, percentile(95%) = 0 ms, percentile(99%) = 0 ms
[11/02/2024-14:05:51] [I] Total Host Walltime: 10.0088 s
[11/02/2024-14:05:51] [I] Total GPU Compute Time: 9.98938 s
[11/02/2024-14:05:51] [I] Explanations of the performance metrics are printed in the verbose logs.
[11/02/2024-14:05:51] [I]
&&&& PASSED TensorRT.trtexec [TensorRT v100300] [b17] # trtexec --onnx=qat_best_yolov9-c7-converted.onnx
"""

# Upstream yolov9-qat style (TensorRT 8.5: only percentile(99%), an End-to-End Host Latency line,
# data transfers on so host latency differs from GPU compute time).
TRT85_LOG = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v8503] # trtexec --onnx=yolov9-c-qat.onnx --int8 --fp16
[09/11/2023-22:54:20] [I] === Device Information ===
[09/11/2023-22:54:20] [I] Selected Device: NVIDIA GeForce RTX 3070
[09/11/2023-22:54:20] [I] Compute Capability: 8.6
[09/11/2023-22:54:20] [I] SMs: 46
[09/11/2023-22:54:20] [I] Compute Clock Rate: 1.725 GHz
[09/11/2023-22:54:20] [I] Device Global Memory: 7973 MiB
[09/11/2023-22:54:20] [I] Shared Memory per SM: 100 KiB
[09/11/2023-22:54:20] [I] Memory Bus Width: 256 bits (ECC disabled)
[09/11/2023-22:54:20] [I] Memory Clock Rate: 7.001 GHz
[09/11/2023-22:54:20] [I]
[09/11/2023-22:54:32] [I] Timing trace has 3013 queries over 3.0022 s
[09/11/2023-22:54:32] [I] === Performance summary ===
[09/11/2023-22:54:32] [I] Throughput: 1004.27 qps
[09/11/2023-22:54:32] [I] Latency: min = 1.17474 ms, max = 4.4541 ms, mean = 1.20348 ms, median = 1.1897 ms, percentile(99%) = 1.50061 ms
[09/11/2023-22:54:32] [I] End-to-End Host Latency: min = 1.18945 ms, max = 4.51367 ms, mean = 1.97363 ms, median = 1.96582 ms, percentile(99%) = 2.60132 ms
[09/11/2023-22:54:32] [I] Enqueue Time: min = 0.303711 ms, max = 4.79843 ms, mean = 0.336177 ms, median = 0.337891 ms, percentile(99%) = 0.387817 ms
[09/11/2023-22:54:32] [I] H2D Latency: min = 0.198151 ms, max = 0.228271 ms, mean = 0.201239 ms, median = 0.200623 ms, percentile(99%) = 0.213379 ms
[09/11/2023-22:54:32] [I] GPU Compute Time: min = 0.965637 ms, max = 4.24448 ms, mean = 0.993252 ms, median = 0.97998 ms, percentile(99%) = 1.29016 ms
[09/11/2023-22:54:32] [I] D2H Latency: min = 0.00549316 ms, max = 0.0202637 ms, mean = 0.00898109 ms, median = 0.00891113 ms, percentile(99%) = 0.0114746 ms
[09/11/2023-22:54:32] [I] Total Host Walltime: 3.0022 s
[09/11/2023-22:54:32] [I] Total GPU Compute Time: 2.99465 s
[09/11/2023-22:54:32] [W] * GPU compute time is unstable, with coefficient of variance = 7.95%.
&&&& PASSED TensorRT.trtexec [TensorRT v8503] # trtexec --onnx=yolov9-c-qat.onnx --int8 --fp16
"""

# Bare "[I]" prefixes (no timestamp), as shown in many write-ups.
BARE_LOG = """\
[I] === Performance summary ===
[I] Throughput: 65.7372 qps
[I] Latency: min = 15.1062 ms, max = 45.0152 ms, mean = 27.5067 ms, median = 29.2732 ms, percentile(90%) = 29.739 ms, percentile(95%) = 30.0433 ms, percentile(99%) = 30.3047 ms
[I] GPU Compute Time: min = 14.9122 ms, max = 20.2374 ms, mean = 15.0811 ms, median = 14.9981 ms, percentile(90%) = 15.3064 ms, percentile(95%) = 15.4503 ms, percentile(99%) = 15.5051 ms
[I] Total Host Walltime: 3.05763 s
"""

PROFILE4 = ShapeProfile.for_batches((3, 640, 640), 1, 4, 4)


def test_parse_trt10_summary() -> None:
    s = tx.parse_performance_summary(TRT10_LOG)
    assert s["throughput_qps"] == pytest.approx(102.912)
    assert s["latency_source"] == "Latency"  # with --noDataTransfers it equals GPU compute time
    assert s["latency_ms"] == {
        "min": 9.54175, "mean": 9.69843, "median": 9.69458, "p90": 9.73047, "p95": 9.74805, "p99": 9.78125, "max": 10.0547,
    }  # fmt: skip
    assert s["gpu_compute_ms"]["p99"] == pytest.approx(9.78125)
    assert s["h2d_ms"]["max"] == 0 and s["enqueue_ms"]["p95"] == pytest.approx(0.0124512)
    assert s["total_host_walltime_s"] == pytest.approx(10.0088) and s["total_gpu_compute_s"] == pytest.approx(
        9.98938
    )
    assert s["iterations"] == 1030


def test_parse_trt85_summary_with_p99_only() -> None:
    s = tx.parse_performance_summary(TRT85_LOG)
    assert s["throughput_qps"] == pytest.approx(1004.27)
    lat = s["latency_ms"]
    # the figure trtexec prints as "Latency" (not "End-to-End Host Latency", not GPU compute time)
    assert lat["p99"] == pytest.approx(1.50061) and lat["median"] == pytest.approx(1.1897)
    assert lat["p90"] is None and lat["p95"] is None
    assert s["gpu_compute_ms"]["p99"] == pytest.approx(1.29016)
    assert s["iterations"] == 3013


def test_parse_bare_prefix_summary() -> None:
    s = tx.parse_performance_summary(BARE_LOG)
    assert s["latency_ms"]["p95"] == pytest.approx(30.0433) and s["throughput_qps"] == pytest.approx(65.7372)
    assert s["gpu_compute_ms"]["p95"] == pytest.approx(15.4503)
    assert "iterations" not in s


def test_gpu_compute_time_is_the_fallback() -> None:
    log = BARE_LOG.replace("[I] Latency", "[I] Something Else")
    s = tx.parse_performance_summary(log)
    assert s["latency_source"] == "GPU Compute Time" and s["latency_ms"]["p99"] == pytest.approx(15.5051)


def test_last_summary_wins() -> None:
    s = tx.parse_performance_summary(TRT85_LOG + TRT10_LOG)
    assert s["throughput_qps"] == pytest.approx(102.912)
    assert s["iterations"] == 1030  # the count of the run that summary closes, not the first run's 3013


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("garbage\nmore garbage", "no '=== Performance summary ==='"),
        ("", "no '=== Performance summary ==='"),
        ("[I] === Performance summary ===\n[I] Latency: min = 1 ms\n", "Throughput"),
        (
            "[I] === Performance summary ===\n[I] Throughput: 10 qps\n[I] Latency: min = 1 ms, max = 2 ms\n",
            "complete",
        ),
    ],
)
def test_garbage_is_a_clear_user_error(text: str, match: str) -> None:
    with pytest.raises(UserError, match=match) as e:
        tx.parse_performance_summary(text)
    assert "\n" not in str(e.value)


def test_batch_result_has_the_harness_layout() -> None:
    r = tx.batch_result(tx.parse_performance_summary(TRT10_LOG), 4)
    assert set(r) == {"batch", "iterations", "latency_ms", "throughput_qps", "ips", "extra"}
    assert set(r["latency_ms"]) == {"min", "mean", "median", "p90", "p95", "p99", "max"}
    assert r["batch"] == 4 and r["ips"] == pytest.approx(4 * 102.912)
    # the record's row: 9.78 ms, 103 qps, 412 IPS
    assert (f"{r['latency_ms']['p99']:.2f}", f"{r['throughput_qps']:.0f}", f"{r['ips']:.0f}") == (
        "9.78",
        "103",
        "412",
    )
    assert r["extra"]["runner"] == "trtexec" and r["extra"]["gpu_compute_ms"]["p99"] == pytest.approx(9.78125)
    assert tx.batch_result(tx.parse_performance_summary(TRT10_LOG), 8, "Resilience")["label"] == "Resilience"
    json.dumps(r)


def test_device_information() -> None:
    assert tx.parse_device_information(TRT10_LOG) == {
        "Device": "NVIDIA GeForce RTX 4050 Laptop GPU",
        "Compute Capability": "8.9",
        "SMs": "20",
        "Device Global Memory": "6140 MiB",
        "Shared Memory per SM": "100 KiB",
        "Memory Bus Width": "96 bits (ECC disabled)",
        "Application Compute Clock Rate": "2.355 GHz",
        "Application Memory Clock Rate": "7.825 GHz",
    }
    old = tx.parse_device_information(TRT85_LOG)
    assert old["Device"] == "NVIDIA GeForce RTX 3070" and old["Application Compute Clock Rate"] == "1.725 GHz"
    assert tx.parse_device_information("nothing here") == {}


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (TRT10_LOG, "10.3.0"),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] [b17] # trtexec --help", "10.3.0"),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v8503] # trtexec", "8.5.3"),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec", "8.6.1"),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v110000] # trtexec", "11.0.0"),
        ("no banner", None),
    ],
)
def test_parse_version(text: str, version: str | None) -> None:
    assert tx.parse_version(text) == version
    if version:
        assert tx.version_major(version) == int(version.split(".")[0])


# --- the command line ------------------------------------------------------------------------------
def test_record_benchmark_command() -> None:
    """The record's "Mixed Precision" benchmark at batch 4, flag for flag."""
    stem = "runs/qat/qat_yolov9_reparameterize_SiLU/weights/qat_best_yolov9-c7-converted"
    options = BuildOptions("mp", PROFILE4, timing_cache=f"{stem}.engine.timing.cache")
    flags = tx.BenchFlags(500, 10, use_cuda_graph=True, use_spin_wait=True, no_data_transfers=True)
    cmd = tx.build_command(f"{stem}.onnx", options, save_engine=f"{stem}_bs4_MP_SiLU.engine", bench=flags)
    record = f"""trtexec --onnx={stem}.onnx --fp16 --int8 --saveEngine={stem}_bs4_MP_SiLU.engine
        --timingCacheFile={stem}.engine.timing.cache --warmUp=500 --duration=10 --useCudaGraph --useSpinWait
        --noDataTransfers --minShapes=images:1x3x640x640 --optShapes=images:4x3x640x640
        --maxShapes=images:4x3x640x640""".split()
    assert cmd[0] == "trtexec" and sorted(cmd) == sorted(record)


def test_record_deployment_command() -> None:
    options = BuildOptions("mp", ShapeProfile.for_batches((3, 640, 640), 1, 4, 8))
    cmd = tx.build_command("m.onnx", options, save_engine="m.engine")
    assert cmd == [
        "trtexec", "--onnx=m.onnx", "--int8", "--fp16", "--saveEngine=m.engine", "--minShapes=images:1x3x640x640",
        "--optShapes=images:4x3x640x640", "--maxShapes=images:8x3x640x640",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("precision", "typed", "flags"),
    [
        ("fp32", False, []),
        ("fp16", False, ["--fp16"]),
        ("int8", False, ["--int8"]),
        ("mp", False, ["--int8", "--fp16"]),
        ("fp16", True, ["--stronglyTyped"]),
        ("mp", True, ["--stronglyTyped"]),
    ],
)
def test_precision_flags(precision: str, typed: bool, flags: list[str]) -> None:
    """TensorRT 10: builder flags, or ``--stronglyTyped`` for a typed build (required on 10)."""
    cmd = tx.build_command("m.onnx", BuildOptions(precision, PROFILE4), typed=typed)
    assert [c for c in cmd if c in ("--fp16", "--int8", "--best", "--stronglyTyped")] == flags


@pytest.mark.parametrize("precision", ["fp16", "int8", "mp"])
def test_precision_flags_trt11(precision: str) -> None:
    """TensorRT 11 is always strongly typed: no builder flags, and ``--stronglyTyped`` is a no-op."""
    cmd = tx.build_command("m.onnx", BuildOptions(precision, PROFILE4), typed=True, trt_major=11)
    assert not {"--fp16", "--int8", "--best", "--stronglyTyped"} & set(cmd)


@pytest.mark.parametrize(
    ("major", "graph", "spin", "no_transfers", "expected"),
    [
        (10, True, True, True, ["--useCudaGraph", "--useSpinWait", "--noDataTransfers"]),
        (10, False, False, False, []),
        (10, True, False, False, ["--useCudaGraph"]),
        (11, True, True, True, []),  # 11's defaults: nothing to say
        (11, False, False, False, ["--noCudaGraph", "--noSpinWait", "--includeDataTransfers"]),
        (11, True, False, True, ["--noSpinWait"]),
    ],
)
def test_measurement_switches_per_trtexec_major(
    major: int, graph: bool, spin: bool, no_transfers: bool, expected: list[str]
) -> None:
    """The same measurement on trtexec 10 and 11 (whose defaults flipped), so polygraphy and trtexec agree."""
    flags = tx.BenchFlags(500, 10, use_cuda_graph=graph, use_spin_wait=spin, no_data_transfers=no_transfers)
    cmd = tx.build_command("m.onnx", BuildOptions("int8", PROFILE4), bench=flags, trt_major=major)
    switches = {"--useCudaGraph", "--useSpinWait", "--noDataTransfers", "--noCudaGraph", "--noSpinWait",
                "--includeDataTransfers"}  # fmt: skip
    assert [c for c in cmd if c in switches] == expected
    assert "--warmUp=500" in cmd and "--duration=10" in cmd


def test_optional_flags() -> None:
    options = BuildOptions("int8", PROFILE4, workspace_gib=4, optimization_level=5)
    cmd = tx.build_command(
        "m.onnx", options, shapes={"images": (8, 3, 640, 640)}, layer_info="m.json", skip_inference=True, device=1,
        bench=tx.BenchFlags(250, 2.5),
    )  # fmt: skip
    for flag in (
        "--shapes=images:8x3x640x640", "--memPoolSize=workspace:4096M", "--builderOptimizationLevel=5",
        "--profilingVerbosity=detailed", "--exportLayerInfo=m.json", "--skipInference", "--device=1",
        "--warmUp=250", "--duration=2.5",
    ):  # fmt: skip
        assert flag in cmd
    assert not any(
        c in cmd for c in ("--useCudaGraph", "--useSpinWait", "--noDataTransfers", "--timingCacheFile")
    )


def test_find_trtexec_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tx.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="trtexec") as e:
        tx.find_trtexec()
    assert "\n" not in str(e.value)


# --- running a stand-in trtexec --------------------------------------------------------------------
FAKE = """\
import sys
from pathlib import Path
args = sys.argv[1:]
if "--help" in args:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] [b17] # trtexec --help")
    sys.exit(0)
opts = dict(a.split("=", 1) for a in args if "=" in a)
if "fail" in opts.get("--onnx", ""):
    print("[11/02/2024-14:03:11] [E] Error[4]: [network.cpp::validate::3100] Error Code 4: Internal Error")
    print("[11/02/2024-14:03:11] [E] Engine could not be created from network")
    sys.exit(1)
Path(opts["--saveEngine"]).write_bytes(b"engine")
if "--exportLayerInfo" in opts:
    Path(opts["--exportLayerInfo"]).write_text(LAYERS)
batch = int(opts.get("--shapes", opts["--optShapes"]).split(":")[1].split("x")[0])
print(LOG.replace("102.912 qps", f"{412 / batch:.3f} qps"))
"""


@pytest.fixture
def fake_trtexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    layers = json.dumps({"Layers": [{"Name": "c", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
                                     "Inputs": [{"Name": "images", "Format/Datatype": "Row major Int8 format"}],
                                     "Outputs": [{"Name": "o", "Format/Datatype": "Row major Int8 format"}]}],
                         "Bindings": ["images", "o"]})  # fmt: skip
    exe = tmp_path / "bin" / "trtexec"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\nLOG = {TRT10_LOG!r}\nLAYERS = {layers!r}\n{FAKE}")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return exe


def test_benchmark_with_stand_in_trtexec(fake_trtexec: Path, tmp_path: Path) -> None:
    assert tx.find_trtexec() == str(fake_trtexec)
    assert tx.trtexec_version(tx.find_trtexec()) == "10.3.0"
    flags = tx.BenchFlags(500, 10, True, True, True)
    report = tx.benchmark(
        tmp_path / "m.onnx", "mp", [1, 4], (3, 640, 640), flags, out_dir=tmp_path / "engines", resilience=True,
        timing_cache=str(tmp_path / "m.engine.timing.cache"),
    )  # fmt: skip
    assert report["backend"] == "tensorrt" and report["runner"] == "trtexec" and report["precision"] == "mp"
    assert report["device"]["Device"] == "NVIDIA GeForce RTX 4050 Laptop GPU"
    assert [(r["batch"], r.get("label")) for r in report["results"]] == [
        (1, None),
        (4, None),
        (8, "Resilience"),
    ]
    for r in report["results"]:
        assert set(r["latency_ms"]) == {"min", "mean", "median", "p90", "p95", "p99", "max"}
        assert r["ips"] == pytest.approx(412, rel=1e-3)
    assert (
        "--shapes=images:8x3x640x640" in report["commands"][2]
        and "--maxShapes=images:8x3x640x640" in report["commands"][2]
    )
    assert "--optShapes=images:4x3x640x640" in report["commands"][2]
    assert report["engines"]["4"]["layers"]["conv_int8_share"] == 1.0
    engine = Path(report["engines"]["4"]["engine"])
    assert engine.name == "m_bs4_MP.engine" and engine.is_file()
    assert (
        engine.with_name(engine.name + ".layers.json").is_file()
        and engine.with_name(engine.name + ".log").is_file()
    )
    json.dumps(report)


def test_failed_trtexec_is_one_line(fake_trtexec: Path, tmp_path: Path) -> None:
    options = BuildOptions("mp", PROFILE4)
    with pytest.raises(UserError, match="Engine could not be created") as e:
        tx.build_engine(tmp_path / "fail.onnx", options, tmp_path / "x.engine", trtexec=str(fake_trtexec))
    assert "\n" not in str(e.value) and "exit code 1" in str(e.value)


def test_build_engine_returns_layer_info(fake_trtexec: Path, tmp_path: Path) -> None:
    info = tx.build_engine(tmp_path / "m.onnx", BuildOptions("int8", PROFILE4), tmp_path / "x.engine")
    assert json.loads(info)["Layers"][0]["Name"] == "c" and (tmp_path / "x.engine").read_bytes() == b"engine"

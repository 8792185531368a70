"""The TensorRT tier on a GPU: FP16 / INT8 / MP engines of gelan-n, the engine cache, predictions
against PyTorch, end-to-end engines, and the benchmark JSON. Skipped (by the root conftest) where
there is no CUDA device or no TensorRT; run with ``pytest -m gpu`` after ``pip install "yolov9-qat[gpu]"``."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.gpu

IMG = 64
NC = 10


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trt")


@pytest.fixture(scope="module")
def data(work: Path) -> dict:
    from yolov9_qat.data.config import load_data_yaml
    from yolov9_qat.data.synth import generate

    return load_data_yaml(generate(work / "synth", seed=3, n_train=16, n_val=16, imgsz=IMG, progress=False))


@pytest.fixture(scope="module")
def images(data: dict) -> torch.Tensor:
    from yolov9_qat.data.dataset import create_dataloader

    loader, _ = create_dataloader(data["train"], imgsz=IMG, batch_size=8, stride=32, augment=False, workers=0)
    return next(iter(loader))[0].float() / 255


@pytest.fixture(scope="module")
def float_model(images: torch.Tensor) -> nn.Module:
    """gelan-n with batch-norm statistics settled on real images (ordered activations), fused."""
    from yolov9_qat.models.yolo import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("gelan-n", nc=NC)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        model(images)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.mul_(0.7)
    return model.eval().fuse().eval()


@pytest.fixture(scope="module")
def qat_model(float_model: nn.Module, images: torch.Tensor) -> nn.Module:
    from yolov9_qat.quant.quantize import calibrate, prepare_qat_model

    model = prepare_qat_model(copy.deepcopy(float_model), calib_method="max")
    calibrate(model, [images], n_batches=1, method="max")
    return model.eval()


def _export(model: nn.Module, out: Path, **kw) -> Path:
    from yolov9_qat.export.onnx import ExportOptions, export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx(model, out, ExportOptions(imgsz=IMG, dynamic=True, **kw))


@pytest.fixture(scope="module")
def onnx_files(work: Path, float_model: nn.Module, qat_model: nn.Module) -> dict[str, Path]:
    return {
        "float": _export(float_model, work / "gelan-n.onnx"),
        "qdq": _export(qat_model, work / "gelan-n-qat.onnx"),
        "e2e": _export(float_model, work / "gelan-n-e2e.onnx", end2end="trt", conf_thres=0.001, max_det=100),
    }


@pytest.fixture(scope="module")
def cache_dir(work: Path) -> Path:
    return work / "engines"


def _options(precision: str, lo: int = 1, opt: int = 4, hi: int = 8):
    from yolov9_qat.runtime.engine_cache import BuildOptions, ShapeProfile

    return BuildOptions(precision, ShapeProfile.for_batches((3, IMG, IMG), lo, opt, hi), workspace_gib=1.0)


@pytest.fixture(scope="module")
def engines(onnx_files: dict[str, Path], cache_dir: Path) -> dict[str, object]:
    from yolov9_qat.runtime.tensorrt import build_cached

    return {
        "fp16": build_cached(onnx_files["float"], _options("fp16"), cache_dir=cache_dir),
        "fp32": build_cached(onnx_files["float"], _options("fp32"), cache_dir=cache_dir),
        "int8": build_cached(onnx_files["qdq"], _options("int8"), cache_dir=cache_dir),
        "mp": build_cached(onnx_files["qdq"], _options("mp"), cache_dir=cache_dir),
    }


# --- building --------------------------------------------------------------------------------------
def test_engines_and_layer_summaries(engines: dict) -> None:
    for precision, cached in engines.items():
        assert cached.engine.is_file() and cached.layers_path.is_file(), precision
        s = cached.summary
        assert s["n_layers"] > 0 and s["conv_layers"] > 0, precision
    assert engines["fp16"].summary["int8_layers"] == 0 and engines["fp16"].summary["fp16_layers"] > 0
    assert engines["fp32"].summary["int8_layers"] == 0
    for precision in ("int8", "mp"):
        s = engines[precision].summary
        assert s["int8_layers"] > 0 and s["conv_int8_share"] > 0.5, (precision, s)
    assert engines["mp"].summary["fp16_layers"] > 0  # MP: FP16 outside Q/DQ


def test_cache_hit_then_rebuild_on_changed_onnx(
    onnx_files: dict[str, Path], cache_dir: Path, work: Path
) -> None:
    import onnx

    from yolov9_qat.runtime.tensorrt import build_cached

    first = build_cached(onnx_files["float"], _options("fp16"), cache_dir=cache_dir)
    second = build_cached(onnx_files["float"], _options("fp16"), cache_dir=cache_dir)
    assert second.hit and second.engine == first.engine
    changed = work / "gelan-n-changed.onnx"
    proto = onnx.load(str(onnx_files["float"]))
    proto.doc_string = "changed"
    onnx.save(proto, str(changed))
    third = build_cached(changed, _options("fp16"), cache_dir=cache_dir)
    assert not third.hit and third.key != first.key


def test_foreign_engine_is_refused(engines: dict, work: Path) -> None:
    from yolov9_qat.errors import UserError
    from yolov9_qat.runtime.engine_cache import export_engine, sidecar_paths
    from yolov9_qat.runtime.tensorrt import EngineRunner

    dest = export_engine(engines["fp16"], work / "foreign" / "m.engine")
    meta_path = sidecar_paths(dest)["meta"]
    meta = json.loads(meta_path.read_text())
    meta["inputs"]["trt_version"] = "8.6.1"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="rebuild it"):
        EngineRunner(dest)


def test_strongly_typed_path_on_this_tensorrt(
    onnx_files: dict[str, Path], cache_dir: Path, monkeypatch: pytest.MonkeyPatch, float_model: nn.Module
) -> None:
    """TensorRT 11's path (AutoCast FP16 graph, no precision flags) taken on this TensorRT too."""
    from yolov9_qat.runtime.precision_graphs import autocast_missing
    from yolov9_qat.runtime.tensorrt import build_cached, tensorrt_predictor

    if autocast_missing():
        pytest.skip(f"AutoCast needs {autocast_missing()}")
    monkeypatch.setenv("YOLOV9_QAT_STRONGLY_TYPED", "1")
    cached = build_cached(onnx_files["float"], _options("fp16"), cache_dir=cache_dir)
    assert cached.metadata["inputs"]["builder"]["mode"] == "strongly-typed"
    assert cached.summary["fp16_layers"] > 0
    x = torch.rand(2, 3, IMG, IMG)
    got = tensorrt_predictor(cached.engine)(x).cpu()
    want = float_model(x)
    assert (got[:, 4:] - want[:, 4:]).abs().max() < 1e-2


# --- predictions -----------------------------------------------------------------------------------
def test_fp32_and_fp16_match_pytorch(engines: dict, float_model: nn.Module) -> None:
    from yolov9_qat.runtime.tensorrt import tensorrt_predictor

    x = torch.rand(3, 3, IMG, IMG)
    with torch.no_grad():
        want = float_model(x)
    for precision, tol in (("fp32", 1e-3), ("fp16", 1e-2)):
        got = tensorrt_predictor(engines[precision].engine)(x).cpu()
        assert got.shape == want.shape
        assert (got[:, 4:] - want[:, 4:]).abs().max() < tol, precision  # scores
        assert (got[:, :4] - want[:, :4]).abs().max() < tol * IMG, precision  # boxes, pixels


def test_batches_beyond_the_profile_are_split(engines: dict, float_model: nn.Module) -> None:
    from yolov9_qat.runtime.tensorrt import tensorrt_predictor

    x = torch.rand(11, 3, IMG, IMG)
    got = tensorrt_predictor(engines["fp32"].engine)(x).cpu()
    with torch.no_grad():
        want = float_model(x)
    assert got.shape == want.shape and (got - want).abs().max() < 1e-2 * IMG


def test_int8_ap_matches_pytorch_int8(engines: dict, qat_model: nn.Module, data: dict) -> None:
    from yolov9_qat.eval.evaluator import Evaluator, torch_predictor
    from yolov9_qat.runtime.tensorrt import tensorrt_predictor

    evaluator = Evaluator.for_data(data, IMG, batch_size=8, workers=0)
    ref = evaluator.run(torch_predictor(copy.deepcopy(qat_model), "cpu"), progress=False)
    got = evaluator.run(tensorrt_predictor(engines["int8"].engine), progress=False)
    assert abs(got["AP"] - ref["AP"]) <= 0.003 and abs(got["AP50"] - ref["AP50"]) <= 0.003


def test_end_to_end_engine_detections_match(
    onnx_files: dict[str, Path], cache_dir: Path, float_model: nn.Module
) -> None:
    from yolov9_qat.export.end2end import End2End, detections_from_outputs
    from yolov9_qat.runtime.tensorrt import build_cached, tensorrt_predictor

    cached = build_cached(onnx_files["e2e"], _options("fp32"), cache_dir=cache_dir)
    predict = tensorrt_predictor(cached.engine)
    assert predict.runner.end2end
    x = torch.rand(2, 3, IMG, IMG)
    got = predict(x)
    with torch.no_grad():
        want = detections_from_outputs(*End2End(float_model, "trt", 0.45, 0.001, 100)(x))
    assert len(got) == len(want) == 2
    for g, w in zip(got, want, strict=True):
        assert g.shape[1] == 6 and abs(len(g) - len(w)) <= max(2, len(w) // 20)
        k = min(10, len(g), len(w))
        if k:
            assert torch.allclose(g[:k, 4], w[:k, 4], atol=1e-3)
            assert torch.allclose(g[:k, :4], w[:k, :4], atol=0.5)


# --- benchmark -------------------------------------------------------------------------------------
STATS = {"min", "mean", "median", "p90", "p95", "p99", "max"}


def _check_report(report: dict, batches: list) -> None:
    assert report["backend"] == "tensorrt"
    for key in ("Device", "Compute Capability", "SMs", "Device Global Memory"):
        assert key in report["device"]
    assert [r.get("label", r["batch"]) for r in report["results"]] == batches
    for r in report["results"]:
        assert set(r["latency_ms"]) == STATS and all(v > 0 for v in r["latency_ms"].values())
        assert r["throughput_qps"] > 0 and r["ips"] == pytest.approx(r["throughput_qps"] * r["batch"])
    json.dumps(report)


def test_benchmark_json_holds_every_field(engines: dict) -> None:
    from yolov9_qat.bench.harness import BenchConfig, run_benchmark
    from yolov9_qat.runtime.tensorrt import TensorRTRunner

    config = BenchConfig(warmup_ms=50, duration_s=0.3)
    for flags in (
        {"use_cuda_graph": True, "spin_wait": True, "no_data_transfers": True},
        {"use_cuda_graph": False, "spin_wait": False, "no_data_transfers": False},
    ):
        runner = TensorRTRunner(engines["int8"].engine, **flags)
        report = run_benchmark(runner, [1, 4, 8], config, model="gelan-n", precision="int8", progress=False)
        _check_report(report, [1, 4, 8])
        assert report["device"]["TensorRT"]


def test_bench_tensorrt_with_resilience(onnx_files: dict[str, Path], cache_dir: Path) -> None:
    from yolov9_qat.runtime.engine_options import EngineOptions
    from yolov9_qat.runtime.trt_cli import bench_tensorrt

    options = EngineOptions(
        precision="int8", engine_cache=str(cache_dir), warmup_ms=50.0, duration_s=0.3, use_cuda_graph=True,
        use_spin_wait=True, no_data_transfers=True, resilience=True, workspace_gib=1.0,
    )  # fmt: skip
    report = bench_tensorrt(options, onnx_files["qdq"], batches=[1, 4])
    _check_report(report, [1, 4, "Resilience"])
    assert report["results"][-1]["batch"] == 8
    assert set(report["engines"]) == {"1", "4", "resilience"}
    assert all(e["layers"]["int8_layers"] > 0 for e in report["engines"].values())
    assert isinstance(report["int8_notes"], list) and report["int8_notes"]


@pytest.mark.skipif(shutil.which("trtexec") is None, reason="trtexec is not on PATH")
def test_trtexec_runner(onnx_files: dict[str, Path], work: Path) -> None:
    from yolov9_qat.runtime.engine_options import EngineOptions
    from yolov9_qat.runtime.trt_cli import bench_tensorrt

    options = EngineOptions(
        precision="fp16", runner="trtexec", warmup_ms=50.0, duration_s=0.5, use_cuda_graph=True,
        use_spin_wait=True, no_data_transfers=True, resilience=True,
        timing_cache=str(work / "trtexec.timing.cache"),
    )  # fmt: skip
    report = bench_tensorrt(options, onnx_files["float"], batches=[1, 4], engine_dir=work / "trtexec")
    _check_report(report, [1, 4, "Resilience"])


def test_render_engine_graph(engines: dict, work: Path) -> None:
    from yolov9_qat.runtime.inspect_engine import render_svg

    out = render_svg(engines["int8"].graph_path, work / "int8.svg")
    assert out.is_file() and out.suffix in (".svg", ".dot")
    assert np.isfinite(engines["int8"].summary["conv_int8_share"])

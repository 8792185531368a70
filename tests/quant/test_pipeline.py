"""The record's ``qat.py quantize`` / ``eval`` as functions: files, summary, reparameterization, errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from yolov9_qat.errors import DataError, UserError
from yolov9_qat.models import checkpoint
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.quant.pipeline import evaluate_qat, gelan_cfg_for, quantize


@pytest.fixture(scope="module")
def yolov9_weights(tmp_path_factory, images) -> str:
    torch.manual_seed(0)
    model = DetectionModel("yolov9-n", nc=10)
    path = tmp_path_factory.mktemp("yolov9") / "yolov9-n-synth.pt"
    checkpoint.save(model.eval(), path)
    return str(path)


def _run(weights, data, tmp_path, **kw):
    args = dict(
        img=64, batch_size=8, device="cpu", iters=1, epochs=1, calib_batches=1, workers=0, progress=False,
        project=tmp_path, name="q",
    )  # fmt: skip
    args.update(kw)
    return quantize(weights, data, **args)


@pytest.mark.cpu
def test_dual_head_checkpoint_is_reparameterized_then_quantized(
    yolov9_weights, synth_yaml, tmp_path, caplog
) -> None:
    with caplog.at_level(logging.INFO, logger="yolov9_qat.quant"):
        summary = _run(yolov9_weights, synth_yaml, tmp_path)
    assert any("reparameterizing it onto gelan-n" in r.getMessage() for r in caplog.records)
    assert summary["reparameterized_from"] == "yolov9-n" and summary["cfg"] == "gelan-n"
    run = tmp_path / "q"
    for f in ("weights/qat_best_yolov9-n-synth.pt", "weights/qat_last_yolov9-n-synth.pt", "summary.json"):
        assert (run / f).is_file(), f
    on_disk = json.loads((run / "summary.json").read_text())
    for stage in ("origin", "ptq"):
        assert {"AP", "AP50", "precision", "recall", "time_s"} <= set(on_disk[stage])
    (epoch,) = on_disk["epochs"]
    assert epoch["epoch"] == 1 and epoch["iters"] == 1 and {"AP", "loss", "train_s", "eval_s"} <= set(epoch)
    assert on_disk["best"]["epoch"] == 1
    # the record's `qat.py eval`: the saved best model gives the metrics seen during QAT
    metrics = evaluate_qat(run / "weights/qat_best_yolov9-n-synth.pt", synth_yaml, img=64, batch_size=8,
                           device="cpu", workers=0, progress=False)  # fmt: skip
    assert metrics["AP"] == pytest.approx(on_disk["best"]["AP"])
    assert metrics["AP50"] == pytest.approx(on_disk["best"]["AP50"])


@pytest.mark.cpu
def test_dual_head_without_a_gelan_config_names_the_reparameterize_command() -> None:
    model = DetectionModel("yolov9-n", nc=10)
    model.yaml["cfg_name"] = "yolov9-custom"
    with pytest.raises(UserError, match="yolov9-qat reparameterize"):
        gelan_cfg_for(model)


@pytest.mark.cpu
def test_empty_data_set_is_a_data_error(float_model, tmp_path) -> None:
    weights = checkpoint.save(float_model, tmp_path / "gelan.pt")
    for split in ("train", "val"):
        (tmp_path / "empty" / "images" / split).mkdir(parents=True)
    yaml_path = tmp_path / "empty" / "data.yaml"
    yaml_path.write_text(
        "path: .\ntrain: images/train\nval: images/val\nnames: ["
        + ", ".join(f"c{i}" for i in range(10))
        + "]\n"
    )
    with pytest.raises(DataError):
        _run(str(weights), yaml_path, tmp_path)
    with pytest.raises(DataError):
        _run(str(weights), tmp_path / "missing.yaml", tmp_path)


@pytest.mark.cpu
def test_wrong_activation_or_class_count_is_a_user_error(float_model, synth_yaml, tmp_path) -> None:
    weights = checkpoint.save(float_model, tmp_path / "gelan.pt")
    with pytest.raises(UserError, match="activation"):
        _run(str(weights), synth_yaml, tmp_path, activation="ReLU")
    other = checkpoint.save(DetectionModel("gelan-n", nc=3).fuse(), tmp_path / "gelan3.pt")
    with pytest.raises(UserError, match="3 classes"):
        _run(str(other), synth_yaml, tmp_path)


@pytest.mark.cpu
def test_ort_placement_from_the_command_line(float_model, synth_yaml, tmp_path) -> None:
    """``quantize --placement ort`` -> ``export`` -> ``val --backend onnxruntime`` as a user runs them:
    the checkpoint, the ONNX metadata and ONNX Runtime's rewrite all carry the placement."""
    import subprocess
    import sys

    from yolov9_qat.export.onnx import read_metadata
    from yolov9_qat.runtime.onnxruntime import load_onnx

    weights = checkpoint.save(float_model, tmp_path / "gelan.pt")

    def cli(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "yolov9_qat", *args], capture_output=True, text=True, timeout=600,
            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    common = ["--data", str(synth_yaml), "--img", "64", "--no-progress"]
    cli("quantize", "--weights", str(weights), "--placement", "ort", "--epochs", "0", "--calib-batches", "1",
        "--batch-size", "8", "--workers", "0", "--project", str(tmp_path), "--name", "q", *common)  # fmt: skip
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert summary["placement"] == "ort"
    ptq = tmp_path / "q" / "weights" / "ptq_gelan.pt"
    assert torch.load(ptq, weights_only=True)["qat"]["placement"] == "ort"
    cli("export", "--weights", str(ptq), "--include", "onnx", "--img", "64")
    onnx_path = ptq.with_suffix(".onnx")
    assert read_metadata(load_onnx(onnx_path))["placement"] == "ort"
    out = tmp_path / "val.json"
    cli("val", "--backend", "onnxruntime", "--weights", str(onnx_path), "--batch-size", "8", "--workers", "0",
        "--project", str(tmp_path), "--name", "v", "--json-out", str(out), *common)  # fmt: skip
    result = json.loads(out.read_text())
    assert result["runtime"]["rewrite"] in ("qlinear", "none") and 0.0 <= result["AP"] <= 1.0

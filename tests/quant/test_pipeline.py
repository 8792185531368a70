"""The record's ``qat.py quantize`` / ``eval`` as functions: files, summary, reparameterization, errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from shared_helpers import run_cli
from yolov9_qat.errors import DataError, UserError
from yolov9_qat.models import checkpoint
from yolov9_qat.models.checkpoint import gelan_cfg_for
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.quant.pipeline import evaluate_qat, quantize


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
    with caplog.at_level(logging.INFO, logger="yolov9_qat"):
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

    from yolov9_qat.export.onnx import read_metadata
    from yolov9_qat.runtime.onnxruntime import load_onnx

    weights = checkpoint.save(float_model, tmp_path / "gelan.pt")

    def cli(*args: str) -> subprocess.CompletedProcess:
        proc = run_cli(*args, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    common = ["--data", str(synth_yaml), "--img", "64", "--no-progress"]
    cli("quantize", "--weights", str(weights), "--placement", "ort", "--epochs", "0", "--calib-batches", "2",
        "--calib-batch-size", "3", "--batch-size", "8", "--workers", "0", "--project", str(tmp_path),
        "--name", "q", *common)  # fmt: skip
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert summary["placement"] == "ort"
    # calibration reads its own batch size, independent of --batch-size
    assert summary["calib_batch_size"] == 3 and summary["calibration"]["images"] == 6
    ptq = tmp_path / "q" / "weights" / "ptq_gelan.pt"
    assert torch.load(ptq, weights_only=True)["qat"]["placement"] == "ort"
    cli("export", "--weights", str(ptq), "--include", "onnx", "onnx_deepstream", "--img", "64")
    onnx_path = ptq.with_suffix(".onnx")
    assert read_metadata(load_onnx(onnx_path))["placement"] == "ort"
    # every export writes its .io.json: names, shapes and layout as the graph has them
    from yolov9_qat.export.io_spec import describe

    for path, layout in ((onnx_path, "plain"), (ptq.with_name("ptq_gelan-deepstream.onnx"), "deepstream")):
        spec = json.loads(path.with_name(path.stem + ".io.json").read_text())
        assert spec["layout"] == layout and spec == describe(path)
        assert [i["name"] for i in spec["inputs"]] == ["images" if layout == "plain" else "input"]
    out = tmp_path / "val.json"
    cli("val", "--backend", "onnxruntime", "--weights", str(onnx_path), "--batch-size", "8", "--workers", "0",
        "--project", str(tmp_path), "--name", "v", "--json-out", str(out), *common)  # fmt: skip
    result = json.loads(out.read_text())
    assert result["runtime"]["rewrite"] in ("qlinear", "none") and 0.0 <= result["AP"] <= 1.0


@pytest.mark.cpu
def test_best_epoch_is_chosen_on_the_selection_split(float_model, synth_yaml, tmp_path) -> None:
    """The per-epoch scores come from train's fixed slice, the reported ones from val, computed once."""
    from yolov9_qat.data.config import load_data_yaml
    from yolov9_qat.data.dataset import collect_image_files, selection_split

    weights = checkpoint.save(float_model, tmp_path / "gelan.pt")
    summary = _run(str(weights), synth_yaml, tmp_path, epochs=2, iters=2, lr=1e-3)
    data = load_data_yaml(synth_yaml)
    source, what = selection_split(data)
    assert summary["selection"] == what and summary["reported"] == "val"
    assert set(source).isdisjoint(collect_image_files(data["val"]))
    assert set(source) <= set(collect_image_files(data["train"]))
    assert [e["split"] for e in summary["epochs"]] == [what, what]
    best = summary["best"]
    chosen = summary["epochs"][best["epoch"] - 1]
    assert chosen["AP"] == max(e["AP"] for e in summary["epochs"])
    assert best["select"]["AP"] == pytest.approx(chosen["AP"])
    metrics = evaluate_qat(tmp_path / "q" / "weights" / "qat_best_gelan.pt", synth_yaml, img=64, batch_size=8,
                           device="cpu", workers=0, progress=False)  # fmt: skip
    assert metrics["AP"] == pytest.approx(best["AP"])  # the reported figure is val's, of the chosen weights


@pytest.mark.cpu
def test_selection_split_from_data_yaml(synth_yaml, tmp_path) -> None:
    from yolov9_qat.data.config import load_data_yaml
    from yolov9_qat.data.dataset import SELECT_FRACTION, collect_image_files, selection_split

    data = load_data_yaml(synth_yaml)
    train = collect_image_files(data["train"])
    source, what = selection_split(data)
    assert source == train[-max(1, round(SELECT_FRACTION * len(train))) :] and what.startswith("train[-")
    text = synth_yaml.read_text() + "select: images/val\n"
    (synth_yaml.parent / "with_select.yaml").write_text(text)
    data = load_data_yaml(synth_yaml.parent / "with_select.yaml")
    assert selection_split(data) == (data["select"], "select")


@pytest.mark.cpu
def test_float_control_runs_the_qat_schedule_with_quantizers_off(float_model, synth_yaml, tmp_path) -> None:
    weights = checkpoint.save(float_model, tmp_path / "gelan.pt")
    det = _run(str(weights), synth_yaml, tmp_path, name="det", epochs=1, iters=2, lr=1e-3,
               det_loss_weight=1.0, float_control=True)  # fmt: skip
    control = det["origin_ft"]
    assert control["epoch"] == 1 and {"AP", "AP50", "precision", "recall", "select"} <= set(control)
    trained = checkpoint.load(det["weights_out"]["origin_ft"]).model.state_dict()
    start = float_model.state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # trained: detection loss, lr 1e-3
    on_disk = json.loads((tmp_path / "det" / "summary.json").read_text())
    assert on_disk["origin_ft"]["AP"] == pytest.approx(control["AP"])
    # the same schedule with a zero learning rate leaves the float model where it was: Origin exactly
    still = _run(str(weights), synth_yaml, tmp_path, name="still", epochs=1, iters=2, lr=0.0,
                 det_loss_weight=1.0, float_control=True)  # fmt: skip
    assert still["origin_ft"]["AP"] == pytest.approx(still["origin"]["AP"])
    kept = checkpoint.load(still["weights_out"]["origin_ft"]).model.state_dict()
    assert all(torch.equal(kept[k], start[k]) for k in start)
    # feature MSE alone: a float model against itself has zero loss, the control is Origin itself
    mse = _run(str(weights), synth_yaml, tmp_path, name="mse", epochs=1, iters=2, float_control=True)
    assert mse["origin_ft"]["AP"] == mse["origin"]["AP"] and "Origin itself" in mse["origin_ft"]["note"]


@pytest.mark.cpu
@pytest.mark.slow
def test_quantize_under_torchrun_gives_one_process_amax(float_model, synth_yaml, tmp_path) -> None:
    """``torchrun --nproc_per_node 2 -m yolov9_qat quantize`` (gloo): every rank calibrates on its share of
    the batches one process reads and the statistics are reduced, so the calibrated amax equal a single
    process's on the same images, exactly; rank 0 alone writes, and the QAT checkpoint evaluates."""
    import os
    import subprocess
    import sys

    weights = checkpoint.save(float_model, tmp_path / "gelan.pt")
    args = ["quantize", "--weights", str(weights), "--data", str(synth_yaml), "--img", "64", "--batch-size", "8",
            "--calib-batches", "2", "--calib-method", "percentile", "--epochs", "1", "--iters", "2",
            "--workers", "0", "--device", "cpu", "--no-progress", "--project", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "yolov9_qat", *args, "--name", "one"], capture_output=True,
                         text=True, timeout=600, env=env)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
         "-m", "yolov9_qat", *args, "--name", "two"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert not (tmp_path / "two2").exists(), "only rank 0 may create the run folder"
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["calibration"]["images"] == 16
    a = torch.load(tmp_path / "one" / "weights" / "ptq_gelan.pt", weights_only=True)["qat"]["quantizers"]
    b = torch.load(tmp_path / "two" / "weights" / "ptq_gelan.pt", weights_only=True)["qat"]["quantizers"]
    assert a.keys() == b.keys() and len(a) > 50
    for name in a:
        assert torch.equal(a[name]["amax"], b[name]["amax"]), name
    result = evaluate_qat(tmp_path / "two" / "weights" / "qat_best_gelan.pt", synth_yaml, img=64, batch_size=8,
                          device="cpu", workers=0, progress=False)  # fmt: skip
    assert 0.0 <= result["AP"] <= 1.0 and summary["best"]["epoch"] == 1

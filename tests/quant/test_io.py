"""QAT checkpoints: plain data, and a fresh process rebuilds identical fake-INT8 outputs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from yolov9_qat.errors import CheckpointError
from yolov9_qat.models import checkpoint
from yolov9_qat.quant import rules
from yolov9_qat.quant.io import load_qat, qat_state, save_qat


@pytest.mark.cpu
def test_save_then_reload_in_a_fresh_process_gives_identical_outputs(ptq_model, images, tmp_path) -> None:
    path = save_qat(ptq_model, tmp_path / "qat.pt", meta={"stage": "ptq"})
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["qat"]["calib_method"] == "percentile" and raw["qat"]["groups"]
    assert not any("_quantizer" in k for k in raw["state_dict"])
    x = images[:2]
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        want = ptq_model.eval()(x)
    script = textwrap.dedent(
        """
        import sys, torch
        torch.set_num_threads(1)
        from yolov9_qat.quant.io import load_qat
        model, ck = load_qat(sys.argv[1])
        x = torch.load(sys.argv[2], weights_only=True)
        with torch.no_grad():
            torch.save(model(x), sys.argv[3])
        print(ck.meta["stage"])
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ptq")
    got = torch.load(tmp_path / "y.pt", weights_only=True)
    assert torch.equal(got, want)


@pytest.mark.cpu
def test_reload_in_process_restores_ties_and_amax(ptq_model, tmp_path) -> None:
    path = save_qat(ptq_model, tmp_path / "qat.pt")
    model, ck = load_qat(path)
    assert ck.source == "yolov9-qat" and model.qat["calibrated"]
    assert rules.describe(model) == rules.describe(ptq_model)
    state = qat_state(model)
    ref = qat_state(ptq_model)
    assert state["groups"] == ref["groups"]
    for name, q in ref["quantizers"].items():
        assert torch.equal(state["quantizers"][name]["amax"], q["amax"])
    # the same file is an ordinary checkpoint of the fused float model
    float_model = checkpoint.load(path).model
    assert float_model.fused and not any("quantizer" in n for n, _ in float_model.named_modules())


@pytest.mark.cpu
def test_float_checkpoint_is_not_a_qat_checkpoint(float_model, tmp_path) -> None:
    path = checkpoint.save(float_model, tmp_path / "float.pt")
    with pytest.raises(CheckpointError, match="not a QAT checkpoint"):
        load_qat(path)


@pytest.mark.cpu
def test_ort_placement_round_trip(ptq_model_ort, images, tmp_path) -> None:
    """The placement is stored; reloading re-traces the same exit ties and gives identical outputs."""
    path = save_qat(ptq_model_ort, tmp_path / "qat-ort.pt")
    assert torch.load(path, weights_only=True)["qat"]["placement"] == "ort"
    model, _ = load_qat(path)
    assert model.qat["placement"] == "ort"
    assert rules.describe(model) == rules.describe(ptq_model_ort)
    with torch.no_grad():
        assert torch.equal(model(images[:2]), ptq_model_ort.eval()(images[:2]))

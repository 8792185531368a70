"""PTQ (calibration) and QAT fine-tuning on the CPU."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from yolov9_qat.models.activations import ACTIVATIONS
from yolov9_qat.quant.qat import feature_mse, lr_schedule, qat_finetune, supervision_layers
from yolov9_qat.quant.quantize import (
    CALIB_METHODS,
    calibrate,
    prepare_qat_model,
    quantization_disabled,
    tie_violations,
    unique_quantizers,
)


def _features(model, x: torch.Tensor, layers=(15, 18, 21)) -> torch.Tensor:
    """The head's input feature maps (eval mode), flattened and concatenated."""
    outs: dict[int, torch.Tensor] = {}
    hooks = [
        model.model[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o)) for i in layers
    ]
    model.eval()
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    return torch.cat([outs[i].flatten(1) for i in layers], 1), y


@pytest.mark.cpu
def test_ptq_outputs_close_to_float_and_not_identical(float_model, ptq_model, data) -> None:
    from yolov9_qat.data.dataset import create_dataloader

    loader, _ = create_dataloader(data["val"], imgsz=64, batch_size=8, stride=32, workers=0)
    x = next(iter(loader))[0].float() / 255  # not the calibration images
    (ref, y_ref), (out, y_out) = _features(float_model, x), _features(ptq_model, x)
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.05, rel
    assert not torch.equal(y_out, y_ref)  # decoded predictions differ too
    box_rel = float((y_out[:, :4] - y_ref[:, :4]).norm() / y_ref[:, :4].norm())
    assert 0 < box_rel < 0.01, box_rel
    with quantization_disabled(ptq_model):  # same model, quantizers off: the float outputs
        assert torch.allclose(_features(ptq_model, x)[0], ref, atol=1e-6)
    assert torch.equal(_features(ptq_model, x)[0], out)  # and back on


@pytest.mark.cpu
@pytest.mark.parametrize("method", CALIB_METHODS)
def test_calibration_methods(float_model, images, method) -> None:
    model = prepare_qat_model(copy.deepcopy(float_model), calib_method=method, percentile=99.9)
    stats = calibrate(model, [images[:4]], n_batches=1, num_bins=512)
    assert stats["method"] == method and stats["images"] == 4
    for _, q in unique_quantizers(model)["input"]:
        assert q.amax.numel() == 1 and math.isfinite(float(q.amax)) and float(q.amax) > 0
    assert tie_violations(model) == []
    assert model.qat["calib_method"] == method and model.qat["calibrated"]


@pytest.mark.cpu
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_each_activation_quantizes_and_finetunes(images, float_factory, activation) -> None:
    fm = float_factory(images[:4], activation=activation)
    assert fm.activation == activation
    qm = prepare_qat_model(copy.deepcopy(fm), calib_method="max")
    calibrate(qm, [images[:4]], n_batches=1)
    result = qat_finetune(qm, fm, [(images[:4],)] * 2, None, epochs=1, iters=2, lr=1e-5, progress=False)
    (rec,) = result.epochs
    assert rec["iters"] == 2 and math.isfinite(rec["loss"])
    assert result.best_state is not None and result.last_state is not None
    assert tie_violations(qm) == []


@pytest.mark.cpu
def test_qat_reduces_feature_mse_on_a_fixed_batch(float_model, ptq_model, images) -> None:
    qm = copy.deepcopy(ptq_model)
    x = images[:4]
    before = feature_mse(qm, float_model, x)
    result = qat_finetune(
        qm, float_model, [(x,)] * 6, None, epochs=1, iters=6, schedule={0: 1e-4}, progress=False
    )
    after = feature_mse(qm, float_model, x)
    assert before > 0 and after < 0.9 * before, (before, after, result.epochs)
    # the teacher did not move, the student's quantizer scales did not move
    ref_q = {n: q.amax.clone() for n, q in unique_quantizers(ptq_model)["input"]}
    assert all(torch.equal(q.amax, ref_q[n]) for n, q in unique_quantizers(qm)["input"])


@pytest.mark.cpu
def test_supervision_policy_and_schedule() -> None:
    assert supervision_layers(23, 1) == list(range(22))
    assert supervision_layers(23, 4) == [0, 4, 8, 12, 16, 20, 21]
    # upstream's current finetune(): {0: 1e-6, 6: 1e-5, 7: 1e-6} over 10 epochs
    assert lr_schedule(10, 1e-5) == pytest.approx({e: (1e-5 if e == 6 else 1e-6) for e in range(10)})
    assert lr_schedule(1, 1e-5) == {0: 1e-5}
    assert lr_schedule(2, 1e-5) == pytest.approx({0: 1e-6, 1: 1e-5})
    with pytest.raises(ValueError):
        supervision_layers(23, 0)


@pytest.mark.cpu
def test_detection_loss_term_and_frozen_dfl(float_model, ptq_model, train_loader) -> None:
    qm = copy.deepcopy(ptq_model)
    batch = next(iter(train_loader))  # uint8 images, targets, paths, shapes
    x = batch[0].float() / 255
    plain = feature_mse(qm, float_model, x)
    result = qat_finetune(
        qm, float_model, [batch] * 2, None, epochs=1, iters=2, det_loss_weight=1.0, progress=False
    )
    loss = result.epochs[0]["loss"]
    assert math.isfinite(loss) and loss > plain  # feature MSE plus the detection loss
    dfl = qm.head.dfl.conv.weight
    assert torch.equal(dfl, ptq_model.head.dfl.conv.weight) and not dfl.requires_grad


@pytest.mark.cpu
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), None])
def test_a_quantizer_without_a_positive_amax_is_refused_by_name(ptq_model, bad) -> None:
    """TensorRT refuses a zero / negative / NaN scale only when it builds the engine; check_amax
    names the quantizer right after calibration or QAT."""
    from yolov9_qat.errors import UserError
    from yolov9_qat.quant.quantize import check_amax

    model = copy.deepcopy(ptq_model)
    assert check_amax(model, "after calibration") > 0  # the calibrated model passes
    name, q = unique_quantizers(model)["input"][3]
    if bad is None:
        delattr(q, "_amax")
    else:
        q.amax = torch.full_like(q.amax, bad)
    with pytest.raises(UserError, match="after calibration") as e:
        check_amax(model, "after calibration")
    assert name in str(e.value) and "1 quantizer(s)" in str(e.value)
    assert ("never calibrated" if bad is None else "amax") in str(e.value)
    w_name, w = unique_quantizers(model)["weight"][0]
    q.amax = torch.ones(())
    amax = w.amax.clone()
    amax.view(-1)[0] = 0.0  # one dead output channel
    w.amax = amax
    with pytest.raises(UserError, match=r"1 zero, 0 negative of \d+ channels") as e:
        check_amax(model, "after QAT")
    assert w_name in str(e.value)

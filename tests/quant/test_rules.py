"""Q/DQ placement: every conv quantized, the TensorRT ties hold as one quantizer / one amax."""

from __future__ import annotations

import copy

import pytest
import torch
from modelopt.torch.quantization.nn import TensorQuantizer
from torch import nn

from yolov9_qat.errors import UserError
from yolov9_qat.models import blocks
from yolov9_qat.models.heads import DFL
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.quant import rules
from yolov9_qat.quant.quantize import calibrate, prepare_qat_model, sync_tied_amax, tie_violations
from yolov9_qat.utils.runs import torch_threads


def _amax(q: TensorQuantizer) -> list[float]:
    return q.amax.flatten().tolist()


@pytest.mark.cpu
def test_every_conv_has_input_and_weight_quantizers(ptq_model) -> None:
    dfl_convs = {id(m.conv) for m in ptq_model.modules() if isinstance(m, DFL)}
    convs = [m for m in ptq_model.modules() if isinstance(m, nn.Conv2d) and id(m) not in dfl_convs]
    assert len(convs) > 50
    for conv in convs:
        iq, wq = conv.input_quantizer, conv.weight_quantizer
        assert iq.is_enabled and wq.is_enabled
        assert iq.num_bits == wq.num_bits == 8 and not iq.unsigned and not wq.unsigned
        assert iq.axis is None and iq.amax.numel() == 1 and float(iq.amax) > 0  # per tensor
        assert wq.axis == 0 and wq.amax.numel() == conv.out_channels  # per output channel
    for m in ptq_model.modules():
        if isinstance(m, DFL):
            assert not hasattr(m.conv, "input_quantizer"), "DFL stays float"
    rows = rules.describe(ptq_model)
    kinds = {(r["path"], r["kind"]) for r in rows}
    assert len(rows) == len(rules.plan(ptq_model).sites)
    assert ("model.22.cv2.0.2", "input") in kinds and (
        "model.22.cv3.2.2",
        "weight",
    ) in kinds  # head 1x1 convs


@pytest.mark.cpu
def test_ties_hold_after_calibration(ptq_model) -> None:
    assert tie_violations(ptq_model) == []
    m = ptq_model.model
    seen = set()
    for mod in ptq_model.modules():
        if isinstance(mod, blocks.RepNBottleneck) and mod.add:  # residual add: both inputs one scale
            assert mod.shortcut_quantizer is mod.branch_quantizer is mod.cv1.conv.input_quantizer
            seen.add("add")
        if isinstance(mod, blocks.RepNCSPELAN4):  # concat inputs share cv4's input scale
            q = mod.cv4.conv.input_quantizer
            assert mod.cv2[0].cv1.conv.input_quantizer is q and mod.cv2[0].cv2.conv.input_quantizer is q
            assert mod.cv3[0].cv1.conv.input_quantizer is q and mod.cv3[0].cv2.conv.input_quantizer is q
            seen.add("elan4")
        if isinstance(mod, blocks.ELAN1):
            assert (
                mod.cv2.conv.input_quantizer is mod.cv3.conv.input_quantizer is mod.cv4.conv.input_quantizer
            )
            seen.add("elan1")
        if isinstance(mod, blocks.RepNCSP):
            assert mod.cv1.conv.input_quantizer is mod.cv2.conv.input_quantizer
        if isinstance(mod, blocks.SPPELAN):  # max-pools between Q/DQ of one scale
            q = mod.cv5.conv.input_quantizer
            assert mod.cv2.m.input_quantizer is q and mod.cv3.m.input_quantizer is q
            assert mod.cv4.m.input_quantizer is q
            seen.add("sppelan")
        if isinstance(mod, blocks.AConv):  # the average pool's output is re-quantized: own scale
            assert mod.pool_quantizer is not mod.cv1.conv.input_quantizer
            seen.add("aconv")
    assert seen == {"add", "elan4", "elan1", "sppelan", "aconv"}
    # model level: Concat inputs share the next block's input scale; Upsample passes it through;
    # one tensor read by several layers has one scale
    for i in (11, 14, 17, 20):
        assert m[i].input_quantizer is m[i + 1].cv1.conv.input_quantizer
    assert m[10].input_quantizer is m[11].input_quantizer and m[13].input_quantizer is m[14].input_quantizer
    assert m[7].pool_quantizer is m[11].input_quantizer  # layer 6's output: read by AConv 7 and Concat 11
    assert m[20].input_quantizer is m[10].input_quantizer  # layer 9's output: read by Upsample 10, Concat 20
    head = m[22]
    for i in range(head.nl):
        assert head.cv2[i][0].conv.input_quantizer is head.cv3[i][0].conv.input_quantizer
        assert head.cv2[i][2].input_quantizer.is_enabled  # the last 1x1 convs are quantized
    assert head.cv2[0][0].conv.input_quantizer is m[16].pool_quantizer  # layer 15 feeds head and AConv 16
    # one amax per group, and the describe() groups are the plan's
    rows = rules.describe(ptq_model)
    by_group: dict[int, set] = {}
    for r in rows:
        by_group.setdefault(r["group"], set()).add(str(r["amax"]))
    assert all(len(v) == 1 for v in by_group.values())
    planned = {frozenset(map(rules.site_name, g)) for g in rules.plan(ptq_model).groups}
    groups: dict[int, set] = {}
    for r in rows:
        groups.setdefault(r["group"], set()).add(f"{r['path']}.{r['quantizer']}")
    assert {frozenset(g) for g in groups.values()} == planned


@pytest.mark.cpu
def test_float_plan_matches_quantized_model(float_model, ptq_model) -> None:
    plan_rows = rules.describe(float_model)
    q_rows = rules.describe(ptq_model)
    assert [(r["path"], r["quantizer"]) for r in plan_rows] == [(r["path"], r["quantizer"]) for r in q_rows]
    assert [r["group"] for r in plan_rows] != [] and all("enabled" not in r for r in plan_rows)
    assert "Concat" in rules.format_rules() and "RepNBottleneck+add" in rules.format_rules()


@pytest.mark.cpu
def test_separate_tied_quantizers_are_synced_to_one_amax(ptq_model) -> None:
    model = copy.deepcopy(ptq_model)
    elan = model.model[4]
    q = elan.cv4.conv.input_quantizer
    clone = copy.deepcopy(q)
    clone.amax = q.amax * 3
    elan.cv2[0].cv1.conv.input_quantizer = clone  # the tie broken: two objects, two scales
    assert tie_violations(model)
    assert sync_tied_amax(model) >= 2
    assert tie_violations(model) == []
    want = [3 * a for a in _amax(ptq_model.model[4].cv4.conv.input_quantizer)]
    assert _amax(clone) == _amax(q) == pytest.approx(want)


@pytest.mark.cpu
def test_adown_and_gelan_c_rules() -> None:
    torch.manual_seed(0)
    model = prepare_qat_model(DetectionModel("gelan-c", nc=3), calib_method="max")
    calibrate(model, [torch.rand(1, 3, 64, 64)], n_batches=1)
    assert tie_violations(model) == []
    downs = [m for m in model.modules() if isinstance(m, blocks.ADown)]
    assert downs
    for d in downs:  # re-quantized after the average pool; both halves, and the max-pool, one scale
        q = d.cv1.conv.input_quantizer
        assert d.pool_quantizer is not q and d.maxpool_quantizer is q and d.cv2.conv.input_quantizer is q
        assert float(q.amax) > 0 and float(d.pool_quantizer.amax) > 0


@pytest.mark.cpu
def test_dual_head_and_skip_layers(float_model) -> None:
    with pytest.raises(UserError, match="reparameterize"):
        prepare_qat_model(DetectionModel("yolov9-n", nc=3))
    model = prepare_qat_model(copy.deepcopy(float_model), skip_layers=[0, 12])
    assert not hasattr(model.model[0].conv, "input_quantizer")
    assert not hasattr(model.model[12].cv1.conv, "input_quantizer")
    assert hasattr(model.model[11], "input_quantizer")  # the concat before it is still quantized
    assert all(r["layer"] not in (0, 12) for r in rules.describe(model))
    with pytest.raises(UserError, match="already quantized"):
        prepare_qat_model(model)
    with pytest.raises(UserError, match="skip layer 99"):
        prepare_qat_model(copy.deepcopy(float_model), skip_layers=[99])


@pytest.mark.cpu
def test_ort_placement_quantizes_each_op_output_once(ptq_model, ptq_model_ort) -> None:
    """``ort``: every conv block's pre-activation, SiLU's sigmoid, the block output and the residual
    Add's output get quantizers; a block's exit is one object with the quantizers that read it
    (through split / concat / max-pool / upsample), and every TensorRT tie still holds."""
    model = ptq_model_ort
    assert model.qat["placement"] == "ort" and tie_violations(model) == []
    m = model.model
    convs = [mod for mod in model.modules() if isinstance(mod, (blocks.Conv, blocks.RepConvN))]
    assert convs and all(
        hasattr(c, rules.PREACT) and hasattr(c, rules.EXIT) and hasattr(c, rules.GATE) for c in convs
    )
    assert m[0].exit_quantizer is m[1].conv.input_quantizer  # Conv -> Conv
    elan = m[4]  # RepNCSPELAN4: cv1's output is split, both halves concatenated and one read by cv2
    assert elan.cv1.exit_quantizer is elan.cv4.conv.input_quantizer is elan.cv2[0].cv1.conv.input_quantizer
    assert elan.cv2[-1].exit_quantizer is elan.cv4.conv.input_quantizer is elan.cv3[-1].exit_quantizer
    adds = [mod for mod in model.modules() if isinstance(mod, blocks.RepNBottleneck) and mod.add]
    assert adds and all(a.sum_quantizer is not a.shortcut_quantizer for a in adds)  # the Add's own output
    assert m[9].cv1.exit_quantizer is m[9].cv5.conv.input_quantizer  # SPPELAN: through the max-pools
    assert m[7].pool_quantizer is m[6].cv4.exit_quantizer  # AConv reads ELAN 6's output
    assert m[7].cv1.conv.input_quantizer is not m[7].pool_quantizer  # the average pool re-quantizes
    assert all(c.preact_quantizer is not c.exit_quantizer for c in convs)  # SiLU: not a pass-through
    # the TensorRT groups are unions of ort groups: every trt tie is kept
    ort_group = {(r["path"], r["quantizer"]): r["group"] for r in rules.describe(model)}
    for group in rules.plan(ptq_model).tied():
        assert len({ort_group[s] for s in group}) == 1
    # the extra quantizers are calibrated like the others
    extra = [r for r in rules.describe(model) if r["quantizer"] in (rules.PREACT, rules.GATE, rules.EXIT)]
    assert extra and all(isinstance(r["amax"], float) and r["amax"] > 0 for r in extra)
    gates = [r["amax"] for r in extra if r["quantizer"] == rules.GATE]
    assert max(gates) <= 1.0 + 1e-6  # a sigmoid's range


@pytest.mark.cpu
def test_ort_placement_relu_preactivation_tied_with_exit(float_factory, images) -> None:
    """ReLU commutes with symmetric quantization, so its input and output share one quantizer (the
    trace treats it as a pass-through); SiLU-free blocks carry no sigmoid quantizer."""
    from yolov9_qat.quant.quantize import prepare_qat_model

    with torch_threads(1):
        model = prepare_qat_model(float_factory(images, activation="ReLU"), "max", placement="ort")
    convs = [mod for mod in model.modules() if isinstance(mod, (blocks.Conv, blocks.RepConvN))]
    assert all(c.preact_quantizer is c.exit_quantizer for c in convs)
    assert not any(hasattr(c, rules.GATE) for c in convs)
    with pytest.raises(UserError, match="placement 'tensorrt'"):
        prepare_qat_model(float_factory(images), "max", placement="tensorrt")

"""Per-layer sensitivity: one layer in float at a time, the others (and the ties) untouched."""

from __future__ import annotations

import pytest

from yolov9_qat.eval.evaluator import Evaluator
from yolov9_qat.quant import rules
from yolov9_qat.quant.sensitivity import format_table, layer_in_float, sensitivity


@pytest.mark.cpu
def test_sensitivity_rows_sorted_and_model_restored(ptq_model, data) -> None:
    before = rules.describe(ptq_model)
    with layer_in_float(ptq_model, 12) as n:
        assert n > 0
        assert not ptq_model.model[12].cv1.conv.input_quantizer.is_enabled
        assert ptq_model.model[11].input_quantizer.is_enabled  # tied with 12's entry, stays on
    assert rules.describe(ptq_model) == before
    evaluator = Evaluator.for_data(data, 64, batch_size=8, workers=0)
    rows = sensitivity(ptq_model, evaluator, layers=[0, 9, 22])
    assert [r["layer"] for r in rows] and {r["layer"] for r in rows} == {0, 9, 22}
    gains = [r["gain"] for r in rows]
    assert gains == sorted(gains, reverse=True)
    for r in rows:
        assert {"AP", "AP50", "precision", "recall", "ptq_AP", "type", "quantizers"} <= set(r)
        assert r["gain"] == pytest.approx(r["AP"] - r["ptq_AP"])
    table = format_table(rows)
    assert "SPPELAN" in table and "DDetect" in table
    assert rules.describe(ptq_model) == before

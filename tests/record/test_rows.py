"""The record's one table of rows (``record/rows.py``): the baselines hold exactly the rows the records
make, and the pipeline, the GPU record, the tables and baseline validation take their rows from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from yolov9_qat.record import baseline, gpu, pipeline, tables
from yolov9_qat.record.baseline import load_baseline
from yolov9_qat.record.rows import ROW, ROWS, Row, _check, float_bench, names, run_name, run_parts, select

pytestmark = pytest.mark.cpu

ROOT = Path(__file__).resolve().parents[2]
CPU_BASELINE = ROOT / "baselines" / "cpu" / "test-profile.yaml"
GPU_BASELINE = ROOT / "baselines" / "record" / "rtx4050.yaml"


@pytest.mark.parametrize(("path", "record"), [(CPU_BASELINE, "cpu"), (GPU_BASELINE, "gpu")])
def test_baselines_hold_the_records_rows(path: Path, record: str) -> None:
    data = load_baseline(path).data  # validates
    assert data["accuracy"] and data["latency"]
    for act, rows in data["accuracy"].items():
        assert tuple(rows) == names(select(record, accuracy=True)), act
    for act, rows in data["latency"].items():
        assert tuple(rows) == names(select(record, latency=True)), act


def test_labels_come_from_the_rows() -> None:
    for row in select(accuracy=True):
        assert tables.eval_label(row.name) == row.label
        assert tables.is_eval_key(row.name)
    assert {r.name: r.label for r in select(latency=True)} == tables.LATENCY_ROW_LABELS
    assert set(baseline.PRECISIONS) == {"fp32", "fp16", "int8", "mp", "int8ort"}
    for row in (*select(bench=True), *select(extra=True)):
        if not row.latency and not row.accuracy:
            assert not tables.is_eval_key(row.name), row.name  # not a row a baseline may hold


def test_pipeline_and_gpu_record_take_their_rows_from_the_table() -> None:
    assert pipeline.RUN_OF == {
        "fp32": None, "int8": "trt", "int8seed": "trt_seed", "int8ort": "ort", "int8_e2e": "trt"
    }  # fmt: skip
    assert set(pipeline.ONNX_KINDS) == {"fp32", "int8", "int8seed", "int8_e2e", "int8ort"}
    assert pipeline.RUNS == ("trt", "trt_seed", "ort")
    # build_parallel schedules every QAT run the rows need, each once
    assert sorted(pipeline.QAT_RUNS) == sorted({r for r in pipeline.RUN_OF.values() if r})
    assert run_parts("trt_seed") == ("trt", "seed") and run_parts("ort") == ("ort", "det")
    assert all(run_name(*run_parts(r)) == r for r in pipeline.RUNS)
    assert {r.name: (r.onnx, r.rewrite) for r in pipeline.BENCH_ROWS} == {
        "fp32": ("fp32", "none"),
        "int8": ("int8", "auto"),
        "int8_qdq": ("int8", "none"),
        "int8ort": ("int8ort", "auto"),
    }
    assert names(tuple(r for r in pipeline.EVAL_ROWS if r.extra)) == ("int8_end2end_onnxruntime",)
    assert gpu.PRECISIONS == ("int8", "fp16", "mp")
    assert {p: ROW[p].onnx for p in gpu.PRECISIONS} == {"int8": "int8", "fp16": "fp32", "mp": "int8"}
    assert names(gpu.ACCURACY_ROWS) == ("origin_pytorch", "int8_pytorch", "int8_tensorrt")
    assert float_bench().name == "fp32"


def test_the_table_checks_itself() -> None:
    assert ROW["int8"].words == "INT8" and ROW["int8_pytorch"].words == "QAT"
    assert ROW["origin_ft_pytorch"].words == "Origin fine-tuned"
    assert ROW["int8"].column == "INT8 integer rewrite"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ROWS[0].name = "x"  # type: ignore[misc]
    extra = Row("x_onnxruntime", "X", ("cpu",), accuracy=True, onnx="int8", placement="ort")
    with pytest.raises(ValueError, match="QAT run"):
        _check((*ROWS, extra))  # int8 is TensorRT's placement elsewhere
    with pytest.raises(ValueError, match="QAT run"):
        _check((*ROWS, dataclasses.replace(extra, placement="trt", recipe="seed")))  # int8 is ours
    with pytest.raises(ValueError, match="recipe"):
        _check((*ROWS, dataclasses.replace(extra, name="z_onnxruntime", onnx="z", recipe="other")))
    with pytest.raises(ValueError, match="duplicate"):
        _check((*ROWS, ROWS[0]))
    with pytest.raises(ValueError, match="QAT summary entry or an ONNX graph"):
        _check((*ROWS, Row("y_pytorch", "Y", ("cpu",), accuracy=True)))
    _check((*ROWS, dataclasses.replace(extra, placement="trt")))  # one more row: one line

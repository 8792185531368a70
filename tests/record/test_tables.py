"""Markdown tables in the record's layout: the baseline renders to the record's own rows, numbers survive
a round trip, and the CPU record's extra rows, precisions and batch sizes render too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from yolov9_qat.record import Baseline, deltas_from_accuracy, load_baseline, render_record
from yolov9_qat.record.rows import names, select
from yolov9_qat.record.tables import (
    eval_label,
    fmt_delta,
    fmt_metric,
    fmt_ms,
    fmt_rate,
    render_accuracy,
    render_deltas,
    render_device,
    render_latency,
)

pytestmark = pytest.mark.cpu

ROOT = Path(__file__).resolve().parents[2]
RTX4050 = ROOT / "baselines" / "record" / "rtx4050.yaml"
SEED = "seed/000_d6440160449dc7b2.txt"


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    return load_baseline(RTX4050)


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of every Markdown table in ``markdown`` (header and rule rows left out)."""
    rows, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and not (i + 1 < len(lines) and lines[i + 1].startswith("|---")):
            rows.append([c.strip() for c in line.strip()[1:-1].split(" | ")])
    return rows


def section(markdown: str, title: str) -> str:
    """The text of the ``## title`` section."""
    return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_baseline_renders_like_the_snapshot(baseline: Baseline, snapshot) -> None:
    assert render_record(baseline, title="YOLOv9 QAT record: NVIDIA GeForce RTX 4050 Laptop GPU") == snapshot


def test_rendered_rows_are_the_seed_rows(baseline: Baseline, shared_dir: Path) -> None:
    """Every table row, written with tabs as the seed text has them, is a line of the seed, in order."""
    seed = (shared_dir / SEED).read_text(encoding="utf-8").splitlines()
    md = render_record(baseline)
    for title, n in (("Latency/Throughput", 90), ("Evaluation Results", 15), ("Evaluation Comparison", 5)):
        rendered = ["\t".join(r) for r in table_rows(section(md, title))]
        assert len(rendered) == n
        it = iter(seed)
        for row in rendered:  # a subsequence of the seed's lines: same text, same order
            assert any(line.rstrip() == row for line in it), (title, row)
    device = dict(table_rows(section(md, "Device")))
    assert device["Device"] == "NVIDIA GeForce RTX 4050 Laptop GPU"
    for label, value in device.items():
        assert f"{label}\t{value}" in seed


def test_latency_table_round_trip(baseline: Baseline) -> None:
    rows = table_rows(render_latency(baseline.data["latency"]))
    parsed: dict = {}
    model = None
    for name, batch, p99, qps, ips in rows:
        if name:
            prec, act = re.fullmatch(r"(\w+) \((\w+)\)", name).groups()
            model = parsed.setdefault(act, {}).setdefault(prec.lower(), {})
        assert model is not None
        approx = ips.startswith("≈ ")
        entry = {
            "p99_ms": float(p99.removesuffix(" ms")),
            "qps": int(qps),
            "ips": int(ips.removeprefix("≈ ")),
        }
        if approx:
            entry["ips_approx"] = True
        model[batch.lower()] = entry
    assert parsed == baseline.data["latency"]
    assert baseline.check({"latency": parsed}) == []


def test_accuracy_and_delta_tables_round_trip(baseline: Baseline) -> None:
    labels = {eval_label(k): k for k in names(select("gpu", accuracy=True))}
    blocks = render_accuracy(baseline.data["accuracy"]).split("### Activation ")[1:]
    parsed = {}
    for block in blocks:
        act = block.split("\n", 1)[0]
        parsed[act] = {
            labels[r[0]]: dict(zip(("AP", "AP50", "precision", "recall"), map(float, r[1:]), strict=True))
            for r in table_rows(block)
        }
    assert parsed == baseline.data["accuracy"]
    deltas = {}
    for block in render_deltas(baseline.data["deltas"]).split("### Activation ")[1:]:
        ((name, *values),) = table_rows(block)
        assert name == "INT8 (TensorRT) vs Origin (Pytorch)"
        assert all(v[0] in "+-" for v in values)
        deltas[block.split("\n", 1)[0]] = dict(
            zip(("AP", "AP50", "precision", "recall"), map(float, values), strict=True)
        )
    assert deltas == baseline.data["deltas"]


def test_deltas_from_accuracy(baseline: Baseline) -> None:
    assert deltas_from_accuracy(baseline.data["accuracy"]) == baseline.data["deltas"]
    acc = {"x": {"a_pytorch": {"AP": 0.30004, "AP50": 0.5, "precision": 0.5, "recall": 0.5}}}
    acc["x"]["b_pytorch"] = {"AP": 0.1, "AP50": 0.5, "precision": 0.75, "recall": 0.25}
    d = deltas_from_accuracy(acc, "a_pytorch", "b_pytorch")
    assert d == {"x": {"AP": 0.2, "AP50": 0.0, "precision": -0.25, "recall": 0.25}}
    assert deltas_from_accuracy(acc) == {}  # rows missing: left out


def test_record_without_deltas_computes_the_comparison(baseline: Baseline) -> None:
    data = {k: v for k, v in baseline.data.items() if k != "deltas"}
    assert render_record(data) == render_record(baseline)


CPU_RECORD = {
    "device": {"name": "Intel(R) Xeon(R) CPU", "threads": 2, "onnxruntime": "1.20.1"},
    "comparison": {"a": "int8_onnxruntime", "b": "origin_pytorch"},
    "latency": {
        "SiLU": {
            "fp32": {
                "1": {"p99_ms": 544.123, "qps": 1.84, "ips": 1.84},
                "2": {"p99_ms": 1001.5, "qps": 1.0, "ips": 2.0},
            },
            "int8": {
                "1": {"p99_ms": 392.0, "qps": 2.551, "ips": 2.551},
                "resilience": {"p99_ms": 3000.0, "qps": 0.33, "ips": 2.64, "ips_approx": True},
            },
        }
    },
    "accuracy": {
        "SiLU": {
            "origin_pytorch": {"AP": 0.5, "AP50": 0.75, "precision": 0.6, "recall": 0.7},
            "origin_onnxruntime": {"AP": 0.5, "AP50": 0.75, "precision": 0.6, "recall": 0.7},
            "ptq_pytorch": {"AP": 0.48, "AP50": 0.74, "precision": 0.61, "recall": 0.69},
            "int8_onnxruntime": {"AP": 0.495, "AP50": 0.7512, "precision": 0.6, "recall": 0.6881},
        }
    },
}


def test_cpu_record_extras_render() -> None:
    md = render_record(CPU_RECORD)
    assert "| Device | Intel(R) Xeon(R) CPU |" in md and "| Threads | 2 |" in md
    assert table_rows(section(md, "Latency/Throughput")) == [
        ["FP32 (SiLU)", "1", "544.12 ms", "1.84", "1.84"],
        ["", "2", "1001.50 ms", "1", "2"],
        ["INT8 (SiLU)", "1", "392.00 ms", "2.55", "2.55"],
        ["", "Resilience", "3000.00 ms", "0.33", "≈ 2.64"],
    ]
    assert [r[0] for r in table_rows(section(md, "Evaluation Results"))] == [
        "Origin (Pytorch)",
        "Origin (ONNX Runtime)",
        "PTQ (Pytorch)",
        "INT8 (ONNX Runtime)",
    ]
    assert table_rows(section(md, "Evaluation Comparison")) == [
        ["INT8 (ONNX Runtime) vs Origin (Pytorch)", "-0.005", "+0.0012", "0", "-0.0119"]
    ]


def test_labels_and_formats() -> None:
    assert eval_label("int8_tensorrt") == "INT8 (TensorRT)"
    assert eval_label("fp16_tensorrt") == "FP16 (TensorRT)"  # composed from the model and backend words
    assert eval_label("qat_onnxruntime") == "INT8 seed recipe (ONNX Runtime)"  # a row of the table
    assert eval_label("qat_tensorrt") == "QAT (TensorRT)"
    with pytest.raises(KeyError, match="int8_tensorrtt"):
        eval_label("int8_tensorrtt")
    assert (fmt_ms(20.4), fmt_ms(2.891)) == ("20.40 ms", "2.89 ms")
    assert (fmt_rate(347), fmt_rate(346.6), fmt_rate(400, approx=True), fmt_rate(2.345)) == (
        "347",
        "347",
        "≈ 400",
        "2.35",
    )
    assert (fmt_metric(0.318), fmt_metric(0.3177), fmt_metric(0.61304)) == ("0.318", "0.3177", "0.613")
    assert (fmt_delta(0.0025), fmt_delta(-0.028), fmt_delta(0.0), fmt_delta(-0.00001)) == (
        "+0.0025",
        "-0.028",
        "0",
        "0",
    )
    assert (
        render_device({"name": "x", "memory_mib": 10}).splitlines()[-1] == "| Device Global Memory | 10 MiB |"
    )
    with pytest.raises(TypeError):
        render_record([1, 2])

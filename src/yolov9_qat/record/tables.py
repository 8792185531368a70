"""Markdown tables in the published record's layout, rendered from a dict in the baseline schema.

The same function renders a baseline file (``baselines/record/*.yaml``) and a measured run written in
that schema: a device table, the "Latency/Throughput" table, "Evaluation Results" per activation and
"Evaluation Comparison" per activation. The rows' words come from the record's table of rows
(:data:`yolov9_qat.record.rows.ROWS`); the other key-to-label mappings live in the dicts below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from yolov9_qat.record.rows import select

# ---- labels: schema keys to the record's words ---------------------------------------------------

#: evaluation rows (``<model>_<backend>``) as the record spells them: the rows of :data:`ROWS`
EVAL_LABELS: dict[str, str] = {r.name: r.label for r in select(accuracy=True)}
#: latency rows: the precisions, and the CPU record's QAT model of the ``ort`` placement
LATENCY_ROW_LABELS: dict[str, str] = {r.name: r.label for r in select(latency=True)}
#: model and backend words for evaluation keys no record makes (``fp16_tensorrt`` -> "FP16 (TensorRT)")
EVAL_MODEL_LABELS: dict[str, str] = {"origin": "Origin", "ptq": "PTQ", "qat": "QAT", **LATENCY_ROW_LABELS}
BACKEND_LABELS: dict[str, str] = {"pytorch": "Pytorch", "onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}

METRIC_LABELS: dict[str, str] = {"AP": "AP", "AP50": "AP50", "precision": "Precision", "recall": "Recall"}
LATENCY_LABELS: dict[str, str] = {
    "p99_ms": "Latency (99%)",
    "qps": "Throughput (qps)",
    "ips": "Total Inferences (IPS)",
}
RESILIENCE = "resilience"
BATCH_LABELS: dict[str, str] = {RESILIENCE: "Resilience"}

#: device rows: key -> (label, unit); other keys get a label made from the key and no unit
DEVICE_LABELS: dict[str, tuple[str, str]] = {
    "name": ("Device", ""),
    "compute_capability": ("Compute Capability", ""),
    "sms": ("SMs", ""),
    "memory_mib": ("Device Global Memory", "MiB"),
    "compute_clock_ghz": ("Application Compute Clock Rate", "GHz"),
    "memory_clock_ghz": ("Application Memory Clock Rate", "GHz"),
}

METRICS: tuple[str, ...] = tuple(METRIC_LABELS)
LATENCY_METRICS: tuple[str, ...] = tuple(LATENCY_LABELS)


def eval_label(key: str) -> str:
    """The record's words for an evaluation row key (``int8_tensorrt`` -> "INT8 (TensorRT)")."""
    if key in EVAL_LABELS:
        return EVAL_LABELS[key]
    model, _, backend = key.rpartition("_")
    if model in EVAL_MODEL_LABELS and backend in BACKEND_LABELS:
        return f"{EVAL_MODEL_LABELS[model]} ({BACKEND_LABELS[backend]})"
    raise KeyError(
        f"unknown evaluation row {key!r}; known models {sorted(EVAL_MODEL_LABELS)}, backends {sorted(BACKEND_LABELS)}"
    )


def is_eval_key(key: str) -> bool:
    """Whether ``key`` names an evaluation row that :func:`eval_label` can spell."""
    try:
        eval_label(key)
    except KeyError:
        return False
    return True


def batch_label(key: str | int) -> str:
    """``"4"`` -> ``"4"``, ``"resilience"`` -> ``"Resilience"``."""
    return BATCH_LABELS.get(str(key), str(key))


# ---- number formats ---------------------------------------------------------------------------------


def fmt_ms(value: float) -> str:
    """A latency as the record prints it: ``2.89 ms``, ``20.40 ms``."""
    return f"{value:.2f} ms"


def fmt_rate(value: float, approx: bool = False) -> str:
    """A rate (qps, images/s): an integer as in the record from 10 up, two decimals below (CPU rates)."""
    text = f"{value:.0f}" if abs(value) >= 10 or float(value).is_integer() else f"{value:.2f}"
    return f"≈ {text}" if approx else text


def fmt_metric(value: float) -> str:
    """A metric to 4 decimals without trailing zeros, as the record prints them (``0.318``, ``0.613``)."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fmt_delta(value: float) -> str:
    """A difference with an explicit sign: ``+0.0025``, ``-0.028``; zero is ``0``."""
    text = fmt_metric(value)
    return text if text == "0" or text.startswith("-") else f"+{text}"


# ---- tables -----------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _data(record: Any) -> Mapping[str, Any]:
    """A baseline schema dict from a dict or from anything with a ``data`` mapping (a ``Baseline``)."""
    data = getattr(record, "data", record)
    if not isinstance(data, Mapping):
        raise TypeError(f"expected a mapping in the baseline schema, got {type(record).__name__}")
    return data


def render_device(device: Mapping[str, Any]) -> str:
    """The device table: the record's GPU rows, then any other keys (CPU model, threads, ...)."""
    rows = []
    for key, value in device.items():
        label, unit = DEVICE_LABELS.get(key, (key.replace("_", " ").capitalize(), ""))
        rows.append([label, f"{value} {unit}" if unit else str(value)])
    return _table(["GPU" if "sms" in device else "Device", ""], rows)


def render_latency(latency: Mapping[str, Any]) -> str:
    """The "Latency/Throughput" table: one block per activation and precision, a row per batch."""
    rows = []
    for act, per_precision in latency.items():
        for prec, per_batch in per_precision.items():
            name = f"{LATENCY_ROW_LABELS.get(prec, prec.upper())} ({act})"
            for i, (batch, m) in enumerate(per_batch.items()):
                rows.append(
                    [
                        name if i == 0 else "",
                        batch_label(batch),
                        fmt_ms(m["p99_ms"]),
                        fmt_rate(m["qps"]),
                        fmt_rate(m["ips"], approx=bool(m.get("ips_approx", False))),
                    ]
                )
    return _table(["Model Name", "Batch Size", *LATENCY_LABELS.values()], rows)


def render_accuracy(accuracy: Mapping[str, Any]) -> str:
    """ "Evaluation Results": a table per activation with a row per evaluated model/backend."""
    blocks = []
    for act, per_row in accuracy.items():
        rows = [[eval_label(key), *(fmt_metric(m[k]) for k in METRICS)] for key, m in per_row.items()]
        blocks.append(f"### Activation {act}\n\n" + _table(["Eval Model", *METRIC_LABELS.values()], rows))
    return "\n\n".join(blocks)


def render_deltas(deltas: Mapping[str, Any], a: str = "int8_tensorrt", b: str = "origin_pytorch") -> str:
    """ "Evaluation Comparison": a table per activation with the one row "<a> vs <b>"."""
    blocks = []
    for act, d in deltas.items():
        row = [f"{eval_label(a)} vs {eval_label(b)}", *(fmt_delta(d[k]) for k in METRICS)]
        blocks.append(f"### Activation {act}\n\n" + _table(["Eval Model", *METRIC_LABELS.values()], [row]))
    return "\n\n".join(blocks)


def deltas_from_accuracy(
    acc: Mapping[str, Mapping[str, Mapping[str, float]]], a: str = "int8_tensorrt", b: str = "origin_pytorch"
) -> dict[str, dict[str, float]]:
    """Per activation, ``acc[act][a][metric] - acc[act][b][metric]`` rounded to 4 decimals.

    Activations that lack row ``a`` or ``b`` are left out.
    """
    out: dict[str, dict[str, float]] = {}
    for act, rows in acc.items():
        if a in rows and b in rows:
            out[act] = {k: round(float(rows[a][k]) - float(rows[b][k]), 4) + 0.0 for k in METRICS}
    return out


def render_record(record: Any, title: str | None = None) -> str:
    """All of the record's tables as one Markdown document (device, latency, evaluation, comparison).

    ``record`` is a dict in the baseline schema or a ``Baseline``. Sections whose data is missing are
    left out; the comparison is computed from the accuracy rows when the dict has no ``deltas``.
    """
    data = _data(record)
    parts = [f"# {title}"] if title else []
    if "device" in data:
        parts.append("## Device\n\n" + render_device(data["device"]))
    if data.get("latency"):
        parts.append("## Latency/Throughput\n\n" + render_latency(data["latency"]))
    if data.get("accuracy"):
        parts.append("## Evaluation Results\n\n" + render_accuracy(data["accuracy"]))
    comparison = data.get("comparison") or {}
    a, b = comparison.get("a", "int8_tensorrt"), comparison.get("b", "origin_pytorch")
    deltas = data.get("deltas") or deltas_from_accuracy(data.get("accuracy") or {}, a, b)
    if deltas:
        parts.append("## Evaluation Comparison\n\n" + render_deltas(deltas, a, b))
    return "\n\n".join(parts) + "\n"

"""Write a reproduced record: ``record.json`` (baseline schema + extras), ``record.md`` (the record's
tables plus PTQ, ONNX Runtime and end-to-end rows) and plots (latency vs batch per precision, AP per
activation and backend, PTQ vs QAT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yolov9_qat.record.tables import render_record
from yolov9_qat.utils.files import atomic_path, atomic_write_json, atomic_write_text


def write_report(
    record: dict[str, Any], out_dir: str | Path, title: str = "yolov9-qat record"
) -> dict[str, Path]:
    """Write the report files into ``out_dir``; returns their paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": atomic_write_json(out / "record.json", record)}
    md = render_record(
        {k: v for k, v in record.items() if k in ("device", "latency", "accuracy", "comparison", "deltas")},
        title,
    )
    md += "\n" + _extras_markdown(record)
    paths["markdown"] = atomic_write_text(out / "record.md", md)
    paths.update(plot_record(record, out))
    return paths


def _effects_markdown(accuracy: dict[str, Any]) -> list[str]:
    """The two effects per activation: INT8 - Origin (as the published record reports it: quantization
    plus the extra fine-tuning) and INT8 - Origin fine-tuned (the float control: quantization alone)."""
    rows = []
    for act, acc in accuracy.items():
        if "origin_ft_pytorch" not in acc or "int8_pytorch" not in acc:
            continue
        cells = []
        for a, b in (("int8_pytorch", "origin_pytorch"), ("int8_pytorch", "origin_ft_pytorch"),
                     ("int8_onnxruntime", "origin_ft_pytorch")):  # fmt: skip
            cells.append(f"{acc[a]['AP'] - acc[b]['AP']:+.4f}" if a in acc and b in acc else "")
        rows.append(f"| {act} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "## Quantization cost (AP@[.5:.95])",
        "",
        "INT8 - Origin mixes quantization with the extra training QAT gives the model; Origin fine-tuned",
        "is the float model trained with the very same schedule, quantizers off, so INT8 - Origin",
        "fine-tuned is the cost of quantization alone. Best epochs are chosen on the selection split.",
        "",
        "| Activation | INT8 (Pytorch) - Origin | INT8 (Pytorch) - Origin fine-tuned | INT8 (ONNX Runtime) - Origin fine-tuned |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def _extras_markdown(record: dict[str, Any]) -> str:
    """Rows the published record does not have: the end-to-end graph's AP and S8S8 vs U8S8 latency."""
    extras = record.get("extras") or {}
    lines = _effects_markdown(record.get("accuracy") or {})
    lines += [
        "## End-to-end graph (NMS inside, ONNX Runtime)",
        "",
        "| Activation | AP | AP50 | Precision | Recall |",
        "|---|---|---|---|---|",
    ]
    for act, e in extras.items():
        m = e.get("int8_end2end_onnxruntime")
        if m:
            lines.append(
                f"| {act} | {m['AP']:.4f} | {m['AP50']:.4f} | {m['precision']:.4f} | {m['recall']:.4f} |"
            )
    lines += [
        "",
        "## INT8 on ONNX Runtime, median latency (ms)",
        "",
        "TensorRT's placement as exported (Q/DQ), with the integer-conv rewrite, and the ``ort`` placement",
        "(every op's output quantized, QLinear ops end to end); ratios against FP32.",
        "",
    ]
    rows = []
    for act, e in extras.items():
        bench = e.get("bench") or {}
        if not bench:
            continue
        by_kind = {
            k: {r["batch"]: r["latency_ms"]["median"] for r in rep["results"]} for k, rep in bench.items()
        }
        for b in sorted(next(iter(by_kind.values()))):
            f = by_kind.get("fp32", {}).get(b)
            cells = [
                f"{by_kind.get(k, {}).get(b, float('nan')):.2f}"
                for k in ("fp32", "int8_qdq", "int8", "int8ort")
            ]
            ratios = [
                by_kind.get(k, {}).get(b, float("nan")) / f if f else float("nan")
                for k in ("int8", "int8ort")
            ]
            rows.append(f"| {act} | {b} | {' | '.join(cells)} | {' | '.join(f'{r:.2f}' for r in ratios)} |")
    if rows:
        lines += [
            "| Activation | Batch | FP32 | INT8 Q/DQ as exported | INT8 integer rewrite | INT8 ort placement "
            "| rewrite / FP32 | ort placement / FP32 |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    return "\n".join(lines) + "\n"


def plot_record(record: dict[str, Any], out: Path) -> dict[str, Path]:
    """Three PNG plots next to ``record.md``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, Path] = {}
    latency = record.get("latency") or {}
    if latency:
        fig, ax = plt.subplots(figsize=(6, 4))
        for act, per_prec in latency.items():
            for prec, rows in per_prec.items():
                bs = sorted(int(b) for b in rows if b.isdigit())
                ax.plot(bs, [rows[str(b)]["p99_ms"] for b in bs], marker="o", label=f"{prec.upper()} ({act})",
                        linestyle="-" if prec.startswith("int8") else "--")  # fmt: skip
        ax.set(xlabel="batch size", ylabel="latency p99 (ms)", title="Latency vs batch")
        ax.legend(fontsize=7, ncol=2)
        paths["latency_plot"] = _save(fig, out / "latency_vs_batch.png")
    accuracy = record.get("accuracy") or {}
    if accuracy:
        acts = list(accuracy)
        rows = sorted({r for a in acts for r in accuracy[a]})
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / max(len(rows), 1)
        for i, row in enumerate(rows):
            ax.bar(
                [j + i * width for j in range(len(acts))],
                [accuracy[a].get(row, {}).get("AP", 0) for a in acts],
                width,
                label=row,
            )
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(acts))], acts)
        ax.set(ylabel="AP@[.5:.95]", title="AP per activation and backend")
        ax.legend(fontsize=7)
        paths["ap_plot"] = _save(fig, out / "ap_per_activation.png")
        fig, ax = plt.subplots(figsize=(6, 4))
        for a in acts:
            keys = ("origin_pytorch", "origin_ft_pytorch", "ptq_pytorch", "int8_pytorch")
            series = [accuracy[a].get(k, {}).get("AP") for k in keys]
            if None not in series:
                ax.plot(["Origin", "Origin fine-tuned", "PTQ", "QAT"], series, marker="o", label=a)
        ax.set(ylabel="AP@[.5:.95]", title="PTQ vs QAT (PyTorch)")
        ax.legend(fontsize=7)
        paths["ptq_qat_plot"] = _save(fig, out / "ptq_vs_qat.png")
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path

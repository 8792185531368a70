"""Write a reproduced record: ``record.json`` (baseline schema + extras), ``record.md`` (the record's
tables plus PTQ, ONNX Runtime and end-to-end rows) and plots (latency vs batch per precision, AP per
activation and backend, PTQ vs QAT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yolov9_qat.record.rows import ROW, float_bench, select
from yolov9_qat.record.tables import render_record
from yolov9_qat.utils.files import atomic_path, atomic_write_json, atomic_write_text

#: the quantization effects the report prints: (a, b) for "a - b" of the AP, rows of :data:`ROWS`
EFFECTS: tuple[tuple[str, str], ...] = (
    ("int8_pytorch", "origin_pytorch"),  # quantization plus the extra fine-tuning
    ("int8_pytorch", "origin_ft_pytorch"),  # quantization alone: against the float control
    ("int8_onnxruntime", "origin_ft_pytorch"),
    # the published record's recipe (feature MSE alone): Origin is its float control (zero loss, no step)
    ("qat_pytorch", "origin_pytorch"),
    ("qat_onnxruntime", "origin_pytorch"),
)


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
    """The effects per activation: INT8 - Origin (as the published record reports it: quantization plus
    the extra fine-tuning), INT8 - Origin fine-tuned (the float control: quantization alone) and, for
    the seed recipe, INT8 - Origin (its control)."""
    rows = []
    for act, acc in accuracy.items():
        if "origin_ft_pytorch" not in acc or "int8_pytorch" not in acc:
            continue
        cells = []
        for a, b in EFFECTS:
            cells.append(f"{acc[a]['AP'] - acc[b]['AP']:+.4f}" if a in acc and b in acc else "")
        rows.append(f"| {act} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "## Quantization cost (AP@[.5:.95])",
        "",
        "INT8 - Origin mixes quantization with the extra training QAT gives the model; Origin fine-tuned",
        "is the float model trained with the very same schedule, quantizers off, so INT8 - Origin",
        "fine-tuned is the cost of quantization alone. The seed recipe learns from the float model's",
        "features alone (no labels): a float model matches itself already, so Origin is its control and",
        "INT8 seed recipe - Origin its cost of quantization. Best epochs are chosen on the selection split.",
        "",
        "| Activation | " + " | ".join(f"{ROW[a].label} - {ROW[b].words}" for a, b in EFFECTS) + " |",
        "|---" * (len(EFFECTS) + 1) + "|",
        *rows,
        "",
    ]


def _extras_markdown(record: dict[str, Any]) -> str:
    """Rows the published record does not have: the extra rows' figures (the end-to-end graph's AP) and
    the ONNX Runtime benchmarks' median latency."""
    extras = record.get("extras") or {}
    lines = _effects_markdown(record.get("accuracy") or {})
    for row in select(extra=True):
        lines += [f"## {row.label}", "", "| Activation | AP | AP50 | Precision | Recall |"]
        lines.append("|---|---|---|---|---|")
        for act, e in extras.items():
            m = e.get(row.name)
            if m:
                lines.append(
                    f"| {act} | {m['AP']:.4f} | {m['AP50']:.4f} | {m['precision']:.4f} | {m['recall']:.4f} |"
                )
        lines.append("")
    columns = select("cpu", bench=True)
    ratios = [r for r in columns if r.ratio]
    ref = float_bench()
    lines += [
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
            f = by_kind.get(ref.name, {}).get(b)
            cells = [f"{by_kind.get(c.name, {}).get(b, float('nan')):.2f}" for c in columns]
            shares = [by_kind.get(r.name, {}).get(b, float("nan")) / f if f else float("nan") for r in ratios]
            rows.append(f"| {act} | {b} | {' | '.join(cells)} | {' | '.join(f'{r:.2f}' for r in shares)} |")
    if rows:
        header = [c.column for c in columns] + [f"{r.ratio} / {ref.column}" for r in ratios]
        lines += [
            "| Activation | Batch | " + " | ".join(header) + " |",
            "|---" * (len(header) + 2) + "|",
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
        # the stages of the QAT run (TensorRT's placement): Origin, Origin fine-tuned, PTQ, QAT
        stages = [r for r in select("cpu", accuracy=True) if r.summary and r.placement == "trt"]
        for a in acts:
            series = [accuracy[a].get(r.name, {}).get("AP") for r in stages]
            if None not in series:
                ax.plot([r.words for r in stages], series, marker="o", label=a)
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

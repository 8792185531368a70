"""Per-layer sensitivity: AP of the quantized model with one layer's quantizers turned off at a time.

As upstream's ``qat.py sensitive``: the layers whose float version gains the most AP are the ones
to keep in higher precision (``skip_layers``). A tied quantizer is turned off only at the sites
inside the layer under test (the site gets a pass-through quantizer for the run), so the
neighbouring layers stay quantized.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from modelopt.torch.quantization.nn import TensorQuantizer
from torch import nn

from yolov9_qat.eval.evaluator import Evaluator, torch_predictor
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.quant import rules

log = logging.getLogger("yolov9_qat.quant")


def _passthrough() -> TensorQuantizer:
    q = TensorQuantizer()
    q.disable()
    return q


@contextlib.contextmanager
def layer_in_float(model: DetectionModel, layer: int) -> Iterator[int]:
    """Inside, the quantizer sites of ``model.model[layer]`` pass their inputs through; yields how many."""
    prefix = f"model.{layer}"
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for path, attr, q in rules.quantizer_sites(model):
        if path == prefix or path.startswith(prefix + "."):
            m = model.get_submodule(path)
            swapped.append((m, attr, q))
            setattr(m, attr, _passthrough())
    try:
        yield len(swapped)
    finally:
        for m, attr, q in swapped:
            setattr(m, attr, q)


def _metrics(evaluator: Evaluator, model: nn.Module, device: torch.device, progress: bool, desc: str) -> dict:
    r = evaluator.run(torch_predictor(model, device), progress=progress, desc=desc)
    return {k: float(r[k]) for k in ("AP", "AP50", "precision", "recall")}


def sensitivity(
    model_qat: DetectionModel,
    evaluator: Evaluator,
    layers: Iterable[int] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per layer with quantizers (or per index in ``layers``): ``layer``, ``type``,
    ``quantizers`` (sites turned off), ``AP``, ``AP50``, ``precision``, ``recall`` with that layer in
    float, ``gain`` (that AP minus ``ptq_AP``, the AP of the fully quantized model); sorted by
    ``gain``, largest first."""
    device = torch.device(device)
    with_quantizers = sorted({int(p.split(".")[1]) for p, _, _ in rules.quantizer_sites(model_qat)})
    todo = with_quantizers if layers is None else [int(i) for i in layers]
    base = _metrics(evaluator, model_qat, device, progress, "PTQ all layers")
    rows = []
    for i in todo:
        t0 = time.perf_counter()
        with layer_in_float(model_qat, i) as n:
            if n == 0:
                continue
            m = _metrics(evaluator, model_qat, device, progress, f"layer {i} float")
        row = {"layer": i, "type": getattr(model_qat.model[i], "type", None), "quantizers": n, **m}
        row["gain"] = m["AP"] - base["AP"]
        row["ptq_AP"] = base["AP"]
        row["seconds"] = time.perf_counter() - t0
        log.info("layer %d (%s) in float: AP %.4f (%+.4f)", i, row["type"], m["AP"], row["gain"])
        rows.append(row)
    rows.sort(key=lambda r: r["gain"], reverse=True)
    return rows


def format_table(rows: list[dict[str, Any]], top: int | None = None) -> str:
    """The sensitivity rows as a text table (``top``: only the first so many layers)."""
    body = rows if top is None else rows[:top]
    lines = []
    if rows:
        lines.append(f"all layers quantized: AP {rows[0]['ptq_AP']:.4f}")
    lines.append(f"{'Layer':>6} {'Type':<14} {'Q':>4} {'AP':>8} {'AP50':>8} {'P':>8} {'R':>8} {'gain':>8}")
    for r in body:
        lines.append(
            f"{r['layer']:>6} {str(r['type'])[:14]:<14} {r['quantizers']:>4} {r['AP']:>8.4f} "
            f"{r['AP50']:>8.4f} {r['precision']:>8.4f} {r['recall']:>8.4f} {r['gain']:>+8.4f}"
        )
    return "\n".join(lines)

"""What a TensorRT engine actually runs: per-layer precision and tactic from the engine inspector.

Input is TensorRT's engine-inspector JSON (``IEngineInspector.get_engine_information(
LayerInformationFormat.JSON)`` of an engine built with detailed profiling verbosity, or trtexec's
``--profilingVerbosity=detailed --exportLayerInfo=F``)::

    {"Layers": [{"Name": "...", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
                 "Inputs": [{"Name": "...", "Dimensions": [...], "Format/Datatype": "Thirty-two wide
                 channel vectorized row major Int8 format"}], "Outputs": [...],
                 "Weights": {"Type": "Int8", "Count": 432}, "TacticName": "sm80_xmma_...", ...}, ...],
     "Bindings": ["images", "output0"]}

A layer's precision is the data type of its first input (as trt-engine-explorer reads it). From that:
counts of INT8 / FP16 / FP32 layers, Reformat layers, the share of convolutions in INT8, an SVG of the
engine graph, and plain sentences on why an INT8 engine may be no faster than FP16.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from yolov9_qat.errors import UserError
from yolov9_qat.utils.files import atomic_path, atomic_write_json, atomic_write_text

log = logging.getLogger("yolov9_qat.runtime")

MAIN_PRECISIONS = ("INT8", "FP16", "FP32")
_DTYPE_PATTERNS = (  # order matters: "BFloat16" before "Float", "UInt8" before "Int8"
    ("BF16", r"bfloat16|\bbf16\b"),
    ("FP8", r"\bfp8\b"),
    ("UINT8", r"\buint8\b"),
    ("INT8", r"\bint8\b"),
    ("INT32", r"\bint32\b"),
    ("INT64", r"\bint64\b"),
    ("FP16", r"\bfp16\b|\bhalf\b"),
    ("FP32", r"\bfp32\b|\bfloat\b"),
    ("BOOL", r"\bbool\b"),
)
PRECISION_COLORS = {"INT8": "#76b900", "FP16": "#4e9fdc", "FP32": "#f28e2b", "BF16": "#b07aa1"}


# --- reading ---------------------------------------------------------------------------------------
#: inspector layer types that are no layers (multi-stream events)
PSEUDO_LAYERS: tuple[str, ...] = ("signal", "wait")
#: separators TensorRT puts inside names and metadata (record / unit separator); trex shows them as "+"
NAME_SEPARATORS: tuple[str, ...] = ("\x1e", "\x1f")


def load_inspector(info: str | os.PathLike[str] | dict[str, Any] | list[Any]) -> dict[str, Any]:
    """Inspector JSON (a path, JSON text, a dict, or a bare list of layers) -> ``{"Layers", "Bindings"}``."""
    data: Any = info
    if isinstance(info, os.PathLike) or (isinstance(info, str) and not info.lstrip().startswith(("{", "["))):
        path = Path(info)
        if not path.is_file():
            raise UserError(f"engine layer information {path} does not exist")
        info = path.read_text()
    if isinstance(info, str):
        try:
            data = json.loads(info)
        except json.JSONDecodeError as e:
            raise UserError(
                f"engine layer information is not valid JSON ({e.msg} at line {e.lineno})"
            ) from None
    if isinstance(data, list):
        data = {"Layers": data, "Bindings": []}
    if not isinstance(data, dict) or not isinstance(data.get("Layers"), list):
        raise UserError("engine layer information has no 'Layers' list (not TensorRT inspector JSON)")
    layers = data["Layers"]
    if layers and not all(isinstance(layer, dict) for layer in layers):
        raise UserError(
            "engine layer information holds layer names only: build the engine with detailed "
            "profiling verbosity (trtexec --profilingVerbosity=detailed)"
        )
    # TensorRT's multi-stream synchronisation shows up as "signal" / "wait" layers that compute
    # nothing; trt-engine-explorer drops them before counting, so do we
    layers = [layer for layer in layers if str(layer.get("LayerType", "")).lower() not in PSEUDO_LAYERS]
    return {"Layers": layers, "Bindings": list(data.get("Bindings") or [])}


def tensor_precision(fmt: str) -> str:
    """``"Thirty-two wide channel vectorized row major Int8 format"`` -> ``"INT8"``; ``"Half"`` -> ``"FP16"``."""
    text = str(fmt).lower()
    for name, pattern in _DTYPE_PATTERNS:
        if re.search(pattern, text):
            return name
    return "unknown"


def _tensors(layer: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = layer.get(key) or []
    return [t for t in items if isinstance(t, dict)]


def layer_precision(layer: dict[str, Any]) -> str:
    """The data type a layer computes in: its first input's (else first output's) data type."""
    for key in ("Inputs", "Outputs"):
        for t in _tensors(layer, key):
            p = tensor_precision(t.get("Format/Datatype", ""))
            if p != "unknown":
                return p
    return "unknown"


def layer_kind(layer: dict[str, Any]) -> str:
    """``ParameterType`` where present (``Convolution``, ``Reformat``, ``Pooling`` ...), else ``LayerType``."""
    return str(layer.get("ParameterType") or layer.get("LayerType") or "unknown")


def is_reformat(layer: dict[str, Any]) -> bool:
    return "Reformat" in (str(layer.get("LayerType", "")), str(layer.get("ParameterType", "")))


def is_conv(layer: dict[str, Any]) -> bool:
    kind, ltype = str(layer.get("ParameterType", "")), str(layer.get("LayerType", ""))
    if kind:
        return kind == "Convolution" and "Deconvolution" not in ltype
    return "Convolution" in ltype and "Deconvolution" not in ltype


def conv_precision(layer: dict[str, Any]) -> str:
    """A convolution is INT8 when its input or its weights are INT8."""
    p = layer_precision(layer)
    weights = layer.get("Weights")
    if isinstance(weights, dict) and tensor_precision(weights.get("Type", "")) == "INT8":
        return "INT8"
    return p


# --- summary ---------------------------------------------------------------------------------------
def summarize(info: str | os.PathLike[str] | dict[str, Any] | list[Any]) -> dict[str, Any]:
    """Per-layer table and counts: precisions, Reformat layers, convolutions in INT8."""
    data = load_inspector(info)
    rows = []
    for layer in data["Layers"]:
        conv = is_conv(layer)
        rows.append(
            {
                "name": str(layer.get("Name", "")),
                "type": layer_kind(layer),
                "layer_type": str(layer.get("LayerType", "")),
                "precision": conv_precision(layer) if conv else layer_precision(layer),
                "tactic": str(layer.get("TacticName") or layer.get("TacticValue") or ""),
                "conv": conv,
                "reformat": is_reformat(layer),
                "inputs": [t.get("Format/Datatype", "") for t in _tensors(layer, "Inputs")],
                "outputs": [t.get("Format/Datatype", "") for t in _tensors(layer, "Outputs")],
            }
        )
    counts = Counter(r["precision"] for r in rows)
    convs = [r for r in rows if r["conv"]]
    conv_counts = Counter(r["precision"] for r in convs)
    reformats = [r["name"] for r in rows if r["reformat"]]
    return {
        "n_layers": len(rows),
        "precision_counts": {**{p: counts.get(p, 0) for p in MAIN_PRECISIONS}, **dict(counts)},
        "int8_layers": counts.get("INT8", 0),
        "fp16_layers": counts.get("FP16", 0),
        "fp32_layers": counts.get("FP32", 0),
        "reformat_layers": len(reformats),
        "conv_layers": len(convs),
        "conv_int8": conv_counts.get("INT8", 0),
        "conv_fp16": conv_counts.get("FP16", 0),
        "conv_fp32": conv_counts.get("FP32", 0),
        "conv_int8_share": (conv_counts.get("INT8", 0) / len(convs)) if convs else None,
        "bindings": data["Bindings"],
        "details": {
            "reformat": reformats,
            "conv_not_int8": [r["name"] for r in convs if r["precision"] != "INT8"],
            "fp32": [r["name"] for r in rows if r["precision"] == "FP32" and not r["reformat"]],
        },
        "layers": rows,
    }


def write_layers_json(summary: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a :func:`summarize` result (``<engine>.layers.json``), atomically."""
    return atomic_write_json(path, summary)


def format_summary(summary: dict[str, Any]) -> str:
    """One line: ``124 layers: INT8 80, FP16 30, FP32 14; 6 Reformat; conv in INT8 95% (76/80)``."""
    pc = summary.get("precision_counts", {})
    others = sorted((k, v) for k, v in pc.items() if k not in MAIN_PRECISIONS and v)
    text = f"{summary['n_layers']} layers: " + ", ".join(f"{p} {pc.get(p, 0)}" for p in MAIN_PRECISIONS)
    if others:
        text += ", " + ", ".join(f"{k} {v}" for k, v in others)
    text += f"; {summary['reformat_layers']} Reformat"
    if summary.get("conv_layers"):
        text += f"; conv in INT8 {summary['conv_int8_share']:.0%} ({summary['conv_int8']}/{summary['conv_layers']})"
    return text


def _examples(names: list[str], n: int = 3) -> str:
    shown = ", ".join(f"'{x[:60]}'" for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def explain_int8(summary_int8: dict[str, Any], summary_fp16: dict[str, Any] | None = None) -> list[str]:
    """Sentences on why an INT8 engine may not be faster than the FP16 one (Reformat layers,
    convolutions left in floating point, FP32 fall-back), from two :func:`summarize` results."""
    out: list[str] = []
    details = summary_int8.get("details", {})
    if summary_int8.get("int8_layers", 0) == 0:
        out.append(
            "The INT8 engine has no INT8 layers: TensorRT found no Q/DQ pair it could fuse, so it runs "
            "in floating point and cannot be faster than FP16."
        )
        return out
    n_conv, n_int8 = summary_int8.get("conv_layers", 0), summary_int8.get("conv_int8", 0)
    if n_conv and n_int8 < n_conv:
        names = details.get("conv_not_int8", [])
        out.append(
            f"{n_conv - n_int8} of {n_conv} convolutions run in FP16/FP32 ({n_int8 / n_conv:.0%} in INT8)"
            + (f", e.g. {_examples(names)}" if names else "")
            + ": a convolution stays in floating point when its input or weight has no Q/DQ pair "
            "TensorRT can fuse into it."
        )
    r8 = summary_int8.get("reformat_layers", 0)
    r16 = summary_fp16.get("reformat_layers", 0) if summary_fp16 else None
    if r8 and (r16 is None or r8 > r16):
        vs = f" (FP16 engine: {r16})" if r16 is not None else ""
        out.append(
            f"The INT8 engine has {r8} Reformat layers{vs}: each converts a tensor between INT8 and "
            "FP16/FP32 layouts and costs a pass over memory; they appear where the inputs of a Concat or "
            "of a residual Add carry different Q/DQ scales, or where MaxPool / Upsample are not "
            "wrapped in Q/DQ of one scale."
        )
    n32 = len(details.get("fp32", [])) if details else summary_int8.get("fp32_layers", 0)
    if n32:
        out.append(
            f"{n32} layers of the INT8 engine run in FP32"
            + (f", e.g. {_examples(details.get('fp32', []))}" if details.get("fp32") else "")
            + ": layers outside Q/DQ pairs fall back to FP32 when the engine is built with INT8 alone; "
            "the mixed build (--precision mp: INT8 + FP16) runs them in FP16."
        )
    if summary_fp16 is not None:
        t8, t16 = summary_int8.get("n_layers", 0), summary_fp16.get("n_layers", 0)
        if t8 > t16 > 0:
            out.append(
                f"The INT8 engine has {t8} layers against {t16} in the FP16 engine: Q/DQ nodes that "
                "TensorRT could not fold into their neighbours run as layers of their own."
            )
    if not out:
        out.append(
            "Every convolution runs in INT8 and there are no extra Reformat or FP32 layers: if INT8 is "
            "still not faster, the network is bound by memory traffic and by its non-convolution layers "
            "(activations, Concat, the detection head) at this size, where INT8 gains little over FP16."
        )
    return out


# --- graph rendering -------------------------------------------------------------------------------
def _dot_escape(text: str, limit: int = 60) -> str:
    text = str(text)
    for sep in NAME_SEPARATORS:  # control characters break DOT / SVG rendering
        text = text.replace(sep, "+")
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def to_dot(info: str | os.PathLike[str] | dict[str, Any] | list[Any], title: str = "engine") -> str:
    """Graphviz DOT text of the engine graph: one node per layer (colour = precision), edges by tensor."""
    data = load_inspector(info)
    layers, bindings = data["Layers"], data["Bindings"]
    producer: dict[str, str] = {}
    for i, layer in enumerate(layers):
        for t in _tensors(layer, "Outputs"):
            producer.setdefault(str(t.get("Name", "")), f"L{i}")
    lines = [
        f'digraph "{_dot_escape(title)}" {{',
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
    ]
    bnode = {name: f"B_{i}" for i, name in enumerate(bindings)}
    for name, node in bnode.items():
        producer.setdefault(name, node)  # an input binding: no layer produces it
        lines.append(f'  "{node}" [label="{_dot_escape(name)}", shape=ellipse, fillcolor="#dddddd"];')
    for i, layer in enumerate(layers):
        conv = is_conv(layer)
        prec = conv_precision(layer) if conv else layer_precision(layer)
        color = "#e15759" if is_reformat(layer) else PRECISION_COLORS.get(prec, "#cccccc")
        label = f"{_dot_escape(layer.get('Name', ''))}\\n{_dot_escape(layer_kind(layer))} | {prec}"
        lines.append(f'  "L{i}" [label="{label}", fillcolor="{color}"];')
    for i, layer in enumerate(layers):
        for t in _tensors(layer, "Inputs"):
            src = producer.get(str(t.get("Name", "")))
            if src and src != f"L{i}":
                fmt = _dot_escape(tensor_precision(t.get("Format/Datatype", "")), 20)
                lines.append(f'  "{src}" -> "L{i}" [label="{fmt}", fontsize=8];')
        for t in _tensors(layer, "Outputs"):
            name = str(t.get("Name", ""))
            if name in bnode and producer.get(name) == f"L{i}":
                lines.append(f'  "L{i}" -> "{bnode[name]}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _render_with_trex(graph_json: Path, out_svg: Path) -> bool:
    """trt-engine-explorer's renderer, where installed (its API moves between releases: best effort)."""
    try:
        from trex.engine_plan import EnginePlan  # type: ignore[import-not-found]
        from trex.graphing import layer_type_formatter, render_dot, to_dot  # type: ignore[import-not-found]
    except Exception:
        return False
    try:
        plan = EnginePlan(str(graph_json))
        dot = to_dot(plan, layer_type_formatter)
        written = Path(render_dot(dot, str(out_svg.with_suffix("")), "svg"))
        if written.resolve() != out_svg.resolve():
            shutil.move(str(written), out_svg)
        return out_svg.is_file()
    except Exception as e:  # fall back to our own DOT
        log.warning("trt-engine-explorer could not render %s (%s); using graphviz directly", graph_json, e)
        return False


def render_svg(
    info: str | os.PathLike[str] | dict[str, Any] | list[Any], out_svg: str | os.PathLike[str]
) -> Path:
    """Render the engine graph to ``out_svg``: trt-engine-explorer where installed, else graphviz's
    ``dot`` on :func:`to_dot`'s output; without ``dot`` the ``.dot`` file is written instead (and
    returned), with a log line saying how to render it."""
    out_svg = Path(out_svg)
    out_svg.parent.mkdir(parents=True, exist_ok=True)
    data = load_inspector(info)
    with tempfile.TemporaryDirectory() as tmp:
        graph_json = Path(tmp) / "engine.graph.json"
        graph_json.write_text(json.dumps(data))
        if _render_with_trex(graph_json, out_svg):
            return out_svg
    dot_text = to_dot(data, title=out_svg.stem)
    dot_path = out_svg.with_suffix(".dot")
    atomic_write_text(dot_path, dot_text)
    dot_bin = shutil.which("dot")
    if dot_bin is None:
        log.warning(
            "graphviz's `dot` is not installed: wrote %s (render it with `dot -Tsvg %s -o %s`)",
            dot_path,
            dot_path,
            out_svg,
        )
        return dot_path
    with atomic_path(out_svg) as tmp_svg:
        res = subprocess.run(
            [dot_bin, "-Tsvg", str(dot_path), "-o", str(tmp_svg)], capture_output=True, text=True, check=False
        )
        if res.returncode != 0:
            raise UserError(f"graphviz `dot` failed on {dot_path}: {res.stderr.strip().splitlines()[-1:]}")
    return out_svg

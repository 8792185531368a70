"""The ONNX graph each precision builds from, for both TensorRT tiers.

TensorRT 10 takes builder flags, so every precision builds from the exported graph itself. TensorRT
11 is strongly typed (no ``BuilderFlag.FP16`` / ``INT8``): precision comes from the graph's types, so
the FP16 and mixed graphs are derived with ModelOpt AutoCast
(``convert_to_mixed_precision(low_precision_type="fp16", keep_io_types=True)``), which keeps Q/DQ
nodes and casts the rest to FP16:

========  =========================  ==========================================
precision  source graph               strongly typed (TensorRT 11) graph
========  =========================  ==========================================
fp32       float                      the float graph
fp16       float                      AutoCast(float graph)
int8       Q/DQ (QAT export)          the Q/DQ graph (FP32 outside Q/DQ)
mp         Q/DQ (QAT export)          AutoCast(Q/DQ graph): INT8 at Q/DQ, FP16 elsewhere
========  =========================  ==========================================

Derived graphs are cached beside the source ONNX as ``<stem>.<precision>-autocast-<hash>.onnx``
(hash of the source's content and the AutoCast settings), written atomically under a lock.
TensorRT plugin nodes (``EfficientNMS_TRT`` of end-to-end graphs) cannot run in ONNX Runtime, which
AutoCast needs, so they are cut off, the rest is converted, and they are put back with FP32 inputs.
:func:`compare_on_onnxruntime` checks a derived graph against its source on the CPU (graph
optimizations off: ONNX Runtime's optimizer rejects some FP16 + Q/DQ fusions).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from yolov9_qat.errors import UserError
from yolov9_qat.runtime.engine_cache import PRECISIONS, file_sha256
from yolov9_qat.utils.files import atomic_save

log = logging.getLogger("yolov9_qat.runtime")

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
PLUGIN_DOMAINS = frozenset({"TRT", "trt.plugins"})
AUTOCAST_SETTINGS = {"low_precision_type": "fp16", "keep_io_types": True}
DERIVED_SCHEMA = 1
AUTOCAST_DEPS = (
    "onnxscript",
    "onnx_graphsurgeon",
    "lief",
    "ml_dtypes",
    "polygraphy",
)  # ModelOpt's [onnx] extra, in part
AUTOCAST_DEPS_HINT = "pip install onnxscript onnx-graphsurgeon lief ml_dtypes polygraphy"


# --- graph facts -----------------------------------------------------------------------------------
def _load(onnx_path: str | os.PathLike[str]) -> Any:
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise UserError(f"{path} is not a readable ONNX file ({type(e).__name__})") from None


def _is_plugin(node: Any) -> bool:
    return node.domain in PLUGIN_DOMAINS or node.op_type.endswith("_TRT")


def graph_info(onnx_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Facts about an ONNX file: Q/DQ node count, plugin nodes, inputs / outputs with shapes, metadata."""
    model = _load(onnx_path)

    def dims(vi: Any) -> list[int | str]:
        return [
            d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
            for d in vi.type.tensor_type.shape.dim
        ]

    init_names = {i.name for i in model.graph.initializer}
    meta = {}
    for p in model.metadata_props:
        try:
            meta[p.key] = json.loads(p.value)
        except (json.JSONDecodeError, ValueError):
            meta[p.key] = p.value
    n_qdq = sum(n.op_type in QDQ_OPS for n in model.graph.node)
    return {
        "n_qdq": n_qdq,
        "qdq": n_qdq > 0,
        "plugins": sorted({n.op_type for n in model.graph.node if _is_plugin(n)}),
        "inputs": {vi.name: dims(vi) for vi in model.graph.input if vi.name not in init_names},
        "outputs": {vi.name: dims(vi) for vi in model.graph.output},
        "metadata": meta,
    }


def default_precision(onnx_path: str | os.PathLike[str]) -> str:
    """``mp`` for a Q/DQ graph (the record's ``--int8 --fp16``), ``fp16`` for a float one."""
    return "mp" if graph_info(onnx_path)["qdq"] else "fp16"


def check_precision(
    onnx_path: str | os.PathLike[str], precision: str, info: dict[str, Any] | None = None
) -> None:
    """One clear :class:`UserError` when the graph cannot give ``precision``: INT8 and MP need the
    Q/DQ graph of a QAT export, FP16 and FP32 the float graph."""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    info = info or graph_info(onnx_path)
    if precision in ("int8", "mp") and not info["qdq"]:
        raise UserError(
            f"--precision {precision} needs a Q/DQ graph (export a QAT checkpoint); {onnx_path} has no "
            "QuantizeLinear / DequantizeLinear nodes: use --precision fp16 or fp32"
        )
    if precision in ("fp16", "fp32") and info["qdq"]:
        raise UserError(
            f"--precision {precision} needs a float graph; {onnx_path} has {info['n_qdq']} Q/DQ nodes: "
            "use --precision int8 or mp, or export the float model"
        )


# --- AutoCast --------------------------------------------------------------------------------------
def autocast_version() -> str:
    """The ModelOpt version (part of the derived graphs' cache key)."""
    try:
        from importlib.metadata import version

        return version("nvidia-modelopt")
    except Exception:
        return "unknown"


def autocast_missing() -> list[str]:
    """The modules ModelOpt AutoCast needs on the CPU that are not installed (its reference runner
    imports polygraphy; its graph sanitizer onnxscript and onnx-graphsurgeon)."""
    import importlib.util

    missing = []
    for name in AUTOCAST_DEPS:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def needs_derived_graph(precision: str, typed: bool) -> bool:
    """Only the strongly typed tier (TensorRT 11) derives graphs, and only for fp16 / mp."""
    return typed and precision in ("fp16", "mp")


def derived_path(
    onnx_path: str | os.PathLike[str],
    precision: str,
    onnx_sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Where the AutoCast graph for ``precision`` is cached (beside the ONNX unless ``cache_dir``)."""
    src = Path(onnx_path)
    key = {
        "schema": DERIVED_SCHEMA,
        "onnx_sha256": onnx_sha256 or file_sha256(src),
        "precision": precision,
        "autocast": autocast_version(),
        **AUTOCAST_SETTINGS,
    }
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir or src.parent) / f"{src.stem}.{precision}-autocast-{h}.onnx"


def _autocast_file(path: Path) -> Any:
    """ModelOpt AutoCast on one file (no plugin nodes)."""
    missing = autocast_missing()
    if missing:
        raise UserError(
            f"deriving FP16 graphs for strongly typed TensorRT needs ModelOpt AutoCast, which needs "
            f"{', '.join(missing)}: {AUTOCAST_DEPS_HINT}"
        )
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as e:
        raise UserError(
            f"ModelOpt AutoCast cannot be imported ({str(e).splitlines()[0]}): {AUTOCAST_DEPS_HINT}"
        ) from None
    try:  # AutoCast logs every step at INFO
        from modelopt.onnx.autocast import configure_logging

        configure_logging(level=logging.WARNING)
    except Exception:  # pragma: no cover - logging only
        pass
    return convert_to_mixed_precision(str(path), **AUTOCAST_SETTINGS)


def _split_plugins(model: Any) -> tuple[Any, list[Any]]:
    """The graph without its trailing plugin nodes (their inputs become graph outputs) and those nodes."""
    import onnx
    from onnx import helper

    plugins = [n for n in model.graph.node if _is_plugin(n)]
    plugin_outputs = {o for n in plugins for o in n.output}
    for n in model.graph.node:
        if not _is_plugin(n) and plugin_outputs & set(n.input):
            raise UserError(
                f"AutoCast cannot convert this graph: plugin node {n.op_type} feeds other layers "
                "(only plugin nodes at the end of the graph, like EfficientNMS_TRT, are supported)"
            )
    core = copy.deepcopy(model)
    del core.graph.node[:]
    core.graph.node.extend(n for n in model.graph.node if not _is_plugin(n))
    keep = [o for o in model.graph.output if o.name not in plugin_outputs]
    cut = []
    inferred = onnx.shape_inference.infer_shapes(core)
    types = {
        vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    }
    for n in plugins:
        for name in n.input:
            if name and name not in plugin_outputs and name not in {c.name for c in cut}:
                vi = types.get(name)
                cut.append(
                    copy.deepcopy(vi)
                    if vi is not None
                    else helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                )
    del core.graph.output[:]
    core.graph.output.extend([*keep, *cut])
    opsets = [o for o in core.opset_import if o.domain not in PLUGIN_DOMAINS]
    del core.opset_import[:]
    core.opset_import.extend(opsets)
    return core, plugins


def autocast_fp16(onnx_path: str | os.PathLike[str]) -> Any:
    """The FP16 / mixed graph of ``onnx_path`` (an ``onnx.ModelProto``): Q/DQ kept, I/O types kept,
    plugin nodes (EfficientNMS_TRT) kept in FP32."""
    model = _load(onnx_path)
    if not any(_is_plugin(n) for n in model.graph.node):
        out = _autocast_file(Path(onnx_path))
    else:
        import onnx

        core, plugins = _split_plugins(model)
        with tempfile.TemporaryDirectory() as tmp:
            core_path = Path(tmp) / "core.onnx"
            onnx.save(core, str(core_path))
            out = _autocast_file(core_path)
        out.graph.node.extend(plugins)
        del out.graph.output[:]
        out.graph.output.extend(copy.deepcopy(list(model.graph.output)))
        have = {o.domain for o in out.opset_import}
        out.opset_import.extend(copy.deepcopy(o) for o in model.opset_import if o.domain not in have)
    del out.metadata_props[:]
    out.metadata_props.extend(copy.deepcopy(list(model.metadata_props)))
    return out


def graph_for_precision(
    onnx_path: str | os.PathLike[str],
    precision: str,
    typed: bool,
    cache_dir: str | os.PathLike[str] | None = None,
    onnx_sha256: str | None = None,
) -> Path:
    """The ONNX file to build ``precision`` from: the source itself, or (strongly typed fp16 / mp) its
    cached AutoCast graph, derived on first use under a lock."""
    from filelock import FileLock

    check_precision(onnx_path, precision)
    if not needs_derived_graph(precision, typed):
        return Path(onnx_path)
    out = derived_path(onnx_path, precision, onnx_sha256, cache_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if out.is_file():
            return out
        log.info("deriving the %s graph of %s with ModelOpt AutoCast -> %s", precision, onnx_path, out)
        model = autocast_fp16(onnx_path)

        def write(tmp: Path) -> None:
            import onnx

            onnx.save(model, str(tmp))

        atomic_save(out, write)
    return out


# --- checking on ONNX Runtime ------------------------------------------------------------------------
def ort_session(onnx_path: str | os.PathLike[str]) -> Any:
    """A CPU ONNX Runtime session with graph optimizations off (FP16 + Q/DQ graphs need that)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def random_inputs(session: Any, batch: int = 1, hw: int = 640, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform [0, 1) inputs for every graph input; symbolic dims: ``batch`` first, ``hw`` elsewhere."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else (batch if i == 0 else hw) for i, d in enumerate(inp.shape)]
        dtype = np.float16 if "float16" in inp.type else np.float32
        feeds[inp.name] = rng.random(shape, dtype=np.float32).astype(dtype)
    return feeds


def compare_on_onnxruntime(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    inputs: dict[str, np.ndarray] | None = None,
    batch: int = 1,
    hw: int = 640,
) -> dict[str, Any]:
    """Run both graphs on the CPU (optimizations off) on the same inputs; per output the max absolute
    difference and the reference's max magnitude, plus their worst ratio ``max_rel``."""
    ref, cand = ort_session(reference), ort_session(candidate)
    feeds = inputs or random_inputs(ref, batch=batch, hw=hw)
    names = [o.name for o in ref.get_outputs()]
    a, b = ref.run(names, feeds), cand.run(names, feeds)
    outputs = {}
    for name, x, y in zip(names, a, b, strict=True):
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x64.shape != y64.shape:
            raise AssertionError(f"output {name}: shapes differ, {x64.shape} vs {y64.shape}")
        scale = float(np.abs(x64).max()) if x64.size else 0.0
        diff = float(np.abs(x64 - y64).max()) if x64.size else 0.0
        outputs[name] = {"max_abs": diff, "scale": scale, "dtype": str(np.asarray(y).dtype)}
    max_rel = max((o["max_abs"] / max(o["scale"], 1e-12) for o in outputs.values()), default=0.0)
    return {"outputs": outputs, "max_rel": max_rel}

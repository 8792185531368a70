"""The ``ort`` placement on ONNX Runtime: exact rewrites, integer ops end to end, same numbers as the
fake-quantized PyTorch model.

Tolerance of the last test: ONNX Runtime's QLinear ops requantize in integer arithmetic (int32 sums,
the bias rounded to ``s_x * s_w``, a float multiplier) where fake quantization computes each conv in
float, so a value within rounding of a code boundary can take the other code, and the difference
propagates. Measured on the untrained 64 px test network (fraction of the output range): mean
0.5e-5 .. 2e-5, 99th percentile 0.6e-4 .. 2.6e-4, max 3e-4 .. 1.1e-3 over the five activations;
the bounds are about 4x those.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from yolov9_qat.bench.device import cpu_device
from yolov9_qat.export.ort_rewrite import has_output_qdq, sink_dq, to_ort_qlinear, to_u8
from yolov9_qat.export.qdq_graph import DQ, Q, QdqGraph
from yolov9_qat.runtime.onnxruntime import OrtModel
from yolov9_qat.utils.runs import torch_threads

#: one worker builds the session's ort-placement models (shared with test_ort_integer.py) under -n
pytestmark = [pytest.mark.cpu, pytest.mark.xdist_group("ort-placement-models")]

ACTS = ("SiLU", "ReLU", "FReLU", "Mish", "AconC")
needs_exact_kernels = pytest.mark.skipif(
    not cpu_device(1)["VNNI"], reason="x86 CPU without VNNI: ONNX Runtime's U8S8 kernels may saturate"
)


def _run(model: onnx.ModelProto, x: np.ndarray, optimize: bool) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _optimized_ops(model: onnx.ModelProto, tmp_path: Path) -> Counter:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


@pytest.fixture(scope="module")
def ort_models(ort_placement_factory) -> dict[str, tuple[torch.nn.Module, Path]]:
    return {act: ort_placement_factory(act) for act in ACTS}


@pytest.mark.parametrize("act", ACTS)
def test_sink_and_fold_are_exact(ort_models, images, act) -> None:
    """``to_ort_qlinear`` (u8 + DQ sunk below split / concat / max-pool / resize + DQ -> Q folded)
    gives bit-identical outputs to the graph as exported, run without ORT's fusions."""
    _, path = ort_models[act]
    proto = onnx.load(str(path))
    assert has_output_qdq(proto)
    rewritten = to_ort_qlinear(proto)
    x = images[:2].numpy()
    np.testing.assert_array_equal(_run(rewritten, x, False), _run(proto, x, False))
    # no requantization left between two ops: every DQ -> Q pair of one quantization was folded
    g = QdqGraph(rewritten)
    for n in g.nodes:
        if n.op_type == Q and (d := g.producer.get(n.input[0])) is not None and d.op_type == DQ:
            a, b = g.qparams(d), g.qparams(n)
            assert not (np.array_equal(a.scale, b.scale) and np.array_equal(a.zero_point, b.zero_point))
    _, counts = sink_dq(to_u8(proto))
    assert counts["sunk"] > 0 and counts["folded"] > 0


@needs_exact_kernels
def test_silu_graph_runs_in_integer_ops_end_to_end(ort_models, tmp_path) -> None:
    """SiLU, the default: every conv that writes a quantized output is a QLinearConv, every sigmoid a
    QLinearSigmoid, every product a QLinearMul, and nothing is requantized in float on the way: the
    only QuantizeLinear left is the image's."""
    _, path = ort_models["SiLU"]
    proto = onnx.load(str(path))
    g = QdqGraph(proto)
    quantized_out = [
        n for n in g.nodes if n.op_type == "Conv" and [c.op_type for c in g.consumers[n.output[0]]] == [Q]
    ]
    ops = _optimized_ops(to_ort_qlinear(proto), tmp_path)
    assert ops["QLinearConv"] == len(quantized_out) > 100
    assert ops["QLinearSigmoid"] == ops["QLinearMul"] == len(quantized_out)
    assert ops["QLinearAdd"] > 0 and ops["QLinearAveragePool"] > 0
    assert ops["QuantizeLinear"] == 1


@needs_exact_kernels
@pytest.mark.parametrize("act", ACTS)
def test_onnxruntime_matches_fake_quant(ort_models, images, act) -> None:
    """The model's own roundings are ORT's: the optimized session (QLinear ops) agrees with the
    PyTorch fake-quantized model within requantization rounding."""
    model, path = ort_models[act]
    x = images[:2]
    with torch_threads(1), torch.no_grad():
        want = model.eval()(x).numpy()
    got = OrtModel(path, threads=1)
    assert got.rewrite == "qlinear"
    out = got.run(x.numpy())[0]
    span = float(want.max() - want.min())
    err = np.abs(out - want) / span
    assert float(err.mean()) < 1e-4, f"mean {err.mean():.2e} of the output range"
    assert float(np.quantile(err, 0.99)) < 1e-3, f"p99 {np.quantile(err, 0.99):.2e} of the output range"
    assert float(err.max()) < 5e-3, f"max {err.max():.2e} of the output range"


def test_auto_rewrite_follows_the_placement(ort_models, qat_onnx) -> None:
    """``auto``: ``qlinear`` for an ``ort`` placement graph and ``integer`` for TensorRT's (VNNI CPUs;
    elsewhere neither rewrite is exact and the graph runs as written)."""
    vnni = cpu_device(1)["VNNI"]
    assert OrtModel(ort_models["SiLU"][1], threads=1).rewrite == ("qlinear" if vnni else "none")
    assert OrtModel(qat_onnx, threads=1).rewrite == ("integer" if vnni else "none")
    assert not has_output_qdq(onnx.load(str(qat_onnx)))


def test_lint_checks_the_ort_placement_by_its_own_rules(ort_models) -> None:
    """``export`` writes the placement into the metadata; ``lint`` then skips ``float-island`` (each
    op's output is quantized on purpose) and still checks every other rule; forcing TensorRT's
    rules on the same graph reports the Sigmoid / Mul islands."""
    from yolov9_qat.export.lint import lint
    from yolov9_qat.export.onnx import read_metadata

    _, path = ort_models["SiLU"]
    assert read_metadata(onnx.load(str(path)))["placement"] == "ort"
    report = lint(path)
    assert report.ok and report.placement == "ort" and "float-island" in report.skipped
    assert "float-island not checked (ort placement)" in report.format()
    forced = lint(path, placement="trt")
    islands = {v.nodes[0].rsplit("/", 1)[-1].split("_")[0] for v in forced.by_rule("float-island")}
    assert not forced.ok and islands <= {"Sigmoid", "Mul"} and islands

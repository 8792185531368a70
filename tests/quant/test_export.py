"""The quantized model exports to ONNX with Q/DQ nodes, and ONNX Runtime runs it."""

from __future__ import annotations

import contextlib
import copy
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from yolov9_qat.models import blocks


@pytest.mark.cpu
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_onnx_export_has_qdq_and_runs_in_onnxruntime(ptq_model, images, tmp_path) -> None:
    model = copy.deepcopy(ptq_model).eval()
    x = images[:1]
    path = tmp_path / "qat.onnx"
    with torch.no_grad():
        want = model(x).numpy()
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["output0"],
        )
    graph = onnx.load(str(path)).graph
    ops = Counter(n.op_type for n in graph.node)
    n_convs = ops["Conv"]
    assert ops["QuantizeLinear"] > n_convs and ops["DequantizeLinear"] >= ops["QuantizeLinear"]
    # every conv but the DFL's reads a dequantized input and a dequantized weight
    producer = {o: n for n in graph.node for o in n.output}
    qdq_convs = [
        n for n in graph.node
        if n.op_type == "Conv" and all(getattr(producer.get(i), "op_type", "") == "DequantizeLinear" for i in n.input[:2])
    ]  # fmt: skip
    assert len(qdq_convs) == n_convs - 1

    def scale(tensor: str) -> float | None:  # the scale of the DQ producing ``tensor``
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        src = dq.input[1]
        value = inits[src] if src in inits else numpy_helper.to_array(producer[src].attribute[0].t)
        return float(np.asarray(value).ravel()[0])

    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    checked = Counter()
    for node in graph.node:
        scales = [scale(i) for i in node.input if i]
        if node.op_type in ("MaxPool", "AveragePool", "Resize"):  # pools / upsample read Q/DQ
            assert scales[0] is not None, node.name
            checked[node.op_type] += 1
        if node.op_type in ("Concat", "Add") and all(v is not None for v in scales):
            assert len(set(scales)) == 1, (node.name, scales)  # one scale over all inputs
            checked[node.op_type] += 1
    assert checked["MaxPool"] == 3 and checked["Resize"] == 2 and checked["AveragePool"] == 5
    n_adds = sum(isinstance(m, blocks.RepNBottleneck) and m.add for m in model.modules())
    assert checked["Concat"] == 4 and checked["Add"] == n_adds == 14  # model-level concats, residual adds
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})[0]
    assert got.shape == want.shape
    # same fake-quant arithmetic up to float rounding at a few rounding boundaries
    close = np.isclose(got, want, rtol=1e-3, atol=1e-3).mean()
    assert close > 0.99, close


@pytest.mark.cpu
def test_head_float_keeps_the_output_convs_float_through_checkpoint_onnx_and_lint(
    float_model, train_loader, tmp_path
) -> None:
    """``quantize --head-float``: the head's last 1x1 convs (box and class towers, every level) get no
    quantizers; the choice survives the QAT checkpoint, reaches the ONNX metadata, and lint accepts
    exactly those float convs (and flags them in a graph that does not say so)."""
    from yolov9_qat.export.lint import lint
    from yolov9_qat.export.onnx import ExportOptions, export_onnx, read_metadata
    from yolov9_qat.quant import rules
    from yolov9_qat.quant.io import load_qat, save_qat
    from yolov9_qat.quant.quantize import calibrate, prepare_qat_model, tie_violations

    heads = rules.head_output_paths(float_model)
    nl = len(float_model.model[-1].cv2)
    assert len(heads) == 2 * nl and all(p.startswith(f"model.{len(float_model.model) - 1}.cv") for p in heads)
    default = rules.plan(float_model)
    floated = rules.plan(float_model, head_float=True)
    dropped = set(default.sites) - set(floated.sites)
    assert dropped == {(p, a) for p in heads for a in (rules.INPUT, rules.WEIGHT)}
    assert set(floated.sites) < set(default.sites)

    model = prepare_qat_model(copy.deepcopy(float_model), calib_method="max", head_float=True)
    calibrate(model, train_loader, n_batches=1)
    assert model.qat["head_float"] and tie_violations(model) == []
    assert not any(_under_any(p, heads) for p, _, _ in rules.quantizer_sites(model))
    loaded, _ = load_qat(save_qat(model, tmp_path / "qat.pt"))
    assert loaded.qat["head_float"]
    path = export_onnx(loaded.eval(), tmp_path / "head_float.onnx", ExportOptions(imgsz=64))
    proto = onnx.load(str(path))
    assert json_list(read_metadata(proto)["float_convs"]) == list(heads)
    report = lint(proto)
    assert report.ok, report.format()
    assert report.stats["convs_allowed_float"] == 2 * nl + 1  # the output convs and the DFL's conv
    del proto.metadata_props[:]  # the same graph without the exporter's word: the convs are violations
    bare = lint(proto, rules=["conv-input"])
    assert not bare.ok and len(bare.violations) == 2 * nl


def _under_any(path: str, prefixes) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def json_list(value) -> list:
    import json

    return value if isinstance(value, list) else json.loads(value)


@pytest.mark.cpu
def test_export_without_the_jit_linter_writes_the_same_file(float_model, tmp_path) -> None:
    """``export_onnx`` turns TorchScript's graph linter off (a third of a Q/DQ export's time): the file
    is the same byte for byte as one exported with it on, and the linter is back on afterwards."""
    from unittest import mock

    from yolov9_qat.export import onnx as onnx_export
    from yolov9_qat.export.onnx import ExportOptions, export_onnx

    model = copy.deepcopy(float_model).eval()
    opts = ExportOptions(imgsz=64, batch=1, simplify=False)
    calls = []
    lint = torch._C._jit_pass_lint

    def counting(graph) -> None:
        calls.append(1)
        lint(graph)

    with (
        mock.patch.object(onnx_export, "without_jit_lint", contextlib.nullcontext),
        mock.patch.object(torch._C, "_jit_pass_lint", counting),
    ):
        with_lint = export_onnx(model, tmp_path / "with_lint.onnx", opts)
    assert calls, "the TorchScript exporter no longer runs the linter: without_jit_lint is not needed"
    without = export_onnx(model, tmp_path / "without_lint.onnx", opts)
    assert torch._C._jit_pass_lint is lint
    assert with_lint.read_bytes() == without.read_bytes()

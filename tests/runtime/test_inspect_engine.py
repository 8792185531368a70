"""Engine inspection from hand-written inspector JSON in TensorRT's format (detailed verbosity)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yolov9_qat.errors import UserError
from yolov9_qat.runtime import inspect_engine as ie

pytestmark = pytest.mark.cpu

INT8_32 = "Thirty-two wide channel vectorized row major Int8 format"
FP16_8 = "Channel major FP16 format where channel % 8 == 0"
FP32 = "Row major linear FP32"


def _t(name: str, fmt: str, dims: list[int] | None = None) -> dict:
    return {
        "Name": name,
        "Location": "Device",
        "Dimensions": dims or [-1, 16, 320, 320],
        "Format/Datatype": fmt,
    }


def _conv(name: str, src: str, dst: str, fmt_in: str, fmt_out: str, weights: str) -> dict:
    return {
        "Name": name,
        "LayerType": "CaskConvolution",
        "Inputs": [_t(src, fmt_in)],
        "Outputs": [_t(dst, fmt_out)],
        "ParameterType": "Convolution",
        "Kernel": [3, 3],
        "PaddingMode": "kEXPLICIT_ROUND_DOWN",
        "PrePadding": [1, 1],
        "PostPadding": [1, 1],
        "Stride": [2, 2],
        "Dilation": [1, 1],
        "OutMaps": 16,
        "Groups": 1,
        "Weights": {"Type": weights, "Count": 432},
        "Bias": {"Type": "Float", "Count": 16},
        "HasBias": 1,
        "HasReLU": 0,
        "TacticName": "sm80_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32_nchw",
        "TacticValue": "0x1a2b3c4d5e6f7081",
        "StreamId": 0,
        "Metadata": "[ONNX Layer: /model.0/conv/Conv]",
    }


def _layer(
    name: str, kind: str, src: str, dst: str, fmt_in: str, fmt_out: str, layer_type: str | None = None
) -> dict:
    return {
        "Name": name,
        "LayerType": layer_type or kind,
        "Inputs": [_t(src, fmt_in)],
        "Outputs": [_t(dst, fmt_out)],
        "ParameterType": kind,
        "TacticValue": "0x0000000000000000",
        "StreamId": 0,
        "Metadata": "",
    }


def engine_json(int8: bool = True) -> dict:
    """A small YOLO-like engine: quantized stem, one conv left in FP16, reformats, an FP32 head."""
    q = INT8_32 if int8 else FP16_8
    w = "Int8" if int8 else "Half"
    layers = [
        _layer(
            "Reformatting CopyNode for Input Tensor 0 to /model.0/conv/Conv",
            "Reformat",
            "images",
            "images_r",
            FP32,
            q,
        ),
        _conv(
            "/model.0/conv/Conv + PWN(PWN(/model.0/act/Sigmoid), /model.0/act/Mul)", "images_r", "t0", q, q, w
        ),
        _conv("/model.1/conv/Conv + PWN(PWN(/model.1/act/Sigmoid), /model.1/act/Mul)", "t0", "t1", q, q, w),
        _conv("/model.2/cv1/conv/Conv", "t1", "t2", FP16_8, FP16_8, "Half"),
        _layer("/model.3/m/MaxPool", "Pooling", "t2", "t3", FP16_8, FP16_8, "CaskPooling"),
        _layer(
            "Reformatting CopyNode for Input Tensor 0 to /model.4/Concat",
            "Reformat",
            "t3",
            "t3_r",
            FP16_8,
            FP32,
        ),
        _layer("/model.22/dfl/Softmax", "SoftMax", "t3_r", "t4", FP32, FP32, "CudaSoftMax"),
        {
            "Name": "/model.22/Constant_output_0",
            "LayerType": "Constant",
            "Inputs": [],
            "Outputs": [_t("c0", "Half", [1, 2, 84])],
            "ParameterType": "Constant",
            "TacticValue": "0x0",
        },
        _layer(
            "/model.22/Mul + PWN(/model.22/Sigmoid)",
            "PointWise",
            "t4",
            "output0",
            "Half",
            "Half",
            "PointWiseV2",
        ),
    ]
    return {"Layers": layers, "Bindings": ["images", "output0"]}


@pytest.mark.parametrize(
    ("fmt", "precision"),
    [
        (INT8_32, "INT8"),
        ("Four wide channel vectorized row major Int8 format.", "INT8"),
        ("Channel major INT8 format where channel % 16 == 0", "INT8"),
        ("Row major Int8 format", "INT8"),
        (FP16_8, "FP16"),
        ("Row major linear FP16 format", "FP16"),
        ("Sixteen wide channel vectorized row major FP16 format", "FP16"),
        ("Half", "FP16"),
        (FP32, "FP32"),
        ("Channel major FP32 format where channel % 4 == 0", "FP32"),
        ("Float", "FP32"),
        ("Row major linear BFloat16 format", "BF16"),
        ("Row major linear Int32", "INT32"),
        ("Row major linear Int64 format", "INT64"),
        ("Row major linear UInt8 format", "UINT8"),
        ("Row major linear BOOL", "BOOL"),
        ("Unknown format", "unknown"),
    ],
)
def test_tensor_precision(fmt: str, precision: str) -> None:
    assert ie.tensor_precision(fmt) == precision


def test_summary_counts() -> None:
    s = ie.summarize(engine_json())
    assert s["n_layers"] == 9
    assert (s["int8_layers"], s["fp16_layers"], s["fp32_layers"]) == (2, 5, 2)
    assert s["precision_counts"]["INT8"] == 2 and sum(s["precision_counts"].values()) == 9
    assert s["reformat_layers"] == 2
    assert (s["conv_layers"], s["conv_int8"], s["conv_fp16"]) == (3, 2, 1)
    assert s["conv_int8_share"] == pytest.approx(2 / 3)
    assert s["details"]["conv_not_int8"] == ["/model.2/cv1/conv/Conv"]
    assert s["details"]["fp32"] == ["/model.22/dfl/Softmax"]
    assert s["bindings"] == ["images", "output0"]
    first_conv = s["layers"][1]
    assert (
        first_conv["precision"] == "INT8"
        and first_conv["tactic"].startswith("sm80_xmma")
        and first_conv["conv"]
    )
    assert s["layers"][7]["precision"] == "FP16"  # a constant: no inputs, output type decides
    line = ie.format_summary(s)
    assert line == "9 layers: INT8 2, FP16 5, FP32 2; 2 Reformat; conv in INT8 67% (2/3)"


def test_int8_weights_make_an_int8_conv() -> None:
    conv = _conv("c", "a", "b", FP32, FP32, "Int8")
    assert ie.conv_precision(conv) == "INT8" and ie.layer_precision(conv) == "FP32"


def test_load_inspector_inputs(tmp_path: Path) -> None:
    data = engine_json()
    p = tmp_path / "model.engine.graph.json"
    p.write_text(json.dumps(data))
    for src in (p, str(p), json.dumps(data), data, data["Layers"]):
        assert len(ie.load_inspector(src)["Layers"]) == 9


@pytest.mark.parametrize(
    ("src", "match"),
    [
        ('{"Layers": ["conv0", "conv1"], "Bindings": []}', "profiling verbosity"),
        ("{not json", "not valid JSON"),
        ('{"Engine": 1}', "no 'Layers'"),
        ("/no/such/file.json", "does not exist"),
    ],
)
def test_load_inspector_errors(src: str, match: str) -> None:
    with pytest.raises(UserError, match=match) as e:
        ie.summarize(src)
    assert "\n" not in str(e.value)


def test_write_layers_json(tmp_path: Path) -> None:
    s = ie.summarize(engine_json())
    out = ie.write_layers_json(s, tmp_path / "m.engine.layers.json")
    assert json.loads(out.read_text())["reformat_layers"] == 2


def test_explain_int8_names_the_causes() -> None:
    int8, fp16 = ie.summarize(engine_json(True)), ie.summarize(engine_json(False))
    notes = ie.explain_int8(int8, fp16)
    text = " ".join(notes)
    assert any("1 of 3 convolutions" in n and "67% in INT8" in n for n in notes)
    assert "/model.2/cv1/conv/Conv" in text
    assert any("Reformat" in n for n in notes) is False  # same number of reformats as the FP16 engine
    assert any("run in FP32" in n and "--precision mp" in n for n in notes)
    # more reformats than FP16 -> explained
    fp16_clean = dict(fp16, reformat_layers=0)
    assert any("2 Reformat layers (FP16 engine: 0)" in n for n in ie.explain_int8(int8, fp16_clean))
    # without an FP16 summary: reformats are still reported
    assert any("2 Reformat layers:" in n for n in ie.explain_int8(int8))


def test_explain_int8_edge_cases() -> None:
    fp16 = ie.summarize(engine_json(False))
    assert "no INT8 layers" in ie.explain_int8(fp16)[0]
    clean = ie.summarize(
        {
            "Layers": [
                _conv("c0", "images", "t0", INT8_32, INT8_32, "Int8"),
                _conv("c1", "t0", "out", INT8_32, INT8_32, "Int8"),
            ],
            "Bindings": ["images", "out"],
        }
    )
    notes = ie.explain_int8(clean, clean)
    assert len(notes) == 1 and "Every convolution runs in INT8" in notes[0]


def test_dot_graph() -> None:
    dot = ie.to_dot(engine_json(), title="model")
    assert dot.startswith('digraph "model" {') and dot.rstrip().endswith("}")
    assert dot.count("->") >= 9
    assert '"B_0" -> "L0"' in dot and '"L8" -> "B_1"' in dot  # bindings in and out
    assert ie.PRECISION_COLORS["INT8"] in dot and "#e15759" in dot  # INT8 and Reformat colours


def test_render_svg_without_dot_writes_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ie.shutil, "which", lambda name: None)
    monkeypatch.setattr(ie, "_render_with_trex", lambda graph_json, out_svg: False)
    out = ie.render_svg(engine_json(), tmp_path / "model.engine.svg")
    assert out == tmp_path / "model.engine.dot" and out.read_text().startswith("digraph")
    assert not (tmp_path / "model.engine.svg").exists()


def test_render_svg_with_dot(tmp_path: Path) -> None:
    if ie.shutil.which("dot") is None:
        pytest.skip("graphviz `dot` is not installed here")
    out = ie.render_svg(engine_json(), tmp_path / "model.engine.svg")
    assert out.suffix == ".svg" and "<svg" in out.read_text()


def test_signal_and_wait_pseudo_layers_are_not_counted() -> None:
    """TensorRT's multi-stream events ("signal" / "wait") are dropped as trt-engine-explorer drops them."""
    data = engine_json()
    events = [
        {"Name": "sig0", "LayerType": "signal", "Inputs": [], "Outputs": [], "StreamId": 1},
        {"Name": "wait0", "LayerType": "wait", "Inputs": [], "Outputs": [], "StreamId": 0},
    ]
    data["Layers"] = data["Layers"][:3] + events + data["Layers"][3:]
    s = ie.summarize(data)
    assert s["n_layers"] == 9 and sum(s["precision_counts"].values()) == 9
    assert "sig0" not in ie.to_dot(data) and "wait0" not in ie.to_dot(data)


def test_dot_strips_tensorrt_name_separators() -> None:
    data = engine_json()
    data["Layers"][1]["Name"] = "/model.0/conv/Conv\x1e/model.0/act/Sigmoid\x1f/model.0/act/Mul"
    dot = ie.to_dot(data)
    assert "\x1e" not in dot and "\x1f" not in dot
    assert "/model.0/conv/Conv+/model.0/act/Sigmoid" in dot

"""ONNX export (plain, Q/DQ, end-to-end) and the ONNX Runtime backend against PyTorch."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from shared_helpers import _one_thread  # noqa: F401 (an autouse fixture)
from yolov9_qat.bench.untrained import settle_batchnorm
from yolov9_qat.errors import UserError
from yolov9_qat.export.end2end import OUTPUT_NAMES, reference_nms
from yolov9_qat.export.onnx import ExportOptions, export_onnx, read_metadata
from yolov9_qat.models.yolo import DetectionModel
from yolov9_qat.runtime.onnxruntime import OrtModel
from yolov9_qat.utils.boxes import xywh2xyxy

#: one worker builds the module's models and graphs under -n
pytestmark = [pytest.mark.cpu, pytest.mark.xdist_group("onnxruntime-backend")]
IMG = 64


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(4, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def float_model(x) -> DetectionModel:
    torch.manual_seed(0)
    model = DetectionModel("gelan-n", nc=10)
    with (
        torch.no_grad()
    ):  # class scores around 0.1 instead of the training init's 1e-4: detections to compare
        for tower in model.model[-1].cv3:
            tower[-1].bias.normal_(-2.0, 1.0)
    return settle_batchnorm(model, [x]).fuse().eval()


@pytest.fixture(scope="module")
def qat_model(float_model, x) -> DetectionModel:
    from yolov9_qat.quant.quantize import calibrate, prepare_qat_model

    model = prepare_qat_model(copy.deepcopy(float_model), calib_method="max")
    calibrate(model, [x], n_batches=1)
    return model.eval()


@pytest.fixture(scope="module")
def exported(float_model, qat_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ort")
    out = {}
    for name, model, opts in [
        ("fp32", float_model, ExportOptions(imgsz=IMG, dynamic=True, simplify=True)),
        ("fp32_static2", float_model, ExportOptions(imgsz=IMG, batch=2)),
        ("int8", qat_model, ExportOptions(imgsz=IMG, dynamic=True, simplify=True)),
        ("e2e_onnx", qat_model, ExportOptions(imgsz=IMG, dynamic=True, end2end="onnx", conf_thres=0.05, iou_thres=0.6, max_det=50)),
        ("e2e_trt", qat_model, ExportOptions(imgsz=IMG, dynamic=True, end2end="trt", conf_thres=0.05, iou_thres=0.6, max_det=50)),
        ("ds_int8", qat_model, ExportOptions(imgsz=IMG, dynamic=True, simplify=True, deepstream=True)),
        ("ds_named", float_model, ExportOptions(imgsz=IMG, batch=2, deepstream=True, input_name="data", output_names=("dets",))),
    ]:  # fmt: skip
        out[name] = export_onnx(model, root / f"{name}.onnx", opts)
    return out


def test_float_onnx_matches_pytorch(float_model, exported, x) -> None:
    with torch.no_grad():
        want = float_model(x).numpy()
    got = OrtModel(exported["fp32"], threads=1)(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_fixed_batch_graph_splits_and_pads(exported, x) -> None:
    dynamic = OrtModel(exported["fp32"], threads=1)(x[:3])
    fixed = OrtModel(exported["fp32_static2"], threads=1)
    assert fixed.batch == 2
    np.testing.assert_allclose(fixed(x[:3]), dynamic, rtol=1e-5, atol=1e-4)


def test_metadata(exported) -> None:
    meta = read_metadata(onnx.load(str(exported["int8"])))
    assert meta["precision"] == "int8" and meta["nc"] == 10 and meta["imgsz"] == [IMG, IMG]
    assert meta["stride"] == [8, 16, 32] and meta["activation"] == "SiLU" and len(meta["names"]) == 10
    assert read_metadata(onnx.load(str(exported["fp32"])))["precision"] == "fp32"


def test_qat_onnx_matches_fake_quant(qat_model, exported, x) -> None:
    """Same fake-quant arithmetic; an element may land on the other side of a rounding boundary."""
    with torch.no_grad():
        want = qat_model(x).numpy()
    got = OrtModel(exported["int8"], threads=1, rewrite="none")(x)
    close = np.isclose(got, want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max())).mean()
    assert close > 0.99, close


def test_rewrites(exported, x) -> None:
    """u8: bit-identical; integer: the same up to float rounding; float graphs are left alone."""
    s8 = OrtModel(exported["int8"], threads=1, rewrite="none")
    u8 = OrtModel(exported["int8"], threads=1, rewrite="u8")
    assert np.array_equal(u8(x), s8(x))
    integer = OrtModel(exported["int8"], threads=1, rewrite="integer")
    got, want = integer(x), s8(x)
    close = np.isclose(got, want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max())).mean()
    assert close > 0.99, close
    assert OrtModel(exported["int8"], threads=1).rewrite in ("integer", "none")  # auto: by the CPU
    assert OrtModel(exported["fp32"], threads=1, rewrite="integer").rewrite == "none"
    with pytest.raises(UserError, match="--ort-rewrite"):
        OrtModel(exported["int8"], rewrite="fast")


def test_end2end_onnx_nms_matches_reference_nms(exported, x) -> None:
    """The ``--nms onnx`` graph's detections are those of the plain graph + :func:`reference_nms`."""
    model = OrtModel(exported["e2e_onnx"], threads=1, rewrite="none")
    assert model.end2end
    got = model.run(x.numpy())
    raw = torch.as_tensor(OrtModel(exported["int8"], threads=1, rewrite="none").run(x.numpy())[0])
    want = reference_nms(xywh2xyxy(raw[:, :4].transpose(1, 2)), raw[:, 4:].transpose(1, 2), 0.6, 0.05, 50)
    assert [g.shape for g in got] == [tuple(w.shape) for w in want] == [(4, 1), (4, 50, 4), (4, 50), (4, 50)]
    assert (want[0] > 0).all(), "the test needs detections"
    np.testing.assert_array_equal(got[0], want[0].numpy())
    for b in range(4):  # the kept detections, as sets (ties may order differently)
        assert _kept(got, b) == _kept([w.numpy() for w in want], b)


def _kept(outputs: list[np.ndarray], b: int) -> list[tuple]:
    num, boxes, scores, classes = outputs
    n = int(num[b, 0])
    rows = zip(
        classes[b, :n].tolist(),
        np.round(scores[b, :n], 5).tolist(),
        np.round(boxes[b, :n], 3).tolist(),
        strict=True,
    )
    return sorted((c, s, tuple(box)) for c, s, box in rows)


def test_end2end_trt_graph_has_one_efficient_nms_node(exported) -> None:
    proto = onnx.load(str(exported["e2e_trt"]))
    nms = [n for n in proto.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert len(nms) == 1 and nms[0].domain == "TRT"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nms[0].attribute}
    assert attrs == {
        "background_class": -1, "box_coding": 0, "iou_threshold": pytest.approx(0.6), "max_output_boxes": 50,
        "plugin_version": b"1", "score_activation": 0, "score_threshold": pytest.approx(0.05),
    }  # fmt: skip
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    dims = {
        o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output
    }
    assert dims == {
        "num_dets": ["batch", 1],
        "det_boxes": ["batch", 50, 4],
        "det_scores": ["batch", 50],
        "det_classes": ["batch", 50],
    }
    types = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
    assert types["num_dets"] == types["det_classes"] == onnx.TensorProto.INT32


def test_bad_onnx_files_give_clear_errors(tmp_path, exported) -> None:
    with pytest.raises(UserError, match="no such ONNX file"):
        OrtModel(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(UserError, match="not"):
        OrtModel(garbage)
    model = OrtModel(exported["fp32_static2"], threads=1)
    with pytest.raises(UserError, match=r"takes 3x64x64 images, got 3x96x96"):
        model(torch.rand(2, 3, 96, 96))


@pytest.mark.slow
def test_cli_val_onnxruntime_bad_input_one_line(tmp_path, exported) -> None:
    from yolov9_qat.data.synth import generate

    data = generate(tmp_path / "d", seed=1, n_train=2, n_val=2, imgsz=IMG, progress=False)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"garbage")
    for weights, img, want in [
        (garbage, IMG, "not a readable ONNX"),
        (exported["fp32_static2"], 96, "--img"),
    ]:
        r = subprocess.run(
            [sys.executable, "-m", "yolov9_qat", "val", "--backend", "onnxruntime", "--weights", str(weights),
             "--data", str(data), "--img", str(img), "--project", str(tmp_path / "runs"), "--no-progress"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "warn" not in ln.lower()]
        assert len(lines) == 1 and want in lines[0], r.stderr


def test_deepstream_layout_gives_the_plain_graphs_detections(exported, x) -> None:
    """DeepStream-Yolo's (B, A, 6) output on ONNX Runtime, through the evaluator's NMS, gives the plain
    Q/DQ graph's detections under single-label NMS (one class per anchor: the layout's contract)."""
    from yolov9_qat.eval.nms import non_max_suppression

    ds = OrtModel(exported["ds_int8"], threads=1, rewrite="none")
    plain = OrtModel(exported["int8"], threads=1, rewrite="none")
    proto = onnx.load(str(exported["ds_int8"]))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    raw = ds.run(x.numpy())[0]
    assert raw.shape == (x.shape[0], plain(x).shape[-1], 6) and ds.layout == "deepstream"
    np.testing.assert_array_equal(raw[..., 5], np.round(raw[..., 5]))  # class indices, as floats
    got = non_max_suppression(torch.as_tensor(ds(x)), conf_thres=0.05, iou_thres=0.6)
    want = non_max_suppression(torch.as_tensor(plain(x)), conf_thres=0.05, iou_thres=0.6, multi_label=False)
    assert sum(len(d) for d in want) > 10
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-3, rtol=1e-5)


def test_tensor_names_and_layout_metadata(exported, x) -> None:
    proto = onnx.load(str(exported["ds_named"]))
    assert [i.name for i in proto.graph.input] == ["data"]
    assert [o.name for o in proto.graph.output] == ["dets"]
    assert read_metadata(proto)["layout"] == "deepstream"
    assert OrtModel(exported["ds_named"], threads=1).layout == "deepstream"  # metadata, not names
    for name in ("fp32", "e2e_onnx"):
        assert read_metadata(onnx.load(str(exported[name])))["layout"] == (
            "plain" if name == "fp32" else "end2end"
        )
    with pytest.raises(UserError, match="has 4 output"):
        ExportOptions(end2end="onnx", output_names=("a", "b")).tensor_names()
    with pytest.raises(UserError, match="distinct"):
        ExportOptions(input_name="out", output_names=("out",)).tensor_names()
    with pytest.raises(UserError, match="exclusive"):
        export_onnx(torch.nn.Identity(), "unused.onnx", ExportOptions(end2end="onnx", deepstream=True))

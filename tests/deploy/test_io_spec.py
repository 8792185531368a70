"""``export/io_spec.py``: the description of an exported graph and its ``<stem>.io.json``, checked
against the graph itself for every layout, dynamic and fixed batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from deploy_graphs import IMG, KINDS, NAMES, deepstream_graph, graph, graph_io

from yolov9_qat.errors import UserError
from yolov9_qat.export.io_spec import (
    PREPROCESS,
    describe,
    io_json_path,
    read_io_json,
    write_io_json,
)

pytestmark = pytest.mark.cpu

EXPECT = {  # kind: (layout, batch, nms_op, precision, box_format)
    "plain": ("plain", 1, None, "fp32", "cxcywh"),
    "plain_dynamic": ("plain", "dynamic", None, "fp32", "cxcywh"),
    "e2e_trt": ("end2end", "dynamic", "trt", "fp32", "xyxy"),
    "e2e_onnx": ("end2end", 2, "onnx", "fp32", "xyxy"),
    "ds_float": ("deepstream", "dynamic", None, "fp32", "xyxy"),
    "ds_int8": ("deepstream", 4, None, "int8", "xyxy"),
    "ds_renamed": ("deepstream", "dynamic", None, "fp32", "xyxy"),
}
ROLES = {
    "plain": ["predictions"],
    "end2end": ["num_dets", "boxes", "scores", "classes"],
    "deepstream": ["detections"],
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "deploy_graphs"


@pytest.mark.parametrize("kind", KINDS)
def test_describe_matches_the_graph(kind: str, root: Path) -> None:
    path = graph(kind, root)
    spec = describe(path)
    inputs, outputs = graph_io(path)
    layout, batch, nms_op, precision, box_format = EXPECT[kind]

    assert [{k: t[k] for k in ("name", "shape", "dtype")} for t in spec["inputs"]] == inputs
    assert [{k: t[k] for k in ("name", "shape", "dtype")} for t in spec["outputs"]] == outputs
    assert [t["role"] for t in spec["outputs"]] == ROLES[layout]
    assert spec["layout"] == layout
    assert spec["batch"] == batch
    assert spec["dynamic_batch"] is (batch == "dynamic")
    assert spec["inputs"][0]["shape"][0] == ("batch" if batch == "dynamic" else batch)
    assert spec["nms_op"] == nms_op
    assert spec["precision"] == precision
    assert spec["box_format"] == box_format
    assert spec["names"] == NAMES and spec["nc"] == len(NAMES)
    assert spec["imgsz"] == [IMG, IMG]
    assert spec["model"] == path.name
    pre = spec["preprocess"]
    assert pre["pixel_format"] == "RGB" and pre["tensor_layout"] == "NCHW"
    assert pre["scale"] == pytest.approx(1 / 255) and pre["mean"] == [0, 0, 0] and pre["std"] == [1, 1, 1]
    assert pre["letterbox"] == {"keep_aspect_ratio": True, "pad_value": 114, "centered": True}
    if layout == "end2end":
        assert spec["nms"] == {"iou_thres": 0.45, "conf_thres": 0.25, "max_det": 100}
        assert spec["outputs"][1]["shape"][1] == 100
    else:
        assert spec["nms"] is None
    if kind.startswith(("plain", "e2e")):
        assert spec["stride"] == [8, 16, 32]
        assert spec["anchors"] == sum((IMG // s) ** 2 for s in (8, 16, 32))
    if kind == "plain":  # fixed export: the head's shape is in the graph
        assert spec["outputs"][0]["shape"] == [1, 4 + len(NAMES), spec["anchors"]]
    json.dumps(spec)  # JSON-ready


@pytest.mark.parametrize("kind", ["plain", "e2e_trt", "ds_int8"])
def test_write_io_json_beside_the_model(kind: str, root: Path) -> None:
    path = graph(kind, root)
    written = write_io_json(path)
    assert written == path.with_name(path.stem + ".io.json") == io_json_path(path)
    assert json.loads(written.read_text()) == describe(path)
    assert read_io_json(written)["layout"] == EXPECT[kind][0]
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]  # atomic: no temp file left


def test_write_io_json_to_a_chosen_path(root: Path, tmp_path: Path) -> None:
    out = write_io_json(graph("plain_dynamic", root), tmp_path / "sub" / "spec.json")
    assert out == tmp_path / "sub" / "spec.json"
    assert json.loads(out.read_text())["batch"] == "dynamic"


def test_io_json_of_an_engine_is_found_by_stem(tmp_path: Path) -> None:
    assert io_json_path(tmp_path / "best.engine") == tmp_path / "best.io.json"


def _without_layout(src: Path, dst: Path) -> Path:
    proto = onnx.load(str(src))
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != "layout"]
    del proto.metadata_props[:]
    for k, v in keep:
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize(("kind", "layout"), [("e2e_onnx", "end2end"), ("ds_float", "deepstream")])
def test_older_files_without_layout_metadata(kind: str, layout: str, root: Path, tmp_path: Path) -> None:
    old = _without_layout(graph(kind, root), tmp_path / "old.onnx")
    assert describe(old)["layout"] == layout


def test_renamed_tensors_come_from_the_graph(root: Path) -> None:
    spec = describe(graph("ds_renamed", root))
    assert spec["inputs"][0]["name"] == "pixels"
    assert [o["name"] for o in spec["outputs"]] == ["candidates"]


def test_metadata_saying_int8_without_qdq_is_not_int8(tmp_path: Path) -> None:
    path = deepstream_graph(tmp_path / "fake.onnx", metadata={"precision": "int8"})
    assert describe(path)["precision"] == "fp32"


def test_preprocess_is_a_copy(root: Path) -> None:
    describe(graph("plain", root))["preprocess"]["mean"].append(1.0)
    assert PREPROCESS["mean"] == [0.0, 0.0, 0.0]


def test_not_an_onnx_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"definitely not a protobuf\x00\xff")
    with pytest.raises(UserError, match="not an ONNX model") as e:
        describe(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="no such file"):
        describe(tmp_path / "missing.onnx")


def test_read_io_json_rejects_other_json(tmp_path: Path) -> None:
    p = tmp_path / "x.io.json"
    p.write_text(json.dumps({"layout": "plain"}))
    with pytest.raises(UserError, match="missing"):
        read_io_json(p)
    p.write_text("{not json")
    with pytest.raises(UserError, match="not a readable"):
        read_io_json(p)


def test_light_imports() -> None:
    """io_spec and the deploy package import neither onnx, torch nor tritonclient at module level."""
    code = (
        "import sys, yolov9_qat.export.io_spec, yolov9_qat.deploy.cli, yolov9_qat.deploy.triton, "
        "yolov9_qat.deploy.deepstream; "
        "heavy = [m for m in ('onnx', 'torch', 'tritonclient', 'google.protobuf') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

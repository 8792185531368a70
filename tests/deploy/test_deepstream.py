"""``yolov9-qat deploy deepstream``: the nvinfer configuration, read back with :mod:`configparser` and
checked against the graph (network-mode by precision, cluster-mode and parser by layout, batch-size)."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from deploy_graphs import NAMES, assert_one_line_error, graph, run_cli

from yolov9_qat.deploy.deepstream import CONFIG_NAME, read_config
from yolov9_qat.export.io_spec import describe

pytestmark = pytest.mark.cpu

# kind: (network-mode, batch-size, cluster-mode, parse-bbox-func-name, thresholds (conf, iou, topk))
EXPECT = {
    "ds_float": (2, 1, 2, "NvDsInferParseYolo", (0.25, 0.45, 300)),
    "ds_int8": (1, 4, 2, "NvDsInferParseYolo", (0.25, 0.45, 300)),
    "e2e_trt": (2, 1, 4, "NvDsInferParseCustomEfficientNMSTLT", (0.25, 0.45, 100)),
    "e2e_onnx": (2, 2, 4, "NvDsInferParseCustomEfficientNMSTLT", (0.25, 0.45, 100)),
}
LIBS = {
    "NvDsInferParseYolo": "nvdsinfer_custom_impl_Yolo/libnvdsinfer_custom_impl_Yolo.so",
    "NvDsInferParseCustomEfficientNMSTLT": "post_processor/libnvds_infercustomparser_tao.so",
}
MODE_NAMES = {0: "fp32", 1: "int8", 2: "fp16"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "deploy_graphs"


def deploy(onnx_path: Path, out: Path, capsys, *flags: str) -> tuple[int, str]:
    rc, _, err = run_cli(
        ["deploy", "deepstream", "--onnx", str(onnx_path), "--out", str(out), *flags], capsys
    )
    return rc, err


def check_comments(path: Path) -> None:
    """Every ``key=value`` line has a comment line naming the key right above it."""
    lines = path.read_text().splitlines()
    keys = 0
    for prev, line in itertools.pairwise(lines):
        if "=" in line and not line.startswith(("#", "[")):
            key = line.split("=", 1)[0]
            assert prev.startswith(f"# {key}: "), (prev, line)
            keys += 1
    assert keys >= 20


@pytest.mark.parametrize("kind", list(EXPECT))
def test_config_matches_the_graph(kind: str, root: Path, tmp_path: Path, capsys) -> None:
    onnx_path = graph(kind, root)
    spec = describe(onnx_path)
    rc, err = deploy(onnx_path, tmp_path, capsys)
    assert rc == 0, err
    mode, batch, cluster, func, (conf, iou, topk) = EXPECT[kind]
    cp = read_config(tmp_path / CONFIG_NAME)
    assert cp.sections() == ["property", "class-attrs-all"]
    p = cp["property"]
    assert p["gpu-id"] == "0"
    assert p["net-scale-factor"] == "0.0039215697906911373"
    assert p["model-color-format"] == "0"  # RGB
    assert (tmp_path / p["onnx-file"]).resolve() == onnx_path.resolve()
    engine = f"{p['onnx-file']}_b{batch}_gpu0_{MODE_NAMES[mode]}.engine"  # where nvinfer saves its build
    assert p["model-engine-file"] == engine
    assert (tmp_path / p["labelfile-path"]).read_text().splitlines() == NAMES
    assert int(p["batch-size"]) == batch == (spec["batch"] if isinstance(spec["batch"], int) else 1)
    assert int(p["network-mode"]) == mode
    assert "int8-calib-file" not in p  # explicit quantization: the scales are in the graph
    assert int(p["num-detected-classes"]) == len(NAMES) == spec["nc"]
    assert int(p["cluster-mode"]) == cluster
    assert p["parse-bbox-func-name"] == func
    assert p["custom-lib-path"] == LIBS[func]
    for key, value in {"interval": 0, "gie-unique-id": 1, "process-mode": 1, "network-type": 0}.items():
        assert int(p[key]) == value, key
    assert p["maintain-aspect-ratio"] == "1" and p["symmetric-padding"] == "1"
    attrs = cp["class-attrs-all"]
    assert float(attrs["pre-cluster-threshold"]) == pytest.approx(conf)
    assert float(attrs["nms-iou-threshold"]) == pytest.approx(iou)
    assert int(attrs["topk"]) == topk
    check_comments(tmp_path / CONFIG_NAME)
    for line in (tmp_path / CONFIG_NAME).read_text().splitlines():  # key=value, as nvinfer's examples
        if line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            assert (key, value) == (key.strip(), value.strip()) and value, line


def test_engine_and_its_profile(root: Path, tmp_path: Path, capsys) -> None:
    onnx_path = graph("ds_float", root)
    engine = tmp_path / "engines" / "ds.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"engine")
    profile = {"min": {"input": [1, 3, 64, 64]}, "max": {"input": [8, 3, 64, 64]}}
    (engine.parent / "ds.engine.json").write_text(json.dumps({"inputs": {"profile": profile}}))
    out = tmp_path / "ds"
    rc, err = deploy(onnx_path, out, capsys, "--engine", str(engine))
    assert rc == 0, err
    p = read_config(out / CONFIG_NAME)["property"]
    assert p["model-engine-file"] == os.path.relpath(engine, out)
    assert p["batch-size"] == "8"  # the profile's maximum
    rc, err = deploy(onnx_path, out, capsys, "--engine", str(engine), "--batch-size", "16")
    assert_one_line_error(rc, err, "profile covers batch 1 to 8")


def test_flags(root: Path, tmp_path: Path, capsys) -> None:
    argv = [
        "--precision",
        "fp32",
        "--batch-size",
        "3",
        "--conf-thres",
        "0.4",
        "--topk",
        "50",
        "--gpu-id",
        "1",
    ]
    rc, err = deploy(graph("ds_float", root), tmp_path, capsys, *argv)
    assert rc == 0, err
    cp = read_config(tmp_path / CONFIG_NAME)
    assert cp["property"]["network-mode"] == "0" and cp["property"]["batch-size"] == "3"
    assert cp["property"]["gpu-id"] == "1"
    assert cp["class-attrs-all"]["pre-cluster-threshold"] == "0.4" and cp["class-attrs-all"]["topk"] == "50"


@pytest.mark.parametrize(
    ("kind", "flags", "fragment"),
    [
        ("ds_float", ["--precision", "int8"], "float one"),
        ("ds_int8", ["--precision", "fp16"], "Q/DQ"),
        ("ds_int8", ["--batch-size", "3"], "fixed batch of 4"),
    ],
)
def test_refused_flags(
    kind: str, flags: list[str], fragment: str, root: Path, tmp_path: Path, capsys
) -> None:
    assert_one_line_error(*deploy(graph(kind, root), tmp_path, capsys, *flags), fragment)


def test_plain_layout_is_refused(root: Path, tmp_path: Path, capsys) -> None:
    rc, err = deploy(graph("plain", root), tmp_path, capsys)
    assert_one_line_error(rc, err, "plain layout", "--include onnx_deepstream", "onnx_end2end")
    assert not (tmp_path / CONFIG_NAME).exists()


def test_not_an_onnx_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file\xff\xfe")
    assert_one_line_error(*deploy(bad, tmp_path / "ds", capsys), "not an ONNX model")


def test_exporters_deepstream_layout(root: Path, tmp_path: Path, capsys) -> None:
    """The package's own DeepStream export (when this checkout has it) deploys like the tiny graph."""
    from yolov9_qat.export.onnx import ExportOptions

    if "deepstream" not in ExportOptions.__dataclass_fields__:
        pytest.skip("this checkout's exporter has no DeepStream layout yet")
    from deploy_graphs import _export

    onnx_path = _export(root / "exported-deepstream.onnx", deepstream=True, dynamic=True)
    rc, err = deploy(onnx_path, tmp_path, capsys)
    assert rc == 0, err
    p = read_config(tmp_path / CONFIG_NAME)["property"]
    assert (p["cluster-mode"], p["parse-bbox-func-name"], p["batch-size"]) == ("2", "NvDsInferParseYolo", "1")

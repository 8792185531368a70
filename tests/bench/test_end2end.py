"""``bench --end2end``: host letterbox + normalise, inference and NMS per image, beside the model-only
rows, for plain and end-to-end graphs on ONNX Runtime."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from yolov9_qat.bench.untrained import untrained_model
from yolov9_qat.cli import main
from yolov9_qat.export.onnx import ExportOptions, export_onnx
from yolov9_qat.utils.runs import torch_threads

pytestmark = pytest.mark.cpu
IMG = 64


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e_bench")
    with torch_threads(1):
        x = torch.rand(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))
        model = untrained_model("gelan-n", [x], nc=3).fuse().eval()
        plain = export_onnx(model, root / "plain.onnx", ExportOptions(imgsz=IMG, dynamic=True))
        e2e = export_onnx(model, root / "e2e.onnx", ExportOptions(imgsz=IMG, dynamic=True, end2end="onnx"))
    frames = root / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(frames / f"{i}.jpg"), rng.integers(0, 256, (48 + 16 * i, 80, 3), dtype=np.uint8))
    return {"plain": plain, "e2e": e2e, "frames": frames}


@pytest.mark.parametrize("kind", ["plain", "e2e"])
def test_end2end_rows_beside_the_model_rows(graphs, kind, tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    rc = main(["bench", "--model", str(graphs[kind]), "--batch", "1,2", "--duration", "0.2", "--warmup", "0",
               "--min-iterations", "3", "--threads", "1", "--end2end", "--source", str(graphs["frames"]),
               "--no-progress", "--project", str(tmp_path), "--json-out", str(out)])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    e2e = report["end2end"]
    assert [r["batch"] for r in e2e["results"]] == [r["batch"] for r in report["results"]] == [1, 2]
    assert e2e["frames"]["count"] == 3 and e2e["frames"]["first_hw"] == [48, 80]
    for row in e2e["results"]:
        stages = row["extra"]["stages_ms_per_image"]
        assert set(stages) == {"preprocess", "inference", "nms"} and all(v > 0 for v in stages.values())
        assert row["iterations"] >= 3 and row["latency_ms"]["p99"] > 0
    printed = capsys.readouterr().out
    assert "end-to-end (" in printed and "letterbox + normalise" in printed


def test_end2end_without_source_uses_hd_frames(graphs, tmp_path) -> None:
    from yolov9_qat.bench.end2end import DEFAULT_FRAME, load_frames

    frames = load_frames()
    assert len(frames) == 8 and frames[0].shape == (*DEFAULT_FRAME, 3) and frames[0].dtype == np.uint8
    assert np.array_equal(frames[0], load_frames()[0])  # seeded
    rc = main(["bench", "--model", str(graphs["plain"]), "--end2end", "--source", str(tmp_path / "none"),
               "--duration", "0.1", "--no-progress", "--project", str(tmp_path)])  # fmt: skip
    assert rc == 2  # a missing --source is one clear line

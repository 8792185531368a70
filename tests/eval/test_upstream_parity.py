"""`val` scores as upstream's `val_dual.py`: the fixture's upstream-trained checkpoint, upstream's own
`--save-json` predictions and printed P / R (``../shared/fixtures/upstream-val``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from yolov9_qat.eval.metrics import coco_map

#: one worker runs the module's val passes under -n
pytestmark = pytest.mark.xdist_group("upstream-parity")


@pytest.fixture(scope="module")
def fixture(shared_dir: Path, tmp_path_factory) -> Path:
    src = shared_dir / "fixtures" / "upstream-val"
    if not (src / "yolov9-n-upstream.pt").is_file():
        pytest.skip(f"{src} is missing")
    out = tmp_path_factory.mktemp("upstream_val")
    shutil.copytree(src / "data", out / "data")  # shared/ is read-only; the loader writes a label cache
    for f in ("yolov9-n-upstream.pt", "expected.json"):
        shutil.copy(src / f, out / f)
    shutil.copy(src / "upstream-run" / "val_dual_predictions.json", out / "upstream_predictions.json")
    return out


def _val(fixture: Path, *extra: str) -> tuple[dict, Path]:
    run = fixture / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "yolov9_qat", "val", "--weights", str(fixture / "yolov9-n-upstream.pt"),
         "--data", str(fixture / "data" / "data.yaml"), "--img", "160", "--batch-size", "16",
         "--workers", "0", "--device", "cpu", "--no-progress", "--project", str(run), "--exist-ok",
         "--json-out", str(fixture / "metrics.json"), *extra],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads((fixture / "metrics.json").read_text()), run / "exp"


@pytest.fixture(scope="module")
def ours(fixture: Path) -> tuple[dict, Path]:
    return _val(fixture, "--save-json", "--save-txt", "--save-conf")


def _by_image(dets: list[dict]) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = defaultdict(list)
    for d in dets:
        out[d["image_id"]].append((d["category_id"], d["score"], *d["bbox"]))
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.cpu
def test_same_detections_box_for_box(fixture: Path, ours) -> None:
    metrics, _ = ours
    mine = _by_image(json.loads(Path(metrics["predictions_json"]).read_text()))
    theirs = _by_image(json.loads((fixture / "upstream_predictions.json").read_text()))
    assert mine.keys() == theirs.keys()
    worst_box = worst_score = 0.0
    for image_id, rows in theirs.items():
        assert len(mine[image_id]) == len(rows), f"image {image_id}: {len(mine[image_id])} vs {len(rows)}"
        # same class, score and box per detection (sorted by class then score); rounding differs by 1e-3 px
        for a, b in zip(mine[image_id], rows, strict=True):
            assert a[0] == b[0]
            worst_score = max(worst_score, abs(a[1] - b[1]))
            worst_box = max(worst_box, *(abs(x - y) for x, y in zip(a[2:], b[2:], strict=True)))
    assert worst_score <= 2e-5 and worst_box <= 2e-3, (worst_score, worst_box)


@pytest.mark.cpu
def test_metrics_within_bounds_of_upstream(fixture: Path, ours) -> None:
    metrics, _ = ours
    expected = json.loads((fixture / "expected.json").read_text())
    bounds = expected["parity_bounds"]
    gt = json.loads((fixture / "data" / "annotations" / "instances_val.json").read_text())
    reference = coco_map(gt, json.loads((fixture / "upstream_predictions.json").read_text()))
    assert abs(metrics["AP"] - reference["AP"]) <= bounds["AP"]
    assert abs(metrics["AP50"] - reference["AP50"]) <= bounds["AP50"]
    printed = expected["upstream_val_dual"]
    assert abs(metrics["precision"] - printed["P"]) <= bounds["P"]
    assert abs(metrics["recall"] - printed["R"]) <= bounds["R"]
    assert metrics["rect"] is True


@pytest.mark.cpu
def test_square_input_is_not_upstream_input(fixture: Path, ours) -> None:
    """The cause of the old offset: upstream scores PyTorch models on rect batches (160 -> 192 px);
    ``--no-rect`` (square 160, what a static engine takes) gives other detections and another AP."""
    metrics, _ = ours
    square, _ = _val(fixture, "--no-rect")
    assert square["rect"] is False
    assert abs(square["AP"] - metrics["AP"]) > 0.001


@pytest.mark.cpu
def test_save_txt_as_upstream(fixture: Path, ours) -> None:
    metrics, run = ours
    labels = sorted((run / "labels").glob("*.txt"))
    assert len(labels) == 300
    dets = json.loads(Path(metrics["predictions_json"]).read_text())
    first = [d for d in dets if d["image_id"] == 0]
    rows = [line.split() for line in (run / "labels" / "000000.txt").read_text().splitlines()]
    assert len(rows) == len(first) and all(len(r) == 6 for r in rows)

    # cls cx cy w h conf, normalised to the 160 x 160 image: each row is one of the JSON's detections
    def same(row: list[float], d: dict) -> bool:
        cls, cx, cy, w, h, conf = row
        x, y, bw, bh = d["bbox"]
        return (
            int(cls) == d["category_id"]
            and abs(conf - d["score"]) < 1e-5
            and abs(cx * 160 - (x + bw / 2)) < 2e-3
            and abs(cy * 160 - (y + bh / 2)) < 2e-3
            and abs(w * 160 - bw) < 2e-3
            and abs(h * 160 - bh) < 2e-3
        )

    for r in rows:
        assert any(same([float(v) for v in r], d) for d in first), r

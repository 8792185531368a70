"""Tests of the synthetic data set generator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from yolov9_qat.data import synth

N_TRAIN, N_VAL, IMGSZ = 20, 30, 160


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.generate(
        tmp_path_factory.mktemp("synth") / "ds",
        seed=0,
        n_train=N_TRAIN,
        n_val=N_VAL,
        imgsz=IMGSZ,
        progress=False,
    )


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _all_labels(root: Path) -> list[np.ndarray]:
    return [synth.read_yolo_labels(p) for p in sorted((root / "labels").rglob("*.txt"))]


@pytest.mark.cpu
def test_layout_and_data_yaml(dataset: Path) -> None:
    root = dataset.parent
    assert dataset.name == "data.yaml"
    doc = yaml.safe_load(dataset.read_text())
    assert doc["path"] == str(root.resolve())
    assert doc["train"] == "images/train" and doc["val"] == "images/val"
    assert doc["nc"] == len(synth.CLASS_NAMES) >= 8
    assert doc["names"] == list(synth.CLASS_NAMES)
    assert doc["coco_json"] == "annotations/instances_val.json"
    meta = doc["synthetic"]
    assert {k: meta[k] for k in ("seed", "n_train", "n_val", "imgsz")} == {
        "seed": 0,
        "n_train": N_TRAIN,
        "n_val": N_VAL,
        "imgsz": IMGSZ,
    }
    assert meta["generator_version"] == synth.GENERATOR_VERSION
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        images = sorted((root / "images" / split).glob("*.jpg"))
        labels = sorted((root / "labels" / split).glob("*.txt"))
        assert [p.stem for p in images] == [f"{i:06d}" for i in range(n)]
        assert [p.stem for p in labels] == [p.stem for p in images]
    assert not list(root.rglob("*.tmp*")), "temporary files left behind"


@pytest.mark.cpu
def test_images_are_square_bgr_jpegs(dataset: Path) -> None:
    import cv2

    for p in sorted((dataset.parent / "images").rglob("*.jpg"))[:10]:
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert img.shape == (IMGSZ, IMGSZ, 3) and img.dtype == np.uint8


@pytest.mark.cpu
def test_labels_valid(dataset: Path) -> None:
    nc = len(synth.CLASS_NAMES)
    n_boxes = 0
    for p in sorted((dataset.parent / "labels").rglob("*.txt")):
        for line in p.read_text().splitlines():
            fields = line.split()
            assert len(fields) == 5
            assert all(len(f.split(".")[1]) == 6 for f in fields[1:])
            c, cx, cy, w, h = (float(f) for f in fields)
            assert c == int(c) and 0 <= c < nc
            assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6
            assert cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6
            assert w * IMGSZ >= 2 and h * IMGSZ >= 2
            n_boxes += 1
    assert n_boxes >= 2 * (N_TRAIN + N_VAL)


@pytest.mark.cpu
def test_determinism(tmp_path: Path, dataset: Path) -> None:
    a = _files(dataset.parent)
    b_yaml = synth.generate(tmp_path / "b", seed=0, n_train=N_TRAIN, n_val=N_VAL, imgsz=IMGSZ, progress=False)
    b = _files(b_yaml.parent)
    assert a.keys() == b.keys()
    for name in a:
        if name == "data.yaml":  # holds the absolute path: compare the rest
            ya, yb = yaml.safe_load(a[name]), yaml.safe_load(b[name])
            ya.pop("path"), yb.pop("path")
            assert ya == yb
        else:
            assert a[name] == b[name], name

    c = _files(synth.generate(tmp_path / "c", seed=1, n_train=4, n_val=2, imgsz=IMGSZ, progress=False).parent)
    for split in ("train", "val"):
        for i in range(2):
            name = f"images/{split}/{i:06d}.jpg"
            assert c[name] != a[name]


@pytest.mark.cpu
def test_images_independent_of_count(tmp_path: Path, dataset: Path) -> None:
    """An image depends on (seed, split, index) only, not on how many images are generated."""
    small = synth.generate(tmp_path / "s", seed=0, n_train=3, n_val=2, imgsz=IMGSZ, progress=False).parent
    for name in ("images/train/000002.jpg", "labels/train/000002.txt", "images/val/000001.jpg"):
        assert (small / name).read_bytes() == (dataset.parent / name).read_bytes()


@pytest.mark.cpu
def test_coco_json_matches_yolo_labels(dataset: Path) -> None:
    root = dataset.parent
    doc = json.loads((root / "annotations" / "instances_val.json").read_text())
    assert [c["id"] for c in doc["categories"]] == list(range(len(synth.CLASS_NAMES)))
    assert [c["name"] for c in doc["categories"]] == list(synth.CLASS_NAMES)
    assert len(doc["images"]) == N_VAL
    anns_by_image: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        assert a["iscrowd"] == 0 and a["area"] > 0
        anns_by_image.setdefault(a["image_id"], []).append(a)
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])
    for im in doc["images"]:
        assert (im["width"], im["height"]) == (IMGSZ, IMGSZ)
        assert (root / "images" / "val" / im["file_name"]).is_file()
        rows = synth.read_yolo_labels(root / "labels" / "val" / (Path(im["file_name"]).stem + ".txt"))
        anns = anns_by_image.get(im["id"], [])
        assert len(anns) == len(rows)
        for a, (c, cx, cy, w, h) in zip(anns, rows, strict=True):
            assert a["category_id"] == int(c)
            yolo_px = np.array([(cx - w / 2) * IMGSZ, (cy - h / 2) * IMGSZ, w * IMGSZ, h * IMGSZ])
            np.testing.assert_allclose(a["bbox"], yolo_px, atol=1.0)


@pytest.mark.cpu
def test_coco_loadable_and_perfect_detections_score_one(dataset: Path) -> None:
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(dataset.parent / "annotations" / "instances_val.json"))
        dets = [
            {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt.dataset["annotations"]
        ]
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert len(gt.getImgIds()) == N_VAL
    assert ev.stats[0] == pytest.approx(1.0)


@pytest.mark.cpu
def test_classes_and_sizes_cover_the_range(dataset: Path) -> None:
    rows = np.concatenate(_all_labels(dataset.parent))
    assert len(np.unique(rows[:, 0])) >= 8
    side = np.maximum(rows[:, 3], rows[:, 4]) * IMGSZ
    cfg = synth.DEFAULT_CONFIG
    assert side.min() < 1.5 * cfg.min_size_frac * IMGSZ, "no small objects"
    assert side.max() > 0.6 * cfg.max_size_frac * IMGSZ, "no large objects"


@pytest.mark.cpu
def test_cache_and_regeneration(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    y = synth.generate(out, seed=3, n_train=6, n_val=4, imgsz=64, progress=False)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    for p in files:  # make any rewrite visible even on coarse-mtime file systems
        os.utime(p, ns=(mtimes[p] - 10**9, mtimes[p] - 10**9))
    before = {p: p.stat().st_mtime_ns for p in files}
    assert synth.generate(out, seed=3, n_train=6, n_val=4, imgsz=64, progress=False) == y
    assert {p: p.stat().st_mtime_ns for p in files} == before

    # other parameters: rewritten, and stale files of the larger old set are gone
    synth.generate(out, seed=3, n_train=3, n_val=2, imgsz=64, progress=False)
    assert len(list((out / "images" / "train").glob("*.jpg"))) == 3
    assert len(list((out / "labels" / "val").glob("*.txt"))) == 2
    assert yaml.safe_load(y.read_text())["synthetic"]["n_train"] == 3


@pytest.mark.cpu
def test_config_knobs(tmp_path: Path) -> None:
    cfg = synth.SynthConfig(min_size_frac=0.2, max_size_frac=0.3, max_objects=2, empty_prob=0.0)
    y = synth.generate(tmp_path / "k", n_train=8, n_val=0, imgsz=96, progress=False, config=cfg)
    rows = _all_labels(y.parent)
    assert all(len(r) <= 2 for r in rows)
    side = np.concatenate(rows)[:, 3:].max(1) * 96
    assert side.max() <= 0.3 * 96 + 2
    assert yaml.safe_load(y.read_text())["synthetic"]["config"]["max_objects"] == 2


@pytest.mark.cpu
def test_preview(tmp_path: Path, dataset: Path) -> None:
    import cv2

    png = synth.preview_mosaic(dataset, tmp_path / "p.png", n=4)
    assert cv2.imread(str(png)).shape == (4 * IMGSZ, 4 * IMGSZ, 3)

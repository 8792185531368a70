"""Tests of the YOLO data set: verification, label cache, geometry, augmentation, loaders, data.yaml."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from yolov9_qat.data import augment as augment_mod
from yolov9_qat.data import dataset as dataset_mod
from yolov9_qat.data.config import img2label_path, load_data_yaml
from yolov9_qat.data.dataset import YoloDataset, collect_image_files, create_dataloader, parse_label_text
from yolov9_qat.data.synth import SPLITS, image_rng
from yolov9_qat.errors import DataError

GOOD_ROW = "1 0.5 0.5 0.25 0.5"

# An augmentation set-up that exercises everything at once (mixup every time).
HEAVY_HYP = {
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "degrees": 10.0,
    "translate": 0.2,
    "scale": 0.9,
    "shear": 3.0,
    "perspective": 0.0005,
    "flipud": 0.5,
    "fliplr": 0.5,
    "mosaic": 1.0,
    "mixup": 1.0,
}
# No augmentation but the mosaic itself (a crop of the 2s canvas around its centre).
MOSAIC_ONLY = {k: 0.0 for k in HEAVY_HYP} | {"mosaic": 1.0}


def _image(path: Path, h: int, w: int, seed: int = 0, color: tuple[int, int, int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if color is None:
        img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    else:
        img = np.empty((h, w, 3), np.uint8)
        img[:] = color
    assert cv2.imwrite(str(path), img)


def _label(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _make_set(root: Path, n: int = 6, split: str = "train", seed: int = 0, rows: int = 3) -> Path:
    """``root/images/<split>`` with ``n`` random JPEGs of mixed sizes and ``rows`` valid boxes each."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(60, 200)), int(rng.integers(60, 200))
        _image(root / "images" / split / f"{i:03d}.jpg", h, w, seed=seed + i)
        lines = []
        for _ in range(rows):
            bw, bh = rng.uniform(0.1, 0.5, 2)
            cx, cy = rng.uniform(bw / 2, 1 - bw / 2), rng.uniform(bh / 2, 1 - bh / 2)
            lines.append(f"{int(rng.integers(0, 3))} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
        _label(root / "labels" / split / f"{i:03d}.txt", "\n".join(lines) + "\n")
    return root / "images" / split


# ----------------------------------------------------------------------------------------------------------
# verification


ROW_CASES = [
    # (id, bad row, stats key, rows kept besides GOOD_ROW)
    ("4 columns", "0 0.5 0.5 0.2", "rows_bad_columns", []),
    ("6 columns", "0 0.5 0.5 0.2 0.2 0.1", "rows_bad_columns", []),
    ("not a number", "0 0.5 abc 0.2 0.2", "rows_not_number", []),
    ("NaN", "0 nan 0.5 0.2 0.2", "rows_nonfinite", []),
    ("inf", "0 0.5 0.5 inf 0.2", "rows_nonfinite", []),
    ("negative class", "-1 0.5 0.5 0.2 0.2", "rows_bad_class", []),
    ("fractional class", "1.5 0.5 0.5 0.2 0.2", "rows_bad_class", []),
    ("centre outside", "0 1.3 0.5 0.2 0.2", "rows_out_of_bounds", []),
    ("edge far outside", "0 0.95 0.5 0.2 0.2", "rows_out_of_bounds", []),
    ("zero width", "0 0.5 0.5 0 0.2", "rows_zero_size", []),
    ("negative height", "0 0.5 0.5 0.2 -0.1", "rows_zero_size", []),
    ("slightly outside", "2 0.9 0.5 0.205 0.2", "rows_clipped", [[2, 0.89875, 0.5, 0.2025, 0.2]]),
    ("duplicate", GOOD_ROW, "duplicates", []),
    ("polygon", "0 0.1 0.1 0.5 0.1 0.5 0.6", "segments", [[0, 0.3, 0.35, 0.4, 0.5]]),
]


@pytest.mark.cpu
@pytest.mark.parametrize(("bad", "key", "kept"), [c[1:] for c in ROW_CASES], ids=[c[0] for c in ROW_CASES])
def test_malformed_rows_are_dropped_or_repaired_and_counted(
    tmp_path: Path, bad: str, key: str, kept: list[list[float]]
) -> None:
    src = _make_set(tmp_path, n=2)
    _label(tmp_path / "labels" / "train" / "000.txt", f"{GOOD_ROW}\n{bad}\n\n")
    ds = YoloDataset(src, imgsz=64)
    assert len(ds) == 2
    assert ds.stats[key] == 1
    others = {k for k in dataset_mod.STAT_KEYS if k.startswith("rows_") or k in ("duplicates", "segments")}
    assert all(ds.stats[k] == 0 for k in others - {key})
    expected = np.array([[1, 0.5, 0.5, 0.25, 0.5], *kept], np.float32)
    np.testing.assert_allclose(ds.labels[0], expected, atol=1e-5)
    img, labels, _, _ = ds[0]
    assert img.shape == (3, 64, 64) and len(labels) == len(expected)


@pytest.mark.cpu
def test_parse_label_text_keeps_order_and_counts_everything() -> None:
    text = "\n".join(
        [GOOD_ROW, "x", "0 0.2 0.2 0.1 0.1", GOOD_ROW, "3 0.5 0.5 0 0", "  ", "0 0.2 0.2 0.1 0.1"]
    )
    labels, counts = parse_label_text(text)
    np.testing.assert_allclose(labels, [[1, 0.5, 0.5, 0.25, 0.5], [0, 0.2, 0.2, 0.1, 0.1]])
    assert counts["duplicates"] == 2 and counts["rows_bad_columns"] == 1 and counts["rows_zero_size"] == 1


@pytest.mark.cpu
def test_missing_and_empty_label_files_keep_the_image(tmp_path: Path) -> None:
    src = _make_set(tmp_path, n=4)
    (tmp_path / "labels" / "train" / "001.txt").unlink()
    _label(tmp_path / "labels" / "train" / "002.txt", "\n  \n")
    ds = YoloDataset(src, imgsz=64)
    assert len(ds) == 4
    assert ds.stats["missing"] == 1 and ds.stats["empty"] == 1 and ds.stats["found"] == 3
    assert len(ds.labels[1]) == 0 and len(ds.labels[2]) == 0
    _, labels, _, _ = ds[1]
    assert labels.shape == (0, 6)


@pytest.mark.cpu
def test_bad_images_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = _make_set(tmp_path, n=3)
    img_dir = tmp_path / "images" / "train"
    (img_dir / "random.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    good = (img_dir / "000.jpg").read_bytes()
    (img_dir / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (img_dir / "empty.jpg").write_bytes(b"")
    _image(img_dir / "tiny.png", 5, 5)
    _image(img_dir / "ok.png", 50, 70)
    png = (img_dir / "ok.png").read_bytes()
    (img_dir / "truncated.png").write_bytes(png[: len(png) // 2])
    for name in ("random", "truncated", "empty", "tiny", "ok"):
        _label(tmp_path / "labels" / "train" / f"{name}.txt", GOOD_ROW + "\n")
    with caplog.at_level(logging.INFO, logger="yolov9_qat.data"):
        ds = YoloDataset(src, imgsz=64, prefix="train: ")
    assert ds.stats["images"] == 9 and ds.stats["usable"] == 4
    assert ds.stats["corrupt"] == 3  # random bytes, zero bytes, 5x5
    assert ds.stats["truncated"] == 2  # truncated JPEG, truncated PNG
    assert {Path(f).name for f in ds.im_files} == {"000.jpg", "001.jpg", "002.jpg", "ok.png"}
    for i in range(len(ds)):
        assert ds[i][0].shape == (3, 64, 64)
    summary = [r for r in caplog.records if r.name == "yolov9_qat.data" and "usable" in r.getMessage()]
    assert len(summary) == 1 and "\n" not in summary[0].getMessage()
    assert "3 corrupt" in summary[0].getMessage() and summary[0].getMessage().startswith("train: ")


@pytest.mark.cpu
def test_all_corrupt_raises_a_clear_error(tmp_path: Path) -> None:
    img_dir = tmp_path / "images" / "val"
    img_dir.mkdir(parents=True)
    (img_dir / "a.jpg").write_bytes(b"not an image at all")
    (img_dir / "b.jpg").write_bytes(b"")
    with pytest.raises(DataError) as e:
        YoloDataset(img_dir, imgsz=64)
    msg = str(e.value)
    assert "no usable images" in msg and str(img_dir) in msg and "2 corrupt" in msg and "\n" not in msg


@pytest.mark.cpu
def test_no_images_and_missing_source(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        YoloDataset(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        YoloDataset(tmp_path / "nope")
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(DataError, match="not a folder"):
        YoloDataset(tmp_path / "x.csv")


@pytest.mark.cpu
def test_min_items_and_nc_filters(tmp_path: Path) -> None:
    src = _make_set(tmp_path, n=4, rows=2)
    _label(tmp_path / "labels" / "train" / "000.txt", GOOD_ROW + "\n")
    _label(tmp_path / "labels" / "train" / "001.txt", "")
    ds = YoloDataset(src, imgsz=64, min_items=2)
    assert len(ds) == 2 and ds.stats["min_items_dropped"] == 2
    _label(tmp_path / "labels" / "train" / "002.txt", "0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.2 0.2\n")
    ds = YoloDataset(src, imgsz=64, nc=3)
    assert ds.stats["class_out_of_range"] == 1 and (ds.labels[2][:, 0] < 3).all()
    with pytest.raises(DataError, match="no usable images"):
        YoloDataset(src, imgsz=64, min_items=50)


@pytest.mark.cpu
def test_sources_list_files_and_label_paths(tmp_path: Path) -> None:
    a = _make_set(tmp_path / "a", n=2)
    b = _make_set(tmp_path / "b", n=3, split="val")
    lst = tmp_path / "b" / "list.txt"
    lst.write_text("./images/val/000.jpg\nimages/val/001.jpg\n\n# comment\n" + str(b / "002.jpg") + "\n")
    files = collect_image_files([a, lst, a / "000.jpg"])
    assert files == sorted(files) and len(files) == 5
    ds = YoloDataset([a, lst], imgsz=64)
    assert len(ds) == 5 and ds.stats["missing"] == 0
    assert img2label_path("/d/images/x/images/a.b.jpg") == "/d/images/x/labels/a.b.txt"
    assert img2label_path("/d/pics/a.png") == "/d/pics/a.txt"


# ----------------------------------------------------------------------------------------------------------
# label cache


@pytest.mark.cpu
def test_label_cache_built_reused_and_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src = _make_set(tmp_path, n=5)
    ds = YoloDataset(src, imgsz=64)
    cache = tmp_path / "labels" / "train.cache"
    assert ds.cache_status == "created" and ds.cache_path == cache and cache.is_file()
    assert ds.stats["verified"] == 5

    def no_verify(*args, **kwargs):
        raise AssertionError("verification ran although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(dataset_mod, "verify_image_label", no_verify)
        ds2 = YoloDataset(src, imgsz=64)
    assert ds2.cache_status == "loaded" and ds2.stats["verified"] == 0
    assert ds2.im_files == ds.im_files
    assert all(np.array_equal(x, y) for x, y in zip(ds.labels, ds2.labels, strict=True))
    assert {k: v for k, v in ds2.stats.items() if k != "verified"} == {
        k: v for k, v in ds.stats.items() if k != "verified"
    }

    # a label file changes -> stale -> rebuilt with the new content
    lb = tmp_path / "labels" / "train" / "000.txt"
    _label(lb, "0 0.5 0.5 0.1 0.1\n")
    st = lb.stat()
    os.utime(lb, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with caplog.at_level(logging.INFO, logger="yolov9_qat.data"):
        ds3 = YoloDataset(src, imgsz=64)
    assert ds3.cache_status == "rebuilt" and ds3.stats["verified"] == 5
    np.testing.assert_allclose(ds3.labels[0], [[0, 0.5, 0.5, 0.1, 0.1]])
    assert any("stale cache rebuilt" in r.getMessage() for r in caplog.records)
    assert YoloDataset(src, imgsz=64).cache_status == "loaded"

    # another cache version -> rebuilt
    monkeypatch.setattr(dataset_mod, "CACHE_VERSION", dataset_mod.CACHE_VERSION + 1)
    assert YoloDataset(src, imgsz=64).cache_status == "rebuilt"
    assert YoloDataset(src, imgsz=64).cache_status == "loaded"

    # an unreadable cache file -> rebuilt; an extra image -> rebuilt
    cache.write_bytes(b"garbage")
    assert YoloDataset(src, imgsz=64).cache_status == "rebuilt"
    _image(src / "new.jpg", 40, 40)
    ds4 = YoloDataset(src, imgsz=64)
    assert ds4.cache_status == "rebuilt" and len(ds4) == 6 and ds4.stats["missing"] == 1
    assert YoloDataset(src, imgsz=64, cache_labels=False).cache_status == "disabled"


@pytest.mark.cpu
def test_unwritable_cache_folder_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src = _make_set(tmp_path, n=2)

    def refuse(path, writer):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dataset_mod, "atomic_save", refuse)
    with caplog.at_level(logging.WARNING, logger="yolov9_qat.data"):
        ds = YoloDataset(src, imgsz=64)
    assert len(ds) == 2 and ds.cache_status.startswith("not written")
    assert not (tmp_path / "labels" / "train.cache").exists()
    assert any("not writable" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------------------------------------
# evaluation geometry


def _drawn_box_set(root: Path) -> tuple[Path, list[tuple[int, int, tuple[int, int, int, int]]]]:
    specs = [(100, 200, (20, 30, 120, 80)), (210, 90, (10, 50, 70, 190)), (64, 64, (5, 5, 40, 60))]
    for i, (h, w, (x1, y1, x2, y2)) in enumerate(specs):
        img = np.full((h, w, 3), 30, np.uint8)
        img[y1:y2, x1:x2] = 240
        path = root / "images" / "val" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), img)
        cx, cy, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
        _label(root / "labels" / "val" / f"{i}.txt", f"4 {cx:.8f} {cy:.8f} {bw:.8f} {bh:.8f}\n")
    return root / "images" / "val", specs


@pytest.mark.cpu
@pytest.mark.parametrize("rect", [False, True])
def test_eval_letterbox_round_trip_and_determinism(tmp_path: Path, rect: bool) -> None:
    src, specs = _drawn_box_set(tmp_path)
    ds = YoloDataset(src, imgsz=160, rect=rect, batch_size=1, stride=32)
    by_name = {Path(f).name: i for i, f in enumerate(ds.im_files)}
    for k, (h, w, box) in enumerate(specs):
        i = by_name[f"{k}.png"]
        img, labels, path, shapes = ds[i]
        img2, labels2, _, shapes2 = ds[i]
        assert torch.equal(img, img2) and torch.equal(labels, labels2) and shapes == shapes2
        assert img.dtype == torch.uint8 and img.shape[0] == 3
        H, W = img.shape[1:]
        if rect:
            assert H % 32 == 0 and W % 32 == 0 and max(H, W) <= 160 + 32
        else:
            assert (H, W) == (160, 160)
        (h0, w0), ((gh, gw), (pw, ph)) = shapes
        assert (h0, w0) == (h, w) and path.endswith(f"{k}.png")
        _, cls, cx, cy, bw, bh = labels[0].tolist()
        assert cls == 4
        out_box = np.array([(cx - bw / 2) * W, (cy - bh / 2) * H, (cx + bw / 2) * W, (cy + bh / 2) * H])
        # the label follows the drawn rectangle in the output image
        ys, xs = np.nonzero(img.numpy().max(0) > 135)
        drawn = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert np.abs(drawn - out_box).max() <= 1.0
        # and the shapes tuple undoes the letterbox
        orig = (out_box - [pw, ph, pw, ph]) / [gw, gh, gw, gh]
        assert np.abs(orig - np.array(box)).max() <= 1.0


@pytest.mark.cpu
def test_rect_batches_sorted_by_aspect_ratio(tmp_path: Path) -> None:
    src = _make_set(tmp_path, n=8)
    ds = YoloDataset(src, imgsz=128, rect=True, batch_size=3, stride=32, pad=0.0)
    ar = ds.shapes[:, 0] / ds.shapes[:, 1]
    assert (np.diff(ar) >= 0).all()
    assert ds.batch_shapes is not None and len(ds.batch_shapes) == 3
    for i in range(len(ds)):
        img, _, _, _ = ds[i]
        assert tuple(img.shape[1:]) == tuple(ds.batch_shapes[ds.batch_index[i]])


# ----------------------------------------------------------------------------------------------------------
# training


def _check_targets(labels: torch.Tensor, img: torch.Tensor) -> None:
    assert labels.ndim == 2 and labels.shape[1] == 6 and labels.dtype == torch.float32
    assert torch.isfinite(labels).all()
    xywh = labels[:, 2:]
    assert (xywh[:, :2] >= 0).all() and (xywh[:, :2] <= 1).all()
    assert (xywh[:, 2:] > 0).all()
    x1, x2 = xywh[:, 0] - xywh[:, 2] / 2, xywh[:, 0] + xywh[:, 2] / 2
    y1, y2 = xywh[:, 1] - xywh[:, 3] / 2, xywh[:, 1] + xywh[:, 3] / 2
    eps = 1e-5
    assert (x1 >= -eps).all() and (y1 >= -eps).all() and (x2 <= 1 + eps).all() and (y2 <= 1 + eps).all()
    H, W = img.shape[1:]
    assert (xywh[:, 2] * W > 2 - 1e-3).all() and (xywh[:, 3] * H > 2 - 1e-3).all()


@pytest.mark.cpu
def test_train_samples_have_valid_boxes(tmp_path: Path) -> None:
    src = _make_set(tmp_path, n=8, rows=6)
    ds = YoloDataset(src, imgsz=96, augment=True, hyp=HEAVY_HYP, seed=0)
    total = 0
    for k in range(150):
        img, labels, _, shapes = ds[k % len(ds)]
        assert img.shape == (3, 96, 96) and img.dtype == torch.uint8 and img.is_contiguous()
        assert shapes is None  # mosaics have no original image
        _check_targets(labels, img)
        assert set(labels[:, 1].tolist()) <= {0.0, 1.0, 2.0}
        total += len(labels)
    assert total > 150  # boxes survive the augmentation

    plain = YoloDataset(src, imgsz=96, augment=True, hyp=HEAVY_HYP | {"mosaic": 0.0}, seed=0)
    for k in range(40):
        img, labels, _, shapes = plain[k % len(plain)]
        assert img.shape == (3, 96, 96) and shapes is not None
        _check_targets(labels, img)


@pytest.mark.cpu
def test_train_augmentation_reproducible_per_seed(tmp_path: Path) -> None:
    src = _make_set(tmp_path, n=5)
    a = YoloDataset(src, imgsz=64, augment=True, seed=3)
    b = YoloDataset(src, imgsz=64, augment=True, seed=3, cache_images=True)
    c = YoloDataset(src, imgsz=64, augment=True, seed=4)
    sa, sb, sc = ([d[i % 5] for i in range(6)] for d in (a, b, c))
    for x, y in zip(sa, sb, strict=True):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
    assert any(not torch.equal(x[0], z[0]) for x, z in zip(sa, sc, strict=True))
    a.reseed(3)
    assert torch.equal(a[0][0], YoloDataset(src, imgsz=64, augment=True, seed=3)[0][0])


@pytest.mark.cpu
def test_augmentation_streams_are_not_the_synthetic_images_streams(tmp_path: Path) -> None:
    """With the default seeds (train 0, synth 0) epoch 0's augmentation draws of image i are not the draws
    that rendered it (they were, before the streams had their own tag: found for issue 12)."""
    src = _make_set(tmp_path, n=3)
    ds = YoloDataset(src, imgsz=64, augment=True, seed=0)
    ds.set_epoch(SPLITS["train"])
    for i in range(3):
        assert not np.array_equal(ds._get_rng(i).random(8), image_rng(0, "train", i).random(8)), i


@pytest.mark.cpu
def test_training_samples_take_the_pixel_augmentations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grey scale at probability 1 makes every training sample grey (HSV keeps grey grey); evaluation
    samples never take it."""
    src = _make_set(tmp_path, n=4)
    monkeypatch.setitem(augment_mod.PIXEL_AUG_P, "gray", 1.0)
    train = YoloDataset(src, imgsz=64, augment=True, seed=0)
    for i in range(4):
        img = train[i][0]
        assert (img == img[:1]).all(), i
    val = YoloDataset(src, imgsz=64)
    assert any(not (val[i][0] == val[i][0][:1]).all() for i in range(4))


@pytest.mark.cpu
def test_train_reduced_jpeg_decoding_matches_full_decoding(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    big = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (0, 0), 6)
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 98])
    train = YoloDataset(tmp_path / "images", imgsz=96, augment=True)
    val = YoloDataset(tmp_path / "images", imgsz=96)
    a, hw0_a, hw_a = train.load_image(0)
    b, hw0_b, hw_b = val.load_image(0)
    assert hw0_a == hw0_b == (480, 640) and hw_a == hw_b == (72, 96) and a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3


@pytest.mark.cpu
def test_collate_sets_batch_index() -> None:
    batch = [
        (
            torch.zeros(3, 8, 8, dtype=torch.uint8),
            torch.tensor([[0.0, 1, 0.5, 0.5, 0.1, 0.1]] * n).reshape(-1, 6),
            f"p{n}",
            None,
        )
        for n in (2, 0, 3)
    ]
    imgs, labels, paths, shapes = YoloDataset.collate_fn(batch)
    assert imgs.shape == (3, 3, 8, 8) and paths == ("p2", "p0", "p3") and shapes == (None, None, None)
    assert labels[:, 0].tolist() == [0, 0, 2, 2, 2]


def _colour_count(img: torch.Tensor) -> int:
    return len(torch.unique(img.reshape(3, -1), dim=1).T)


@pytest.mark.cpu
def test_dataloader_workers_and_close_mosaic(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(8):  # square single-colour PNGs: a mosaic shows several colours, a plain image one
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        _image(tmp_path / "images" / "train" / f"{i}.png", 64, 64, color=colour)
        _label(tmp_path / "labels" / "train" / f"{i}.txt", f"{i % 3} 0.5 0.5 0.5 0.5\n")
    loader, ds = create_dataloader(
        tmp_path / "images" / "train",
        64,
        4,
        32,
        hyp=MOSAIC_ONLY,
        augment=True,
        workers=2,
        shuffle=True,
        seed=1,
    )
    assert loader.num_workers == 2
    mosaic_colours = []
    for imgs, labels, paths, _ in loader:
        assert imgs.shape[1:] == (3, 64, 64) and imgs.dtype == torch.uint8
        assert labels.shape[1] == 6 and len(paths) == imgs.shape[0]
        assert set(labels[:, 0].long().tolist()) <= set(range(imgs.shape[0]))
        mosaic_colours += [_colour_count(im) for im in imgs]
    assert len(mosaic_colours) == 8 and sum(c > 1 for c in mosaic_colours) >= 6
    ds.close_mosaic()  # must reach the workers
    for imgs, labels, _, shapes in loader:
        assert all(_colour_count(im) == 1 for im in imgs)
        assert all(s is not None for s in shapes)
        assert torch.equal(torch.unique(labels[:, 0]), torch.arange(imgs.shape[0], dtype=torch.float32))

    # same seed -> same shuffled order; a distributed rank gets its share
    order = [
        p
        for _, _, paths, _ in create_dataloader(ds.im_files, 64, 4, 32, workers=0, shuffle=True, seed=5)[0]
        for p in paths
    ]
    again = [
        p
        for _, _, paths, _ in create_dataloader(ds.im_files, 64, 4, 32, workers=0, shuffle=True, seed=5)[0]
        for p in paths
    ]
    assert order == again and sorted(order) == sorted(ds.im_files)
    dl, _ = create_dataloader(ds.im_files, 64, 2, 32, workers=0, rank=1, world_size=2)
    assert isinstance(dl.sampler, torch.utils.data.distributed.DistributedSampler)
    assert sum(len(paths) for _, _, paths, _ in dl) == 4


# ----------------------------------------------------------------------------------------------------------
# data.yaml


@pytest.mark.cpu
def test_load_data_yaml_relative_paths_and_names(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _make_set(root, n=1, split="train")
    _make_set(root, n=1, split="val")
    (root / "val_list.txt").write_text("./images/val/000.jpg\n")
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    data = {
        "path": "../ds",
        "train": "images/train",
        "val": ["images/val", "val_list.txt"],
        "names": {0: "cat", 1: "dog", 2: "bird"},
        "coco_json": "annotations/val.json",
        "synthetic": {"seed": 0},
    }
    (cfg_dir / "data.yaml").write_text(yaml.safe_dump(data))
    cfg = load_data_yaml(cfg_dir / "data.yaml")
    assert cfg["path"] == str(root.resolve())
    assert cfg["train"] == str(root / "images" / "train")
    assert cfg["val"] == [str(root / "images" / "val"), str(root / "val_list.txt")]
    assert cfg["test"] is None
    assert cfg["names"] == ["cat", "dog", "bird"] and cfg["nc"] == 3
    assert cfg["coco_json"] == "annotations/val.json" and cfg["synthetic"] == {"seed": 0}
    assert cfg["yaml_file"] == str(cfg_dir / "data.yaml")
    assert len(YoloDataset(cfg["val"], imgsz=64)) == 1

    # no `path`: the yaml's folder is the root; names as a list with a matching nc
    (root / "data.yaml").write_text(
        yaml.safe_dump({"train": "images/train", "val": "images/val", "nc": 2, "names": ["a", "b"]})
    )
    cfg = load_data_yaml(root / "data.yaml")
    assert cfg["path"] == str(root) and cfg["val"] == str(root / "images" / "val") and cfg["nc"] == 2


@pytest.mark.cpu
@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"train": "images/train", "val": "images/train", "nc": 3, "names": ["a", "b"]}, "nc=3"),
        ({"train": "images/train", "val": "images/nowhere", "names": ["a"]}, "images/nowhere does not exist"),
        ({"train": "images/train", "names": ["a"]}, "missing 'val'"),
        ({"train": "images/train", "val": "images/train", "names": {0: "a", 2: "b"}}, "without gaps"),
        ({"train": "images/train", "val": "images/train"}, "needs 'names'"),
        (
            {"path": "elsewhere", "train": "images/train", "val": "images/train", "names": ["a"]},
            "not a folder",
        ),
        ("just a string", "must be a YAML mapping"),
        ("names: [a, b\n", "cannot be read as YAML"),
    ],
)
def test_load_data_yaml_errors(tmp_path: Path, content, match: str) -> None:
    _make_set(tmp_path, n=1)
    p = tmp_path / "data.yaml"
    p.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    with pytest.raises(DataError, match=match) as e:
        load_data_yaml(p)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        load_data_yaml(tmp_path / "missing.yaml")


@pytest.mark.cpu
def test_epoch_order_does_not_depend_on_workers(tmp_path: Path) -> None:
    """The trainer reseeds the loader's generator every epoch: the batches of every epoch, not only
    the first, must be the same with and without worker processes (reproduce trains with 2, the
    suite with 0, over one cache whose keys do not hold the number)."""
    for i in range(12):
        _image(tmp_path / "images" / "train" / f"{i}.png", 32, 32)
        _label(tmp_path / "labels" / "train" / f"{i}.txt", "0 0.5 0.5 0.5 0.5\n")

    def orders(workers: int) -> list[list[str]]:
        loader, _ = create_dataloader(
            tmp_path / "images" / "train", 32, 12, 32, workers=workers, shuffle=True, seed=3
        )
        out = []
        for epoch in range(3):
            loader.generator.manual_seed(3 * 100_003 + epoch)
            out.append([Path(p).stem for _, _, paths, _ in loader for p in paths])
        return out

    without, with_workers = orders(0), orders(2)
    assert len({tuple(o) for o in without}) == 3  # the epochs do shuffle
    assert with_workers == without

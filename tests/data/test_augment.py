"""Tests of the pure augmentation functions in ``yolov9_qat.data.augment``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from yolov9_qat.data.augment import (
    DEFAULT_HYP,
    PIXEL_AUG_P,
    augment_hsv,
    box_candidates,
    letterbox,
    merge_hyp,
    mixup,
    pixel_augment,
    random_perspective,
    xywhn2xyxy,
    xyxy2xywhn,
)


def _rect_image(h: int, w: int, box: tuple[int, int, int, int], bg: int = 40) -> np.ndarray:
    img = np.full((h, w, 3), bg, np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 250
    return img


def _bright_bbox(img: np.ndarray, thr: int = 180) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(img.max(2) > thr)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.cpu
@pytest.mark.parametrize(
    ("h", "w", "new", "scaleup", "auto"),
    [
        (100, 200, 160, True, False),
        (200, 100, 160, True, False),
        (300, 301, 160, True, False),
        (90, 70, 160, False, False),
        (100, 200, (96, 160), True, False),
        (100, 200, 320, True, True),
        (637, 421, 640, True, False),
    ],
)
def test_letterbox_geometry_and_inverse(h: int, w: int, new, scaleup: bool, auto: bool) -> None:
    box = (w // 5, h // 4, w // 2, (3 * h) // 4)
    img = _rect_image(h, w, box)
    out, (rw, rh), (pw, ph) = letterbox(img, new, scaleup=scaleup, auto=auto, stride=32)
    th, tw = (new, new) if isinstance(new, int) else new
    if auto:
        assert out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0
        assert out.shape[0] <= th and out.shape[1] <= tw
    else:
        assert out.shape[:2] == (th, tw)
    if not scaleup:
        assert rw <= 1.0 and rh <= 1.0
    assert abs(rw - rh) < 0.02  # aspect ratio kept (up to rounding)
    # content sits at the returned offsets with the returned scale
    cw, ch = round(w * rw), round(h * rh)
    assert out[int(ph) : int(ph) + ch, int(pw) : int(pw) + cw].min() >= 30  # no pad inside content
    if pw >= 1:
        assert (out[:, : int(pw)] == 114).all()
    if ph >= 1:
        assert (out[: int(ph)] == 114).all()
    # forward box == the bright region in the output, and the inverse gets the box back within 1 px
    fwd = np.array([box[0] * rw + pw, box[1] * rh + ph, box[2] * rw + pw, box[3] * rh + ph])
    assert np.abs(np.array(_bright_bbox(out)) - fwd).max() <= 1.0
    inv = np.array([(fwd[0] - pw) / rw, (fwd[1] - ph) / rh, (fwd[2] - pw) / rw, (fwd[3] - ph) / rh])
    assert np.abs(inv - np.array(box)).max() <= 1.0


@pytest.mark.cpu
def test_letterbox_no_change_when_already_fitting() -> None:
    img = np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8)
    out, ratio, pad = letterbox(img, 160)
    assert ratio == (1.0, 1.0) and pad == (0.0, 0.0)
    assert np.array_equal(out, img)


@pytest.mark.cpu
def test_augment_hsv() -> None:
    rng_img = np.random.default_rng(1)
    img = rng_img.integers(0, 255, (64, 48, 3), dtype=np.uint8)
    before = img.copy()
    assert augment_hsv(img, 0, 0, 0, np.random.default_rng(0)) is img
    a = augment_hsv(img, 0.015, 0.7, 0.4, np.random.default_rng(5))
    b = augment_hsv(img, 0.015, 0.7, 0.4, np.random.default_rng(5))
    c = augment_hsv(img, 0.015, 0.7, 0.4, np.random.default_rng(6))
    assert np.array_equal(img, before)  # input untouched
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


_NONE = dict.fromkeys(PIXEL_AUG_P, 0.0)


@pytest.mark.cpu
def test_pixel_augment_each_transform() -> None:
    img = cv2.GaussianBlur(np.random.default_rng(2).integers(0, 255, (48, 64, 3), dtype=np.uint8), (0, 0), 1)
    before = img.copy()
    rng = np.random.default_rng(0)
    assert pixel_augment(img, rng, _NONE) is img
    blurred = pixel_augment(img, np.random.default_rng(0), {**_NONE, "blur": 1.0})
    assert any(np.array_equal(blurred, cv2.blur(img, (k, k))) for k in (3, 5, 7))
    median = pixel_augment(img, np.random.default_rng(0), {**_NONE, "median_blur": 1.0})
    assert any(np.array_equal(median, cv2.medianBlur(img, k)) for k in (3, 5, 7))
    grey = pixel_augment(img, np.random.default_rng(0), {**_NONE, "gray": 1.0})
    assert grey.shape == img.shape and (grey == grey[..., :1]).all()
    assert np.array_equal(grey[..., 0], cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    clahe = pixel_augment(img, np.random.default_rng(0), {**_NONE, "clahe": 1.0})
    assert clahe.shape == img.shape and clahe.dtype == np.uint8 and not np.array_equal(clahe, img)
    lab_in, lab_out = (cv2.cvtColor(x, cv2.COLOR_BGR2LAB)[..., 0] for x in (img, clahe))
    assert lab_out.std() > lab_in.std()  # equalised lightness: more contrast
    assert np.array_equal(img, before)  # input untouched


@pytest.mark.cpu
def test_pixel_augment_rates() -> None:
    """Each transform fires with its probability, drawn on its own (binomial bounds, 4 sigma)."""
    img = np.random.default_rng(3).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    n, fired = 4000, 0
    rng = np.random.default_rng(1)
    for _ in range(n):
        fired += pixel_augment(img, rng) is not img
    p_any = 1 - np.prod([1 - p for p in PIXEL_AUG_P.values()])
    assert abs(fired - n * p_any) < 4 * np.sqrt(n * p_any * (1 - p_any)), fired


@pytest.mark.cpu
def test_box_candidates() -> None:
    before = np.array(
        [[0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 10, 10]]
    )
    after = np.array(
        [
            [0, 0, 90, 90],  # kept
            [0, 0, 1.5, 50],  # too narrow
            [0, 0, 20, 20],  # 4% of the area left
            [0, 0, 3, 320],  # aspect > 100
            [0, 0, 8, 8],  # small but mostly kept
        ],
        dtype=np.float64,
    )
    assert box_candidates(before, after).tolist() == [True, False, False, False, True]


@pytest.mark.cpu
def test_random_perspective_identity() -> None:
    img = _rect_image(120, 160, (20, 30, 80, 90))
    targets = np.array([[3, 20, 30, 80, 90]], np.float32)
    out, t = random_perspective(img, targets, 0, 0, 0, 0, 0, (0, 0), np.random.default_rng(0))
    assert np.array_equal(out, img)
    np.testing.assert_allclose(t, targets)


@pytest.mark.cpu
@pytest.mark.parametrize("seed", range(8))
def test_random_perspective_boxes_follow_the_image(seed: int) -> None:
    box = (50, 40, 110, 90)
    img = _rect_image(160, 160, box)
    targets = np.array([[1, *box]], np.float32)
    # translation + scale only: the box is exactly the object's new bounding box
    out, t = random_perspective(
        img,
        targets,
        degrees=0,
        translate=0.1,
        scale=0.4,
        shear=0,
        perspective=0,
        rng=np.random.default_rng(seed),
    )
    assert out.shape == img.shape
    if len(t):
        assert t[0, 0] == 1
        assert np.abs(np.array(_bright_bbox(out, 140)) - t[0, 1:]).max() <= 1.5
    # rotation + shear + perspective: the returned box contains the object
    out, t = random_perspective(
        img,
        targets,
        degrees=30,
        translate=0.1,
        scale=0.3,
        shear=5,
        perspective=0.0005,
        rng=np.random.default_rng(seed),
    )
    if len(t):
        x1, y1, x2, y2 = _bright_bbox(out, 200)
        assert t[0, 1] <= x1 + 1 and t[0, 2] <= y1 + 1 and t[0, 3] >= x2 - 1 and t[0, 4] >= y2 - 1


@pytest.mark.cpu
def test_random_perspective_border_and_reproducible() -> None:
    rng_img = np.random.default_rng(0)
    img = rng_img.integers(0, 255, (320, 320, 3), dtype=np.uint8)
    targets = np.array([[0, 100, 100, 220, 220], [1, 0, 0, 10, 10]], np.float32)
    a = random_perspective(img, targets, 5, 0.1, 0.5, 2, 0, (-80, -80), np.random.default_rng(3))
    b = random_perspective(img, targets, 5, 0.1, 0.5, 2, 0, (-80, -80), np.random.default_rng(3))
    assert a[0].shape == (160, 160, 3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    t = a[1]
    assert (t[:, 1:] >= 0).all() and (t[:, [1, 3]] <= 160).all() and (t[:, [2, 4]] <= 160).all()
    assert (t[:, 3] - t[:, 1] > 2).all() and (t[:, 4] - t[:, 2] > 2).all()
    empty = random_perspective(img, np.zeros((0, 5)), 5, 0.1, 0.5, 2, 0, (-80, -80), np.random.default_rng(3))
    assert empty[1].shape == (0, 5)


@pytest.mark.cpu
def test_mixup() -> None:
    a = np.full((32, 32, 3), 0, np.uint8)
    b = np.full((32, 32, 3), 200, np.uint8)
    la = np.array([[0, 1, 1, 5, 5]], np.float32)
    lb = np.array([[1, 2, 2, 9, 9], [2, 3, 3, 8, 8]], np.float32)
    out, labels = mixup(a, la, b, lb, np.random.default_rng(0))
    assert out.shape == a.shape and out.dtype == np.uint8
    assert 60 < int(out[0, 0, 0]) < 140  # Beta(32, 32) is close to 0.5
    assert labels.shape == (3, 5) and labels[:, 0].tolist() == [0, 1, 2]


@pytest.mark.cpu
def test_box_format_round_trip_and_hyp() -> None:
    xywhn = np.array([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.2, 0.2]], np.float32)
    xyxy = xywhn2xyxy(xywhn, 200, 100, padw=3, padh=7)
    np.testing.assert_allclose(xyxy[0], [83, 37, 123, 77], atol=1e-4)
    back = xyxy2xywhn(xyxy - [3, 7, 3, 7], 200, 100)
    np.testing.assert_allclose(back, xywhn, atol=1e-6)
    clipped = xyxy2xywhn(np.array([[-10, -10, 50, 50]], np.float32), 100, 100, clip=True)
    np.testing.assert_allclose(clipped, [[0.25, 0.25, 0.5, 0.5]])
    hyp = merge_hyp({"mosaic": 0.5, "lr0": 0.01})
    assert hyp["mosaic"] == 0.5 and hyp["mixup"] == DEFAULT_HYP["mixup"] and "lr0" not in hyp
    assert merge_hyp(None) == DEFAULT_HYP


@pytest.mark.cpu
def test_letterbox_rejects_nothing_tiny() -> None:
    img = cv2.resize(np.full((3, 3, 3), 9, np.uint8), (13, 7))
    out, (rw, rh), _ = letterbox(img, 64)
    assert out.shape == (64, 64, 3) and rw > 1 and rh > 1

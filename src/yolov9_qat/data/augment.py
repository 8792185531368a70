"""Image and box augmentations for detection training, as pure functions.

Images are HWC uint8 BGR arrays (what ``cv2.imread`` returns). Boxes handed to the geometric functions
are ``(n, 5)`` arrays ``[cls, x1, y1, x2, y2]`` in pixels. Randomness always comes from a
``numpy.random.Generator`` passed in, never from global state, so a seed reproduces a result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

#: Upstream ``hyp.scratch-high.yaml`` augmentation values (``copy_paste`` is for segmentation only).
DEFAULT_HYP: dict[str, float] = {
    "hsv_h": 0.015,  # hue gain (fraction of the hue circle)
    "hsv_s": 0.7,  # saturation gain (fraction)
    "hsv_v": 0.4,  # value gain (fraction)
    "degrees": 0.0,  # rotation (+/- deg)
    "translate": 0.1,  # translation (+/- fraction of the image)
    "scale": 0.9,  # scale gain (+/- fraction)
    "shear": 0.0,  # shear (+/- deg)
    "perspective": 0.0,  # perspective (+/- fraction), 0 .. 0.001
    "flipud": 0.0,  # probability of an up-down flip
    "fliplr": 0.5,  # probability of a left-right flip
    "mosaic": 1.0,  # probability of a 4-image mosaic
    "mixup": 0.15,  # probability of mixing with a second mosaic
    "copy_paste": 0.3,  # segment copy-paste probability (ignored: boxes only)
}

AUG_KEYS: tuple[str, ...] = tuple(DEFAULT_HYP)


def merge_hyp(hyp: dict[str, Any] | None) -> dict[str, float]:
    """The augmentation hyper-parameters of ``hyp`` with :data:`DEFAULT_HYP` filling any missing key.

    Keys that are not augmentation settings (``lr0``, ``box``, ...) are ignored.
    """
    out = dict(DEFAULT_HYP)
    for k in AUG_KEYS:
        if hyp is not None and hyp.get(k) is not None:
            out[k] = float(hyp[k])
    return out


def xywhn2xyxy(x: np.ndarray, w: float, h: float, padw: float = 0.0, padh: float = 0.0) -> np.ndarray:
    """Normalised ``(cx, cy, w, h)`` -> pixel ``(x1, y1, x2, y2)`` in a ``w x h`` image offset by the pads."""
    y = np.empty_like(x, dtype=np.float32)
    y[:, 0] = w * (x[:, 0] - x[:, 2] / 2) + padw
    y[:, 1] = h * (x[:, 1] - x[:, 3] / 2) + padh
    y[:, 2] = w * (x[:, 0] + x[:, 2] / 2) + padw
    y[:, 3] = h * (x[:, 1] + x[:, 3] / 2) + padh
    return y


def xyxy2xywhn(x: np.ndarray, w: float, h: float, clip: bool = False) -> np.ndarray:
    """Pixel ``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)`` normalised to a ``w x h`` image (clipped first)."""
    x = np.asarray(x, dtype=np.float32)
    if clip:
        x = np.stack(
            (x[:, 0].clip(0, w), x[:, 1].clip(0, h), x[:, 2].clip(0, w), x[:, 3].clip(0, h)), 1
        ).astype(np.float32)
    y = np.empty_like(x)
    y[:, 0] = (x[:, 0] + x[:, 2]) / (2 * w)
    y[:, 1] = (x[:, 1] + x[:, 3]) / (2 * h)
    y[:, 2] = (x[:, 2] - x[:, 0]) / w
    y[:, 3] = (x[:, 3] - x[:, 1]) / h
    return y


def letterbox(
    img: np.ndarray,
    new_shape: int | Sequence[int] = 640,
    color: tuple[int, int, int] = (114, 114, 114),
    auto: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize ``img`` keeping its aspect ratio to fit ``new_shape`` (``(h, w)`` or a square side), then pad.

    ``scaleup=False`` only ever shrinks; ``auto=True`` pads only up to the next multiple of ``stride``
    instead of to ``new_shape``. The padding is split evenly (the extra pixel, if any, goes right/bottom).

    Returns ``(image, (ratio_w, ratio_h), (pad_left, pad_top))``: the exact per-axis scale of the
    content (resized size / original size) and the integer offsets of the content in the output, so that
    ``x_out = x_in * ratio_w + pad_left`` and the inverse are exact.
    """
    h, w = img.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    th, tw = int(new_shape[0]), int(new_shape[1])
    r = min(th / h, tw / w)
    if not scaleup:
        r = min(r, 1.0)
    nw = min(max(1, round(w * r)), tw)
    nh = min(max(1, round(h * r)), th)
    dw, dh = tw - nw, th - nh
    if auto:
        dw, dh = dw % stride, dh % stride
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    left, top = dw // 2, dh // 2
    if dw or dh:
        img = cv2.copyMakeBorder(
            img, top, dh - top, left, dw - left, cv2.BORDER_CONSTANT, value=tuple(int(c) for c in color)
        )
    return img, (nw / w, nh / h), (float(left), float(top))


def augment_hsv(
    img: np.ndarray, hgain: float, sgain: float, vgain: float, rng: np.random.Generator
) -> np.ndarray:
    """Random hue / saturation / value gains (each ``1 +/- gain``), applied with look-up tables.

    Returns a new BGR image; ``img`` is not modified. With all gains 0 the input is returned as is.
    """
    if not (hgain or sgain or vgain):
        return img
    r = rng.uniform(-1.0, 1.0, 3) * (hgain, sgain, vgain) + 1.0
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


#: Probabilities of the rare pixel-level augmentations that upstream's training applies through its
#: optional ``Albumentations`` wrapper (``utils/augmentations.py``), which is on wherever albumentations is
#: installed, as upstream's package requires it: blur and median blur with an odd kernel of 3 to 7 pixels,
#: grey scale, and CLAHE on the lightness channel with a clip limit drawn from [1, 4) on an 8 x 8 grid.
#: Each is drawn on its own, in this order; they change pixels only, never boxes.
PIXEL_AUG_P: dict[str, float] = {"blur": 0.01, "median_blur": 0.01, "gray": 0.01, "clahe": 0.01}


def pixel_augment(img: np.ndarray, rng: np.random.Generator, p: dict[str, float] | None = None) -> np.ndarray:
    """Blur, median blur, grey scale and CLAHE, each with its probability in ``p`` (default
    :data:`PIXEL_AUG_P`).

    Returns a new BGR image when one applied, else ``img`` itself. Upstream hands its BGR images to
    albumentations, which takes them for RGB (so its grey and LAB weights swap red and blue); here the
    conversions read BGR.
    """
    p = PIXEL_AUG_P if p is None else p
    draws = rng.random(4)
    if draws[0] < p["blur"]:
        k = int(rng.choice((3, 5, 7)))
        img = cv2.blur(img, (k, k))
    if draws[1] < p["median_blur"]:
        img = cv2.medianBlur(np.ascontiguousarray(img), int(rng.choice((3, 5, 7))))
    if draws[2] < p["gray"]:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if draws[3] < p["clahe"]:
        lab = cv2.cvtColor(img, cv2.COLOR_BGR2LAB)
        clahe = cv2.createCLAHE(clipLimit=float(rng.uniform(1.0, 4.0)), tileGridSize=(8, 8))
        lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
        img = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    return img


def box_candidates(
    box1: np.ndarray,
    box2: np.ndarray,
    wh_thr: float = 2.0,
    ar_thr: float = 100.0,
    area_thr: float = 0.1,
    eps: float = 1e-16,
) -> np.ndarray:
    """Which boxes survive an augmentation: ``box1`` before, ``box2`` after, both ``(n, 4)`` xyxy pixels.

    A box is kept when it is wider and taller than ``wh_thr`` pixels, keeps more than ``area_thr`` of
    its (scaled) area, and its aspect ratio stays below ``ar_thr``. Returns a boolean mask ``(n,)``.
    """
    w1, h1 = box1[:, 2] - box1[:, 0], box1[:, 3] - box1[:, 1]
    w2, h2 = box2[:, 2] - box2[:, 0], box2[:, 3] - box2[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_perspective(
    img: np.ndarray,
    targets: np.ndarray,
    degrees: float = 10.0,
    translate: float = 0.1,
    scale: float = 0.1,
    shear: float = 10.0,
    perspective: float = 0.0,
    border: tuple[int, int] = (0, 0),
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation, scale, shear, translation and perspective of an image and its boxes.

    ``targets`` is ``(n, 5)`` ``[cls, x1, y1, x2, y2]`` in pixels. ``border`` ``(by, bx)`` grows (>0) or
    crops (<0) the output: it is ``img.shape[:2] + 2 * border`` (a mosaic canvas of ``2s`` with border
    ``-s/2`` gives an ``s x s`` output). Transformed boxes are the axis-aligned hull of the four warped
    corners, clipped to the output; boxes that became too small or mostly left the image are dropped
    (:func:`box_candidates`). Returns ``(image, targets)`` with ``targets`` float32.
    """
    if rng is None:
        rng = np.random.default_rng()
    height = img.shape[0] + border[0] * 2
    width = img.shape[1] + border[1] * 2

    centre = np.eye(3)  # move the image centre to the origin
    centre[0, 2] = -img.shape[1] / 2
    centre[1, 2] = -img.shape[0] / 2
    persp = np.eye(3)
    persp[2, 0] = rng.uniform(-perspective, perspective)
    persp[2, 1] = rng.uniform(-perspective, perspective)
    rot = np.eye(3)
    angle = rng.uniform(-degrees, degrees)
    s = rng.uniform(1 - scale, 1 + scale)
    rot[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=s)
    shr = np.eye(3)
    shr[0, 1] = math.tan(math.radians(rng.uniform(-shear, shear)))
    shr[1, 0] = math.tan(math.radians(rng.uniform(-shear, shear)))
    trans = np.eye(3)
    trans[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * width
    trans[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * height
    m = trans @ shr @ rot @ persp @ centre

    if border[0] or border[1] or (m != np.eye(3)).any():
        if perspective:
            img = cv2.warpPerspective(img, m, dsize=(width, height), borderValue=(114, 114, 114))
        else:
            img = cv2.warpAffine(img, m[:2], dsize=(width, height), borderValue=(114, 114, 114))

    targets = np.asarray(targets, dtype=np.float32).reshape(-1, 5)
    n = len(targets)
    if n:
        corners = np.ones((n * 4, 3))
        corners[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)
        corners = corners @ m.T
        xy = corners[:, :2] / corners[:, 2:3] if perspective else corners[:, :2]
        xy = xy.reshape(n, 4, 2)
        new = np.concatenate((xy.min(1), xy.max(1)), 1)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
        keep = box_candidates(targets[:, 1:5] * s, new, area_thr=0.10)
        targets = targets[keep]
        targets[:, 1:5] = new[keep]
    return img, targets


def mixup(
    img: np.ndarray,
    labels: np.ndarray,
    img2: np.ndarray,
    labels2: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images with a ratio drawn from Beta(32, 32) and keep both label sets.

    (Zhang et al., "mixup: Beyond Empirical Risk Minimization", 2017.)
    """
    r = float(rng.beta(32.0, 32.0))
    out = cv2.addWeighted(img, r, img2, 1.0 - r, 0.0)
    return out, np.concatenate((labels, labels2), 0)

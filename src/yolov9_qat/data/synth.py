"""Synthetic object-detection data set: the package's embedded default data.

Every image is a cluttered background with 0-8 filled shapes drawn on it; the class of an object is
its *silhouette* (circle, square, triangle, ...), never its colour or texture, which are random per
object. Objects span from a few pixels to about half the image side (log-uniform), may partly hide
each other, and images may also hold distractor shapes that belong to no class.

The output is laid out like an upstream YOLO data set (``images/{train,val}``, ``labels/{train,val}``,
``data.yaml``) plus a COCO ground-truth file for the validation split. Each image is rendered from its
own random generator seeded by ``(seed, split, index)``, so the same parameters always give the same
bytes, whatever the order in which images are produced.

The difficulty knobs live in :class:`SynthConfig`; :func:`generate` takes one as ``config``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from yolov9_qat.utils.files import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_CONFIG",
    "GENERATOR_VERSION",
    "SynthConfig",
    "generate",
    "preview_mosaic",
    "read_yolo_labels",
    "render_image",
    "write_coco_json",
]

#: Bump whenever a change to this module changes the bytes it writes (invalidates cached data sets).
GENERATOR_VERSION = 1

#: Class index -> name. Classes are told apart by shape only.
CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "hexagon",
    "ellipse",
    "crescent",
    "arrow",
)

SPLITS: dict[str, int] = {"train": 0, "val": 1}
COCO_JSON = "annotations/instances_val.json"


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that renders image ``index`` of ``split`` for ``seed``: each image is a function of
    these three only, so any one can be made again without the others."""
    return np.random.default_rng([seed, SPLITS[split], index])


_SUB = 4  # sub-pixel bits for cv2 drawing
_SCALE = float(1 << _SUB)
_TEXTURES = ("solid", "gradient", "stripes", "speckle")


@dataclass(frozen=True)
class SynthConfig:
    """Difficulty knobs of the generator (sizes are fractions of the image side)."""

    min_size_frac: float = 0.1
    """Smallest object diameter (circumscribed circle) as a fraction of the image side."""
    max_size_frac: float = 0.5
    """Largest object diameter as a fraction of the image side; sizes are log-uniform in between."""
    min_objects: int = 1
    max_objects: int = 6
    """Objects per (non-empty) image are uniform in ``[min_objects, max_objects]``."""
    empty_prob: float = 0.03
    """Probability that an image holds no object at all."""
    max_overlap: float = 0.45
    """Largest allowed ``intersection / smaller box area`` between two objects' boxes at placement."""
    min_visible: float = 0.5
    """An object whose visible fraction (after later objects/distractors) is below this gets no label."""
    clutter: float = 0.6
    """Scale of the background clutter (soft blobs, faint lines, gratings); 0 gives plain gradients."""
    distractor_prob: float = 0.35
    """Probability that an image holds distractors (irregular polygons, thick lines, arcs)."""
    max_distractors: int = 3
    noise_sigma: float = 6.0
    """Per-image pixel noise std is uniform in ``[0, noise_sigma]`` (0-255 scale)."""
    blur_prob: float = 0.15
    """Probability of a light Gaussian blur over the whole image."""
    min_contrast: float = 60.0
    """Minimum colour distance (0-255 RGB) between an object's main colour and the background under it."""
    texture_probs: tuple[float, float, float, float] = (0.4, 0.2, 0.2, 0.2)
    """Probabilities of the object textures: solid, gradient, stripes, speckle."""
    jpeg_quality: int = 95

    def to_dict(self) -> dict[str, Any]:
        """Plain-YAML form (tuples as lists), as stored in ``data.yaml``."""
        d = dataclasses.asdict(self)
        d["texture_probs"] = [float(p) for p in self.texture_probs]
        return d


DEFAULT_CONFIG = SynthConfig()


# --------------------------------------------------------------------------------------------- shapes
def _regular(n: int, r: float = 1.0, phase: float = 0.0) -> np.ndarray:
    a = phase + np.arange(n) * (2 * math.pi / n)
    return np.stack([np.cos(a), np.sin(a)], 1) * r


def _circle(r: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 48) -> np.ndarray:
    return _regular(n, r) + np.array([cx, cy])


def _shape_ops(cls: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Unit-radius silhouette of class ``cls`` as drawing ops ``(polygon, fill value)``, in order."""
    name = CLASS_NAMES[cls]
    if name == "circle":
        return [(_circle(), 255)]
    if name == "square":
        return [(_regular(4, 1.0, math.pi / 4), 255)]
    if name == "triangle":
        return [(_regular(3, 1.0, -math.pi / 2), 255)]
    if name == "star":
        outer = _regular(5, 1.0, -math.pi / 2)
        inner = _regular(5, 0.42, -math.pi / 2 + math.pi / 5)
        return [(np.stack([outer, inner], 1).reshape(-1, 2), 255)]
    if name == "cross":
        t = rng.uniform(0.26, 0.34)
        p = np.array(
            [
                [t, -1],
                [t, -t],
                [1, -t],
                [1, t],
                [t, t],
                [t, 1],
                [-t, 1],
                [-t, t],
                [-1, t],
                [-1, -t],
                [-t, -t],
                [-t, -1],
            ]
        )
        return [(p * 0.75, 255)]  # arms of 0.75 so that the corners sit inside the unit circle
    if name == "ring":
        return [(_circle(), 255), (_circle(rng.uniform(0.5, 0.66)), 0)]
    if name == "hexagon":
        return [(_regular(6, 1.0), 255)]
    if name == "ellipse":
        return [(_circle() * [1.0, rng.uniform(0.38, 0.6)], 255)]
    if name == "crescent":
        return [(_circle(), 255), (_circle(rng.uniform(0.8, 0.9), rng.uniform(0.4, 0.55)), 0)]
    if name == "arrow":
        s, h = rng.uniform(0.16, 0.24), rng.uniform(0.5, 0.6)
        p = np.array([[-1, -s], [0.15, -s], [0.15, -h], [1, 0], [0.15, h], [0.15, s], [-1, s]])
        return [(p, 255)]
    raise AssertionError(name)


_ROTATES = {n: n not in ("circle", "ring") for n in CLASS_NAMES}


def _transform(
    ops: list[tuple[np.ndarray, int]], radius: float, angle: float
) -> list[tuple[np.ndarray, int]]:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]]) * radius
    return [(p @ rot, v) for p, v in ops]


def _rasterise(
    ops: list[tuple[np.ndarray, int]], imgsz: int, center: tuple[float, float], thickness: int = 0
) -> tuple[np.ndarray, int, int]:
    """Anti-aliased uint8 mask of the ops placed at ``center``; returns ``(mask, x0, y0)`` of its patch.

    ``thickness > 0`` draws open polylines of that width instead of filled polygons.
    """
    pts = np.concatenate([p for p, _ in ops]) + center
    pad = thickness + 2
    x0 = max(math.floor(pts[:, 0].min()) - pad, 0)
    y0 = max(math.floor(pts[:, 1].min()) - pad, 0)
    x1 = min(math.ceil(pts[:, 0].max()) + pad, imgsz)
    y1 = min(math.ceil(pts[:, 1].max()) + pad, imgsz)
    mask = np.zeros((max(y1 - y0, 1), max(x1 - x0, 1)), np.uint8)
    off = np.array(center) - [x0, y0]
    for p, v in ops:
        ip = np.round((p + off) * _SCALE).astype(np.int32)
        if thickness:
            cv2.polylines(mask, [ip], False, v, thickness, cv2.LINE_AA, _SUB)
        else:
            cv2.fillPoly(mask, [ip], v, cv2.LINE_AA, _SUB)
    return mask, x0, y0


# ------------------------------------------------------------------------------------------- painting
def _colour(rng: np.random.Generator, ref: np.ndarray | None, min_dist: float) -> np.ndarray:
    """Random colour at least ``min_dist`` from ``ref`` (best of a few tries)."""
    best, best_d = rng.uniform(0, 255, 3), -1.0
    for _ in range(12):
        c = rng.uniform(0, 255, 3)
        d = float(np.linalg.norm(c - ref)) if ref is not None else 1e9
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _texture(
    rng: np.random.Generator, shape: tuple[int, int], ref: np.ndarray, cfg: SynthConfig, size: float
) -> np.ndarray:
    """Random texture (h, w, 3) float32 for an object whose background averages ``ref``."""
    h, w = shape
    c1 = _colour(rng, ref, cfg.min_contrast)
    kind = _TEXTURES[rng.choice(len(_TEXTURES), p=np.asarray(cfg.texture_probs) / sum(cfg.texture_probs))]
    if kind == "solid":
        return np.broadcast_to(c1.astype(np.float32), (h, w, 3))
    if kind == "speckle":
        amp = rng.uniform(10, 35)
        return (c1 + rng.normal(0, amp, (h, w, 1))).astype(np.float32)
    c2 = _colour(rng, ref, cfg.min_contrast * 0.7)
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    proj = xx * math.cos(a) + yy * math.sin(a)
    if kind == "gradient":
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    else:  # stripes
        period = rng.uniform(3.0, max(4.0, size / 2.5))
        t = (np.sin(proj * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi)) > 0).astype(np.float32)
    return (c1 + (c2 - c1) * t[..., None]).astype(np.float32)


def _blend(img: np.ndarray, mask: np.ndarray, x0: int, y0: int, paint: np.ndarray | float) -> None:
    h, w = mask.shape
    a = mask.astype(np.float32)[..., None] * (1.0 / 255.0)
    region = img[y0 : y0 + h, x0 : x0 + w]
    region += (paint - region) * a


def _background(rng: np.random.Generator, imgsz: int, cfg: SynthConfig) -> np.ndarray:
    n = imgsz
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    a = rng.uniform(0, 2 * math.pi)
    t = xx * math.cos(a) + yy * math.sin(a)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = (c1 + (c2 - c1) * t[..., None]).astype(np.float32)
    # low-frequency colour noise
    g = int(rng.integers(2, 7))
    low = rng.normal(0, rng.uniform(5, 30), (g, g, 3)).astype(np.float32)
    img += cv2.resize(low, (n, n), interpolation=cv2.INTER_CUBIC)
    if cfg.clutter > 0:
        layer = np.zeros((n, n), np.uint8)
        for _ in range(int(rng.poisson(2.0 * cfg.clutter))):  # soft blobs
            layer[:] = 0
            center = (int(rng.integers(0, n)), int(rng.integers(0, n)))
            axes = (int(rng.integers(n // 20 + 1, n // 4 + 2)), int(rng.integers(n // 20 + 1, n // 4 + 2)))
            cv2.ellipse(layer, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
            soft = cv2.GaussianBlur(layer, (0, 0), rng.uniform(n / 40, n / 15))
            _blend(img, (soft * rng.uniform(0.2, 0.5)).astype(np.uint8), 0, 0, rng.uniform(0, 255, 3))
        for _ in range(int(rng.poisson(3.0 * cfg.clutter))):  # faint lines
            layer[:] = 0
            p1 = tuple(int(v) for v in rng.integers(-n // 4, n + n // 4, 2))
            p2 = tuple(int(v) for v in rng.integers(-n // 4, n + n // 4, 2))
            cv2.line(layer, p1, p2, 255, int(rng.integers(1, 3)), cv2.LINE_AA)
            _blend(img, (layer * rng.uniform(0.15, 0.45)).astype(np.uint8), 0, 0, rng.uniform(0, 255, 3))
        if rng.random() < 0.3 * min(cfg.clutter, 3.0):  # faint grating texture
            b = rng.uniform(0, 2 * math.pi)
            period = rng.uniform(2.5, n / 8)
            wave = np.sin((xx * math.cos(b) + yy * math.sin(b)) * (n * 2 * math.pi / period))
            img += (wave * rng.uniform(4, 14))[..., None]
    return img


def _distractor(rng: np.random.Generator, imgsz: int, cfg: SynthConfig) -> tuple[np.ndarray, int, int]:
    """Mask of a shape that is not a class: irregular polygon, thick polyline or open arc."""
    lo, hi = cfg.min_size_frac * imgsz, cfg.max_size_frac * imgsz
    r = math.exp(rng.uniform(math.log(max(lo, 4.0)), math.log(max(hi, lo + 1)))) / 2
    center = (float(rng.uniform(0, imgsz)), float(rng.uniform(0, imgsz)))
    kind = rng.integers(0, 3)
    if kind == 0:  # irregular polygon
        k = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * math.pi, k))
        rad = rng.uniform(0.3, 1.0, k) * r
        poly = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1)
        return _rasterise([(poly, 255)], imgsz, center)
    thick = int(rng.integers(1, max(2, int(r / 6)) + 1))
    if kind == 1:  # polyline
        poly = rng.uniform(-r, r, (int(rng.integers(2, 5)), 2))
    else:  # open arc
        start = rng.uniform(0, 2 * math.pi)
        ang = start + np.linspace(0, rng.uniform(0.6, 2.2), 16)
        poly = np.stack([np.cos(ang), np.sin(ang) * rng.uniform(0.5, 1.0)], 1) * r
    return _rasterise([(poly, 255)], imgsz, center, thickness=thick)


def render_image(
    rng: np.random.Generator, imgsz: int, config: SynthConfig = DEFAULT_CONFIG
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image.

    Returns ``(image, boxes, classes)``: a BGR uint8 ``(imgsz, imgsz, 3)`` image, ``(n, 4)`` float
    boxes ``x1 y1 x2 y2`` in pixels (pixel edges, tight around each object's mask) and ``(n,)`` int
    class indices of the labelled (sufficiently visible) objects.
    """
    cfg = config
    n = imgsz
    img = _background(rng, n, cfg)
    owner = np.full((n, n), -1, np.int16)  # index of the labelled object that shows at each pixel

    n_obj = 0 if rng.random() < cfg.empty_prob else int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    n_dis = int(rng.integers(1, cfg.max_distractors + 1)) if rng.random() < cfg.distractor_prob else 0
    dis_over = rng.random(n_dis) < 0.4  # which distractors are drawn over the objects

    def draw_distractor() -> None:
        mask, x0, y0 = _distractor(rng, n, cfg)
        h, w = mask.shape
        if not mask.any():
            return
        ref = img[y0 : y0 + h, x0 : x0 + w].reshape(-1, 3).mean(0)
        _blend(img, mask, x0, y0, _texture(rng, (h, w), ref, cfg, max(h, w)))
        owner[y0 : y0 + h, x0 : x0 + w][mask >= 128] = -2

    for i in range(n_dis):
        if not dis_over[i]:
            draw_distractor()

    boxes: list[list[int]] = []
    classes: list[int] = []
    areas: list[int] = []
    lo, hi = math.log(cfg.min_size_frac * n), math.log(cfg.max_size_frac * n)
    for _ in range(n_obj):
        cls = int(rng.integers(len(CLASS_NAMES)))
        radius = math.exp(rng.uniform(lo, hi)) / 2
        angle = rng.uniform(0, 2 * math.pi) if _ROTATES[CLASS_NAMES[cls]] else 0.0
        ops = _transform(_shape_ops(cls, rng), radius, angle)
        pts = np.concatenate([p for p, _ in ops])
        pmin, pmax = pts.min(0), pts.max(0)
        placed = None
        for _try in range(10):
            cx = rng.uniform(-pmin[0], n - pmax[0]) if pmax[0] - pmin[0] < n else n / 2
            cy = rng.uniform(-pmin[1], n - pmax[1]) if pmax[1] - pmin[1] < n else n / 2
            b = np.array([cx + pmin[0], cy + pmin[1], cx + pmax[0], cy + pmax[1]])
            if all(_overlap(b, np.asarray(o, float)) <= cfg.max_overlap for o in boxes):
                placed = (float(cx), float(cy))
                break
        if placed is None:
            continue
        mask, x0, y0 = _rasterise(ops, n, placed)
        solid = mask >= 128
        ys, xs = np.nonzero(solid)
        if len(xs) < 4:
            continue
        bx = [x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1]
        if bx[2] - bx[0] < 2 or bx[3] - bx[1] < 2:
            continue
        h, w = mask.shape
        ref = img[y0 : y0 + h, x0 : x0 + w][solid].mean(0)
        _blend(img, mask, x0, y0, _texture(rng, (h, w), ref, cfg, 2 * radius))
        owner[y0 : y0 + h, x0 : x0 + w][solid] = len(boxes)
        boxes.append(bx)
        classes.append(cls)
        areas.append(len(xs))

    for i in range(n_dis):
        if dis_over[i]:
            draw_distractor()

    # photometric noise
    if rng.random() < cfg.blur_prob:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.0))
    sigma = rng.uniform(0, cfg.noise_sigma)
    if sigma > 0:
        img += rng.normal(0, sigma, img.shape).astype(np.float32)
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)

    if boxes:
        visible = np.bincount(owner[owner >= 0].ravel(), minlength=len(boxes))
        keep = visible >= cfg.min_visible * np.asarray(areas)
        b_arr = np.asarray(boxes, np.float64)[keep]
        c_arr = np.asarray(classes, np.int64)[keep]
    else:
        b_arr, c_arr = np.zeros((0, 4), np.float64), np.zeros((0,), np.int64)
    return out, b_arr, c_arr


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller of the two boxes' areas."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(iw * ih / max(small, 1e-9))


# -------------------------------------------------------------------------------------------- writing
def _yolo_text(boxes: np.ndarray, classes: np.ndarray, w: int, h: int) -> str:
    lines = []
    for (x1, y1, x2, y2), c in zip(boxes, classes, strict=True):
        cx, cy, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
        lines.append(f"{int(c)} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}\n")
    return "".join(lines)


def read_yolo_labels(path: str | Path) -> np.ndarray:
    """Rows ``class cx cy w h`` of a YOLO label file as an ``(n, 5)`` float array."""
    text = Path(path).read_text().strip()
    if not text:
        return np.zeros((0, 5), np.float64)
    return np.array([[float(v) for v in line.split()] for line in text.splitlines()], np.float64).reshape(
        -1, 5
    )


def write_coco_json(
    path: str | Path,
    images: Sequence[tuple[int, str, int, int]],
    boxes: Sequence[np.ndarray],
    classes: Sequence[np.ndarray],
    names: Sequence[str] = CLASS_NAMES,
) -> Path:
    """Write COCO ground truth.

    ``images`` holds ``(image_id, file_name, width, height)``; ``boxes[i]`` the ``x1 y1 x2 y2`` pixel
    boxes of image ``i`` and ``classes[i]`` their class indices. ``category_id`` is the 0-based class
    index; ``area`` is the box area.
    """
    coco_images, anns = [], []
    for (image_id, file_name, w, h), bxs, cls in zip(images, boxes, classes, strict=True):
        coco_images.append({"id": int(image_id), "file_name": file_name, "width": int(w), "height": int(h)})
        for (x1, y1, x2, y2), c in zip(bxs, cls, strict=True):
            bw, bh = float(x2 - x1), float(y2 - y1)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": int(image_id),
                    "category_id": int(c),
                    "bbox": [float(x1), float(y1), bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
    doc = {
        "info": {"description": "yolov9_qat synthetic shapes", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": coco_images,
        "annotations": anns,
        "categories": [{"id": i, "name": n, "supercategory": "shape"} for i, n in enumerate(names)],
    }
    return atomic_write_json(path, doc)


_STEM = re.compile(r"^\d{6}$")


def _clear_stale(out: Path, split: str, count: int) -> None:
    """Remove files of a previous, different generation that the new one would not overwrite."""
    for sub, ext in (("images", ".jpg"), ("labels", ".txt")):
        d = out / sub / split
        if not d.is_dir():
            continue
        for f in d.iterdir():
            if f.suffix == ext and _STEM.match(f.stem) and int(f.stem) >= count:
                f.unlink()
    cache = out / "labels" / f"{split}.cache"  # upstream YOLO's label cache
    if cache.exists():
        cache.unlink()


def generate(
    out: str | Path,
    *,
    seed: int = 0,
    n_train: int = 1500,
    n_val: int = 300,
    imgsz: int = 160,
    progress: bool = True,
    config: SynthConfig | None = None,
) -> Path:
    """Write the synthetic data set under ``out`` and return the path of ``out/data.yaml``.

    If ``out`` already holds a complete data set made with the same parameters (``data.yaml``, written
    last, has the same ``synthetic`` block) nothing is written.
    """
    from tqdm import tqdm

    cfg = config or DEFAULT_CONFIG
    if seed < 0 or n_train < 0 or n_val < 0 or imgsz < 16:
        raise ValueError(f"bad parameters: seed={seed} n_train={n_train} n_val={n_val} imgsz={imgsz}")
    out = Path(out).resolve()
    yaml_path = out / "data.yaml"
    meta = {
        "seed": int(seed),
        "n_train": int(n_train),
        "n_val": int(n_val),
        "imgsz": int(imgsz),
        "generator_version": GENERATOR_VERSION,
        "config": cfg.to_dict(),
    }
    doc = {
        "path": str(out),
        "train": "images/train",
        "val": "images/val",
        "nc": len(CLASS_NAMES),
        "names": list(CLASS_NAMES),
        "coco_json": COCO_JSON,
        "synthetic": meta,
    }
    yaml_text = yaml.safe_dump(doc, sort_keys=False)
    if yaml_path.is_file():
        try:
            old = yaml.safe_load(yaml_path.read_text())
        except yaml.YAMLError:
            old = None
        if isinstance(old, dict) and old.get("synthetic") == meta:
            if old.get("path") != str(out):  # the folder was moved: only the path is stale
                atomic_write_text(yaml_path, yaml_text)
            return yaml_path
        yaml_path.unlink()  # from here on the folder is incomplete until data.yaml is back

    counts = {"train": n_train, "val": n_val}
    bar = tqdm(total=n_train + n_val, desc="synthetic data", unit="img", disable=not progress)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(cfg.jpeg_quality)]
    val_records: tuple[list, list, list] = ([], [], [])
    for split in SPLITS:
        _clear_stale(out, split, counts[split])
        for i in range(counts[split]):
            rng = image_rng(seed, split, i)
            img, boxes, classes = render_image(rng, imgsz, cfg)
            ok, buf = cv2.imencode(".jpg", img, params)
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            name = f"{i:06d}"
            atomic_write_bytes(out / "images" / split / f"{name}.jpg", buf.tobytes())
            atomic_write_text(
                out / "labels" / split / f"{name}.txt", _yolo_text(boxes, classes, imgsz, imgsz)
            )
            if split == "val":
                val_records[0].append((i, f"{name}.jpg", imgsz, imgsz))
                val_records[1].append(boxes)
                val_records[2].append(classes)
            bar.update(1)
    bar.close()
    write_coco_json(out / COCO_JSON, *val_records)
    atomic_write_text(yaml_path, yaml_text)
    return yaml_path


# -------------------------------------------------------------------------------------------- preview
def preview_mosaic(data_yaml: str | Path, path: str | Path, *, split: str = "val", n: int = 16) -> Path:
    """Write a PNG mosaic of the first ``n`` images of ``split`` with their labelled boxes drawn."""
    root = Path(data_yaml).parent
    files = sorted((root / "images" / split).glob("*.jpg"))[:n]
    if not files:
        raise FileNotFoundError(f"no images under {root / 'images' / split}")
    tiles = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        img = cv2.resize(img, (w * 2, h * 2), interpolation=cv2.INTER_NEAREST)
        for c, cx, cy, bw, bh in read_yolo_labels(root / "labels" / split / f"{f.stem}.txt"):
            p1 = (round((cx - bw / 2) * w * 2), round((cy - bh / 2) * h * 2))
            p2 = (round((cx + bw / 2) * w * 2) - 1, round((cy + bh / 2) * h * 2) - 1)
            cv2.rectangle(img, p1, p2, (0, 255, 0), 1)
            cv2.putText(img, CLASS_NAMES[int(c)], (p1[0], max(p1[1] - 2, 8)), 0, 0.35, (0, 255, 0), 1)
        tiles.append(img)
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    tiles += [np.zeros_like(tiles[0])] * (rows * cols - len(tiles))
    grid = np.vstack([np.hstack(tiles[r * cols : (r + 1) * cols]) for r in range(rows)])
    ok, buf = cv2.imencode(".png", grid)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return atomic_write_bytes(path, buf.tobytes())
